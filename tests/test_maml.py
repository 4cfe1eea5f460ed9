"""The MAML-A2C job: engine equality, finite differences, evaluation isolation, CLI artifacts."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from metaopt.cli import main
from metaopt.maml import MAMLConfig, MetaLearner
from metaopt.rl import A2CConfig, make_inner_loop
from metaopt.verify import check_gradients, relative_error


def tiny(**kw):
    base = dict(tasks=3, trajectories=4, iterations=2, popart=True, learn=("beta", "lr"), dtype="float64",
                eval_tasks=3, eval_every=1)
    return MAMLConfig(**(base | kw))


def first_meta_gradient(cfg):
    learner = MetaLearner(cfg)
    loss, _ = learner.meta_loss(learner.sample_iteration())
    names = [n for n, _ in learner._named()]
    return dict(zip(names, torch.autograd.grad(loss, learner.parameters()), strict=True))


@pytest.mark.parametrize("steps,popart", [(1, True), (2, True), (1, False)])
def test_job_meta_gradient_same_on_every_engine(steps, popart):
    learn = ("beta", "lr") if popart else ("lr",)
    ref = first_meta_gradient(tiny(engine="func", inner_steps=steps, popart=popart, learn=learn))
    assert all(float(g.abs().sum()) > 0 for g in ref.values())
    for engine in ("higher", "torchopt"):
        got = first_meta_gradient(tiny(engine=engine, inner_steps=steps, popart=popart, learn=learn))
        for name in ref:
            assert relative_error(got[name], ref[name]) <= 1e-8, (engine, name)


def test_job_meta_parameter_gradients_match_finite_differences():
    # The A2C loss is a surrogate (stop-gradients on advantages and bootstrap values), so its value is not the
    # function its autograd gradient differentiates. With gamma ~ 0 (returns = rewards) and no policy term the
    # loss is a true function of the parameters, and the whole job's meta-gradient (rollouts, ART, POP, inner
    # step, outer loss through the adapted weights) must match central finite differences.
    cfg = tiny(inner_steps=2, scaled=True, gamma=1e-12)
    learner = MetaLearner(cfg)
    learner.loss_cfg = A2CConfig(cfg.gamma, cfg.lam, cfg.value_coef, True, policy_coef=0.0)
    learner.inner = make_inner_loop(learner.model, popart=True, steps=2, cfg=learner.loss_cfg)
    data = learner.sample_iteration()
    report = check_gradients(lambda: learner.meta_loss(data)[0],
                             {"log_lr": learner.meta.log_lr, "logit_beta": learner.meta.logit_beta},
                             eps=1e-6, rtol=1e-6)
    assert report.passed, report.table()


def test_learned_values_move_fixed_values_stay():
    learner = MetaLearner(tiny(learn=("beta",), iterations=3))
    for _ in range(3):
        row = learner.step()
    assert row["beta"] != pytest.approx(0.1, abs=1e-6)
    assert row["lr"] == pytest.approx(0.1, abs=1e-12)


def test_evaluation_does_not_disturb_training():
    a, b = MetaLearner(tiny(iterations=3)), MetaLearner(tiny(iterations=3))
    for _ in range(3):
        a.step()
        b.step()
        b.evaluate()
    for pa_, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa_, pb)


def test_evaluation_is_seeded():
    learner = MetaLearner(tiny())
    assert learner.evaluate(seed=5) == learner.evaluate(seed=5)
    assert learner.evaluate(seed=5) != learner.evaluate(seed=6)


def test_cli_writes_all_artifacts(tmp_path):
    out = tmp_path / "run"
    rc = main(["maml-rl", "--preset", "smoke", "--scaled", "--out", str(out), "--no-progress"])
    assert rc == 0
    for name in ("config.json", "metrics.csv", "eval.csv", "metrics.json", "checkpoint.pt", "returns.png",
                 "meta_params.png"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3]
    for key in ("train_pre_return", "train_post_return", "train_pre_return_norm", "beta", "lr", "outer_loss"):
        assert all(torch.isfinite(torch.tensor(float(r[key]))) for r in rows), key
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["popart"] is True and cfg["learn"] == ["beta", "lr"] and cfg["scaled"] is True
    summary = json.loads((out / "metrics.json").read_text())["summary"]
    assert summary["status"] == "completed" and "adaptation_gain_norm" in summary


@pytest.mark.parametrize("engine", ["higher", "torchopt"])
def test_cli_runs_on_loop_engines(tmp_path, engine):
    rc = main(["maml-rl", "--preset", "smoke", "--engine", engine, "--iterations", "2", "--out",
               str(tmp_path / engine), "--no-progress", "--no-plot"])
    assert rc == 0
