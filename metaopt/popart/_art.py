"""ART: the differentiable update of PopArt's target statistics, and the sigma clip it reports."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from metaopt._validation import (
    NonFiniteValueError,
    check_finite,
    check_open_unit_interval,
    check_same_dtype,
    check_task_ids,
    is_concrete,
)
from metaopt.popart._state import (
    _READ_MAX,
    DEFAULT_SIGMA_MAX,
    DEFAULT_SIGMA_MIN,
    PopArtState,
    _check_batch_rule,
    _check_bounds,
    _check_state,
    _rounded,
)

__all__ = ["SigmaClipWarning", "art", "sigma_at_bound"]


class SigmaClipWarning(UserWarning):
    """:func:`art` clipped ``sigma`` to ``sigma_min`` or ``sigma_max`` (on concrete values)."""



def _group_targets(
    state: PopArtState, targets: Tensor, task_ids: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Return ``(Y, M)`` of shape ``[B, K]``: targets per output and a 0/1 membership mask."""
    k = state.num_outputs
    if task_ids is None:
        if k == 1:
            y = targets.reshape(-1, 1)
        else:
            if targets.dim() == 0 or targets.shape[-1] != k:
                raise ValueError(
                    f"targets must have a last dimension of size num_outputs={k} when task_ids is None, "
                    f"got shape {tuple(targets.shape)}"
                )
            y = targets.reshape(-1, k)
        return y, torch.ones_like(y)
    check_task_ids("task_ids", task_ids, k, targets.shape)
    ids = task_ids.reshape(-1)
    mask = (ids.unsqueeze(-1) == torch.arange(k, device=ids.device)).to(targets.dtype)
    return targets.reshape(-1, 1).expand(-1, k), mask


def art(
    state: PopArtState,
    targets: Tensor,
    beta: float | Tensor,
    *,
    task_ids: Tensor | None = None,
    stop_gradient: bool = False,
    debias: bool = False,
    sigma_min: float = DEFAULT_SIGMA_MIN,
    sigma_max: float = DEFAULT_SIGMA_MAX,
    batch_rule: str = "moments",
) -> PopArtState:
    r"""ART: update the target statistics with step size ``beta`` (differentiable).

    Uses the numerically stable centered recursion. For one target ``Y``:

    .. math::
        d = Y - \mu, \quad \mu' = \mu + \beta d, \quad \sigma'^2 = (1-\beta)(\sigma^2 + \beta d^2),

    which equals :math:`\nu' - \mu'^2` of the textbook form (:math:`\nu` the second moment,
    :math:`\nu' = (1-\beta)\nu + \beta Y^2`) without its catastrophic cancellation in float32.

    **Batches.** For ``n`` targets of one output with batch mean ``m`` and population variance ``v``, both
    rules take *one* step of the form above with the batch moments and an effective step ``b``:

    .. math::
        d = m - \mu, \quad \mu' = \mu + b d, \quad \sigma'^2 = (1-b)(\sigma^2 + b d^2) + b v,

    i.e. :math:`\mu' = (1-b)\mu + b\,m`, :math:`\nu' = (1-b)\nu + b\,\overline{Y^2}`.

    * ``batch_rule="moments"`` (default): ``b = beta``. A batch moves the statistics as far as one sample
      does, whatever ``n`` is; the batch only sets the target moments.
    * ``batch_rule="sum"``: ``b = n * beta``, the rule of rlax's ``pop_art.art``, which adds the per-sample
      updates :math:`\beta (Y_i - \mu)` and :math:`\beta (Y_i^2 - \nu)` of all ``n`` targets. It equals
      rlax (checked against values recorded from rlax 0.1.9) while ``sigma`` is not clipped: rlax stores
      ``nu`` and clips only the derived scale, metaopt stores the clipped ``sigma``. With ``n * beta >= 1``
      the mean overshoots the batch mean and :math:`\sigma'^2` can turn negative (then clipped to
      ``sigma_min``), as in rlax.

    Neither rule equals feeding the ``n`` targets one at a time (``n`` steps of size ``beta``, which weight
    them geometrically); call :func:`art` once per target for that. Outputs that receive no target keep
    their statistics. ``sigma'`` is clipped into ``[sigma_min, sigma_max]``; while the clip is active its
    gradient is zero and, on concrete values, a :class:`SigmaClipWarning` is emitted (see
    :func:`sigma_at_bound` to count clipped steps).

    Args:
        state: Current statistics.
        targets: Unnormalized targets. With ``task_ids=None``: any shape if ``num_outputs == 1``,
            otherwise ``[..., num_outputs]`` (one target per output per sample). With ``task_ids``: any
            shape, each element belongs to the output named by ``task_ids`` at the same position.
        beta: Step size in ``(0, 1)``; a float, or a tensor (scalar or ``[num_outputs]``) that may require
            grad (the result is differentiable w.r.t. it).
        task_ids: Optional integer tensor with ``targets``' shape, values in ``[0, num_outputs)``
            (multi-task PopArt: per-task statistics).
        stop_gradient: If True, the returned statistics are detached (rlax's behaviour): no gradient
            flows into ``beta`` or the targets through them. Default False (metaopt's differentiable mode).
        debias: If True, use ``beta_t = beta / (1 - (1 - beta)^t)`` with ``t`` the output's update count,
            which removes the initialization bias of a constant step size (``batch_rule="moments"`` only).
        sigma_min: Lower bound of ``sigma`` (> 0, with ``sigma_min**2`` a normal number of the state's dtype).
        sigma_max: Upper bound of ``sigma`` (``sigma_max**2`` must not overflow the state's dtype).
        batch_rule: ``"moments"`` or ``"sum"`` (see above).

    Returns:
        The new :class:`PopArtState`.

    Raises:
        TypeError: wrong types or mixed dtypes.
        ValueError: ``beta`` outside ``(0, 1)``, non-finite targets, targets whose mean or variance overflows the
            dtype (:class:`~metaopt._validation.NonFiniteValueError`), a state with ``sigma <= 0`` or
            non-finite values, shape mismatches, task ids out of range, bad bounds, an unknown
            ``batch_rule``, ``debias`` with ``batch_rule="sum"``.
    """
    _check_state(state)
    check_finite("targets", targets)
    check_same_dtype(**{"state.mu": state.mu, "targets": targets})
    check_open_unit_interval("beta", beta)
    if isinstance(beta, Tensor):
        check_same_dtype(**{"state.mu": state.mu, "beta": beta})
        if beta.dim() > 1 or (beta.dim() == 1 and beta.shape[0] not in (1, state.num_outputs)):
            raise ValueError(
                f"beta must be a scalar or have shape [num_outputs]=[{state.num_outputs}], got {tuple(beta.shape)}"
            )
    _check_bounds(sigma_min, sigma_max, state.mu.dtype)
    _check_batch_rule(batch_rule, debias)

    y, mask = _group_targets(state, targets, task_ids)
    n = mask.sum(0)
    n_safe = n.clamp(min=1)
    mean = (mask * y).sum(0) / n_safe
    var = (mask * (y - mean) ** 2).sum(0) / n_safe

    touched = n > 0
    count = state.count + touched.to(state.count.dtype)
    b = beta / (1 - (1 - beta) ** count.clamp(min=1)) if debias else beta
    if batch_rule == "sum":
        b = b * n
    d = mean - state.mu
    mu_new = state.mu + b * d
    var_new = (1 - b) * (state.sigma**2 + b * d**2) + b * var
    sigma_new = var_new.clamp(min=sigma_min**2).sqrt().clamp(min=sigma_min, max=sigma_max)

    if is_concrete(mu_new) and is_concrete(var_new) and not bool(
            (torch.isfinite(mu_new) & torch.isfinite(var_new) | ~touched).all()):
        big = float(y.detach().abs().max())
        raise NonFiniteValueError(
            f"targets are too large for {y.dtype}: their mean or variance overflows (max |target| = {big:.3g}; the "
            f"squares must stay below {torch.finfo(y.dtype).max:.3g}); expected smaller targets (rescale them) or "
            "float64")
    new = PopArtState(torch.where(touched, mu_new, state.mu), torch.where(touched, sigma_new, state.sigma), count)
    if is_concrete(sigma_new):
        _warn_if_clipped(new, touched, sigma_min, sigma_max)
    if stop_gradient:
        new = new.detach()
    return new


