"""A2C pieces against plain-Python references."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call

from metaopt import popart as pa
from metaopt.experiments.maml_rl import PRESETS
from metaopt.maml import COLLAPSED_SPREAD, MAMLConfig, MetaLearner, PolicyCollapseWarning, gradient_signal
from metaopt.rl import (
    A2CConfig,
    ActorCritic,
    a2c_loss,
    lambda_returns,
    make_inner_loop,
    policy_health,
    returns_targets,
)

T, B = 6, 3


def loop_returns(r, v, last, d, gamma, lam):
    """G_i = r_i + gamma_i ((1 - lam) V_{i+1} + lam G_{i+1}) element by element, in Python floats."""
    out = [[0.0] * B for _ in range(T)]
    for b in range(B):
        g = float(last[b])
        for i in reversed(range(T)):
            nv = float(v[i + 1][b]) if i + 1 < T else float(last[b])
            gi = gamma * (1 - float(d[i][b]))
            g = float(r[i][b]) + gi * ((1 - lam) * nv + lam * g)
            out[i][b] = g
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("gamma,lam", [(0.99, 0.95), (0.9, 0.0), (1.0, 1.0)])
def test_lambda_returns_match_python_loop(gamma, lam):
    g = torch.Generator().manual_seed(0)
    r, v = torch.randn(T, B, generator=g, dtype=torch.float64), torch.randn(T, B, generator=g, dtype=torch.float64)
    last = torch.randn(B, generator=g, dtype=torch.float64)
    d = torch.zeros(T, B, dtype=torch.float64)
    d[2, 1] = 1.0  # an episode boundary in the middle
    d[-1] = 1.0
    got = lambda_returns(r, v, last, d, gamma, lam)
    assert torch.allclose(got, loop_returns(r, v, last, d, gamma, lam), rtol=0, atol=1e-12)


def test_lambda_one_is_discounted_monte_carlo():
    r = torch.ones(T, B, dtype=torch.float64)
    d = torch.zeros(T, B, dtype=torch.float64)
    d[-1] = 1.0
    got = lambda_returns(r, torch.zeros(T, B, dtype=torch.float64), torch.zeros(B, dtype=torch.float64), d, 0.5, 1.0)
    expected = [sum(0.5**k for k in range(T - i)) for i in range(T)]
    assert torch.allclose(got[:, 0], torch.tensor(expected, dtype=torch.float64), atol=1e-14)


def make_batch(seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    states = torch.randint(0, 10, (T, B), generator=g)
    obs = torch.nn.functional.one_hot(states, 10).double()
    dones = torch.zeros(T, B, dtype=torch.float64)
    dones[-1] = 1.0
    return {
        "observations": obs,
        "actions": torch.randint(0, 5, (T, B), generator=g),
        "rewards": scale * torch.randn(T, B, generator=g, dtype=torch.float64),
        "dones": dones,
        "last_observations": torch.nn.functional.one_hot(torch.randint(0, 10, (B,), generator=g), 10).double(),
    }


def loop_a2c(model, batch, mu, sigma, cfg):
    """The A2C loss written sample by sample (PopArt-normalized value error when sigma != None)."""
    with torch.no_grad():
        logits, n = model(batch["observations"])
        _, n_last = model(batch["last_observations"])
    values = n * (sigma or 1.0) + (mu or 0.0)
    last = n_last * (sigma or 1.0) + (mu or 0.0)
    G = loop_returns(batch["rewards"], values, last, batch["dones"], cfg.gamma, cfg.lam)
    pol, val = 0.0, 0.0
    for i in range(T):
        for b in range(B):
            logp = logits[i, b].log_softmax(-1)[batch["actions"][i, b]]
            if sigma is None:
                adv = G[i, b] - values[i, b]
            else:
                adv = (G[i, b] - mu) / sigma - n[i, b]
            pol += -float(adv) * float(logp)
            val += float(adv) ** 2
    return pol / (T * B) + cfg.value_coef * val / (T * B)


@pytest.mark.parametrize("stats", [None, (0.0, 1.0), (3.0, 7.5)])
def test_a2c_loss_matches_sample_loop(stats):
    torch.manual_seed(0)
    model = ActorCritic().double()
    batch = make_batch(scale=5.0)
    cfg = A2CConfig()
    state = None
    if stats is not None:
        state = pa.PopArtState(torch.tensor([stats[0]], dtype=torch.float64),
                               torch.tensor([stats[1]], dtype=torch.float64), torch.ones(1, dtype=torch.float64))
    got = float(a2c_loss(model, dict(model.named_parameters()), batch, state, cfg).detach())
    ref = loop_a2c(model, batch, None if stats is None else stats[0], None if stats is None else stats[1], cfg)
    assert math.isclose(got, ref, rel_tol=1e-10)


def test_identity_popart_state_equals_no_popart():
    torch.manual_seed(1)
    model = ActorCritic().double()
    batch, params = make_batch(1), dict(ActorCritic().double().named_parameters())
    params = dict(model.named_parameters())
    a = a2c_loss(model, params, batch, None)
    b = a2c_loss(model, params, batch, pa.init(1, dtype=torch.float64))
    assert torch.allclose(a, b, rtol=1e-14)


def test_policy_gradient_direction():
    # A positive advantage on an action must increase that action's probability after an SGD step.
    torch.manual_seed(2)
    model = ActorCritic().double()
    batch = make_batch(2)
    batch["rewards"] = torch.full((T, B), 10.0, dtype=torch.float64)
    params = dict(model.named_parameters())
    cfg = A2CConfig(value_coef=0.0)
    grads = torch.autograd.grad(a2c_loss(model, params, batch, None, cfg), list(params.values()))
    new = {n: p - 1e-3 * g for (n, p), g in zip(params.items(), grads, strict=True)}
    logp_old = functional_call(model, params, (batch["observations"],))[0].log_softmax(-1)
    logp_new = functional_call(model, new, (batch["observations"],))[0].log_softmax(-1)
    taken = batch["actions"].unsqueeze(-1)
    assert float((logp_new.gather(-1, taken) - logp_old.gather(-1, taken)).sum().detach()) > 0


def test_inner_loop_popart_targets_are_lambda_returns():
    torch.manual_seed(3)
    model = ActorCritic().double()
    batch = make_batch(3, scale=100.0)
    inner = make_inner_loop(model, popart=True)
    params = dict(model.named_parameters())
    fresh = pa.init(1, dtype=torch.float64)
    state = pa.PopArtState(torch.tensor([3.0], dtype=torch.float64), torch.tensor([20.0], dtype=torch.float64),
                           torch.ones(1, dtype=torch.float64))  # statistics after one update
    y = inner.popart.targets(params, batch, state)
    with torch.no_grad():
        _, n = model(batch["observations"])
        _, n_last = model(batch["last_observations"])
    ref = loop_returns(batch["rewards"], 20 * n + 3, 20 * n_last + 3, batch["dones"], 0.99, 0.95)
    assert torch.allclose(y, ref, atol=1e-10)
    assert torch.equal(returns_targets(model, params, batch, state, A2CConfig()), y)
    # fresh statistics (count 0): Monte-Carlo returns, no bootstrap from the not-yet-meaningful value head
    mc = loop_returns(batch["rewards"], 0 * n, 0 * n_last, batch["dones"], 0.99, 1.0)
    assert torch.allclose(inner.popart.targets(params, batch, fresh), mc, atol=1e-10)
    assert not torch.allclose(mc, loop_returns(batch["rewards"], n, n_last, batch["dones"], 0.99, 0.95), atol=1e-3)
    assert inner.popart.weight == "value.weight" and inner.popart.bias == "value.bias"


def test_fresh_debiased_statistics_are_the_first_batch_moments_and_no_first_pop():
    # The job's PopArt defaults: the first (debiased, beta_1 = 1) ART step sets mu, sigma to the mean and std of the
    # Monte-Carlo returns, and without first_pop the value head is not rescaled at step 0 (read as normalized).
    from metaopt.engines import adapt
    from metaopt.meta_params import MetaParameters

    torch.manual_seed(0)
    model = ActorCritic().double()
    batch = make_batch(5, scale=30.0)
    inner = make_inner_loop(model, popart=True, debias=True, first_pop=False)
    meta = MetaParameters(lr=1e-300, beta=0.1, dtype=torch.float64)  # the gradient step changes nothing visible
    res = adapt(model, inner, batch, meta, popart_state=pa.init(1, dtype=torch.float64))
    mc = loop_returns(batch["rewards"], torch.zeros(T, B), torch.zeros(B), batch["dones"], 0.99, 1.0)
    assert torch.allclose(res.popart_state.mu, mc.mean().reshape(1), atol=1e-12)
    assert torch.allclose(res.popart_state.sigma, mc.std(unbiased=False).reshape(1), atol=1e-12)
    assert torch.equal(res.params["value.weight"], model.value.weight)  # no POP at step 0
    with_pop = adapt(model, make_inner_loop(model, popart=True, debias=True, first_pop=True), batch, meta,
                     popart_state=pa.init(1, dtype=torch.float64))
    assert not torch.allclose(with_pop.params["value.weight"], model.value.weight)


def test_policy_health_counts_dead_units_and_state_dependence():
    torch.manual_seed(4)
    model = ActorCritic(10, 5, 8).double()
    params = dict(model.named_parameters())
    eye = torch.eye(10, dtype=torch.float64)
    h = policy_health(model, params, eye)
    logp = torch.log_softmax(model(eye)[0], -1).detach()
    spread = sum(float(logp[:, a].std(correction=0)) for a in range(5)) / 5  # by hand, action by action
    assert math.isclose(h.logit_spread, spread, rel_tol=1e-12)
    h1 = torch.relu(model.body[0](eye)).detach()
    assert h.live_units[0] == float((h1.amax(0) - h1.amin(0) > 1e-6).double().mean())
    dead = params | {"body.2.bias": torch.full((8,), -1e3, dtype=torch.float64)}  # every second-layer unit < 0
    h = policy_health(model, dead, eye)
    assert h.live_units[1] == 0.0 and h.logit_spread < 1e-12


def test_collapsed_policy_warns_once(recwarn):
    learner = MetaLearner(MAMLConfig(tasks=2, trajectories=2, popart=True, learn=("lr",), eval_tasks=2))
    with torch.no_grad():
        learner.model.body[2].bias.fill_(-1e3)
    with pytest.warns(PolicyCollapseWarning, match="no longer depends on the state"):
        m = learner.step()
    assert m["live_units"] == 0.0 and m["logit_spread"] < COLLAPSED_SPREAD
    learner.step()
    assert not [w for w in recwarn if issubclass(w.category, PolicyCollapseWarning)]  # once per learner


def test_metrics_report_the_meta_parameters_gradients():
    learner = MetaLearner(MAMLConfig(tasks=2, trajectories=3, popart=True, learn=("lr", "beta"), scaled=True,
                                     lr_per_parameter=True, dtype="float64", eval_tasks=2))
    data = learner.sample_iteration()
    mg = learner.meta_gradient(data)
    m = learner.metrics(mg.per_task, 0.0, mg.grads)
    named = dict(zip([n for n, _ in learner.named_parameters()], mg.grads, strict=True))
    lrs = [g for n, g in named.items() if n.startswith("meta.log_lrs.")]
    assert len(lrs) == len(list(learner.model.parameters()))
    assert m["grad_log_lr"] == sum(float(g) for g in lrs)
    assert m["grad_logit_beta"] == float(named["meta.logit_beta"]) != 0.0


def test_gradient_signal_against_hand_values():
    sig = gradient_signal([1.0, 2.0, 3.0], [10.0, -20.0, 30.0])
    assert math.isclose(sig["t"], 2.0 / (1.0 / math.sqrt(3.0)), rel_tol=1e-12)  # mean 2, sd 1, n 3
    assert sig["positive"] == 1.0 and math.isclose(sig["ratio"], 2.0 / 20.0) and sig["zeros"] == 0.0
    flat = gradient_signal([0.0, 0.0, -1.0], [0.0, 0.0, 0.0])
    assert flat["zeros"] == 2.0 and math.isnan(flat["ratio"]) and flat["positive"] == 0.0


def test_demo_statistics_give_beta_a_meta_gradient_the_debiased_ones_do_not():
    """Issue 18's size criterion, on a small budget: with the demo's constant-beta statistics (beta from 0.9) the
    median |d/dlogit beta| is >= 1% of the median |d/dlog lr| over the first 10 iterations; with the debiased
    statistics from beta = 0.1 (the old demo) it is more than ten times smaller."""
    small = {"tasks": 8, "trajectories": 8, "iterations": 10, "seed": 0, "eval_tasks": 2}
    ratios = {}
    for name, over in (("demo", {}), ("debiased", {"debias": True, "beta": 0.1})):
        learner = MetaLearner(MAMLConfig(**(PRESETS["demo"] | small | over)).validate())
        rows = [learner.step() for _ in range(10)]
        assert all(r["grad_logit_beta"] != 0.0 for r in rows)
        ratios[name] = gradient_signal([r["grad_logit_beta"] for r in rows], [r["grad_log_lr"] for r in rows])["ratio"]
    assert ratios["demo"] >= 0.01 and ratios["demo"] > 10 * ratios["debiased"], ratios
