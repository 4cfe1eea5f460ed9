r"""Policy-gradient estimators whose *derivatives* drive a MAML inner step: surrogate, DiCE and LVC.

Each estimator is a pure function of one task's time-major trajectory tensors (``[T, B]``, or ``[T, ...]``
with any trailing batch shape): the log-probabilities :math:`\log \pi_\theta(a_t \mid s_t)` *with* autograd
history, the rewards, the ``dones`` and a baseline/value tensor (always used detached). It returns a
scalar **loss to minimize** (the negative objective), usable as the policy term of an inner loss on any
engine (:func:`metaopt.engines.adapt`).

**Normalization (one convention for all three).** Within an episode, step :math:`t` is weighted by
:math:`w_t = \gamma^t` (restarting at 1 after a ``done``; :func:`episode_discounts`), the per-trajectory
objective is a sum over time, and the loss averages it over trajectories and divides by :math:`D`:

.. math::
    \hat L = -\frac{1}{B D} \sum_{b=1}^{B} \sum_{t<T} w_t\, f_t(\tau_b), \qquad
    D = T \text{ for } \texttt{reduction="mean"} \text{ (default)}, \quad D = 1 \text{ for } \texttt{"sum"},

so ``"mean"`` is a mean over the :math:`T \times B` elements, the scale of the job's A2C loss. With
Monte-Carlo advantages (:math:`\lambda = 1`) and a stop-gradient baseline, for all three estimators

.. math:: \mathbb E[\nabla_\theta \hat L] = -\kappa\, \nabla_\theta J_\gamma, \qquad \kappa = 1/D
    \;(\text{:func:`gradient_scale`}),

where :math:`J_\gamma = \mathbb E[\sum_{t<T} \gamma^t r_t]` is :func:`metaopt.exact.expected_return` with the
same :math:`\gamma`. Their first derivatives are even equal sample by sample (each is
:math:`-\frac{1}{BD} \sum_{b,t} \gamma^t (G_t - b_t) \nabla \log \pi_t` with the discounted reward-to-go
:math:`G_t`), so an inner learning rate means the same thing for all three, and one SGD step of rate
:math:`\alpha` follows :math:`\alpha \kappa \nabla J` in expectation (:func:`metaopt.exact.exact_maml_return`
with ``grad_scale=κ``). They differ in their second derivatives, i.e. in the MAML meta-gradient:

================  ==========================  ============================================================
estimator         first derivative            Hessian (expectation)
================  ==========================  ============================================================
:func:`surrogate`  unbiased at λ = 1           biased: misses the score terms of :math:`\nabla^2 J`
:func:`lvc`        unbiased at λ = 1           biased: drops the cross terms between time steps (small)
:func:`dice`       unbiased                    unbiased (every order), :math:`-\kappa \nabla^2 J`
================  ==========================  ============================================================

.. note:: **The γ-weight.** TorchOpt's MAML-RL loss (what the job uses today) is
    :math:`-\operatorname{mean}(A \log \pi)` with *no* :math:`\gamma^t`: for :math:`\gamma < 1` it is not the
    gradient of any objective (Nota & Thomas, 2020). It is ``surrogate(..., weight_by_discount=False)``;
    with :math:`\gamma = 1` both forms coincide (and with :math:`\lambda = 1` its gradient is exactly
    :math:`\nabla J / T` in expectation). With :math:`\lambda < 1` (the job's 0.95) the advantages bootstrap
    from the value estimates and the first derivative is biased unless the values are exact.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from metaopt._validation import check_bool, check_choice, check_int, check_real

__all__ = [
    "ESTIMATORS",
    "REDUCTIONS",
    "gradient_scale",
    "magic_box",
    "episode_discounts",
    "lambda_returns",
    "lambda_return_sum",
    "surrogate",
    "lvc",
    "dice",
    "policy_loss",
]

#: Loss reductions: ``"mean"`` over the ``T x B`` elements (the job's scale) or ``"sum"`` over time.
REDUCTIONS = ("mean", "sum")


# ------------------------------------------------------------------------------------------------ helpers
def gradient_scale(reduction: str, horizon: int) -> float:
    r""":math:`\kappa` such that :math:`\mathbb E[\nabla \hat L] = -\kappa \nabla J` (:math:`\lambda = 1`).

    Args:
        reduction: ``"mean"`` (:math:`\kappa = 1/T`) or ``"sum"`` (:math:`\kappa = 1`).
        horizon: :math:`T`, the number of time steps of the trajectory tensors.

    Returns:
        :math:`\kappa`.
    """
    check_choice("reduction", reduction, REDUCTIONS)
    horizon = check_int("horizon", horizon, low=1)
    return 1.0 / horizon if reduction == "mean" else 1.0


def magic_box(x: Tensor) -> Tensor:
    r"""DiCE's MagicBox :math:`\square(x) = \exp(x - \perp(x))`.

    Its value is 1 and :math:`\nabla \square(x) = \square(x) \nabla x`; :math:`\perp` is the stop-gradient
    (``detach``), so every derivative order keeps the score factors.
    """
    return torch.exp(x - x.detach())


def episode_discounts(dones: Tensor, gamma: float) -> Tensor:
    r"""Per-step weights :math:`w_t = \gamma^{t - t_0}`, :math:`t_0` the first step of :math:`t`'s episode.

    .. math:: w_0 = 1, \qquad w_{t+1} = \gamma w_t (1 - \text{done}_t) + \text{done}_t.

    Args:
        dones: ``[T, ...]``, 1.0 at the last step of an episode.
        gamma: Discount in ``[0, 1]``.

    Returns:
        ``[T, ...]`` weights (no autograd history).
    """
    gamma = check_real("gamma", gamma, low=0.0, high=1.0)
    d = dones.detach()
    w = [torch.ones_like(d[0])]
    for t in range(d.shape[0] - 1):
        w.append(gamma * w[-1] * (1 - d[t]) + d[t])
    return torch.stack(w)


def lambda_returns(
    rewards: Tensor, values: Tensor, dones: Tensor, *, gamma: float, lam: float, last_values: Tensor | None = None
) -> Tensor:
    r"""λ-returns, backwards over time (dim 0), bootstrapped from ``values``.

    .. math::
        G_t = r_t + \gamma_t \big((1 - \lambda) V(s_{t+1}) + \lambda G_{t+1}\big), \quad
        \gamma_t = \gamma (1 - \text{done}_t), \quad G_T = V(s_T) = \texttt{last\_values}.

    :math:`\lambda = 1` gives the Monte-Carlo discounted reward-to-go :math:`\sum_{t' \ge t} \gamma^{t'-t} r_{t'}`
    within the episode (unbiased for :math:`Q(s_t, a_t)`); :math:`\lambda = 0` the one-step TD target.

    Args:
        rewards: ``[T, ...]``.
        values: ``[T, ...]`` :math:`V(s_t)` (detached here).
        dones: ``[T, ...]``.
        gamma: Discount in ``[0, 1]``.
        lam: λ in ``[0, 1]``.
        last_values: ``[...]`` :math:`V(s_T)`, the bootstrap after the last step (``None`` = 0, exact when every
            trajectory ends with ``done = 1``, as the simulator's do).

    Returns:
        ``[T, ...]`` returns (no autograd history through ``values``).
    """
    gamma = check_real("gamma", gamma, low=0.0, high=1.0)
    lam = check_real("lam", lam, low=0.0, high=1.0)
    _check_same_shape(rewards=rewards, values=values, dones=dones)
    values = values.detach()
    last = torch.zeros_like(values[0]) if last_values is None else _check_last(last_values, values).detach()
    return lambda_return_sum(rewards, values, last, dones, gamma, lam)


def lambda_return_sum(rewards: Tensor, values: Tensor, last_values: Tensor, dones: Tensor, gamma: float,
                      lam: float) -> Tensor:
    r"""The λ-return recursion evaluated in closed form (the one implementation; no validation, no detaching).

    :math:`G_i = \sum_{j \ge i} \big(\prod_{k=i}^{j-1} \lambda\gamma_k\big) \delta_j` with
    :math:`\delta_j = r_j + \gamma_j (1-\lambda) V(s_{j+1})`, :math:`\delta_T = V(s_T)` and
    :math:`\gamma_k = \gamma (1 - \text{done}_k)`: one weighted sum instead of ``T`` sequential steps. The
    product is :math:`(\lambda\gamma)^{j-i}` when no episode ends in :math:`[i, j-1]`, else 0, so ``dones`` must be
    0 or 1. Shapes as in :func:`lambda_returns` (``last_values`` given).
    """
    horizon = rewards.shape[0]
    next_values = torch.cat([values[1:], last_values.unsqueeze(0)], dim=0)
    disc = gamma * (1.0 - dones)
    delta = torch.cat([rewards + disc * (1.0 - lam) * next_values, last_values.unsqueeze(0)], dim=0)
    ends = torch.cat([torch.zeros_like(dones[:1]), dones.cumsum(0)], dim=0)  # episode ends before step j, j = 0..T
    i = torch.arange(horizon, device=rewards.device)
    j = torch.arange(horizon + 1, device=rewards.device)
    power = (j[None, :] - i[:, None]).clamp(min=0).to(rewards.dtype)
    decay = torch.where(j[None, :] >= i[:, None], (lam * gamma) ** power, torch.zeros_like(power))
    extra = (1,) * (rewards.dim() - 1)
    same = (ends[None, :] == ends[:horizon, None]).to(rewards.dtype)  # [T, T + 1, ...]
    return ((decay.view(horizon, horizon + 1, *extra) * same) * delta[None]).sum(1)


# ------------------------------------------------------------------------------------------------ validation
def _check_same_shape(**tensors: Tensor | None) -> None:
    """All given tensors: floating, one shape ``[T, ...]`` with ``T >= 1``, one dtype (``None`` skipped)."""
    items = [(k, v) for k, v in tensors.items() if v is not None]
    for name, t in items:
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor [T, ...], got {getattr(t, 'dtype', type(t))!r}")
        if t.dim() < 1 or t.shape[0] < 1:
            raise ValueError(f"{name} must have a leading time dimension T >= 1, got shape {tuple(t.shape)}")
    ref_name, ref = items[0]
    for name, t in items[1:]:
        if t.shape != ref.shape:
            raise ValueError(
                f"{name} must have the shape of {ref_name} {tuple(ref.shape)} (time-major [T, B]), got {tuple(t.shape)}"
            )
        if t.dtype != ref.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {ref_name} has {ref.dtype}; expected one dtype")


def _check_last(last_values: Tensor, values: Tensor) -> Tensor:
    if not isinstance(last_values, Tensor) or last_values.shape != values.shape[1:]:
        shape = tuple(last_values.shape) if isinstance(last_values, Tensor) else type(last_values).__name__
        raise ValueError(f"last_values must have shape {tuple(values.shape[1:])} (values without T), got {shape}")
    return last_values


def _reduce(per_step: Tensor, reduction: str) -> Tensor:
    """``[T, ...]`` -> scalar: ``mean`` over all elements, or ``sum`` over time then mean over the batch."""
    return per_step.mean() if reduction == "mean" else per_step.sum(0).mean()


def _advantages(
    rewards: Tensor, values: Tensor | None, dones: Tensor, gamma: float, lam: float, last_values: Tensor | None
) -> Tensor:
    base = torch.zeros_like(rewards) if values is None else values.detach()
    returns = lambda_returns(rewards.detach(), base, dones, gamma=gamma, lam=lam, last_values=last_values)
    return (returns - base).detach()


# ------------------------------------------------------------------------------------------------ estimators
def surrogate(
    log_probs: Tensor,
    rewards: Tensor,
    dones: Tensor,
    values: Tensor | None = None,
    *,
    gamma: float,
    lam: float = 1.0,
    last_values: Tensor | None = None,
    reduction: str = "mean",
    weight_by_discount: bool = True,
) -> Tensor:
    r"""The score-function surrogate loss (TorchOpt's MAML-RL / A2C policy term).

    .. math::
        \hat L = -\frac{1}{BD} \sum_{b, t} w_t\, \perp(A_t) \log \pi_\theta(a_t \mid s_t), \qquad
        A_t = G^\lambda_t - V(s_t),

    with :math:`w_t = \gamma^t` (:func:`episode_discounts`; 1 if ``weight_by_discount=False``, the job's
    current form), :math:`G^\lambda` the λ-returns (:func:`lambda_returns`) bootstrapped from ``values`` and
    :math:`D` from ``reduction`` (see the module docstring).

    **Bias.** First derivative: unbiased, :math:`\mathbb E[\nabla \hat L] = -\kappa \nabla J_\gamma`, when
    :math:`\lambda = 1` and ``weight_by_discount`` (or :math:`\gamma = 1`), for any baseline. Second
    derivative: biased for every batch size,
    :math:`\mathbb E[\nabla^2 \hat L] = -\kappa\, \mathbb E[\sum_t w_t A_t \nabla^2 \log \pi_t] \ne -\kappa \nabla^2 J`
    (the score terms :math:`\mathbb E[A\, \nabla \log \pi \nabla \log \pi^\top]` and the cross terms are missing),
    so its MAML meta-gradient stays biased as :math:`B \to \infty`.

    Args:
        log_probs: ``[T, ...]`` :math:`\log \pi_\theta(a_t \mid s_t)` with autograd history.
        rewards: ``[T, ...]`` rewards :math:`r_t`.
        dones: ``[T, ...]`` 1.0 at the last step of an episode.
        values: ``[T, ...]`` baseline and bootstrap values :math:`V(s_t)` (detached; ``None`` = 0).
        gamma: Discount in ``[0, 1]``.
        lam: λ in ``[0, 1]`` (1 = Monte-Carlo returns).
        last_values: ``[...]`` bootstrap value after the last step (``None`` = 0).
        reduction: ``"mean"`` (:math:`D = T`) or ``"sum"`` (:math:`D = 1`).
        weight_by_discount: Weight step :math:`t` by :math:`\gamma^t` (``False``: TorchOpt's unweighted form).

    Returns:
        Scalar loss.
    """
    _check_same_shape(log_probs=log_probs, rewards=rewards, dones=dones, values=values)
    check_choice("reduction", reduction, REDUCTIONS)
    check_bool("weight_by_discount", weight_by_discount)
    adv = _advantages(rewards, values, dones, gamma, lam, last_values)
    weights = episode_discounts(dones, gamma) if weight_by_discount else torch.ones_like(adv)
    return -_reduce(weights * adv * log_probs, reduction)


def lvc(
    log_probs: Tensor,
    rewards: Tensor,
    dones: Tensor,
    values: Tensor | None = None,
    *,
    gamma: float,
    lam: float = 1.0,
    last_values: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    r"""ProMP's low-variance curvature (LVC) loss (Rothfuss et al., 2019): per-step likelihood ratios.

    .. math::
        \hat L = -\frac{1}{BD} \sum_{b, t} w_t\, \frac{\pi_\theta(a_t \mid s_t)}{\perp(\pi_\theta(a_t \mid s_t))}
        \perp(A_t), \qquad \frac{\pi_\theta}{\perp(\pi_\theta)} = \square(\log \pi_\theta(a_t \mid s_t)),

    with :math:`w_t = \gamma^t`, :math:`A_t = G^\lambda_t - V(s_t)` as in :func:`surrogate`.

    **Bias.** First derivative: identical to the surrogate's sample by sample (the ratio is 1 with gradient
    :math:`\nabla \log \pi`), unbiased at :math:`\lambda = 1`. Second derivative:
    :math:`-\frac{1}{BD}\sum w_t A_t (\nabla \log \pi_t \nabla \log \pi_t^\top + \nabla^2 \log \pi_t)` =
    :math:`-\frac{1}{BD}\sum w_t A_t \nabla^2 \pi_t / \pi_t`: it keeps each step's own curvature but drops the
    cross terms between time steps (how earlier actions change later states), a biased, low-variance
    estimate of :math:`-\kappa \nabla^2 J`.

    Args:
        log_probs: ``[T, ...]`` :math:`\log \pi_\theta(a_t \mid s_t)` with autograd history.
        rewards: ``[T, ...]``.
        dones: ``[T, ...]``.
        values: ``[T, ...]`` baseline and bootstrap values (detached; ``None`` = 0).
        gamma: Discount in ``[0, 1]``.
        lam: λ in ``[0, 1]``.
        last_values: ``[...]`` bootstrap value after the last step (``None`` = 0).
        reduction: ``"mean"`` or ``"sum"``.

    Returns:
        Scalar loss.
    """
    _check_same_shape(log_probs=log_probs, rewards=rewards, dones=dones, values=values)
    check_choice("reduction", reduction, REDUCTIONS)
    adv = _advantages(rewards, values, dones, gamma, lam, last_values)
    return -_reduce(episode_discounts(dones, gamma) * magic_box(log_probs) * adv, reduction)


def dice(
    log_probs: Tensor,
    rewards: Tensor,
    dones: Tensor,
    values: Tensor | None = None,
    *,
    gamma: float,
    reduction: str = "mean",
    history_baseline: bool = True,
) -> Tensor:
    r"""DiCE (Foerster et al., 2018) with the baseline of Mao et al. (2019): unbiased derivatives of every order.

    .. math::
        \hat L = -\frac{1}{BD} \sum_{b, t} w_t \Big[\square(W_t)\, r_t
            + \big(1 - \square(\log \pi_t)\big)\, \square(W_{t-1})\, \perp(V(s_t))\Big], \qquad
        W_t = \sum_{t_0 \le t' \le t} \log \pi_\theta(a_{t'} \mid s_{t'}),

    with :math:`w_t = \gamma^t`, :math:`t_0` the episode's first step (:math:`W_{t_0 - 1} = 0`,
    :math:`\square(0) = 1`) and :math:`\square` the MagicBox (:func:`magic_box`). Its value is
    :math:`-\frac{1}{BD}\sum w_t r_t` (a Monte-Carlo return); its first derivative equals the surrogate's at
    :math:`\lambda = 1` with baseline :math:`V` sample by sample.

    **Bias.** None at any order: :math:`\mathbb E[\nabla^k \hat L] = -\kappa \nabla^k J_\gamma` for every
    :math:`k` (for :math:`k = 2`: the MAML Hessian). The baseline term has zero expectation at every order
    (:math:`\sum_a \nabla^k \pi(a \mid s) = 0`) and only reduces variance; the factor :math:`\square(W_{t-1})`
    (Mao et al.'s any-order baseline) also cuts the variance of the second derivative, while
    ``history_baseline=False`` gives Foerster et al.'s first-order baseline
    :math:`(1 - \square(\log \pi_t)) V(s_t)` (same expectation, same first derivative). Rewards enter as
    sampled (no λ, no bootstrap): DiCE estimates the episode's return as observed.

    Args:
        log_probs: ``[T, ...]`` :math:`\log \pi_\theta(a_t \mid s_t)` with autograd history.
        rewards: ``[T, ...]`` rewards :math:`r_t`.
        dones: ``[T, ...]`` 1.0 at the last step of an episode (resets :math:`W` and :math:`w`).
        values: ``[T, ...]`` baseline :math:`V(s_t)` (detached; ``None`` = no baseline term).
        gamma: Discount in ``[0, 1]``.
        reduction: ``"mean"`` or ``"sum"``.
        history_baseline: Multiply the baseline term by :math:`\square(W_{t-1})` (Mao et al.).

    Returns:
        Scalar loss.
    """
    _check_same_shape(log_probs=log_probs, rewards=rewards, dones=dones, values=values)
    check_choice("reduction", reduction, REDUCTIONS)
    check_bool("history_baseline", history_baseline)
    weights = episode_discounts(dones, gamma)
    keep = 1 - dones.detach()
    cum, prev = [], torch.zeros_like(log_probs[0])  # prev = W_{t-1} (0 at an episode's first step)
    prevs = []
    for t in range(log_probs.shape[0]):
        prevs.append(prev)
        w_t = prev + log_probs[t]
        cum.append(w_t)
        prev = w_t * keep[t]
    w_cum, w_prev = torch.stack(cum), torch.stack(prevs)
    objective = magic_box(w_cum) * rewards.detach()
    if values is not None:
        history = magic_box(w_prev) if history_baseline else 1.0
        objective = objective + (1 - magic_box(log_probs)) * history * values.detach()
    return -_reduce(weights * objective, reduction)


#: The estimators by name.
ESTIMATORS: dict[str, Callable[..., Tensor]] = {"surrogate": surrogate, "dice": dice, "lvc": lvc}


def policy_loss(
    estimator: str,
    log_probs: Tensor,
    rewards: Tensor,
    dones: Tensor,
    values: Tensor | None = None,
    *,
    gamma: float,
    lam: float = 1.0,
    last_values: Tensor | None = None,
    reduction: str = "mean",
    weight_by_discount: bool = True,
) -> Tensor:
    r"""Dispatch to :func:`surrogate`, :func:`dice` or :func:`lvc` with one signature (for a job's config).

    DiCE uses the sampled rewards (no λ-returns): it requires ``lam == 1`` and ignores ``last_values``
    (exact when every trajectory ends with ``done = 1``). ``weight_by_discount=False`` (TorchOpt's unweighted
    form, biased for :math:`\gamma < 1`) exists for the surrogate only.

    Args:
        estimator: ``"surrogate"``, ``"dice"`` or ``"lvc"``.
        log_probs: ``[T, ...]`` with autograd history.
        rewards: ``[T, ...]``.
        dones: ``[T, ...]``.
        values: ``[T, ...]`` baseline/bootstrap values (``None`` = 0).
        gamma: Discount.
        lam: λ (must be 1 for DiCE).
        last_values: Bootstrap after the last step (surrogate/LVC).
        reduction: ``"mean"`` or ``"sum"``.
        weight_by_discount: Weight step :math:`t` by :math:`\gamma^t` (``False``: surrogate only).

    Returns:
        Scalar loss.
    """
    check_choice("estimator", estimator, tuple(ESTIMATORS))
    if not check_bool("weight_by_discount", weight_by_discount) and estimator != "surrogate":
        raise ValueError(f"weight_by_discount=False exists for estimator='surrogate' only, got estimator={estimator!r}")
    if estimator == "surrogate":
        return surrogate(log_probs, rewards, dones, values, gamma=gamma, lam=lam, last_values=last_values,
                         reduction=reduction, weight_by_discount=weight_by_discount)
    if estimator == "dice":
        if check_real("lam", lam, low=0.0, high=1.0) != 1.0:
            raise ValueError(f"lam must be 1.0 for estimator='dice' (DiCE uses the sampled rewards), got {lam!r}")
        return dice(log_probs, rewards, dones, values, gamma=gamma, reduction=reduction)
    return lvc(log_probs, rewards, dones, values, gamma=gamma, lam=lam, last_values=last_values, reduction=reduction)
