"""Checkpoints: exact resume and atomic writes (SIGKILL at random times, a writer failing mid-write)."""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from metaopt.artifacts import remove_stale_temporaries
from metaopt.experiments import maml_rl
from metaopt.experiments.maml_rl import CHECKPOINT, atomic_write, load_checkpoint, save_checkpoint, train
from metaopt.maml import MAMLConfig, MetaLearner

ROOT = Path(__file__).resolve().parents[1]



def quiet(_text):
    pass


def cfg(**kw):
    base = dict(tasks=3, trajectories=3, iterations=6, popart=True, learn=("beta", "lr"), eval_tasks=2,
                eval_every=2, scaled=True)
    return MAMLConfig(**(base | kw))


def run(c, out, **kw):
    return train(c, out, checkpoint_every=2, progress=False, plot=False, log=quiet, **kw)


def assert_same_tree(a, b, path="state"):
    """Equal nested containers; tensors bit-identical (torch.equal), same dtype."""
    assert type(a) is type(b), path
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same_tree(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tree(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def without_time(rows):
    return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]


def assert_identical_runs(r1, r2):
    s1, s2 = r1.learner.state_dict(), r2.learner.state_dict()
    # policy + value net, meta-parameters, outer Adam state (moments and step), generator, iteration
    assert_same_tree(s1, s2)
    for p, q in zip(r1.learner.parameters(), r2.learner.parameters(), strict=True):
        assert torch.equal(p, q)
    assert torch.equal(r1.learner.generator.get_state(), r2.learner.generator.get_state())
    assert without_time(r1.train) == without_time(r2.train)
    assert r1.eval == r2.eval
    c1 = torch.load(r1.out / CHECKPOINT, weights_only=True)
    c2 = torch.load(r2.out / CHECKPOINT, weights_only=True)
    for c in (c1, c2):
        c["history"]["train"] = without_time(c["history"]["train"])
        c.pop("sha256")  # a digest of the contents, wall times included
    assert_same_tree(c1, c2, "checkpoint")


@pytest.mark.parametrize("stop", [3, 4])
@pytest.mark.parametrize("variant", [{}, {"inner_steps": 2, "inner_optimizer": "adam", "dtype": "float64"}])
def test_stop_and_resume_is_bit_identical(tmp_path, stop, variant):
    c = cfg(**variant)
    full = run(c, tmp_path / "full")
    assert full.status == "completed" and full.learner.iteration == 6
    part = run(c, tmp_path / "part", stop_after=stop)
    assert part.status == "stopped" and part.learner.iteration == stop
    assert load_checkpoint(tmp_path / "part" / CHECKPOINT, c)["iteration"] == stop
    resumed = run(c, tmp_path / "part", resume=True)
    assert resumed.status == "completed"
    assert_identical_runs(full, resumed)
    # metrics.csv is identical too, except the wall-clock column
    def rows(d):
        lines = (d / "metrics.csv").read_text().splitlines()
        col = lines[0].split(",").index("time_s")
        return [[x for i, x in enumerate(line.split(",")) if i != col] for line in lines]

    assert rows(tmp_path / "full") == rows(tmp_path / "part")


def test_resume_after_a_crash_between_checkpoints(tmp_path, monkeypatch):
    c = cfg()
    full = run(c, tmp_path / "full")
    original = MetaLearner.step

    def crash_at_5(self, *a, **k):
        if self.iteration == 4:  # computing iteration 5; the last checkpoint is at 4
            raise KeyboardInterrupt
        return original(self, *a, **k)

    monkeypatch.setattr(MetaLearner, "step", crash_at_5)
    with pytest.raises(KeyboardInterrupt):
        run(c, tmp_path / "crash")
    monkeypatch.setattr(MetaLearner, "step", original)
    assert load_checkpoint(tmp_path / "crash" / CHECKPOINT, c)["iteration"] == 4
    assert_identical_runs(full, run(c, tmp_path / "crash", resume=True))


def test_resume_can_extend_a_finished_run(tmp_path):
    full = run(cfg(iterations=6), tmp_path / "full")
    run(cfg(iterations=4), tmp_path / "ext")
    extended = run(cfg(iterations=6), tmp_path / "ext", resume=True)
    assert_identical_runs(full, extended)


# ------------------------------------------------------------------------------------------ atomic
WRITER = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from pathlib import Path
    from metaopt.experiments.maml_rl import save_checkpoint
    from metaopt.maml import MAMLConfig, MetaLearner
    learner = MetaLearner(MAMLConfig(tasks=1, trajectories=1, iterations=10**9, hidden=384, dtype="float64"))
    path = Path(sys.argv[1])
    i = 0
    while True:
        i += 1
        learner.iteration = i
        with torch.no_grad():
            for p in learner.model.parameters():
                p.fill_(i)
        save_checkpoint(path, learner, {"train": [{"iteration": i}], "eval": []})
        if i == 1:
            print("ready", flush=True)
""")


def test_checkpoint_always_loads_after_sigkill(tmp_path):
    """Kill a process that rewrites a ~1.2 MB checkpoint in a loop at random times: the file is always whole.

    Most kills land mid-write (the process spends its time writing), leaving a temporary next to it.
    """
    ckpt = tmp_path / CHECKPOINT
    c = MAMLConfig(tasks=1, trajectories=1, iterations=10**9, hidden=384, dtype="float64")
    rng = random.Random(0)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    seen = []
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(ckpt)], stdout=subprocess.PIPE, env=env)
        try:
            assert proc.stdout.readline().strip() == b"ready"
            time.sleep(rng.uniform(0.05, 0.6))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        state = load_checkpoint(ckpt, c)  # never a partial file
        i = state["iteration"]
        assert i >= 1 and state["history"]["train"] == [{"iteration": i}]
        assert all(bool((t == i).all()) for t in state["model"].values())  # contents of one single write
        seen.append(i)
    assert max(seen) > 1
    # a kill mid-write may leave a temporary: the next run removes it
    (tmp_path / f".{CHECKPOINT}.metaopt-tmp-abcd_123").write_bytes(b"partial")
    remove_stale_temporaries(tmp_path, maml_rl.ARTIFACTS)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT]


def test_failing_writer_keeps_the_old_checkpoint_and_leaves_no_temporaries(tmp_path, monkeypatch):
    c = cfg(iterations=2)
    run(c, tmp_path)
    before = (tmp_path / CHECKPOINT).read_bytes()
    files = sorted(p.name for p in tmp_path.iterdir())
    learner = MetaLearner(c)
    learner.step()

    real_save = torch.save

    def half_then_fail(obj, f):
        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(maml_rl.torch, "save", half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path / CHECKPOINT, learner, {"train": [], "eval": []})
    assert (tmp_path / CHECKPOINT).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == files
    assert load_checkpoint(tmp_path / CHECKPOINT, c)["iteration"] == 2


def test_failing_checkpoint_write_during_training_keeps_the_last_one(tmp_path, monkeypatch):
    c = cfg(iterations=6)
    real = maml_rl.save_checkpoint
    calls = {"n": 0}

    def fail_second(path, learner, history):
        calls["n"] += 1
        if calls["n"] == 2:
            atomic_write(path, lambda f: (f.write(b"half"), (_ for _ in ()).throw(OSError("disk full"))))
        real(path, learner, history)

    monkeypatch.setattr(maml_rl, "save_checkpoint", fail_second)
    with pytest.raises(OSError, match="disk full"):
        run(c, tmp_path)
    assert load_checkpoint(tmp_path / CHECKPOINT, c)["iteration"] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_artifacts_get_the_usual_file_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "x.json", lambda f: f.write(b"{}"))
    finally:
        os.umask(old)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o644
