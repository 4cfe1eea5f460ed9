"""Sampled estimators (surrogate, LVC, DiCE) against the exact oracle on a small TabularMDP (float64).

Statistical tests: K = 100 independent batches of M = 500 trajectories each give K i.i.d. estimates; the
mean of a coordinate matches its exact expectation when |mean - exact| <= 4.5 standard errors (two-sided
p ~ 7e-6 per coordinate, ~1e-4 over the 12 coordinates of the [4, 3] logit table); a bias is "detected" when
some coordinate is more than 10 standard errors away. Seeds are fixed, so the outcome is deterministic.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import grad, jvp, vmap

from metaopt import estimators as est
from metaopt import exact
from metaopt.envs import BatchedTabularMDP, sample_tasks

F64 = torch.float64
S, A, T, K, M = 4, 3, 5, 100, 500
Z_OK, Z_BIASED = 4.5, 10.0


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=F64, generator=torch.Generator().manual_seed(seed))


class Setup:
    """One task, a random logit table theta, K x M sampled trajectories and exact references."""

    def __init__(self, gamma: float) -> None:
        self.gamma = gamma
        self.tasks = sample_tasks(1, num_states=S, num_actions=A, seed=3)
        self.theta = _randn(S, A, seed=4)
        self.v = _randn(S, A, seed=5)  # direction of the Hessian-vector products
        sim = BatchedTabularMDP(self.tasks, T, dtype=F64)
        noise = sim.draw_noise(K * M, generator=torch.Generator().manual_seed(6))
        traj = sim.rollout(lambda obs: obs @ self.theta, noise)
        self.states, self.actions, self.rewards, self.dones = (
            x[:, 0].reshape(T, K, M) for x in (traj.states, traj.actions, traj.rewards, traj.dones))
        self.v_exact = exact.action_values(self.tasks, self.theta, horizon=T, gamma=gamma).v[0, :-1]  # [T, S]

    def values(self, table: torch.Tensor | None) -> torch.Tensor | None:
        """Baseline tensor [T, K, M] from a [T, S] table."""
        return None if table is None else table[torch.arange(T)[:, None, None], self.states]

    def sampled(self, estimator, values: torch.Tensor | None, **kw) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-batch gradients and Hessian-vector products of the estimator's loss, each [K, S, A]."""

        def loss(theta, states, actions, rewards, dones, vals):
            log_probs = torch.log_softmax(theta, -1)[states, actions]
            return estimator(log_probs, rewards, dones, vals, gamma=self.gamma, **kw)

        g = grad(loss)

        def hvp(theta, *batch):
            return jvp(lambda th: g(th, *batch), (theta,), (self.v,))[1]

        dims = (None, 1, 1, 1, 1, None if values is None else 1)
        batch = (self.states, self.actions, self.rewards, self.dones, values)
        return vmap(g, in_dims=dims)(self.theta, *batch), vmap(hvp, in_dims=dims)(self.theta, *batch)

    def exact_derivatives(self, kind: str = "dice", **kw) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradient and Hessian-vector product of an expected objective (``dice`` = J) at theta, each [S, A]."""
        theta = self.theta.clone().requires_grad_()
        obj = exact.expected_estimator_objective(kind, self.tasks, theta, horizon=T, gamma=self.gamma, **kw).sum()
        (g,) = torch.autograd.grad(obj, theta, create_graph=True)
        (h,) = torch.autograd.grad((g * self.v).sum(), theta)
        return g.detach(), h


@pytest.fixture(scope="module")
def undiscounted() -> Setup:
    return Setup(1.0)


@pytest.fixture(scope="module")
def discounted() -> Setup:
    return Setup(0.9)


def z_max(samples: torch.Tensor, reference: torch.Tensor) -> float:
    """Largest |mean - reference| / standard error over the coordinates (samples: [K, ...])."""
    se = samples.std(0) / math.sqrt(samples.shape[0])
    return float(((samples.mean(0) - reference).abs() / se.clamp_min(1e-12)).max())


# ------------------------------------------------------------------------------------------- exact identities
def test_first_derivatives_are_identical_per_sample(discounted):
    s = discounted
    values = s.values(_randn(T, S, seed=7))  # any baseline
    grads = {name: s.sampled(fn, values)[0] for name, fn in est.ESTIMATORS.items()}
    scale = grads["dice"].abs().max()
    assert scale > 0
    for name in ("surrogate", "lvc"):
        assert torch.allclose(grads[name], grads["dice"], rtol=0, atol=1e-12 * scale), name


def test_surrogate_equals_torchopt_form_written_out():
    # TorchOpt's MAML-RL policy loss -mean(sg(G - V) log pi) with lambda-returns written as an explicit loop.
    g = torch.Generator().manual_seed(8)
    log_probs = torch.randn(6, 4, dtype=F64, generator=g, requires_grad=True)
    rewards, values = torch.randn(6, 4, dtype=F64, generator=g), torch.randn(6, 4, dtype=F64, generator=g)
    last = torch.randn(4, dtype=F64, generator=g)
    dones = torch.zeros(6, 4, dtype=F64)
    dones[2, 1] = dones[-1] = 1.0
    gamma, lam = 0.99, 0.95
    returns = torch.empty(6, 4, dtype=F64)
    for b in range(4):
        nxt, boot = last[b], last[b]
        for t in range(5, -1, -1):
            keep = 1.0 - dones[t, b]
            returns[t, b] = rewards[t, b] + gamma * keep * ((1 - lam) * boot + lam * nxt)
            nxt, boot = returns[t, b], values[t, b]
    reference = -((returns - values) * log_probs).mean()
    loss = est.surrogate(log_probs, rewards, dones, values, gamma=gamma, lam=lam, last_values=last,
                         weight_by_discount=False)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-13)
    # gamma = 1: the gamma^t weight is 1, so both forms coincide; lambda = 1 gives the reward-to-go.
    rtg = rewards.flip(0).cumsum(0).flip(0)
    dones_end = torch.zeros(6, 4, dtype=F64)
    dones_end[-1] = 1.0
    loss1 = est.surrogate(log_probs, rewards, dones_end, values, gamma=1.0)
    assert loss1.item() == pytest.approx(-((rtg - values) * log_probs).mean().item(), rel=1e-13)


def test_lambda_returns_limits():
    g = torch.Generator().manual_seed(9)
    r, v = torch.randn(5, 3, dtype=F64, generator=g), torch.randn(5, 3, dtype=F64, generator=g)
    last = torch.randn(3, dtype=F64, generator=g)
    dones = torch.zeros(5, 3, dtype=F64)
    mc = est.lambda_returns(r, v, dones, gamma=0.9, lam=1.0, last_values=last)
    disc = 0.9 ** torch.arange(6, dtype=F64)
    assert torch.allclose(mc[0], (r * disc[:5, None]).sum(0) + disc[5] * last, atol=1e-13)
    td = est.lambda_returns(r, v, dones, gamma=0.9, lam=0.0, last_values=last)
    assert torch.allclose(td, r + 0.9 * torch.cat([v[1:], last[None]]), atol=1e-13)


def test_dice_value_and_magic_box():
    x = torch.tensor(0.3, dtype=F64, requires_grad=True)
    box = est.magic_box(2 * x)
    (d1,) = torch.autograd.grad(box, x, create_graph=True)
    (d2,) = torch.autograd.grad(d1, x)
    assert box.item() == 1.0 and d1.item() == pytest.approx(2.0) and d2.item() == pytest.approx(4.0)
    log_probs = torch.randn(4, 2, dtype=F64, requires_grad=True)
    rewards, values = torch.randn(4, 2, dtype=F64), torch.randn(4, 2, dtype=F64)
    dones = torch.zeros(4, 2, dtype=F64)
    dones[-1] = 1
    loss = est.dice(log_probs, rewards, dones, values, gamma=0.5, reduction="sum")
    disc = 0.5 ** torch.arange(4, dtype=F64)
    assert loss.item() == pytest.approx(-(rewards * disc[:, None]).sum(0).mean().item(), rel=1e-13)


def test_gradient_scale():
    assert est.gradient_scale("mean", 10) == pytest.approx(0.1) and est.gradient_scale("sum", 10) == 1.0


# ----------------------------------------------------------------------------------------- first derivative
@pytest.mark.parametrize("setup", ["undiscounted", "discounted"])
@pytest.mark.parametrize("name", ["surrogate", "lvc", "dice"])
def test_mean_gradient_is_unbiased(request, setup, name):
    s = request.getfixturevalue(setup)
    g_exact, _ = s.exact_derivatives()
    for table, reduction in ((s.v_exact, "mean"), (None, "sum")):  # exact baseline / none; both normalizations
        grads, _ = s.sampled(est.ESTIMATORS[name], s.values(table), reduction=reduction)
        kappa = est.gradient_scale(reduction, T)
        assert z_max(grads, -kappa * g_exact) <= Z_OK, (name, reduction)
        assert z_max(grads, -2 * kappa * g_exact) > Z_BIASED  # a wrong normalization would be caught


def test_surrogate_gradient_with_lambda_below_one_is_biased_as_predicted(undiscounted):
    s = undiscounted
    table = torch.zeros(T, S, dtype=F64)  # an inexact value estimate: lambda < 1 bootstraps from it
    grads, _ = s.sampled(est.surrogate, s.values(table), lam=0.5)
    g_exact, _ = s.exact_derivatives()
    g_pred, _ = s.exact_derivatives("surrogate", lam=0.5, values=table)
    kappa = est.gradient_scale("mean", T)
    assert z_max(grads, -kappa * g_pred) <= Z_OK
    assert z_max(grads, -kappa * g_exact) > Z_BIASED


# ---------------------------------------------------------------------------------------- second derivative
@pytest.mark.parametrize("variant", ["exact baseline", "no baseline", "first-order baseline", "discounted"])
def test_dice_hessian_vector_product_is_unbiased(request, variant):
    s = request.getfixturevalue("discounted" if variant == "discounted" else "undiscounted")
    table = None if variant == "no baseline" else s.v_exact
    kw = {"history_baseline": False} if variant == "first-order baseline" else {}
    _, h = s.sampled(est.dice, s.values(table), **kw)
    _, h_exact = s.exact_derivatives()
    assert z_max(h, -h_exact / T) <= Z_OK


@pytest.mark.parametrize("name", ["surrogate", "lvc"])
def test_biased_hessians_match_their_predicted_expectation_not_the_exact_one(undiscounted, name):
    s = undiscounted
    _, h = s.sampled(est.ESTIMATORS[name], s.values(s.v_exact))
    _, h_exact = s.exact_derivatives()
    _, h_pred = s.exact_derivatives(name, values=s.v_exact)
    assert z_max(h, -h_pred / T) <= Z_OK
    assert z_max(h, -h_exact / T) > Z_BIASED


def test_dice_history_baseline_reduces_hessian_variance(undiscounted):
    s = undiscounted
    _, h_mao = s.sampled(est.dice, s.values(s.v_exact))
    _, h_first = s.sampled(est.dice, s.values(s.v_exact), history_baseline=False)
    _, h_none = s.sampled(est.dice, None)
    var = [float(x.var(0).sum()) for x in (h_mao, h_first, h_none)]
    assert var[0] < var[1] < var[2], var


# ---------------------------------------------------------------------------------------------- bad inputs
def test_bad_inputs_raise_one_clear_error():
    lp, r, d = torch.zeros(3, 2, dtype=F64), torch.zeros(3, 2, dtype=F64), torch.zeros(3, 2, dtype=F64)
    with pytest.raises(ValueError, match=r"rewards must have the shape of log_probs \(3, 2\)"):
        est.surrogate(lp, torch.zeros(3, 3, dtype=F64), d, gamma=0.9)
    with pytest.raises(ValueError, match=r"gamma must be a number in \[0, 1\], got 1.5"):
        est.dice(lp, r, d, gamma=1.5)
    with pytest.raises(ValueError, match=r"reduction must be one of \('mean', 'sum'\), got 'avg'"):
        est.lvc(lp, r, d, gamma=0.9, reduction="avg")
    with pytest.raises(ValueError, match=r"lam must be a number in \[0, 1\], got 2"):
        est.surrogate(lp, r, d, gamma=0.9, lam=2)
    with pytest.raises(ValueError, match="lam must be 1.0 for estimator='dice'"):
        est.policy_loss("dice", lp, r, d, gamma=0.9, lam=0.95)
    with pytest.raises(ValueError, match=r"estimator must be one of \('surrogate', 'dice', 'lvc'\), got 'ppo'"):
        est.policy_loss("ppo", lp, r, d, gamma=0.9)
    with pytest.raises(TypeError, match="rewards has dtype torch.float32 but log_probs has torch.float64"):
        est.dice(lp, r.float(), d, gamma=0.9)
    with pytest.raises(TypeError, match="log_probs must be a floating-point tensor"):
        est.dice(torch.zeros(3, 2, dtype=torch.long), r, d, gamma=0.9)
    with pytest.raises(ValueError, match=r"last_values must have shape \(2,\)"):
        est.surrogate(lp, r, d, r, gamma=0.9, last_values=torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match="weight_by_discount=False exists for estimator='surrogate' only"):
        est.policy_loss("lvc", lp, r, d, gamma=0.9, weight_by_discount=False)
    with pytest.raises(TypeError, match="weight_by_discount must be True or False"):
        est.surrogate(lp, r, d, gamma=0.9, weight_by_discount=1)


@pytest.mark.parametrize("name", ["surrogate", "lvc", "dice"])
def test_estimators_run_under_vmap_over_tasks(name):
    # The job vectorizes the inner loss over tasks with torch.func.vmap: same gradients as a loop over tasks.
    g = torch.Generator().manual_seed(10)
    theta = torch.randn(3, S, A, dtype=F64, generator=g)  # per-task fast weights
    states, actions = torch.randint(0, S, (3, T, 8), generator=g), torch.randint(0, A, (3, T, 8), generator=g)
    rewards, values = torch.randn(3, T, 8, dtype=F64, generator=g), torch.randn(3, T, 8, dtype=F64, generator=g)
    dones = torch.zeros(3, T, 8, dtype=F64)
    dones[:, -1] = 1.0
    lam = 1.0 if name == "dice" else 0.9

    def loss(th, st, ac, r, d, v):
        log_probs = torch.log_softmax(th, -1)[st, ac]
        return est.policy_loss(name, log_probs, r, d, v, gamma=0.99, lam=lam)

    batched = vmap(grad(loss))(theta, states, actions, rewards, dones, values)
    looped = torch.stack([grad(loss)(*(x[i] for x in (theta, states, actions, rewards, dones, values)))
                          for i in range(3)])
    assert torch.allclose(batched, looped, rtol=1e-12, atol=1e-14)
