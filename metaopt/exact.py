r"""Exact returns, values, policy gradients and MAML objectives on TabularMDP tasks (an oracle).

With one-hot states every policy is a table of logits :math:`\ell[s, a]` and
:math:`\pi(a \mid s) = \operatorname{softmax}_a \ell[s, \cdot]`. For a task with transitions
:math:`P(s' \mid s, a)`, mean rewards :math:`R[s, a]` and scale :math:`c` (the simulator's reward is
:math:`r_t = c\,(R[s_t, a_t] + z_t)`, :math:`z_t \sim \mathcal N(0, 1)`, episodes start in state 0 and last
``horizon`` :math:`= T` steps), the expected finite-horizon return is exact:

.. math::

    J = \sum_{t<T} \gamma^t \sum_s d_t(s) \sum_a \pi(a \mid s)\, c\, R[s, a], \qquad
    d_0 = e_{s_0}, \quad d_{t+1}(s') = \sum_{s, a} d_t(s)\, \pi(a \mid s)\, P(s' \mid s, a).

It is the expectation of :math:`\sum_{t<T} \gamma^t r_t` over the simulator's trajectories
(:class:`metaopt.envs.BatchedTabularMDP`): :math:`\gamma = 1` is the undiscounted per-episode return the
MAML-A2C job reports, :math:`\gamma = 0.99` the discount of its λ-returns. Everything is a differentiable
tensor program (autograd through the logits, hence through network parameters :math:`\theta` via
:func:`policy_logits`, the rewards and the scales), batched over tasks with no Python loop over tasks
(the loop runs over the :math:`T` time steps). Use float64 for exactness checks.

**Normalization of the MAML step.** :func:`exact_maml_return` takes the inner step
:math:`\theta_{k+1} = \theta_k + \alpha \kappa \nabla_\theta J(\theta_k)`. A sampled estimator loss
:math:`\hat L` of :mod:`metaopt.estimators` satisfies :math:`\mathbb E[\nabla \hat L] = -\kappa \nabla J`
with :math:`\kappa` = :func:`metaopt.estimators.gradient_scale` (:math:`1/T` for ``reduction="mean"``, the
job's mean over :math:`T \times B`; :math:`1` for ``reduction="sum"``), so one SGD step
:math:`\theta' = \theta - \alpha \nabla \hat L` of rate :math:`\alpha` has the expected first-order
counterpart :math:`\theta + \alpha \kappa \nabla J`: pass ``grad_scale=κ``.

**Expected estimator objectives.** :func:`expected_estimator_objective` gives, for each sampled estimator,
a function of the logits whose first and second derivatives at the current policy equal the *expected*
derivatives of the estimator's objective (the quantities held fixed by a stop-gradient are evaluated
exactly and detached). Its gradient is :math:`\nabla J` for all three estimators at :math:`\lambda = 1`
(the policy gradient theorem); its Hessian is :math:`\nabla^2 J` for DiCE only. That yields the exact
:math:`N \to \infty` limit of each estimator's MAML meta-gradient (``inner_estimator=`` of
:func:`exact_maml_return`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metaopt._validation import check_choice, check_int, check_real, is_concrete
from metaopt.envs.tabular_mdp import DEFAULT_HORIZON, TaskBatch

__all__ = [
    "ESTIMATOR_KINDS",
    "ExactValues",
    "TabularPolicy",
    "policy_logits",
    "state_distributions",
    "expected_return",
    "action_values",
    "expected_estimator_objective",
    "exact_maml_return",
]

Params = dict[str, Tensor]
#: Estimators whose expected objective :func:`expected_estimator_objective` knows.
ESTIMATOR_KINDS = ("dice", "surrogate", "lvc")


class ExactValues(NamedTuple):
    r"""Time-dependent exact values of a finite-horizon policy.

    Attributes:
        q: ``[N, T, S, A]`` :math:`Q_t(s, a) = c R[s, a] + \gamma \sum_{s'} P(s' \mid s, a) V_{t+1}(s')`.
        v: ``[N, T + 1, S]`` :math:`V_t(s) = \sum_a \pi(a \mid s) Q_t(s, a)`, :math:`V_T = 0`.
    """

    q: Tensor
    v: Tensor


class TabularPolicy(nn.Module):
    r"""A policy that *is* a table of logits: ``forward(obs) = obs @ logits`` (one-hot ``obs`` picks a row).

    The smallest :class:`~torch.nn.Module` for the meta-gradient engines; its parameter ``logits`` is
    :math:`\theta` itself, so :func:`policy_logits` returns it unchanged.

    Args:
        num_states: :math:`S`.
        num_actions: :math:`A`.
        logits: Optional initial ``[S, A]`` table (default zeros: the uniform policy).
        dtype: Floating dtype of the parameter.
    """

    def __init__(self, num_states: int, num_actions: int, logits: Tensor | None = None,
                 dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        s = check_int("num_states", num_states, low=1)
        a = check_int("num_actions", num_actions, low=1)
        if logits is None:
            logits = torch.zeros(s, a, dtype=dtype)
        if not isinstance(logits, Tensor) or tuple(logits.shape) != (s, a):
            raise ValueError(f"logits must be a tensor of shape [S, A] = [{s}, {a}], got {_shape(logits)}")
        self.logits = nn.Parameter(logits.detach().clone().to(dtype))

    def forward(self, obs: Tensor) -> Tensor:
        """Logits ``[..., A]`` of observations ``[..., S]``."""
        return obs @ self.logits


# ------------------------------------------------------------------------------------------------ validation
def _shape(x: object) -> object:
    return tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__


def _check_tasks(tasks: TaskBatch) -> TaskBatch:
    if not isinstance(tasks, TaskBatch):
        raise TypeError(f"tasks must be a metaopt.envs.TaskBatch, got {type(tasks).__name__}")
    return tasks.validate()


def _check_logits(logits: Tensor, tasks: TaskBatch) -> None:
    n, s, a = tasks.num_tasks, tasks.num_states, tasks.num_actions
    if not isinstance(logits, Tensor) or not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got {getattr(logits, 'dtype', type(logits))!r}")
    if tuple(logits.shape) not in ((s, a), (n, s, a)):
        raise ValueError(
            f"logits must have shape [S, A] = [{s}, {a}] or [N, S, A] = [{n}, {s}, {a}] to match tasks, "
            f"got {list(logits.shape)}"
        )
    if logits.dtype != tasks.transitions.dtype:
        raise TypeError(
            f"logits has dtype {logits.dtype} but tasks have dtype {tasks.transitions.dtype}; expected one dtype "
            "(cast with tasks.to(dtype) or logits.to(dtype))"
        )


def _check_gamma(gamma: float) -> float:
    return check_real("gamma", gamma, low=0.0, high=1.0)


def _check_values(values: Tensor | None, tasks: TaskBatch, horizon: int) -> Tensor | None:
    """Baseline/bootstrap values: ``None``, ``[T, S]`` or ``[N, T, S]``; returned as ``[N, T, S]``."""
    if values is None:
        return None
    n, s = tasks.num_tasks, tasks.num_states
    if not isinstance(values, Tensor) or tuple(values.shape) not in ((horizon, s), (n, horizon, s)):
        raise ValueError(
            f"values must be None or a tensor of shape [T, S] = [{horizon}, {s}] or [N, T, S] = [{n}, {horizon}, "
            f"{s}] (V_t(s) per time step and state), got {_shape(values)}"
        )
    return values.detach().to(tasks.transitions.dtype).expand(n, horizon, s)


# ------------------------------------------------------------------------------------------------ the oracle
# The private functions below work on any leading batch shape ("..."): [N, ...] batched, or one task under
# torch.func.vmap (no leading dimension). pi: [..., S, A]; P: [..., S, A, S]; R: [..., S, A]; c: [...].
def _distributions(pi: Tensor, P: Tensor, horizon: int) -> Tensor:
    """``[..., T, S]`` state distributions :math:`d_t`, :math:`d_0 = e_0`."""
    p_pi = torch.einsum("...sa,...sat->...st", pi, P)
    column = pi[..., 0]  # [..., S]
    d = torch.cat([torch.ones_like(column[..., :1]), torch.zeros_like(column[..., 1:])], dim=-1)  # e_0
    out = [d]
    for _ in range(horizon - 1):
        d = torch.einsum("...s,...st->...t", d, p_pi)
        out.append(d)
    return torch.stack(out, dim=-2)


def _discounts(gamma: float, horizon: int, like: Tensor) -> Tensor:
    return gamma ** torch.arange(horizon, dtype=like.dtype, device=like.device)


def _expected_return(pi: Tensor, P: Tensor, R: Tensor, c: Tensor, horizon: int, gamma: float) -> Tensor:
    d = _distributions(pi, P, horizon)  # [..., T, S]
    r_pi = c[..., None] * (pi * R).sum(-1)  # [..., S]
    per_t = (d * r_pi[..., None, :]).sum(-1)  # [..., T]
    return (per_t * _discounts(gamma, horizon, per_t)).sum(-1)


def _action_values(
    pi: Tensor, P: Tensor, R: Tensor, c: Tensor, horizon: int, gamma: float, lam: float = 1.0,
    values: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Backward recursion for :math:`Q^\lambda_t` (``[..., T, S, A]``) and :math:`V_t` (``[..., T + 1, S]``).

    :math:`Q^\lambda_{T-1} = cR`; :math:`Q^\lambda_t = cR + \gamma \sum_{s'} P(s' \mid s, a)
    [(1 - \lambda) V^b_{t+1}(s') + \lambda \sum_{a'} \pi(a' \mid s') Q^\lambda_{t+1}(s', a')]` with the
    bootstrap values :math:`V^b` (``values``, ``[..., T, S]``); at :math:`\lambda = 1` it is :math:`Q^\pi_t`.
    """
    reward = c[..., None, None] * R
    v_next = torch.zeros_like(pi[..., 0])  # V_T = 0 (the episode ends at T - 1: done, no bootstrap)
    qs, vs = [], [v_next]
    for t in range(horizon - 1, -1, -1):
        if t == horizon - 1:
            q = reward
        else:
            if lam == 1.0:
                target = v_next
            else:
                bootstrap = values[..., t + 1, :] if values is not None else torch.zeros_like(v_next)
                target = (1 - lam) * bootstrap + lam * v_next
            q = reward + gamma * torch.einsum("...sat,...t->...sa", P, target)
        v_next = (pi * q).sum(-1)
        qs.append(q)
        vs.append(v_next)
    return torch.stack(qs[::-1], dim=-3), torch.stack(vs[::-1], dim=-2)


