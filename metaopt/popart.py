r"""Differentiable PopArt: adaptive target normalization that preserves outputs.

PopArt (van Hasselt et al., 2016) splits a value network into a body ``h = h_theta(x)`` and a last linear
layer ``(W, b)``. The layer predicts *normalized* values ``n(x) = W h + b``; the unnormalized prediction is
``f(x) = sigma * n(x) + mu``. Two steps keep the normalization adaptive:

* **ART** (:func:`art`) tracks the targets' mean ``mu`` and scale ``sigma`` with step size ``beta``;
* **POP** (:func:`pop`) rescales ``(W, b)`` so that ``f(x)`` is unchanged by the new statistics.

Everything here is a pure function of tensors and a :class:`PopArtState` NamedTuple. Nothing edits
``.data`` or works in place, so gradients flow through the statistics into ``beta`` and the targets and
meta-gradient engines (``torch.func``, ``higher``, TorchOpt) can differentiate through PopArt. Whether
gradients flow through the new statistics is an explicit argument of :func:`art` (``stop_gradient``).

**Bounds on sigma.** :func:`art` clips ``sigma`` into ``[sigma_min, sigma_max]``, by default
``[DEFAULT_SIGMA_MIN, DEFAULT_SIGMA_MAX] = [1e-6, 1e10]``: two decades of margin around the target scales
the library is tested on (``1e-4`` to ``1e8``, float32 and float64), so the clip is inactive there. Both
squares stay normal floats in float32 (``1e-12`` and ``1e20``; float32 overflows at ``3.4e38``, i.e.
``sigma > 1.8e19``), and :func:`art` rejects bounds whose squares do not. Hessel et al. (2018) used
``[1e-4, 1e6]``: pass those explicitly to reproduce them. While the clip is active, the normalized targets
are no longer O(1) (a 1e8-scale target over ``sigma = 1e6`` is ~100) and ``sigma`` gets no gradient; on
concrete values :func:`art` then emits a :class:`SigmaClipWarning`, and :func:`sigma_at_bound` tells which
outputs sit on a bound (sum it over steps to count clipped steps; :class:`PopArtHead` keeps that count).

**Checked values.** Where values are concrete (not wrapped by a ``torch.func`` transform such as
``vmap`` or ``grad``), every function checks that ``state.sigma`` is positive and finite and ``state.mu``
finite, so a hand-built state with ``sigma = 0`` raises a ``ValueError`` instead of returning inf/NaN. Inside
``torch.func`` transforms values cannot be read and these checks are skipped; validate the state once
outside the transform (e.g. call :func:`normalize` on it) if it was built by hand.

Example:
    >>> import torch
    >>> from metaopt import popart
    >>> w = torch.randn(1, 4, dtype=torch.float64)
    >>> b = torch.zeros(1, dtype=torch.float64)
    >>> state = popart.init(1, like=w)                    # dtype and device of the head
    >>> new = popart.art(state, torch.tensor([100.0, 120.0], dtype=torch.float64), beta=0.5)
    >>> w, b = popart.pop(w, b, state, new)
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from metaopt._validation import (
    check_choice,
    check_finite,
    check_open_unit_interval,
    check_positive,
    check_positive_entries,
    check_same_dtype,
    check_task_ids,
    is_concrete,
)

__all__ = [
    "DEFAULT_SIGMA_MIN",
    "DEFAULT_SIGMA_MAX",
    "BATCH_RULES",
    "PopArtState",
    "SigmaClipWarning",
    "init",
    "art",
    "sigma_at_bound",
    "pop",
    "normalize",
    "unnormalize",
    "normalized_sgd_step",
    "PopArtHead",
]

#: Default lower bound of sigma (see the module docstring for the choice).
DEFAULT_SIGMA_MIN = 1e-6
#: Default upper bound of sigma.
DEFAULT_SIGMA_MAX = 1e10
#: How :func:`art` combines a batch of targets of one output.
BATCH_RULES = ("moments", "sum")
#: Up to this many outputs, value checks read the statistics once instead of running reductions.
_READ_MAX = 1024


class SigmaClipWarning(UserWarning):
    """:func:`art` clipped ``sigma`` to ``sigma_min`` or ``sigma_max`` (on concrete values)."""


class PopArtState(NamedTuple):
    """Running target statistics of PopArt, one entry per output (or per task).

    Attributes:
        mu: ``[num_outputs]`` running mean of the targets.
        sigma: ``[num_outputs]`` running scale (standard deviation) of the targets, kept in
            ``[sigma_min, sigma_max]``; must be positive.
        count: ``[num_outputs]`` number of ART updates that touched each output (same dtype as ``mu``;
            used by the debiased step size).
    """

    mu: Tensor
    sigma: Tensor
    count: Tensor

    @property
    def num_outputs(self) -> int:
        """Number of independent statistics (outputs or tasks)."""
        return self.mu.shape[-1]


def init(
    num_outputs: int = 1,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    like: Tensor | None = None,
) -> PopArtState:
    """Initial statistics ``mu = 0``, ``sigma = 1`` (the identity normalization), ``count = 0``.

    Args:
        num_outputs: Number of outputs (or tasks) with their own statistics.
        dtype: Floating dtype of the state (default: ``like``'s dtype, else torch's default dtype).
        device: Device of the state (default: ``like``'s device, else torch's default device).
        like: A floating-point tensor (e.g. the value head's weight) whose dtype and device the state
            takes, so that a float64 or CUDA model gets a matching state. Use either ``like`` or
            ``dtype``/``device``, not both.

    Returns:
        A :class:`PopArtState` with ``mu``, ``sigma`` and ``count`` of shape ``[num_outputs]``.

    Raises:
        TypeError: ``num_outputs`` not an int, a non-floating dtype, ``like`` not a floating tensor.
        ValueError: ``num_outputs < 1``; ``like`` given together with ``dtype`` or ``device``.
    """
    if isinstance(num_outputs, bool) or not isinstance(num_outputs, int):
        raise TypeError(f"num_outputs must be a positive int, got {type(num_outputs).__name__} {num_outputs!r}")
    if num_outputs < 1:
        raise ValueError(f"num_outputs must be a positive int, got {num_outputs}")
    if like is not None:
        if not isinstance(like, Tensor) or not like.is_floating_point():
            got = f"dtype {like.dtype}" if isinstance(like, Tensor) else f"{type(like).__name__} {like!r}"
            raise TypeError(f"like must be a floating-point tensor (its dtype and device are used), got {got}")
        if dtype is not None or device is not None:
            raise ValueError(
                f"pass either like= or dtype=/device=, not both; got like (dtype {like.dtype}, device "
                f"{like.device}) with dtype={dtype}, device={device}"
            )
        dtype, device = like.dtype, like.device
    dtype = dtype or torch.get_default_dtype()
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")
    kw = {"dtype": dtype, "device": device}
    return PopArtState(torch.zeros(num_outputs, **kw), torch.ones(num_outputs, **kw), torch.zeros(num_outputs, **kw))


def _check_state(state: PopArtState, name: str = "state") -> None:
    """Check the type and shapes of ``state`` and, where values are concrete, ``sigma > 0`` and finite ``mu``."""
    if not isinstance(state, PopArtState):
        raise TypeError(f"{name} must be a PopArtState (see metaopt.popart.init), got {type(state).__name__}")
    if state.mu.shape != state.sigma.shape or state.mu.shape != state.count.shape or state.mu.dim() != 1:
        raise ValueError(
            f"{name} fields must all have shape [num_outputs], got mu {tuple(state.mu.shape)}, "
            f"sigma {tuple(state.sigma.shape)}, count {tuple(state.count.shape)}"
        )
    if not (is_concrete(state.sigma) and is_concrete(state.mu)):
        return  # inside a torch.func transform: values cannot be read
    if state.sigma.numel() <= _READ_MAX:  # one read of the values beats several tiny kernels
        ok = all(0.0 < v < math.inf for v in state.sigma.tolist()) and all(map(math.isfinite, state.mu.tolist()))
    else:
        ok = bool(((state.sigma > 0) & torch.isfinite(state.sigma) & torch.isfinite(state.mu)).all())
    if not ok:  # the helpers name the first bad entry
        hint = "sigma is a scale; metaopt.popart.init gives sigma = 1"
        check_positive_entries(f"{name}.sigma", state.sigma, hint=hint)
        check_finite(f"{name}.mu", state.mu)


@functools.lru_cache(maxsize=64)
def _rounded(value: float, dtype: torch.dtype) -> float:
    """``value`` rounded to ``dtype`` (as ``clamp`` rounds a bound), back as a Python float."""
    return torch.tensor(value, dtype=dtype).item()


def _check_bounds(sigma_min: float, sigma_max: float, dtype: torch.dtype) -> None:
    """Check ``0 < sigma_min < sigma_max`` and that both squares are normal, finite numbers in ``dtype``."""
    check_positive("sigma_min", sigma_min)
    check_positive("sigma_max", sigma_max)
    if not sigma_max > sigma_min:
        raise ValueError(f"sigma_max must be greater than sigma_min={sigma_min}, got {sigma_max}")
    info = torch.finfo(dtype)
    if float(sigma_max) > info.max**0.5:
        raise ValueError(
            f"sigma_max must satisfy sigma_max**2 <= {info.max:.3g} (the largest {dtype}) so that sigma**2 "
            f"cannot overflow, i.e. sigma_max <= {info.max**0.5:.3g}; got {sigma_max}"
        )
    if float(sigma_min) < info.tiny**0.5:
        raise ValueError(
            f"sigma_min must satisfy sigma_min**2 >= {info.tiny:.3g} (the smallest normal {dtype}), i.e. "
            f"sigma_min >= {info.tiny**0.5:.3g}; got {sigma_min}"
        )


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
        ValueError: ``beta`` outside ``(0, 1)``, non-finite targets, a state with ``sigma <= 0`` or
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
    check_choice("batch_rule", batch_rule, BATCH_RULES)
    if debias and batch_rule == "sum":
        raise ValueError("debias=True needs batch_rule='moments' (rlax's 'sum' rule has no debiasing), got 'sum'")

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

    new = PopArtState(torch.where(touched, mu_new, state.mu), torch.where(touched, sigma_new, state.sigma), count)
    if is_concrete(sigma_new):
        _warn_if_clipped(new, touched, sigma_min, sigma_max)
    if stop_gradient:
        new = PopArtState(*(t.detach() for t in new))
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


def _select(state: PopArtState, task_ids: Tensor | None) -> tuple[Tensor, Tensor]:
    if task_ids is None:
        return state.mu, state.sigma
    return state.mu[task_ids], state.sigma[task_ids]


def pop(
    weight: Tensor, bias: Tensor, old: PopArtState, new: PopArtState, *, task_ids: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    r"""POP: rescale the last linear layer so unnormalized outputs are preserved (Proposition 1).

    .. math::
        W' = \frac{\sigma}{\sigma'} W, \qquad b' = \frac{\sigma b + \mu - \mu'}{\sigma'}

    so that :math:`\sigma' (W' h + b') + \mu' = \sigma (W h + b) + \mu` for every ``h``. Out of place and
    differentiable w.r.t. all inputs.

    Args:
        weight: ``[rows, in_features]`` (``nn.Linear`` layout; row ``i`` is scaled).
        bias: ``[rows]``.
        old: Statistics before the ART step.
        new: Statistics after the ART step.
        task_ids: Optional ``[rows]`` integer tensor naming which statistic each row uses. Without it,
            ``rows`` must equal ``num_outputs`` and row ``i`` uses statistic ``i``.

    Returns:
        ``(weight', bias')``.

    Raises:
        ValueError: shape mismatches; on concrete values, a state with ``sigma <= 0`` or non-finite
            ``sigma``/``mu`` (the rescale would give inf/NaN).
        TypeError: non-PopArtState statistics or mixed dtypes.
    """
    _check_state(old, "old")
    _check_state(new, "new")
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        raise ValueError(
            f"weight must be a [rows, in_features] tensor, got {getattr(weight, 'shape', type(weight).__name__)}"
        )
    if not isinstance(bias, Tensor) or bias.shape != weight.shape[:1]:
        raise ValueError(
            f"bias must have shape [rows]=[{weight.shape[0]}] to match weight, got "
            f"{tuple(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__}"
        )
    check_same_dtype(weight=weight, bias=bias, **{"old.mu": old.mu, "new.mu": new.mu})
    if old.num_outputs != new.num_outputs:
        raise ValueError(f"new must have num_outputs={old.num_outputs} like old, got {new.num_outputs}")
    if task_ids is None:
        if weight.shape[0] != old.num_outputs:
            raise ValueError(
                f"weight must have num_outputs={old.num_outputs} rows when task_ids is None, got {weight.shape[0]}"
            )
    else:
        check_task_ids("task_ids", task_ids, old.num_outputs, weight.shape[:1])
    mu_old, sigma_old = _select(old, task_ids)
    mu_new, sigma_new = _select(new, task_ids)
    return weight * (sigma_old / sigma_new).unsqueeze(-1), (sigma_old * bias + mu_old - mu_new) / sigma_new


def _broadcast_stats(state: PopArtState, x: Tensor, task_ids: Tensor | None, name: str) -> tuple[Tensor, Tensor]:
    _check_state(state)
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
    check_same_dtype(**{"state.mu": state.mu, name: x})
    if task_ids is not None:
        check_task_ids("task_ids", task_ids, state.num_outputs, x.shape)
        return _select(state, task_ids)
    if state.num_outputs > 1 and (x.dim() == 0 or x.shape[-1] != state.num_outputs):
        raise ValueError(
            f"{name} must have a last dimension of size num_outputs={state.num_outputs} when task_ids is None, "
            f"got shape {tuple(x.shape)}"
        )
    if x.dim() == 0:  # one output, scalar input: keep the result 0-dim ("same shape as y")
        return state.mu.squeeze(-1), state.sigma.squeeze(-1)
    return state.mu, state.sigma


def normalize(state: PopArtState, y: Tensor, *, task_ids: Tensor | None = None) -> Tensor:
    r"""Normalize targets: :math:`\tilde y = (y - \mu) / \sigma`.

    Args:
        state: Statistics.
        y: Targets; broadcast like :func:`art`'s ``targets`` (last dim = outputs, or any shape for one
            output), or indexed by ``task_ids`` of the same shape.
        task_ids: Optional integer tensor with ``y``'s shape.

    Returns:
        Normalized targets, same shape as ``y``.

    Raises:
        ValueError: on concrete values, ``state.sigma <= 0`` or non-finite statistics (skipped inside
            ``torch.func`` transforms, where values cannot be read); shape mismatches.
    """
    mu, sigma = _broadcast_stats(state, y, task_ids, "y")
    return (y - mu) / sigma


def unnormalize(state: PopArtState, n: Tensor, *, task_ids: Tensor | None = None) -> Tensor:
    r"""Unnormalize outputs: :math:`f = \sigma n + \mu`.

    Args:
        state: Statistics.
        n: Normalized outputs (same layout rules as :func:`normalize`).
        task_ids: Optional integer tensor with ``n``'s shape.

    Returns:
        Unnormalized values, same shape as ``n``.

    Raises:
        ValueError: on concrete values, ``state.sigma <= 0`` or non-finite statistics (skipped inside
            ``torch.func`` transforms); shape mismatches.
    """
    mu, sigma = _broadcast_stats(state, n, task_ids, "n")
    return sigma * n + mu


def normalized_sgd_step(
    body_params: Sequence[Tensor],
    features: Tensor,
    weight: Tensor,
    bias: Tensor,
    targets: Tensor,
    state: PopArtState,
    lr: float | Tensor,
    *,
    task_ids: Tensor | None = None,
    create_graph: bool = False,
) -> tuple[list[Tensor], Tensor, Tensor]:
    r"""One step of Normalized SGD (PopArt paper, Algorithm 2), out of place.

    The head is kept *unnormalized*: ``W~ = sigma W``, ``b~ = sigma b + mu``. With the prediction error
    :math:`\tilde\delta = \tilde W h + \tilde b - Y` (averaged over the batch):

    .. math::
        \theta \leftarrow \theta - \alpha J_\theta^\top (\tilde W/\sigma)^\top \tilde\delta/\sigma, \quad
        \tilde W \leftarrow \tilde W - \alpha \tilde\delta h^\top, \quad
        \tilde b \leftarrow \tilde b - \alpha \tilde\delta.

    The body gradient is the plain one scaled by ``1/sigma^2`` per output. Call :func:`art` on the targets
    first to get ``state`` (no POP is needed: the unnormalized head is unaffected by new statistics). By
    Proposition 3, from the same start this equals SGD with Pop-Art (Algorithm 1).

    Args:
        body_params: Parameters of the body that ``features`` was computed from (with autograd history).
        features: ``[B, in_features]`` body output ``h``.
        weight: ``[num_outputs, in_features]`` unnormalized head weight ``W~``.
        bias: ``[num_outputs]`` unnormalized head bias ``b~``.
        targets: ``[B]`` (one output or with ``task_ids``) or ``[B, num_outputs]`` unnormalized targets.
        state: Statistics after this step's ART update.
        lr: Step size ``alpha`` (> 0).
        task_ids: Optional ``[B]`` integer tensor: sample ``i`` trains output ``task_ids[i]`` only.
        create_graph: Keep the graph of the step (for meta-gradients through it).

    Returns:
        ``(new_body_params, new_weight, new_bias)``.
    """
    _check_state(state)
    check_positive("lr", lr)
    if features.dim() != 2 or weight.dim() != 2 or features.shape[1] != weight.shape[1]:
        raise ValueError(
            f"features must be [B, in_features] matching weight [num_outputs, in_features]={tuple(weight.shape)}, "
            f"got {tuple(features.shape)}"
        )
    bsz, k = features.shape[0], weight.shape[0]
    if task_ids is None:
        if targets.shape not in ((bsz, k),) and not (k == 1 and targets.shape == (bsz,)):
            raise ValueError(f"targets must have shape [B, num_outputs]=[{bsz}, {k}], got {tuple(targets.shape)}")
        y = targets.reshape(bsz, k)
        mask = torch.ones_like(y)
    else:
        if targets.shape != (bsz,):
            raise ValueError(f"targets must have shape [B]=[{bsz}] with task_ids, got {tuple(targets.shape)}")
        check_task_ids("task_ids", task_ids, k, targets.shape)
        y = targets.unsqueeze(-1).expand(bsz, k)
        mask = (task_ids.unsqueeze(-1) == torch.arange(k, device=task_ids.device)).to(y.dtype)
    if state.num_outputs != k:
        raise ValueError(f"state must have num_outputs={k} (the head's rows), got {state.num_outputs}")

    delta = mask * (features @ weight.T + bias - y) / bsz  # [B, K], d loss / d prediction
    body_err = delta / state.sigma**2
    body_grads = torch.autograd.grad(
        features, list(body_params), grad_outputs=body_err @ weight, create_graph=create_graph
    )
    if not create_graph:
        delta = delta.detach()
        features = features.detach()
    new_body = [p - lr * g for p, g in zip(body_params, body_grads, strict=True)]
    return new_body, weight - lr * delta.T @ features, bias - lr * delta.sum(0)


class PopArtHead(nn.Module):
    """A linear layer with PopArt statistics, for module-style code.

    ``forward`` returns normalized outputs ``n = W h + b``; :meth:`unnormalized` returns
    ``sigma * n + mu``. :meth:`update` runs ART on targets then POP on the layer, in place under
    ``torch.no_grad()`` (through ``copy_``, never ``.data``). For meta-gradients through the statistics use
    the functional API (:func:`art`, :func:`pop`) or :mod:`metaopt.engines`, which read the statistics
    from :attr:`state` and the layer's parameters by name (``linear.weight``, ``linear.bias``).

    **Why beta defaults to 3e-4.** That is Hessel et al. (2018)'s value for multi-task PopArt (IMPALA on
    Atari-57): one long, non-stationary stream of returns per head, where slowly moving statistics (time
    constant ``1/beta`` ≈ 3,300 updates) average over many batches and keep the normalization, and so the
    head's outputs after POP, steady. It suits a module that lives for a whole training run. Statistics that
    are re-initialized often and must settle within a few updates need a much larger step: the MAML job
    (:mod:`metaopt.maml`) re-initializes them for every task and adapts for a handful of inner steps, so
    :class:`~metaopt.meta_params.MetaParameters` and ``metaopt maml-rl`` start from ``beta = 0.1`` (time
    constant ≈ 10 updates) and can learn it.

    Args:
        in_features: Input size.
        num_outputs: Number of outputs, each with its own statistics.
        beta: ART step size in ``(0, 1)`` (see above for the default).
        debias: Debiased step size (see :func:`art`).
        sigma_min: Lower bound of ``sigma`` (see the module docstring).
        sigma_max: Upper bound of ``sigma``.
        batch_rule: How a batch of targets updates the statistics (see :func:`art`).
        dtype: Parameter dtype.
        device: Parameter device.

    Attributes:
        clipped_steps: ``[num_outputs]`` buffer (not saved in ``state_dict``): how many :meth:`update`
            calls left each output's ``sigma`` on a clip bound.
    """

    def __init__(
        self,
        in_features: int,
        num_outputs: int = 1,
        *,
        beta: float = 3e-4,
        debias: bool = False,
        sigma_min: float = DEFAULT_SIGMA_MIN,
        sigma_max: float = DEFAULT_SIGMA_MAX,
        batch_rule: str = "moments",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        check_open_unit_interval("beta", beta)
        check_choice("batch_rule", batch_rule, BATCH_RULES)
        s = init(num_outputs, dtype=dtype, device=device)  # validates num_outputs and dtype before nn.Linear
        _check_bounds(sigma_min, sigma_max, s.mu.dtype)
        if debias and batch_rule == "sum":
            raise ValueError("debias=True needs batch_rule='moments' (rlax's 'sum' rule has no debiasing), got 'sum'")
        self.beta, self.debias, self.sigma_min, self.sigma_max = beta, debias, sigma_min, sigma_max
        self.batch_rule = batch_rule
        self.linear = nn.Linear(in_features, num_outputs, dtype=s.mu.dtype, device=device)
        self.register_buffer("mu", s.mu)
        self.register_buffer("sigma", s.sigma)
        self.register_buffer("count", s.count)
        clipped = torch.zeros(num_outputs, dtype=torch.long, device=device)
        self.register_buffer("clipped_steps", clipped, persistent=False)

    @property
    def state(self) -> PopArtState:
        """The current statistics as a :class:`PopArtState`."""
        return PopArtState(self.mu, self.sigma, self.count)

    def forward(self, h: Tensor) -> Tensor:
        """Normalized outputs ``W h + b``, shape ``[..., num_outputs]``."""
        return self.linear(h)

    def unnormalized(self, h: Tensor) -> Tensor:
        """Unnormalized outputs ``sigma (W h + b) + mu``."""
        return unnormalize(self.state, self.linear(h))

    @torch.no_grad()
    def update(self, targets: Tensor, *, task_ids: Tensor | None = None) -> PopArtState:
        """ART on ``targets`` then POP on the layer, in place; returns the new statistics."""
        old = self.state
        new = art(
            old, targets, self.beta, task_ids=task_ids, debias=self.debias,
            sigma_min=self.sigma_min, sigma_max=self.sigma_max, batch_rule=self.batch_rule,
        )
        w, b = pop(self.linear.weight, self.linear.bias, old, new)
        touched = new.count > old.count
        at_bound = sigma_at_bound(new, sigma_min=self.sigma_min, sigma_max=self.sigma_max)
        self.clipped_steps.add_((touched & at_bound).long())
        self.linear.weight.copy_(w)
        self.linear.bias.copy_(b)
        self.mu.copy_(new.mu)
        self.sigma.copy_(new.sigma)
        self.count.copy_(new.count)
        return self.state
