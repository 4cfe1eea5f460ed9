"""The exact TabularMDP oracle: Monte-Carlo agreement, analytic cases, finite differences, exact MAML."""

from __future__ import annotations

import math

import pytest
import torch

from metaopt import exact
from metaopt.envs import BatchedTabularMDP, TaskBatch, sample_tasks
from metaopt.rl import ActorCritic
from metaopt.verify import check_gradients

F64 = torch.float64
Z_MAX = 4.0  # Monte-Carlo agreement: |mean - J| <= 4 standard errors (two-sided p ~ 6e-5 per task)


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=F64, generator=torch.Generator().manual_seed(seed))


def _mc_returns(tasks: TaskBatch, policy_fn, horizon: int, gamma: float, n: int, seed: int):
    sim = BatchedTabularMDP(tasks, horizon, dtype=F64)
    traj = sim.rollout(policy_fn, sim.draw_noise(n, generator=torch.Generator().manual_seed(seed)))
    disc = gamma ** torch.arange(horizon, dtype=F64)
    return (traj.rewards * disc[:, None, None]).sum(0), traj  # [N, B]


def _z(samples: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Per-task z-score of the sample mean (samples [N, B]) against the exact value [N]."""
    se = samples.std(1) / math.sqrt(samples.shape[1])
    return (samples.mean(1) - value) / se


# ------------------------------------------------------------------------------------------ Monte Carlo
@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_expected_return_matches_monte_carlo(gamma):
    tasks = sample_tasks(3, seed=0, scale_range=(-1.0, 1.0))  # the job's env (S=10, A=5), per-task scales
    logits = _randn(3, 10, 5, seed=1)
    returns, _ = _mc_returns(tasks, lambda obs: torch.einsum("nbs,nsa->nba", obs, logits), 10, gamma, 20000, seed=2)
    value = exact.expected_return(tasks, logits, horizon=10, gamma=gamma)
    z = _z(returns, value)
    assert z.abs().max() <= Z_MAX, z
    # The test can fail: the other discount is many standard errors away.
    other = exact.expected_return(tasks, logits, horizon=10, gamma=0.9 if gamma == 1.0 else 1.0)
    assert _z(returns, other).abs().min() > 10


def test_state_distributions_match_visit_frequencies():
    tasks = sample_tasks(2, num_states=4, num_actions=3, seed=3)
    logits = _randn(4, 3, seed=4)
    _, traj = _mc_returns(tasks, lambda obs: obs @ logits, 6, 1.0, 20000, seed=5)
    d = exact.state_distributions(tasks, logits, horizon=6)  # [N, T, S]
    visits = torch.nn.functional.one_hot(traj.states, 4).to(F64).permute(1, 0, 2, 3)  # [N, T, B, S]
    freq = visits.mean(2)
    se = (d * (1 - d) / visits.shape[2]).sqrt().clamp_min(1e-12)
    assert torch.allclose(d.sum(-1), torch.ones(2, 6, dtype=F64), atol=1e-12)
    assert ((freq - d).abs() / se).max() <= 4.5  # 48 cells: Bonferroni-style threshold


def test_network_policy_return_matches_monte_carlo():
    torch.manual_seed(0)
    net = ActorCritic(10, 5, 8).double()
    tasks = sample_tasks(2, seed=6)
    with torch.no_grad():
        returns, _ = _mc_returns(tasks, lambda obs: net(obs)[0], 10, 1.0, 20000, seed=7)  # the network on obs
        value = exact.expected_return(tasks, exact.policy_logits(net, num_states=10), horizon=10)
    assert _z(returns, value).abs().max() <= Z_MAX


# --------------------------------------------------------------------------------------- analytic cases
def test_deterministic_transitions_hand_value():
    # Two states, two actions, action a moves to state a; pi = (1/4, 3/4) in both states; c = 2, T = 3.
    P = torch.zeros(1, 2, 2, 2, dtype=F64)
    P[0, :, 0, 0] = 1.0
    P[0, :, 1, 1] = 1.0
    R = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]], dtype=F64)
    tasks = TaskBatch(P, R, torch.tensor([2.0], dtype=F64))
    logits = torch.log(torch.tensor([[0.25, 0.75], [0.25, 0.75]], dtype=F64))
    # t=0 in state 0: 0.25*1 + 0.75*2 = 1.75; t>=1 in state s w.p. pi(s): 0.25*1.75 + 0.75*3.75 = 3.25.
    assert exact.expected_return(tasks, logits, horizon=3, gamma=0.5).item() == pytest.approx(
        2 * (1.75 + 0.5 * 3.25 + 0.25 * 3.25), abs=1e-12)  # 8.375
    assert exact.expected_return(tasks, logits, horizon=3, gamma=1.0).item() == pytest.approx(16.5, abs=1e-12)
    q, v = exact.action_values(tasks, logits, horizon=3, gamma=1.0)
    assert q[0, 2].tolist() == [[2.0, 4.0], [6.0, 8.0]]  # last step: c R
    assert q[0, 1, 0, 1].item() == pytest.approx(2 * 2 + 2 * 3.75, abs=1e-12)  # c R[0,1] + V_2(1)


def test_bandit_gradient_and_maml_analytic():
    # One state: J = T c sum_a pi_a R_a and dJ/dl_a = T c pi_a (R_a - pi.R).
    T, c, alpha, kappa = 4, 1.5, 0.3, 0.25
    R = torch.tensor([[[1.0, -0.5, 2.0]]], dtype=F64)
    tasks = TaskBatch(torch.ones(1, 1, 3, 1, dtype=F64), R, torch.tensor([c], dtype=F64))
    logits = torch.tensor([[0.2, -0.1, 0.4]], dtype=F64, requires_grad=True)
    J = exact.expected_return(tasks, logits, horizon=T)
    (grad,) = torch.autograd.grad(J.sum(), logits)
    pi = torch.softmax(logits.detach(), -1)[0]
    r = R[0, 0]
    hand = T * c * pi * (r - (pi * r).sum())
    assert torch.allclose(grad[0], hand, atol=1e-13, rtol=0)
    # One exact inner step l' = l + alpha * kappa * dJ/dl, then J(l') by the closed form.
    after = exact.exact_maml_return(lambda p: p["l"], {"l": logits}, tasks, lr=alpha, horizon=T, grad_scale=kappa)
    pi1 = torch.softmax(logits.detach()[0] + alpha * kappa * hand, -1)
    assert after.item() == pytest.approx(float(T * c * (pi1 * r).sum()), abs=1e-12)


def test_backward_values_equal_forward_return():
    tasks = sample_tasks(3, seed=8)
    logits = _randn(3, 10, 5, seed=9)
    for gamma in (1.0, 0.95):
        J = exact.expected_return(tasks, logits, gamma=gamma)
        v = exact.action_values(tasks, logits, gamma=gamma).v
        assert torch.allclose(v[:, 0, 0], J, rtol=1e-13, atol=0)
        assert torch.equal(v[:, -1], torch.zeros(3, 10, dtype=F64))


def test_expected_estimator_gradients_are_the_policy_gradient():
    # At lambda = 1 the three expected objectives have gradient grad J for any baseline (policy gradient theorem,
    # computed from d_t, pi and Q_t), which autograd obtains here through the forward recursion of J.
    tasks = sample_tasks(2, seed=10)
    logits = _randn(2, 10, 5, seed=11).requires_grad_()
    (gJ,) = torch.autograd.grad(exact.expected_return(tasks, logits).sum(), logits)
    baseline = _randn(2, 10, 10, seed=12)
    for kind in exact.ESTIMATOR_KINDS:
        for values in (None, baseline):
            obj = exact.expected_estimator_objective(kind, tasks, logits, values=values)
            (g,) = torch.autograd.grad(obj.sum(), logits)
            assert torch.allclose(g, gJ, rtol=0, atol=1e-12), (kind, values is None)
    # lambda < 1 bootstraps from the values: with the exact V_t the gradient is still grad J, with others not.
    v_exact = exact.action_values(tasks, logits.detach()).v[:, :-1]
    for values, same in ((v_exact, True), (baseline, False)):
        obj = exact.expected_estimator_objective("surrogate", tasks, logits, lam=0.5, values=values)
        (g,) = torch.autograd.grad(obj.sum(), logits)
        assert torch.allclose(g, gJ, rtol=0, atol=1e-12) is same


# ------------------------------------------------------------------------------------- finite differences
def test_return_gradients_match_finite_differences():
    tasks = sample_tasks(2, num_states=4, num_actions=3, seed=13, scale_range=(-1.0, 1.0))
    logits = _randn(2, 4, 3, seed=14).requires_grad_()
    P, R, c = (t.clone().requires_grad_() for t in tasks)
    for gamma in (1.0, 0.8):
        report = check_gradients(
            lambda gamma=gamma: exact.expected_return(TaskBatch(P, R, c), logits, horizon=5, gamma=gamma).sum(),
            {"logits": logits, "reward_means": R, "scales": c, "transitions": P}, eps=1e-6, rtol=1e-6)
        assert report.passed, report.table()


def test_network_return_gradient_matches_finite_differences():
    torch.manual_seed(1)
    net = ActorCritic(10, 5, 8).double()
    tasks = sample_tasks(2, seed=15)
    params = {n: p for n, p in net.named_parameters() if not n.startswith("value")}
    report = check_gradients(lambda: exact.expected_return(tasks, exact.policy_logits(net, num_states=10)).sum(),
                             params, eps=1e-6, rtol=1e-6, max_elements=12)
    assert report.passed, report.table()


@pytest.mark.parametrize("steps", [1, 2])
def test_exact_maml_meta_gradient_matches_finite_differences(steps):
    tasks = sample_tasks(3, num_states=4, num_actions=3, seed=16)
    policy = exact.TabularPolicy(4, 3, _randn(4, 3, seed=17))
    lr = torch.tensor(0.7, dtype=F64, requires_grad=True)

    def objective():
        return exact.exact_maml_return(lambda p: exact.policy_logits(policy, p, num_states=4),
                                       dict(policy.named_parameters()), tasks, lr=lr, steps=steps, horizon=5,
                                       gamma=1.0, inner_gamma=0.9, grad_scale=0.2).sum()

    report = check_gradients(objective, {"theta0": policy.logits, "lr": lr}, eps=1e-6, rtol=1e-6)
    assert report.passed, report.table()


def test_exact_maml_network_meta_gradient_matches_finite_differences():
    torch.manual_seed(2)
    net = ActorCritic(10, 5, 8).double()
    tasks = sample_tasks(2, seed=18)
    params = dict(net.named_parameters())

    def objective():
        return exact.exact_maml_return(lambda p: exact.policy_logits(net, p, num_states=10), params, tasks,
                                       lr=1.0, grad_scale=0.1).sum()

    inputs = {n: p for n, p in params.items() if n in ("body.0.weight", "body.2.bias", "policy.weight")}
    report = check_gradients(objective, inputs, eps=1e-6, rtol=1e-6, max_elements=8)
    assert report.passed, report.table()


def test_estimator_limit_matches_plain_autograd():
    # The surrogate/LVC limits detach their stop-gradient parts under vmap(grad): compare with create_graph.
    tasks = sample_tasks(2, num_states=4, num_actions=3, seed=19)
    logits = _randn(4, 3, seed=20).requires_grad_()
    values = _randn(5, 4, seed=21)
    for kind in ("surrogate", "lvc"):
        out = exact.exact_maml_return(lambda p: p["l"], {"l": logits}, tasks, lr=0.6, horizon=5,
                                      inner_estimator=kind, lam=0.8, values=values)
        (g_vmap,) = torch.autograd.grad(out.sum(), logits)
        total = 0.0
        for n in range(2):
            task = tasks.select(n)
            inner = exact.expected_estimator_objective(kind, task, logits, horizon=5, lam=0.8, values=values).sum()
            (step,) = torch.autograd.grad(inner, logits, create_graph=True)
            total = total + exact.expected_return(task, logits + 0.6 * step, horizon=5).sum()
        (g_plain,) = torch.autograd.grad(total, logits)
        assert torch.allclose(g_vmap, g_plain, rtol=1e-12, atol=1e-14), kind
    # ... and the surrogate's limit is not the exact meta-gradient (its Hessian is biased).
    ex = exact.exact_maml_return(lambda p: p["l"], {"l": logits}, tasks, lr=0.6, horizon=5, values=values)
    (g_exact,) = torch.autograd.grad(ex.sum(), logits)
    assert (g_exact - g_vmap).norm() > 1e-2 * g_exact.norm()


def test_policy_logits_of_tabular_policy_and_actor_critic():
    policy = exact.TabularPolicy(3, 2, _randn(3, 2, seed=22))
    assert torch.equal(exact.policy_logits(policy, num_states=3), policy.logits)
    net = ActorCritic(3, 2, 4).double()
    table = exact.policy_logits(net, num_states=3)
    obs = torch.eye(3, dtype=F64)[torch.tensor([2, 0])]
    assert torch.allclose(table[torch.tensor([2, 0])], net(obs)[0], atol=1e-15)


# ------------------------------------------------------------------------------------------- bad inputs
def test_bad_inputs_raise_one_clear_error():
    tasks = sample_tasks(2, num_states=3, num_actions=2, seed=0)
    good = torch.zeros(3, 2, dtype=F64)
    with pytest.raises(ValueError, match=r"logits must have shape \[S, A\] = \[3, 2\] or \[N, S, A\]"):
        exact.expected_return(tasks, torch.zeros(3, 3, dtype=F64))
    with pytest.raises(TypeError, match="logits has dtype torch.float32 but tasks have dtype torch.float64"):
        exact.expected_return(tasks, good.float())
    with pytest.raises(ValueError, match=r"gamma must be a number in \[0, 1\], got 1.5"):
        exact.expected_return(tasks, good, gamma=1.5)
    with pytest.raises(ValueError, match="horizon must be an int >= 1, got 0"):
        exact.action_values(tasks, good, horizon=0)
    with pytest.raises(TypeError, match="tasks must be a metaopt.envs.TaskBatch, got dict"):
        exact.expected_return({}, good)
    with pytest.raises(ValueError, match=r"kind must be one of \('dice', 'surrogate', 'lvc'\), got 'sgd'"):
        exact.expected_estimator_objective("sgd", tasks, good)
    with pytest.raises(ValueError, match=r"values must be None or a tensor of shape \[T, S\] = \[10, 3\]"):
        exact.expected_estimator_objective("lvc", tasks, good, values=torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match="steps must be an int >= 1, got 0"):
        exact.exact_maml_return(lambda p: p["l"], {"l": good}, tasks, lr=0.1, steps=0)
    with pytest.raises(ValueError, match="inner_estimator must be one of"):
        exact.exact_maml_return(lambda p: p["l"], {"l": good}, tasks, lr=0.1, inner_estimator="reinforce")
    with pytest.raises(TypeError, match="model must be an nn.Module, got str"):
        exact.policy_logits("net", num_states=3)
