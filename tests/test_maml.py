"""The MAML-A2C job: engine equality, finite differences, evaluation isolation, CLI artifacts."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import pytest
import torch

from metaopt import popart as pa
from metaopt.cli import main
from metaopt.maml import MAMLConfig, MetaLearner
from metaopt.rl import A2CConfig, a2c_terms, make_inner_loop, returns_targets
from metaopt.verify import check_gradients, relative_error


def tiny(**kw):
    base = dict(tasks=3, trajectories=4, iterations=2, popart=True, learn=("beta", "lr"), dtype="float64",
                eval_tasks=3, eval_every=1)
    return MAMLConfig(**(base | kw))


def first_meta_gradient(cfg):
    learner = MetaLearner(cfg)
    loss, _ = learner.meta_loss(learner.sample_iteration())
    names = [n for n, _ in learner.named_parameters()]
    return dict(zip(names, torch.autograd.grad(loss, learner.parameters()), strict=True))


@pytest.mark.parametrize("steps,popart,kw", [
    (1, True, {"debias": False, "first_pop": True}),  # with debias, K = 1 leaves beta no role (beta_1 = 1)
    (2, True, {}),
    (2, True, {"debias": False, "beta": 0.9, "lr_per_parameter": True, "scaled": True}),  # the demo's configuration
    (3, True, {"inner_optimizer": "adam", "outer_value": "normalized"}),
    (1, False, {}),
])
def test_job_meta_gradient_same_on_every_engine(steps, popart, kw):
    learn = ("beta", "lr") if popart else ("lr",)
    ref = first_meta_gradient(tiny(engine="func", inner_steps=steps, popart=popart, learn=learn, **kw))
    assert all(float(g.abs().sum()) > 0 for g in ref.values())
    for engine in ("higher", "torchopt"):
        got = first_meta_gradient(tiny(engine=engine, inner_steps=steps, popart=popart, learn=learn, **kw))
        for name in ref:
            assert relative_error(got[name], ref[name]) <= 1e-8, (engine, name)


def test_job_meta_parameter_gradients_match_finite_differences():
    # The A2C loss is a surrogate (stop-gradients on advantages and bootstrap values), so its value is not the
    # function its autograd gradient differentiates. With gamma ~ 0 (returns = rewards) and no policy term the
    # loss is a true function of the parameters, and the whole job's meta-gradient (rollouts, ART, POP, inner
    # step, outer loss through the adapted weights) must match central finite differences.
    cfg = tiny(inner_steps=2, scaled=True, gamma=1e-12, outer_value="normalized")
    learner = MetaLearner(cfg)
    learner.loss_cfg = A2CConfig(cfg.gamma, cfg.lam, cfg.value_coef, True, policy_coef=0.0)
    learner.inner = make_inner_loop(learner.model, popart=True, steps=2, cfg=learner.loss_cfg, debias=cfg.debias,
                                    first_pop=cfg.first_pop)  # the job's (recommended) PopArt options
    data = learner.sample_iteration()
    # eps = 1e-4: logit_beta's central difference is round-off limited below it (rel. error 1e-6 at 1e-5, 7e-6 at
    # 1e-6), and its truncation error ~eps^2 is far below rtol (1e-11 measured).
    report = check_gradients(lambda: learner.meta_loss(data)[0],
                             {"log_lr": learner.meta.log_lr, "logit_beta": learner.meta.logit_beta},
                             eps=1e-4, rtol=1e-6)
    assert report.passed, report.table()


def test_inner_policy_step_gives_beta_a_meta_gradient_matching_finite_differences():
    # The inner policy step's normalized advantage (G - mu)/sigma - sg(n) keeps its dependence on the statistics
    # (before, 1/sigma and V were detached: beta reached the adapted policy only through the value term). With one
    # undebiased step (beta acts at once), no POP at that step and gamma ~ 0, sg(n) and the returns do not depend on
    # beta, so the adapted weights are a true function of (lr, beta) and the outer value term must match central
    # finite differences; with the statistics detached in the policy term it would not.
    cfg = tiny(inner_steps=1, scaled=True, gamma=1e-12, outer_value="normalized", debias=False, first_pop=False)
    learner = MetaLearner(cfg)
    inner_cfg = A2CConfig(cfg.gamma, cfg.lam, 0.0, True)  # the inner step is the policy step alone
    learner.loss_cfg = A2CConfig(cfg.gamma, cfg.lam, cfg.value_coef, True, policy_coef=0.0)
    learner.inner = make_inner_loop(learner.model, popart=True, steps=1, cfg=inner_cfg, debias=False,
                                    first_pop=False)
    data = learner.sample_iteration()
    params = {"log_lr": learner.meta.log_lr, "logit_beta": learner.meta.logit_beta}
    report = check_gradients(lambda: learner.meta_loss(data)[0], params, eps=1e-6, rtol=1e-6)
    assert report.passed, report.table()
    g_beta = torch.autograd.grad(learner.meta_loss(data)[0], learner.meta.logit_beta)[0]
    assert abs(float(g_beta)) > 1e-6  # the path is live (the value term has no other route to beta here)


@pytest.mark.parametrize("engine", ["func", "higher", "torchopt"])
def test_statistics_paths_leave_the_inner_trajectory_bit_for_bit(engine):
    # Only meta-gradients change: the inner loop with every statistic detached in the advantage, the bootstrap and the
    # ART targets (the semantics before) walks the same fast weights and statistics, bit for bit, in float64.
    cfg = tiny(engine=engine, inner_steps=3, scaled=True, inner_lr=0.5)
    learner = MetaLearner(cfg)
    model, lc = learner.model, learner.loss_cfg

    def detached(s):
        return pa.PopArtState(*(t.detach() for t in s))

    def old_loss(params, batch, state):
        terms = a2c_terms(model, params, batch, state, lc)  # statistics_gradient=False: the old inner loss
        return lc.policy_coef * terms.policy + lc.value_coef * terms.value

    spec = replace(learner.inner.popart, targets=lambda p, b, s: returns_targets(model, p, b, detached(s), lc))
    old_inner = replace(learner.inner, loss=old_loss, popart=spec)
    data = learner.sample_iteration()
    new = learner.adapt_and_rollout(data.tasks, data.noise_inner, data.noise_post, engine)
    g_new = torch.autograd.grad(sum(p.sum() for p in new.adapted.values()), learner.meta.logit_beta)[0]
    learner.inner = old_inner
    old = learner.adapt_and_rollout(data.tasks, data.noise_inner, data.noise_post, engine)
    g_old = torch.autograd.grad(sum(p.sum() for p in old.adapted.values()), learner.meta.logit_beta)[0]
    for name in new.adapted:
        assert torch.equal(new.adapted[name], old.adapted[name]), name
    assert all(torch.equal(a, b) for a, b in zip(new.states, old.states, strict=True))
    assert torch.equal(new.post.actions, old.post.actions)
    assert abs(float(g_new - g_old)) > 1e-3 * abs(float(g_new))  # ... while beta's meta-gradient changes


def _with_zero_lr(learner):
    # lr = exp(-inf) = 0 exactly: the inner step changes nothing but POP (which preserves the value outputs).
    learner.meta.log_lr.data.fill_(float("-inf"))  # .data: log_lr is a leaf that requires grad when learned
    return learner


@pytest.mark.parametrize("debias", [True, False], ids=["debiased", "constant"])
@pytest.mark.parametrize("objective", ["policy", "total"])
def test_beta_gets_no_meta_gradient_without_an_inner_step(objective, debias):
    # The artifact of the normalized outer value loss ((G - mu')/sigma' - n')^2: raising sigma' through beta lowers
    # it even when the inner loop does nothing. With lr = 0 the adapted policy and values do not depend on beta, so
    # any meta-gradient of beta is that artifact. The default objective (beta follows the policy term) gives exactly
    # 0; following the total with the stop-gradient-scale value loss gives 0 up to rounding.
    def grad_beta(**kw):
        learner = _with_zero_lr(MetaLearner(tiny(learn=("beta",), scaled=True, inner_steps=2, debias=debias, **kw)))
        mg = learner.meta_gradient(learner.sample_iteration())
        return float(dict(zip([n for n, _ in learner.named_parameters()], mg.grads, strict=True))["meta.logit_beta"])

    gamed = grad_beta(beta_objective="total", outer_value="normalized")
    assert abs(gamed) > 1e-3  # the old objective: a real push on beta (the test can fail)
    got = grad_beta(beta_objective=objective)
    if objective == "policy":
        assert got == 0.0
    elif debias:
        assert abs(got) <= 1e-12 * abs(gamed)
    else:
        # Constant statistics: the first ART step's statistics depend on beta, and with first_pop=False theta_0's head
        # is read as a normalized prediction under them, so V = sigma_1 n + mu_1 (and its value error) moves with beta
        # at lr = 0 -- a channel of the total objective only, and exactly the first step's read: with POP at the first
        # step too (V preserved) it is gone.
        assert abs(got) > 1e-3
        assert abs(grad_beta(beta_objective=objective, first_pop=True)) <= 1e-12 * abs(gamed)


def test_lr_follows_the_policy_term_theta_follows_both():
    learner = MetaLearner(tiny(learn=("beta", "lr"), scaled=True))
    data = learner.sample_iteration()
    mg = dict(zip([n for n, _ in learner.named_parameters()], learner.meta_gradient(data).grads, strict=True))
    policy, value, _ = learner.outer_terms(data)
    g_policy = torch.autograd.grad(policy.sum(), [learner.meta.log_lr, learner.meta.logit_beta], retain_graph=True)
    g_total = torch.autograd.grad(policy.sum() + learner.cfg.value_coef * value.sum(),
                                  [learner.model.body[0].weight, learner.meta.log_lr])
    assert relative_error(mg["meta.log_lr"], g_policy[0]) <= 1e-12
    assert relative_error(mg["meta.logit_beta"], g_policy[1]) <= 1e-12
    assert relative_error(mg["model.body.0.weight"], g_total[0]) <= 1e-12
    assert relative_error(g_total[1], g_policy[0]) > 1e-3  # the value term would have moved lr


def test_learned_values_move_fixed_values_stay():
    learner = MetaLearner(tiny(learn=("beta",), iterations=3, inner_steps=2))
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
    metrics = json.loads((out / "metrics.json").read_text())
    summary = metrics["summary"]
    assert summary["status"] == "completed" and "adaptation_gain_norm" in summary
    # beta's meta-gradient signal over the run's own rows (here 3 iterations: the first 10 are all of them)
    g_beta = [abs(r["grad_logit_beta"]) for r in metrics["train"]]
    g_lr = [abs(r["grad_log_lr"]) for r in metrics["train"]]
    assert summary["beta_grad_ratio_first10"] == pytest.approx(sorted(g_beta)[1] / sorted(g_lr)[1], rel=1e-12)
    assert summary["beta_grad_zeros"] == sum(g == 0.0 for g in g_beta)
    assert summary["beta_grad_t_first50"] == summary["beta_grad_t_last50"]  # 3 rows: both windows are all of them


@pytest.mark.parametrize("estimator", ["dice", "lvc"])
def test_job_estimators_same_meta_gradient_on_every_engine(estimator):
    def grads(engine):
        learner = MetaLearner(tiny(engine=engine, estimator=estimator, scaled=True))
        return learner.meta_gradient(learner.sample_iteration()).grads

    ref = grads("func")
    assert all(float(g.abs().sum()) > 0 for g in ref)
    surrogate = MetaLearner(tiny(scaled=True))
    other = surrogate.meta_gradient(surrogate.sample_iteration()).grads
    assert relative_error(ref[0], other[0]) > 1e-3  # the estimator changes the meta-gradient (the test can fail)
    for engine in ("higher", "torchopt"):
        for a, b in zip(grads(engine), ref, strict=True):
            assert relative_error(a, b) <= 1e-8, engine


@pytest.mark.parametrize("engine", ["func", "higher", "torchopt"])
@pytest.mark.parametrize("estimator", ["surrogate", "dice", "lvc"])
def test_cli_runs_each_estimator_on_each_engine(tmp_path, engine, estimator):
    rc = main(["maml-rl", "--preset", "smoke", "--engine", engine, "--estimator", estimator, "--iterations", "2",
               "--out", str(tmp_path / "run"), "--no-progress", "--no-plot"])
    assert rc == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["estimator"] == estimator
