"""PopArt's state: the :class:`PopArtState` NamedTuple, :func:`init`, the bounds on sigma and state checks."""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
from torch import Tensor

from metaopt._validation import check_choice, check_finite, check_positive, check_positive_entries, is_concrete

__all__ = ["DEFAULT_SIGMA_MIN", "DEFAULT_SIGMA_MAX", "BATCH_RULES", "PopArtState", "init", "init_tasks"]

#: Default lower bound of sigma (see the module docstring for the choice).
DEFAULT_SIGMA_MIN = 1e-6
#: Default upper bound of sigma.
DEFAULT_SIGMA_MAX = 1e10
#: How :func:`art` combines a batch of targets of one output.
BATCH_RULES = ("moments", "sum")
#: Up to this many outputs, value checks read the statistics once instead of running reductions.
_READ_MAX = 1024


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
    count: Tensor  # type: ignore[assignment]  # a field named like tuple.count (kept: public API)

    @property
    def num_outputs(self) -> int:
        """Number of independent statistics (outputs or tasks)."""
        return self.mu.shape[-1]

    def detach(self) -> PopArtState:
        """The same statistics with no gradient (``stop_gradient`` of every field)."""
        return PopArtState(*(t.detach() for t in self))


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
    return PopArtState(
        torch.zeros(num_outputs, dtype=dtype, device=device),
        torch.ones(num_outputs, dtype=dtype, device=device),
        torch.zeros(num_outputs, dtype=dtype, device=device),
    )


def init_tasks(
    num_tasks: int,
    num_outputs: int = 1,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    like: Tensor | None = None,
) -> PopArtState:
    """Fresh per-task statistics for :func:`metaopt.engines.adapt_tasks`: :func:`init` stacked over tasks.

    Every field is ``[num_tasks, num_outputs]`` (``mu = 0``, ``sigma = 1``, ``count = 0``), each task's row its own
    memory, so a vmapped inner loop updates each task's statistics independently. (``init(n)`` is *one* task with
    ``n`` outputs, ``[n]``, not this.)

    Args:
        num_tasks: Number of tasks (dim 0).
        num_outputs: Outputs of the value head per task.
        dtype: As in :func:`init`.
        device: As in :func:`init`.
        like: As in :func:`init`.

    Returns:
        A :class:`PopArtState` with fields of shape ``[num_tasks, num_outputs]``.
    """
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, int) or num_tasks < 1:
        raise ValueError(f"num_tasks must be a positive int, got {num_tasks!r}")
    one = init(num_outputs, dtype=dtype, device=device, like=like)
    return PopArtState(*(t.expand(num_tasks, num_outputs).clone() for t in one))


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


def _check_batch_rule(batch_rule: str, debias: bool) -> None:
    """Check ``batch_rule`` is one of :data:`BATCH_RULES` and that ``debias`` goes with ``"moments"`` only."""
    check_choice("batch_rule", batch_rule, BATCH_RULES)
    if debias and batch_rule == "sum":
        raise ValueError("debias=True needs batch_rule='moments' (rlax's 'sum' rule has no debiasing), got 'sum'")


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