def _estimator_objective(
    kind: str, logits: Tensor, P: Tensor, R: Tensor, c: Tensor, horizon: int, gamma: float, lam: float,
    values: Tensor | None,
) -> Tensor:
    logp = torch.log_softmax(logits, dim=-1)
    if kind == "dice":
        return _expected_return(logp.exp(), P, R, c, horizon, gamma)
    pi0 = logp.detach().exp()
    d = _distributions(pi0, P, horizon).detach()  # [..., T, S]
    q, _ = _action_values(pi0, P, R.detach(), c.detach(), horizon, gamma, lam, values)
    baseline = values if values is not None else torch.zeros_like(d)
    adv = (q - baseline[..., None]).detach()  # E[G^λ_t - V_t(s_t) | s_t = s, a_t = a], [..., T, S, A]
    weight = d * _discounts(gamma, horizon, d)[:, None]  # γ^t d_t(s), [..., T, S]
    if kind == "surrogate":
        per_sa = pi0[..., None, :, :] * adv * logp[..., None, :, :]
    else:  # lvc: π_θ / sg(π_θ) · sg(π_θ) = π_θ
        per_sa = logp.exp()[..., None, :, :] * adv
    return (weight * per_sa.sum(-1)).sum((-2, -1))


# ------------------------------------------------------------------------------------------------ public API
def policy_logits(
    model: nn.Module, params: Mapping[str, Tensor] | None = None, *, num_states: int, output: int = 0
) -> Tensor:
    r"""The ``[S, A]`` logit table of a network on the one-hot states: :math:`\ell_\theta[s] = f_\theta(e_s)`.

    Runs ``torch.func.functional_call(model, params, (I_S,))`` on the identity matrix, so the table (and
    every exact quantity computed from it) is a differentiable function of the parameters :math:`\theta`.

    Args:
        model: The network (e.g. :class:`metaopt.rl.ActorCritic`, :class:`TabularPolicy`).
        params: Parameters by name (default: the model's own).
        num_states: :math:`S` (the observation size).
        output: Which element is the logits when the model returns a tuple (``ActorCritic`` returns
            ``(logits, value)``: 0).

    Returns:
        ``[S, A]`` logits in the parameters' dtype.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    s = check_int("num_states", num_states, low=1)
    p: dict[str, Tensor] = dict(model.named_parameters()) if params is None else dict(params)
    if not p:
        raise ValueError("params must name at least one parameter tensor, got an empty mapping")
    ref = next(iter(p.values()))
    out = functional_call(model, p, (torch.eye(s, dtype=ref.dtype, device=ref.device),))
    if isinstance(out, tuple | list):
        check_int("output", output, low=0, high=len(out) - 1)
        out = out[output]
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != s:
        raise ValueError(f"model must map [S, S] one-hot states to [S, A] logits, got {_shape(out)}")
    return out


def state_distributions(tasks: TaskBatch, logits: Tensor, *, horizon: int = DEFAULT_HORIZON) -> Tensor:
    r"""State distributions :math:`d_t(s) = \Pr(s_t = s)` for :math:`t < T`, ``[N, T, S]``.

    .. math:: d_0 = e_0, \qquad d_{t+1}(s') = \sum_{s, a} d_t(s)\, \pi(a \mid s)\, P(s' \mid s, a).

    Args:
        tasks: The tasks (:class:`~metaopt.envs.TaskBatch`).
        logits: ``[S, A]`` (shared) or ``[N, S, A]`` (per-task) logits.
        horizon: :math:`T`.
    """
    tasks = _check_tasks(tasks)
    _check_logits(logits, tasks)
    horizon = check_int("horizon", horizon, low=1)
    pi = torch.softmax(logits, -1).expand(tasks.num_tasks, -1, -1)
    return _distributions(pi, tasks.transitions, horizon)


def expected_return(
    tasks: TaskBatch, logits: Tensor, *, horizon: int = DEFAULT_HORIZON, gamma: float = 1.0
) -> Tensor:
    r"""Exact expected return of each task, ``[N]``.

    .. math:: J = \mathbb E\Big[\sum_{t<T} \gamma^t r_t\Big]
        = \sum_{t<T} \gamma^t \sum_s d_t(s) \sum_a \pi(a \mid s)\, c\, R[s, a].

    Differentiable in ``logits``, ``tasks.reward_means``, ``tasks.scales`` and ``tasks.transitions``.

    Args:
        tasks: The tasks.
        logits: ``[S, A]`` (shared) or ``[N, S, A]`` (per-task) logits; same dtype as ``tasks``.
        horizon: :math:`T` (the simulator's episode length).
        gamma: Discount in ``[0, 1]``; 1 is the undiscounted return the job reports.

    Returns:
        ``[N]`` expected returns.

    Example:
        >>> from metaopt.envs import sample_tasks
        >>> tasks = sample_tasks(2, seed=0)
        >>> expected_return(tasks, torch.zeros(10, 5, dtype=torch.float64)).shape
        torch.Size([2])
    """
    tasks = _check_tasks(tasks)
    _check_logits(logits, tasks)
    horizon, gamma = check_int("horizon", horizon, low=1), _check_gamma(gamma)
    pi = torch.softmax(logits, -1).expand(tasks.num_tasks, -1, -1)
    return _expected_return(pi, tasks.transitions, tasks.reward_means, tasks.scales, horizon, gamma)


def action_values(
    tasks: TaskBatch, logits: Tensor, *, horizon: int = DEFAULT_HORIZON, gamma: float = 1.0
) -> ExactValues:
    r"""Exact time-dependent :math:`Q_t(s, a)` and :math:`V_t(s)` of the policy (backward recursion).

    .. math::
        Q_t(s, a) = c R[s, a] + \gamma \sum_{s'} P(s' \mid s, a)\, V_{t+1}(s'), \quad
        V_t(s) = \sum_a \pi(a \mid s) Q_t(s, a), \quad V_T = 0,

    so :math:`V_0(s_0) = J` (:func:`expected_return`, computed forward) and
    :math:`Q_t(s, a) = \mathbb E[\sum_{t' \ge t} \gamma^{t'-t} r_{t'} \mid s_t = s, a_t = a]`.

    Args:
        tasks: The tasks.
        logits: ``[S, A]`` or ``[N, S, A]`` logits.
        horizon: :math:`T`.
        gamma: Discount in ``[0, 1]``.

    Returns:
        :class:`ExactValues` with ``q`` ``[N, T, S, A]`` and ``v`` ``[N, T + 1, S]``.
    """
    tasks = _check_tasks(tasks)
    _check_logits(logits, tasks)
    horizon, gamma = check_int("horizon", horizon, low=1), _check_gamma(gamma)
    pi = torch.softmax(logits, -1).expand(tasks.num_tasks, -1, -1)
    q, v = _action_values(pi, tasks.transitions, tasks.reward_means, tasks.scales, horizon, gamma)
    return ExactValues(q, v)


def expected_estimator_objective(
    kind: str, tasks: TaskBatch, logits: Tensor, *, horizon: int = DEFAULT_HORIZON, gamma: float = 1.0,
    lam: float = 1.0, values: Tensor | None = None,
) -> Tensor:
    r"""Expected objective of a sampled estimator: its derivatives at the current logits are the estimator's.

    Per task (``[N]``), unnormalized (:math:`\kappa = 1`): derivatives of orders 1 and 2 at the logits passed
    in equal the expected derivatives of the sampled estimator's objective. With the stop-gradient quantities
    evaluated exactly at the current policy :math:`\pi_0 = \pi_\theta` and detached — :math:`d_t`,
    :math:`\pi_0`, and :math:`\mathbb E[A_t \mid s, a] = Q^\lambda_t(s, a) - V_t(s)` (:math:`Q^\lambda` as in
    the sampled λ-return with bootstrap values ``values``) —

    .. math::
        \begin{aligned}
        \text{dice: } & J(\theta) \\
        \text{surrogate: } & \sum_{t<T} \gamma^t \sum_s d_t(s) \sum_a \pi_0(a \mid s)
            \big(Q^\lambda_t(s, a) - V_t(s)\big) \log \pi_\theta(a \mid s) \\
        \text{lvc: } & \sum_{t<T} \gamma^t \sum_s d_t(s) \sum_a \pi_\theta(a \mid s)
            \big(Q^\lambda_t(s, a) - V_t(s)\big)
        \end{aligned}

    At :math:`\lambda = 1` (any baseline) all three gradients equal :math:`\nabla J` (the policy gradient
    theorem). The Hessians differ: DiCE's is :math:`\nabla^2 J`; the surrogate's misses the score terms
    :math:`\nabla \log \pi \, \nabla \log \pi^\top` and the derivative of :math:`d_t`, :math:`Q_t`; LVC keeps
    the per-step curvature :math:`\nabla^2 \pi` but drops the cross terms between time steps (the
    derivatives of :math:`d_t` and :math:`Q_t`).

    .. note:: Valid for derivatives *at* the logits passed in (the detached parts are frozen there), which is
        how a sampled estimator is used in a MAML inner step. Reward tensors are detached for the
        surrogate/LVC (their advantages are stop-gradient); DiCE's objective is :math:`J` itself.

    Args:
        kind: ``"dice"``, ``"surrogate"`` or ``"lvc"``.
        tasks: The tasks.
        logits: ``[S, A]`` or ``[N, S, A]`` logits (with autograd history).
        horizon: :math:`T`.
        gamma: Discount (also the weight :math:`\gamma^t` of step :math:`t`, as in :mod:`metaopt.estimators`).
        lam: λ of the λ-returns (1: Monte-Carlo returns, unbiased advantages).
        values: Baseline and bootstrap values :math:`V_t(s)`, ``[T, S]`` or ``[N, T, S]`` (``None`` = 0);
            a time-independent :math:`V(s)` (a value network) is ``v.expand(T, S)``.

    Returns:
        ``[N]`` objectives (to be maximized; the estimators' losses are :math:`-\kappa` times these).
    """
    check_choice("kind", kind, ESTIMATOR_KINDS)
    tasks = _check_tasks(tasks)
    _check_logits(logits, tasks)
    horizon, gamma = check_int("horizon", horizon, low=1), _check_gamma(gamma)
    lam = check_real("lam", lam, low=0.0, high=1.0)
    v = _check_values(values, tasks, horizon)
    full = logits.expand(tasks.num_tasks, -1, -1)
    return _estimator_objective(kind, full, tasks.transitions, tasks.reward_means, tasks.scales, horizon, gamma,
                                lam, v)


def exact_maml_return(
    logits_fn: Callable[[Params], Tensor],
    params: Mapping[str, Tensor],
    tasks: TaskBatch,
    *,
    lr: float | Tensor,
    steps: int = 1,
    horizon: int = DEFAULT_HORIZON,
    gamma: float = 1.0,
    inner_gamma: float | None = None,
    grad_scale: float = 1.0,
    inner_estimator: str | None = None,
    lam: float = 1.0,
    values: Tensor | None = None,
) -> Tensor:
    r"""Exact MAML objective per task: :math:`J_n(\theta_K)` after :math:`K` exact inner policy-gradient steps.

    .. math::
        \theta_0 = \theta, \qquad
        \theta_{k+1} = \theta_k + \alpha \kappa\, \nabla_\theta J^{inner}_n(\theta_k), \qquad
        \text{returns } J_n(\theta_K),

    where :math:`J^{inner}` is :math:`J` with ``inner_gamma`` (``inner_estimator=None`` or ``"dice"``), or the
    expected objective of the surrogate/LVC estimator (:func:`expected_estimator_objective`), which gives the
    :math:`N \to \infty` limit of that estimator's sampled MAML step and meta-gradient. The inner gradients
    are taken with ``torch.func.grad`` under ``torch.func.vmap`` over tasks (one tensor program), so
    ``J.sum().backward()`` (or ``torch.autograd.grad``) yields the exact meta-gradient
    :math:`\sum_n (I + \alpha \kappa \nabla^2 J_n(\theta)) \nabla J_n(\theta_1)` (for :math:`K = 1`) w.r.t.
    the initial parameters and, if ``lr`` is a tensor that requires grad, w.r.t. :math:`\alpha`.

    Args:
        logits_fn: Maps a parameter dict to the ``[S, A]`` logit table, e.g.
            ``lambda p: policy_logits(model, p, num_states=S)``.
        params: Initial parameters :math:`\theta` by name (leaf tensors that require grad, for meta-gradients).
        tasks: The tasks.
        lr: Inner learning rate :math:`\alpha` (a float or a 0-dim tensor).
        steps: Number of inner steps :math:`K \ge 1`.
        horizon: :math:`T`.
        gamma: Discount of the outer return (1 = the job's reported return).
        inner_gamma: Discount of the inner objective (default ``gamma``).
        grad_scale: :math:`\kappa`, the multiple of :math:`\nabla J` that one SGD step on the sampled loss
            follows in expectation (:func:`metaopt.estimators.gradient_scale`; ``1/T`` for the job's mean).
        inner_estimator: ``None`` (exact gradient), ``"dice"`` (same), ``"surrogate"`` or ``"lvc"``.
        lam: λ of the surrogate/LVC advantages.
        values: Baseline/bootstrap values for the surrogate/LVC, ``[T, S]`` or ``[N, T, S]``.

    Returns:
        ``[N]`` post-adaptation returns :math:`J_n(\theta_K)`.
    """
    if not callable(logits_fn):
        raise TypeError(f"logits_fn must be callable(params) -> [S, A] logits, got {type(logits_fn).__name__}")
    if not isinstance(params, Mapping) or not params:
        raise TypeError(f"params must be a non-empty mapping name -> tensor, got {params!r}")
    tasks = _check_tasks(tasks)
    steps, horizon = check_int("steps", steps, low=1), check_int("horizon", horizon, low=1)
    gamma = _check_gamma(gamma)
    inner_gamma = gamma if inner_gamma is None else check_real("inner_gamma", inner_gamma, low=0.0, high=1.0)
    grad_scale = check_real("grad_scale", grad_scale, low=0.0, low_open=True)
    if isinstance(lr, Tensor):
        if lr.numel() != 1 or not lr.is_floating_point():
            raise ValueError(f"lr must be a float or a 0-dim floating tensor, got {_shape(lr)}")
        if is_concrete(lr) and not bool(torch.isfinite(lr)):
            raise ValueError(f"lr must be finite, got {float(lr)}")
        lr = lr.reshape(())
    else:
        check_real("lr", lr)
    kind = "dice" if inner_estimator is None else check_choice("inner_estimator", inner_estimator, ESTIMATOR_KINDS)
    lam = check_real("lam", lam, low=0.0, high=1.0)
    v = _check_values(values, tasks, horizon)
    _check_logits(logits_fn(dict(params)), tasks)
    start = dict(params)

    def one_task(P: Tensor, R: Tensor, c: Tensor, vals: Tensor | None) -> Tensor:
        theta = start
        for _ in range(steps):
            def inner(p: Params) -> Tensor:
                return _estimator_objective(kind, logits_fn(p), P, R, c, horizon, inner_gamma, lam, vals)

            g = torch.func.grad(inner)(theta)
            theta = {n: theta[n] + (lr * grad_scale) * g[n] for n in theta}
        return _expected_return(torch.softmax(logits_fn(theta), -1), P, R, c, horizon, gamma)

    in_dims = (0, 0, 0, 0 if v is not None else None)
    return torch.func.vmap(one_task, in_dims=in_dims)(tasks.transitions, tasks.reward_means, tasks.scales, v)
