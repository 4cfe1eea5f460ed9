"""Failures that explain themselves: a catalogue of bad inputs (library and CLI) and non-finite runs.

Every bad input must raise (library) or print (CLI, exit code 2) ONE message that names the argument, the
value it got and what was expected, and must leave no partial output. A NaN during training stops the
run cleanly (exit code 3) with a message naming the iteration and the task, keeping the last good
checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
import torch

from metaopt import popart as pa
from metaopt.cli import main
from metaopt.engines import adapt
from metaopt.envs import BatchedTabularMDP, sample_tasks
from metaopt.experiments import maml_rl
from metaopt.experiments.maml_rl import CHECKPOINT, load_checkpoint, save_checkpoint, train
from metaopt.maml import MAMLConfig, MetaLearner, NonFiniteError
from metaopt.maml import learner as maml
from metaopt.meta_params import MetaParameters

F64 = torch.float64



def small(**kw):
    return MAMLConfig(**(dict(tasks=3, trajectories=2, iterations=2, eval_tasks=2) | kw))


def state64(k=1):
    return pa.init(k, dtype=F64)


def ones(*shape, dtype=F64):
    return torch.ones(*shape, dtype=dtype)


def write_checkpoint(path: Path, cfg: MAMLConfig) -> None:
    save_checkpoint(path, MetaLearner(cfg), {"train": [], "eval": []})


def missing(module):
    """Make ``import module`` fail (monkeypatch target for sys.modules)."""
    def setup(mp):
        mp.setitem(sys.modules, module, None)
    return setup


# ------------------------------------------------------------------------------------- library API
# (id, call(tmp_path), exception type, fragments that must all appear: argument, value, expectation)
LIBRARY = [
    ("art-beta-above-1", lambda t: pa.art(state64(), ones(3), 1.5), ValueError,
     ["beta", "1.5", "open interval (0, 1)"]),
    ("art-beta-zero", lambda t: pa.art(state64(), ones(3), 0.0), ValueError, ["beta", "0.0", "(0, 1)"]),
    ("art-beta-tensor-out-of-range", lambda t: pa.art(state64(2), ones(4, 2), torch.tensor([0.5, 2.0], dtype=F64)),
     ValueError, ["beta", "2.0", "(0, 1)"]),
    ("art-nan-target", lambda t: pa.art(state64(), torch.tensor([1.0, float("nan")], dtype=F64), 0.1), ValueError,
     ["targets", "nan", "index [1]", "finite"]),
    ("art-dtype-mismatch", lambda t: pa.art(state64(), ones(3, dtype=torch.float32), 0.1), TypeError,
     ["targets", "torch.float32", "torch.float64", "one dtype"]),
    ("art-integer-targets", lambda t: pa.art(state64(), ones(3, dtype=torch.long), 0.1), TypeError,
     ["targets", "torch.int64", "floating-point"]),
    ("art-task-id-out-of-range", lambda t: pa.art(state64(3), ones(2), 0.1, task_ids=torch.tensor([0, 5])),
     ValueError, ["task_ids", "5", "[0, 3)"]),
    ("art-task-ids-shape", lambda t: pa.art(state64(3), ones(2), 0.1, task_ids=torch.tensor([0, 1, 2])),
     ValueError, ["task_ids", "(3,)", "shape (2,)"]),
    ("art-targets-last-dim", lambda t: pa.art(state64(3), ones(4, 2), 0.1), ValueError,
     ["targets", "(4, 2)", "num_outputs=3"]),
    ("pop-weight-1d", lambda t: pa.pop(ones(4), ones(1), state64(), state64()), ValueError,
     ["weight", "[4]", "[rows, in_features]"]),
    ("pop-bias-shape", lambda t: pa.pop(ones(1, 4), ones(2), state64(), state64()), ValueError,
     ["bias", "(2,)", "[rows]=[1]"]),
    ("popart-init-zero-outputs", lambda t: pa.init(0), ValueError, ["num_outputs", "0", "positive int"]),
    ("meta-lr-zero", lambda t: MetaParameters(lr=0.0), ValueError, ["lr", "0.0", "positive"]),
    ("meta-lr-negative", lambda t: MetaParameters(lr=-1.0), ValueError, ["lr", "-1.0", "positive"]),
    ("meta-learn-unknown", lambda t: MetaParameters(learn=("momentum",)), ValueError,
     ["learn", "momentum", "subset of ('lr', 'beta')"]),
    ("sample-tasks-zero", lambda t: sample_tasks(0), ValueError, ["num_tasks", "0", "positive int"]),
    ("adapt-unknown-engine", lambda t: (lambda lr: adapt(lr.model, lr.inner, {}, lr.meta, engine="jax"))(
        MetaLearner(small())), ValueError, ["engine", "'jax'", "('func', 'higher', 'torchopt')"]),
    ("config-beta-one", lambda t: MAMLConfig(beta=1.0).validate(), ValueError, ["beta", "1.0", "(0, 1)"]),
    ("config-outer-lr-zero", lambda t: MAMLConfig(outer_lr=0.0).validate(), ValueError,
     ["outer_lr", "0.0", "finite number > 0"]),
    ("config-inner-lr-nan", lambda t: MAMLConfig(inner_lr=float("nan")).validate(), ValueError,
     ["inner_lr", "nan", "finite number > 0"]),
    ("config-negative-tasks", lambda t: MAMLConfig(tasks=-3).validate(), ValueError, ["tasks", "-3", "int >= 1"]),
    ("config-unknown-engine", lambda t: MAMLConfig(engine="jax").validate(), ValueError,
     ["engine", "'jax'", "one of ('func', 'higher', 'torchopt')"]),
    ("config-learn-beta-without-popart", lambda t: MAMLConfig(learn=("beta",)).validate(), ValueError,
     ["learn", "'beta'", "popart", "expected popart on"]),
    ("config-dtype", lambda t: MAMLConfig(dtype="float16").validate(), ValueError,
     ["dtype", "'float16'", "one of ('float32', 'float64')"]),
    ("config-truncate", lambda t: MAMLConfig(truncate=3).validate(), ValueError,
     ["truncate", "3", "inner_steps=1", "[0, 1]"]),
    ("config-negative-seed", lambda t: MAMLConfig(seed=-1).validate(), ValueError, ["seed", "-1", "int in [0, "]),
    ("metalearner-task-slice-out-of-range", lambda t: (lambda lr: lr.meta_loss(lr.sample_iteration(),
     task_slice=slice(2, 7)))(MetaLearner(small())), ValueError,
     ["task_slice", "slice(2, 7", "0 <= start < stop <= 3"]),
    ("metalearner-data-other-shape", lambda t: MetaLearner(small()).meta_loss(
        MetaLearner(small(num_states=4)).sample_iteration()), ValueError,
     ["data.tasks", "num_states=4", "num_states=10"]),
    ("metalearner-data-other-dtype", lambda t: MetaLearner(small(dtype="float64")).meta_loss(
        MetaLearner(small()).sample_iteration()), TypeError, ["noise.action_u", "torch.float32", "torch.float64"]),
    ("train-checkpoint-every-zero", lambda t: train(small(), t / "out", checkpoint_every=0), ValueError,
     ["checkpoint_every", "0", "int >= 1"]),
    ("train-stop-after-zero", lambda t: train(small(), t / "out", stop_after=0), ValueError,
     ["stop_after", "0", "int >= 1"]),
    ("load-checkpoint-unreadable", lambda t: (t.joinpath("c.pt").write_bytes(b"garbage"),
     load_checkpoint(t / "c.pt", small())), ValueError, ["checkpoint", "c.pt", "unreadable", "expected a file"]),
    ("load-checkpoint-mismatched", lambda t: (write_checkpoint(t / "c.pt", small(tasks=5)),
     load_checkpoint(t / "c.pt", small())), ValueError, ["different configuration", "tasks: checkpoint 5 vs now 3"]),
]


@pytest.mark.parametrize("call,exc,fragments", [c[1:] for c in LIBRARY], ids=[c[0] for c in LIBRARY])
def test_library_rejects_bad_input(tmp_path, call, exc, fragments):
    with pytest.raises(exc) as info:
        call(tmp_path)
    msg = str(info.value)
    for f in fragments:
        assert f in msg, (f, msg)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("module", ["higher", "torchopt"])
def test_missing_optional_dependency_fails_at_construction(monkeypatch, tmp_path, module):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError) as info:
        train(small(engine=module), tmp_path / "out")
    msg = str(info.value)
    assert f"engine={module!r}" in msg and f"pip install 'metaopt-torch[{module}]'" in msg
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ CLI
BASE = ["maml-rl", "--preset", "smoke", "--no-progress", "--no-plot"]


def _file_out(t, mp):
    (t / "afile").write_text("x")
    return t / "afile"


def _under_file(t, mp):
    (t / "afile").write_text("x")
    return t / "afile" / "run"


def _unwritable(t, mp):
    locked = t / "locked"
    locked.mkdir()
    locked.chmod(0o500)  # enough for non-root users; root ignores it, hence also:
    real = os.access
    mp.setattr(os, "access", lambda p, m, *a, **k: False if Path(p) == locked and m & os.W_OK
               else real(p, m, *a, **k))
    return locked / "run"


def _existing(content):
    def setup(t, mp):
        (t / "run").mkdir()
        if content is not None:
            content(t / "run" / CHECKPOINT)
        return t / "run"
    return setup


def _half_checkpoint(path):
    write_checkpoint(path, MAMLConfig(**maml_rl.PRESETS["smoke"]))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _fresh(t, mp):
    return t / "run"


def _with(setup_dep, out=_fresh):
    def setup(t, mp):
        setup_dep(mp)
        return out(t, mp)
    return setup


# (id, extra argv, setup(tmp_path, monkeypatch) -> out dir, fragments of the single error line)
CLI = [
    ("negative-tasks", ["--tasks", "-2"], _fresh, ["--tasks", "-2", "int >= 1"]),
    ("non-int-tasks", ["--tasks", "abc"], _fresh, ["--tasks", "'abc'", "invalid int value"]),
    ("zero-trajectories", ["--trajectories", "0"], _fresh, ["--trajectories", "0", "int >= 1"]),
    ("zero-iterations", ["--iterations", "0"], _fresh, ["--iterations", "0", "int >= 1"]),
    ("beta-above-1", ["--beta", "1.5"], _fresh, ["--beta", "1.5", "(0, 1)"]),
    ("beta-zero", ["--beta", "0"], _fresh, ["--beta", "0.0", "(0, 1)"]),
    ("inner-lr-zero", ["--inner-lr", "0"], _fresh, ["--inner-lr", "0.0", "finite number > 0"]),
    ("outer-lr-negative", ["--outer-lr", "-0.001"], _fresh, ["--outer-lr", "-0.001", "finite number > 0"]),
    ("inner-lr-nan", ["--inner-lr", "nan"], _fresh, ["--inner-lr", "nan", "finite number > 0"]),
    ("bad-learn", ["--learn", "beta,foo"], _fresh, ["--learn", "'beta,foo'", "comma list of lr,beta"]),
    ("learn-beta-without-popart", ["--learn", "beta", "--no-popart"], _fresh,
     ["--learn", "'beta'", "--popart is off", "expected --popart on"]),
    ("unknown-engine", ["--engine", "jax"], _fresh, ["--engine", "'jax'", "choose from"]),
    ("higher-missing", ["--engine", "higher"], _with(missing("higher")), ["engine='higher'", "pip install"]),
    ("torchopt-missing", ["--engine", "torchopt"], _with(missing("torchopt")), ["engine='torchopt'", "pip install"]),
    ("tensorboard-missing", ["--tensorboard"], _with(missing("torch.utils.tensorboard")),
     ["--tensorboard", "'tensorboard' package", "pip install tensorboard"]),
    ("wandb-missing", ["--wandb", "proj"], _with(missing("wandb")), ["--wandb", "pip install 'metaopt-torch[wandb]'"]),
    ("bad-dtype", ["--dtype", "float16"], _fresh, ["--dtype", "'float16'", "choose from"]),
    ("truncate-above-steps", ["--inner-steps", "1", "--truncate", "3"], _fresh,
     ["--truncate", "3", "--inner-steps=1", "[0, 1]"]),
    ("momentum-one", ["--inner-momentum", "1"], _fresh, ["--inner-momentum", "1.0", "[0, 1)"]),
    ("scale-range-reversed", ["--scaled", "--scale-lo", "3", "--scale-hi", "1"], _fresh,
     ["--scale-lo", "--scale-hi", "3.0", "1.0", "<="]),
    ("negative-eval-every", ["--eval-every", "-1"], _fresh, ["--eval-every", "-1", "int >= 0"]),
    ("negative-seed", ["--seed", "-1"], _fresh, ["--seed", "-1", "int in [0, "]),
    ("zero-checkpoint-every", ["--checkpoint-every", "0"], _fresh, ["--checkpoint-every", "0", "int >= 1"]),
    ("zero-nproc", ["--nproc", "0"], _fresh, ["--nproc", "0", "int >= 1"]),
    ("more-processes-than-tasks", ["--nproc", "5"], _fresh, ["--nproc", "5", "<= --tasks (4)"]),
    ("out-is-a-file", [], _file_out, ["--out", "afile", "must be a directory", "is a file"]),
    ("out-under-a-file", [], _under_file, ["--out", "afile/run", "is a file"]),
    ("out-not-writable", [], _unwritable, ["--out", "locked/run", "must be writable", "not writable"]),
    ("resume-without-checkpoint", ["--resume"], _existing(None), ["--resume", "checkpoint.pt", "there is none"]),
    ("resume-unreadable-checkpoint", ["--resume"], _existing(lambda p: p.write_bytes(b"\x00garbage")),
     ["checkpoint", "checkpoint.pt", "unreadable"]),
    ("resume-truncated-checkpoint", ["--resume"], _existing(_half_checkpoint), ["checkpoint.pt", "unreadable"]),
    ("resume-foreign-checkpoint", ["--resume"], _existing(lambda p: torch.save({"weights": ones(2)}, p)),
     ["checkpoint.pt", "not a metaopt maml-rl checkpoint", "expected format"]),
    ("resume-mismatched-checkpoint", ["--resume", "--tasks", "3"],
     _existing(lambda p: write_checkpoint(p, MAMLConfig(**maml_rl.PRESETS["smoke"]))),
     ["different configuration", "tasks: checkpoint 4 vs now 3"]),
]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>") for p in root.rglob("*")}


@pytest.mark.parametrize("argv,setup,fragments", [c[1:] for c in CLI], ids=[c[0] for c in CLI])
def test_cli_rejects_bad_input_with_one_message_and_no_output(tmp_path, monkeypatch, capsys, argv, setup, fragments):
    out = setup(tmp_path, monkeypatch)
    before = _snapshot(tmp_path)
    try:
        rc = main([*BASE, *argv, "--out", str(out)])
    except SystemExit as exit_:  # argparse
        rc = exit_.code
    captured = capsys.readouterr()
    assert rc == 2
    errors = [line for line in captured.err.splitlines() if "error" in line]
    assert len(errors) == 1 and "Traceback" not in captured.err, captured.err
    for f in fragments:
        assert f in errors[0], (f, errors[0])
    assert captured.out == ""
    assert _snapshot(tmp_path) == before  # nothing created or changed (in particular no --out dir)


def test_catalogue_is_large():
    assert len(LIBRARY) + len(CLI) >= 40 and len({c[0] for c in LIBRARY + CLI}) == len(LIBRARY) + len(CLI)


# -------------------------------------------------------------------------------------- non-finite
class Poison:
    """Replace the training simulator so that one task's rewards are NaN in one iteration."""

    def __init__(self, monkeypatch, *, iteration: int, task: int, num_tasks: int, rollout: str = "pre"):
        self.count = 0
        outer = self
        base = maml.BatchedTabularMDP

        class Poisoned(base):
            def __init__(self, tasks, *a, **k):
                super().__init__(tasks, *a, **k)
                self.bad, self.calls = False, 0
                if tasks.num_tasks == num_tasks:  # training (evaluation uses another number of tasks)
                    outer.count += 1
                    self.bad = outer.count == iteration

            def _poison(self, traj):
                self.calls += 1
                if self.bad and self.calls == (1 if rollout == "pre" else 2):
                    traj.rewards[:, task] = float("nan")
                return traj

            def rollout(self, policy_fn, noise):
                return self._poison(base.rollout(self, policy_fn, noise))

            def rollout_table(self, logits, noise):
                return self._poison(base.rollout_table(self, logits, noise))

        monkeypatch.setattr(maml, "BatchedTabularMDP", Poisoned)