def sigma_at_bound(
    state: PopArtState, *, sigma_min: float = DEFAULT_SIGMA_MIN, sigma_max: float = DEFAULT_SIGMA_MAX
) -> Tensor:
    """Which outputs have ``sigma`` on a clip bound (``sigma <= sigma_min`` or ``sigma >= sigma_max``).

    A clipped ``sigma`` equals the bound exactly, so after :func:`art` this marks the outputs whose clip was
    active (an unclipped value landing exactly on a bound is a measure-zero event). Pure and vmappable:
    summing it over steps counts clipped steps, also inside ``torch.func`` transforms where
    :class:`SigmaClipWarning` cannot be emitted.

    Args:
        state: Statistics (after :func:`art` with the same bounds).
        sigma_min: The lower bound passed to :func:`art`.
        sigma_max: The upper bound passed to :func:`art`.

    Returns:
        Boolean tensor of shape ``[num_outputs]``.
    """
    if not isinstance(state, PopArtState):
        raise TypeError(f"state must be a PopArtState (see metaopt.popart.init), got {type(state).__name__}")
    return (state.sigma <= sigma_min) | (state.sigma >= sigma_max)


def _warn_if_clipped(new: PopArtState, touched: Tensor, sigma_min: float, sigma_max: float) -> None:
    """Emit one :class:`SigmaClipWarning` per active bound (messages depend on the bound only)."""
    if new.sigma.numel() <= _READ_MAX:
        lo, hi = _rounded(sigma_min, new.sigma.dtype), _rounded(sigma_max, new.sigma.dtype)
        pairs = [(v, t) for v, t in zip(new.sigma.tolist(), touched.tolist(), strict=True) if t]
        low, high = any(v <= lo for v, _ in pairs), any(v >= hi for v, _ in pairs)
    else:
        at_low, at_high = touched & (new.sigma <= sigma_min), touched & (new.sigma >= sigma_max)
        low, high = bool(at_low.any()), bool(at_high.any())
    if high:
        warnings.warn(
            f"metaopt.popart.art clipped sigma to sigma_max={sigma_max:g}: the targets' scale exceeds it, so "
            "normalized targets are no longer O(1) and sigma gets no gradient while clipped. Pass a larger "
            "sigma_max or rescale the targets (sigma_at_bound counts clipped outputs).",
            SigmaClipWarning,
            stacklevel=3,
        )
    if low:
        warnings.warn(
            f"metaopt.popart.art clipped sigma to sigma_min={sigma_min:g}: the targets' spread is below it "
            "(e.g. constant targets), so sigma gets no gradient while clipped. Pass a smaller sigma_min if "
            "that scale is real (sigma_at_bound counts clipped outputs).",
            SigmaClipWarning,
            stacklevel=3,
        )
