"""Distributed meta-training: 2 gloo processes reproduce a 1-process run (gradients, metrics, artifacts)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from metaopt import distributed
from metaopt.cli import main
from metaopt.distributed import Communicator, shard_slice, spawn
from metaopt.experiments import maml_rl
from metaopt.experiments.maml_rl import _distributed_step, load_checkpoint, train
from metaopt.maml import MAMLConfig, MetaLearner
from metaopt.maml import learner as maml_mod
from metaopt.verify import relative_error

# 5 tasks on 2 ranks: uneven shards 0:3 and 3:5.
CFG = dict(tasks=5, trajectories=3, iterations=3, popart=True, learn=("beta", "lr"), dtype="float64",
           eval_tasks=2, eval_every=2)
ENGINES = ("func", "higher")


# ----------------------------------------------------------------------------------------- sharding
def test_shards_cover_every_task_once():
    for n in range(1, 12):
        for world in range(1, n + 1):
            shards = [shard_slice(n, world, r) for r in range(world)]
            assert [i for s in shards for i in range(s.start, s.stop)] == list(range(n))
            sizes = [s.stop - s.start for s in shards]
            assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    assert shard_slice(5, 2, 0) == slice(0, 3) and shard_slice(5, 2, 1) == slice(3, 5)


@pytest.mark.parametrize("args,match", [
    ((4, 5, 0), r"world_size must be <= num_tasks=4 .* got 5"),
    ((4, 2, 2), r"rank \(world_size=2\) must be an int in \[0, 1\], got 2"),
    ((0, 1, 0), r"num_tasks must be an int >= 1, got 0"),
])
def test_shard_slice_rejects_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        shard_slice(*args)


def test_backend_is_gloo_on_cpu():
    assert distributed.select_backend("cpu") == "gloo"
    assert distributed.select_backend(None) == "gloo"


def test_init_needs_torchrun(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    assert not distributed.started_by_torchrun()
    with pytest.raises(RuntimeError, match=r"must be started by torchrun .* --nproc"):
        distributed.init_from_env()


def test_distributed_is_a_leaf():
    # Infrastructure imports nothing of the job it serves (no cycle with metaopt.maml / metaopt.experiments).
    import subprocess
    import sys

    code = ("import sys, metaopt.distributed; "
            "print(sorted(m for m in sys.modules if m.startswith(('metaopt.maml', 'metaopt.experiments'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------------------ one spawn, many checks
def _grads(learner: MetaLearner, engine: str, task_slice=None, comm: Communicator | None = None):
    learner.optimizer.zero_grad(set_to_none=True)
    data = learner.sample_iteration()
    loss, _ = learner.meta_loss(data, engine=engine, task_slice=task_slice)
    loss.backward()
    grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in learner.parameters()]
    if comm is not None:
        comm.all_reduce_sum(grads)
    return grads


class _PoisonedSim(maml_mod.BatchedTabularMDP):
    """The training simulator with NaN rewards for one task in one iteration (pre-adaptation rollout)."""

    plan = {"iteration": 0, "task": 0, "shard": 0, "count": 0}

    def __init__(self, tasks, *args, **kwargs):
        super().__init__(tasks, *args, **kwargs)
        self._poison = None
        plan = type(self).plan
        if tasks.num_tasks == plan["shard"]:
            plan["count"] += 1
            if plan["count"] == plan["iteration"]:
                self._poison = plan["task"]

    def _poisoned(self, traj):
        if self._poison is not None:
            traj.rewards[:, self._poison] = float("nan")
            self._poison = None
        return traj

    def rollout(self, policy_fn, noise):
        return self._poisoned(super().rollout(policy_fn, noise))

    def rollout_table(self, logits, noise):
        return self._poisoned(super().rollout_table(logits, noise))


def _quiet(_text):
    pass


def _scenario_worker(comm: Communicator, out_dir: str) -> dict:
    """Rank r of the checks in test_two_processes_match_one_process (returns rank 0's findings)."""
    out = Path(out_dir)
    res: dict = {}
    # 1. meta-gradients of one iteration, per engine
    for engine in ENGINES:
        learner = MetaLearner(MAMLConfig(**CFG, engine=engine))
        res[f"grads_{engine}"] = _grads(learner, engine, comm.task_slice(5), comm)
    # 2. three full steps (sharded losses, all-reduced gradients, all-gathered metrics)
    learner = MetaLearner(MAMLConfig(**CFG))
    res["rows"] = [_distributed_step(learner, comm) for _ in range(3)]
    res["params"] = [p.detach().clone() for p in learner.parameters()]
    # 3. train 2 iterations, then resume to 4 (rank 0 reads the checkpoint and broadcasts it)
    kw = dict(checkpoint_every=1, progress=False, plot=False, log=_quiet, comm=comm)
    first = train(MAMLConfig(**CFG | {"iterations": 2}), out / "resume", **kw)
    second = train(MAMLConfig(**CFG | {"iterations": 4}), out / "resume", resume=True, **kw)
    res["resume"] = (first.status, second.status, [p.detach().clone() for p in second.learner.parameters()],
                     second.train)
    # 4. a NaN in task 4 (rank 1's shard 3:5) at iteration 2: every rank stops with the same error, no hang
    _PoisonedSim.plan = {"iteration": 2, "task": 1, "shard": 2, "count": 0}
    if comm.rank == 1:
        maml_mod.BatchedTabularMDP = _PoisonedSim
    try:
        result = train(MAMLConfig(**CFG | {"iterations": 4}), out / "nan", **kw)
    finally:
        maml_mod.BatchedTabularMDP = _PoisonedSim.__mro__[1]
    res["nan_status"], res["nan_error"] = result.status, result.error
    statuses: list = [None] * comm.world_size
    torch.distributed.all_gather_object(statuses, result.status)
    res["all_statuses"] = statuses
    return res


def test_two_processes_match_one_process(tmp_path):
    got = spawn(_scenario_worker, 2, str(tmp_path))

    # the meta-gradient of one iteration (float64), per engine
    for engine in ENGINES:
        ref = _grads(MetaLearner(MAMLConfig(**CFG, engine=engine)), engine)
        assert all(float(g.abs().sum()) > 0 for g in ref)
        for a, b in zip(got[f"grads_{engine}"], ref, strict=True):
            assert relative_error(a, b) <= 1e-6, engine
    # three steps: parameters and the logged metrics (all-task averages)
    learner = MetaLearner(MAMLConfig(**CFG))
    rows = [learner.step() for _ in range(3)]
    for a, b in zip(got["params"], learner.parameters(), strict=True):
        assert relative_error(a, b.detach()) <= 1e-6
    for r2, r1 in zip(got["rows"], rows, strict=True):
        assert r2.keys() == r1.keys()
        for k in r1:
            if k != "time_s":
                assert r2[k] == pytest.approx(r1[k], rel=1e-9, abs=1e-12), k

    # distributed train + resume == one uninterrupted process; its checkpoint resumes on one process too
    first, second, params, train_rows = got["resume"]
    assert (first, second) == ("completed", "completed")
    ref = train(MAMLConfig(**CFG | {"iterations": 4}), tmp_path / "ref", progress=False, plot=False, log=_quiet)
    for a, b in zip(params, ref.learner.parameters(), strict=True):
        assert relative_error(a, b.detach()) <= 1e-6
    assert [r["iteration"] for r in train_rows] == [1, 2, 3, 4]
    for r2, r1 in zip(train_rows, ref.train, strict=True):
        assert r2["train_pre_return"] == pytest.approx(r1["train_pre_return"], rel=1e-9)
    more = train(MAMLConfig(**CFG | {"iterations": 5}), tmp_path / "resume", resume=True, progress=False,
                 plot=False, log=_quiet)
    assert more.status == "completed" and more.learner.iteration == 5

    # the NaN scenario: named iteration and (global) task index, every rank stopped cleanly
    assert got["all_statuses"] == ["non-finite", "non-finite"]
    assert re.search(r"iteration 2 for task\(s\) \[4\]", got["nan_error"]), got["nan_error"]
    assert "last good checkpoint" in got["nan_error"] and "(iteration 1)" in got["nan_error"]
    state = load_checkpoint(tmp_path / "nan" / "checkpoint.pt", MAMLConfig(**CFG | {"iterations": 4}))
    assert state["iteration"] == 1


def _files(d):
    return sorted(p.name for p in d.iterdir())


def test_cli_two_processes_write_once_and_match_one_process(tmp_path, capfd):
    one, two = tmp_path / "one", tmp_path / "two"
    base = ["maml-rl", "--preset", "smoke", "--no-progress", "--no-plot", "--checkpoint-every", "2"]
    assert main([*base, "--nproc", "2", "--out", str(two)]) == 0
    out = capfd.readouterr().out
    assert out.count("status") == 1 and out.count("artifacts in") == 1  # rank 0 alone prints
    assert main([*base, "--out", str(one)]) == 0
    capfd.readouterr()
    expected = ["checkpoint.pt", "config.json", "eval.csv", "metrics.csv", "metrics.json"]
    assert _files(one) == _files(two) == expected  # written once: no temporaries, no per-rank copies
    assert len((two / "metrics.csv").read_text().splitlines()) == 1 + 3

    cfg = MAMLConfig(**maml_rl.PRESETS["smoke"])
    s1, s2 = load_checkpoint(one / "checkpoint.pt", cfg), load_checkpoint(two / "checkpoint.pt", cfg)
    assert s1["iteration"] == s2["iteration"] == 3
    for part in ("model", "meta"):
        for k in s1[part]:
            assert relative_error(s2[part][k], s1[part][k]) <= 1e-6, k
    assert torch.equal(s1["generator"], s2["generator"])
    assert [r["iteration"] for r in s2["history"]["train"]] == [1, 2, 3]
    for r1, r2 in zip(s1["history"]["train"], s2["history"]["train"], strict=True):
        assert r2["train_pre_return"] == pytest.approx(r1["train_pre_return"], rel=1e-6)
    assert [r["iteration"] for r in s2["history"]["eval"]] == [2, 3]