@pytest.mark.parametrize("engine", ["func", "higher"])
def test_nan_reward_stops_the_cli_naming_iteration_and_task(tmp_path, monkeypatch, capsys, engine):
    Poison(monkeypatch, iteration=3, task=1, num_tasks=4)
    out = tmp_path / "run"
    rc = main([*BASE, "--engine", engine, "--iterations", "5", "--checkpoint-every", "2", "--eval-tasks", "3",
               "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 3
    errors = [line for line in captured.err.splitlines() if "error" in line]
    assert len(errors) == 1, captured.err
    assert re.search(r"iteration 3 for task\(s\) \[1\]", errors[0]), errors[0]
    assert "pre-adaptation rollout" in errors[0] and "last good checkpoint" in errors[0]
    assert "(iteration 2)" in errors[0]
    cfg = MAMLConfig(**json.loads((out / "config.json").read_text()))
    state = load_checkpoint(out / CHECKPOINT, cfg)  # the checkpoint from before the failure loads
    assert state["iteration"] == 2 and len(state["history"]["train"]) == 2
    summary = json.loads((out / "metrics.json").read_text())["summary"]
    assert summary["status"] == "non-finite" and summary["iterations"] == 2
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    # and the run resumes from there once the cause is gone
    monkeypatch.setattr(maml, "BatchedTabularMDP", BatchedTabularMDP)
    assert main([*BASE, "--engine", engine, "--iterations", "5", "--checkpoint-every", "2", "--eval-tasks", "3",
                 "--resume", "--out", str(out)]) == 0


def test_nan_in_post_rollout_is_reported_by_task(tmp_path, monkeypatch):
    Poison(monkeypatch, iteration=2, task=2, num_tasks=3, rollout="post")
    res = train(small(iterations=4), tmp_path, checkpoint_every=1, progress=False, plot=False, log=lambda s: None)
    assert res.status == "non-finite" and res.learner.iteration == 1
    assert "iteration 2 for task(s) [2]" in res.error and "post-adaptation" in res.error
    assert load_checkpoint(tmp_path / CHECKPOINT, small(iterations=4))["iteration"] == 1


def test_nan_before_the_first_checkpoint_says_so(tmp_path, monkeypatch):
    Poison(monkeypatch, iteration=1, task=0, num_tasks=3)
    res = train(small(iterations=4), tmp_path, checkpoint_every=2, progress=False, plot=False, log=lambda s: None)
    assert res.status == "non-finite" and "no checkpoint was written" in res.error
    assert not (tmp_path / CHECKPOINT).exists()


def test_nan_meta_gradient_names_iteration_parameters_and_task(monkeypatch):
    learner = MetaLearner(small(engine="higher", tasks=4, popart=True, learn=("beta", "lr")))
    real = maml.a2c_terms
    calls = {"n": 0}

    def poisoned(model, params, batch, state, cfg, **kw):
        policy, value = real(model, params, batch, state, cfg, **kw)
        calls["n"] += 1
        if learner.iteration == 2 and (calls["n"] - 1) % 4 == 2:  # outer loss of task 2 in iteration 3
            value = value + torch.sqrt(0.0 * params["value.bias"].sum())  # value 0, gradient NaN
        return policy, value

    monkeypatch.setattr(maml, "a2c_terms", poisoned)
    learner.step()
    learner.step()
    before = [p.detach().clone() for p in learner.parameters()]
    calls["n"] = 0
    with pytest.raises(NonFiniteError) as info:
        learner.step()
    err = info.value
    assert err.iteration == 3 and err.tasks == [2]
    assert "non-finite meta-gradient at iteration 3" in str(err) and "model.value.bias" in str(err)
    assert "task(s) [2]" in str(err)
    assert learner.iteration == 2
    assert all(torch.equal(a, b) for a, b in zip(before, learner.parameters(), strict=True))
