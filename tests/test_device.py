"""Device-agnostic job: no tensor on an implicit device, checkpoints across devices, CUDA where it exists."""

from __future__ import annotations

import math

import pytest
import torch

from metaopt.cli import main
from metaopt.experiments import maml_rl
from metaopt.experiments.maml_rl import load_checkpoint, save_checkpoint
from metaopt.maml import MAMLConfig, MetaLearner

CUDA = torch.cuda.is_available()


def tiny(**kw):
    return MAMLConfig(**(dict(tasks=3, trajectories=3, iterations=2, popart=True, learn=("lr", "beta"),
                              eval_tasks=2, scaled=True) | kw))


def test_no_tensor_is_created_on_an_implicit_device():
    # With torch's default device set to "meta" (tensors without data), any factory call that forgets the run's
    # device would create a meta tensor and the iteration would fail or give meta results.
    previous = torch.get_default_device()
    torch.set_default_device("meta")
    try:
        learner = MetaLearner(tiny(device="cpu"))
        row = learner.step()
        ev = learner.evaluate()
    finally:
        torch.set_default_device(previous)
    assert all(p.device.type == "cpu" for p in learner.parameters())
    assert learner.generator.device.type == "cpu"
    assert all(isinstance(v, int | float) and math.isfinite(v) for v in (*row.values(), *ev.values()))


def test_checkpoints_load_onto_the_configured_device(tmp_path, monkeypatch):
    learner = MetaLearner(tiny())
    learner.step()
    save_checkpoint(tmp_path / "c.pt", learner, {"train": [], "eval": []})
    seen = {}
    real = torch.load

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(maml_rl.torch, "load", spy)
    state = load_checkpoint(tmp_path / "c.pt", tiny())
    assert seen["map_location"] == torch.device("cpu") and seen["weights_only"] is True
    again = MetaLearner(tiny())
    again.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(again.parameters(), learner.parameters(), strict=True))


def test_cuda_without_cuda_is_a_clear_error(tmp_path, capsys):
    if CUDA:
        pytest.skip("this machine has CUDA")
    rc = main(["maml-rl", "--preset", "smoke", "--device", "cuda", "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "--device='cuda' needs CUDA" in err and not (tmp_path / "run").exists()


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_run_matches_cpu_and_resumes_on_cpu(tmp_path):
    cpu, gpu = MetaLearner(tiny(dtype="float64")), MetaLearner(tiny(dtype="float64", device="cuda"))
    data = cpu.sample_iteration()
    g_cpu = cpu.meta_gradient(data).grads
    g_gpu = gpu.meta_gradient(gpu.sample_iteration()).grads
    assert all(g.device.type == "cuda" for g in g_gpu)
    assert all(torch.isfinite(g).all() for g in g_gpu) and len(g_gpu) == len(g_cpu)
    gpu.step()
    save_checkpoint(tmp_path / "c.pt", gpu, {"train": [], "eval": []})
    state = load_checkpoint(tmp_path / "c.pt", tiny(dtype="float64"))
    resumed = MetaLearner(tiny(dtype="float64"))
    resumed.load_state_dict(state)
    assert all(p.device.type == "cpu" for p in resumed.parameters())
