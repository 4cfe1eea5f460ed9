"""Eager input validation shared by the library.

Every check raises one ``ValueError``/``TypeError`` that names the argument, the value it got and what
was expected. Checks that need concrete tensor values are skipped for tensors wrapped by ``torch.func``
transforms (``vmap``/``grad``), where reading a value is impossible or would break tracing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, overload

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "NonFiniteValueError",
    "is_concrete",
    "check_int",
    "check_real",
    "check_choice",
    "check_bool",
    "check_open_unit_interval",
    "check_positive",
    "check_finite",
    "check_task_ids",
    "check_same_dtype",
    "check_positive_entries",
]


class NonFiniteValueError(ValueError):
    """A tensor argument holds NaN or infinity (raised by :func:`check_finite`)."""


def _short(value: Any) -> str:
    """Return a short printable form of ``value`` for error messages."""
    if isinstance(value, Tensor):
        if value.numel() <= 6:
            return f"tensor({value.detach().cpu().tolist()})"
        return f"tensor(shape={tuple(value.shape)}, dtype={value.dtype})"
    return repr(value)


def is_concrete(x: Tensor) -> bool:
    """Whether ``x`` holds readable values (is not a ``torch.func`` batched/grad-tracking wrapper)."""
    try:
        return not torch._C._functorch.is_functorch_wrapped_tensor(x)
    except AttributeError:  # pragma: no cover - very old torch
        return True


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


@overload
def check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None,
              allow_none: Literal[False] = False) -> int: ...
@overload
def check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None,
              allow_none: bool) -> int | None: ...
def check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None,
              allow_none: bool = False) -> int | None:
    """Check ``value`` is an int (not a bool) with ``low <= value <= high``; return it as a Python int.

    Example:
        >>> check_int("steps", 3, low=1)
        3
        >>> check_int("steps", 0, low=1)
        Traceback (most recent call last):
        ...
        ValueError: steps must be an int >= 1, got 0
    """
    if value is None and allow_none:
        return None
    if low is not None and high is not None:
        want = f"an int in [{low}, {high}]"
    elif low is not None:
        want = f"an int >= {low}"
    elif high is not None:
        want = f"an int <= {high}"
    else:
        want = "an int"
    if allow_none:
        want = f"None or {want}"
    if not _is_int(value) or (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be {want}, got {value!r}")
    return int(value)


@overload
def check_real(name: str, value: Any, *, low: float | None = None, high: float | None = None,
               low_open: bool = False, high_open: bool = False, allow_none: Literal[False] = False) -> float: ...
@overload
def check_real(name: str, value: Any, *, low: float | None = None, high: float | None = None,
               low_open: bool = False, high_open: bool = False, allow_none: bool) -> float | None: ...
def check_real(name: str, value: Any, *, low: float | None = None, high: float | None = None,
               low_open: bool = False, high_open: bool = False, allow_none: bool = False) -> float | None:
    """Check ``value`` is a finite real number (not a bool) inside the given interval; return it as a float.

    ``low_open``/``high_open`` make the bounds strict. Messages name the interval, e.g.
    ``momentum must be a number in [0, 1), got 1.0``.
    """
    if value is None and allow_none:
        return None
    if low is not None and high is not None:
        want = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        want = f"a finite number {'>' if low_open else '>='} {low:g}"
    elif high is not None:
        want = f"a finite number {'<' if high_open else '<='} {high:g}"
    else:
        want = "a finite number"
    if allow_none:
        want = f"None or {want}"
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    ok = ok and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ValueError(f"{name} must be {want}, got {value!r}")
    return float(value)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """Check ``value`` is one of ``choices`` (exact match); return it.

    Example:
        >>> check_choice("kind", "sgdd", ("sgd", "adam"))
        Traceback (most recent call last):
        ...
        ValueError: kind must be one of ('sgd', 'adam'), got 'sgdd'
    """
    if value not in tuple(choices) or isinstance(value, bool) != any(isinstance(c, bool) for c in choices):
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """Check ``value`` is a bool (``True``/``False``, not 0/1 or a string); return it."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def check_open_unit_interval(name: str, value: float | Tensor) -> None:
    """Check ``0 < value < 1`` elementwise (e.g. PopArt's step size beta)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Tensor)):
        raise TypeError(f"{name} must be a float or a tensor in (0, 1), got {type(value).__name__} {value!r}")
    if isinstance(value, Tensor):
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor in (0, 1), got dtype {value.dtype}")
        if not is_concrete(value):
            return
        ok = bool(torch.all((value > 0) & (value < 1)))
    else:
        ok = math.isfinite(value) and 0.0 < value < 1.0
    if not ok:
        raise ValueError(f"{name} must lie in the open interval (0, 1), got {_short(value)}")


def check_positive(name: str, value: float | Tensor) -> None:
    """Check ``value > 0`` elementwise and finite (e.g. a learning rate)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Tensor)):
        raise TypeError(f"{name} must be a positive float or tensor, got {type(value).__name__} {value!r}")
    if isinstance(value, Tensor):
        if not is_concrete(value):
            return
        ok = bool(torch.all(torch.isfinite(value) & (value > 0)))
    else:
        ok = math.isfinite(value) and value > 0
    if not ok:
        raise ValueError(f"{name} must be positive and finite, got {_short(value)}")


def check_finite(name: str, value: Tensor) -> None:
    """Check a tensor has no NaN or infinity."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if is_concrete(value) and not bool(torch.isfinite(value).all()):
        bad = (~torch.isfinite(value)).nonzero()[0].tolist()
        raise NonFiniteValueError(
            f"{name} must be finite, got a non-finite value {value[tuple(bad)].item()} at index {bad}"
        )


def check_task_ids(name: str, task_ids: Tensor, num_outputs: int, batch_shape: torch.Size) -> None:
    """Check integer task ids with the batch's shape, each in ``[0, num_outputs)``."""
    if not isinstance(task_ids, Tensor):
        raise TypeError(f"{name} must be an integer tensor, got {type(task_ids).__name__}")
    if task_ids.is_floating_point() or task_ids.is_complex() or task_ids.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got dtype {task_ids.dtype}")
    if task_ids.shape != batch_shape:
        raise ValueError(
            f"{name} must have shape {tuple(batch_shape)} (the targets' shape), got {tuple(task_ids.shape)}"
        )
    if is_concrete(task_ids) and task_ids.numel() > 0:
        lo, hi = int(task_ids.min()), int(task_ids.max())
        if lo < 0 or hi >= num_outputs:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{name} must lie in [0, {num_outputs}) (num_outputs={num_outputs}), got {bad}")


def check_same_dtype(**tensors: Tensor) -> None:
    """Check all given floating-point tensors share one dtype."""
    items = [(k, v) for k, v in tensors.items() if isinstance(v, Tensor)]
    if not items:
        return
    ref_name, ref = items[0]
    for name, t in items[1:]:
        if t.dtype != ref.dtype:
            raise TypeError(
                f"{name} has dtype {t.dtype} but {ref_name} has dtype {ref.dtype}; expected one dtype "
                "(cast with .to(dtype) first)"
            )


def check_positive_entries(name: str, value: Tensor, *, hint: str = "") -> None:
    """Check a floating tensor is positive and finite elementwise (e.g. PopArt's ``sigma``).

    Skipped for tensors wrapped by ``torch.func`` transforms (values cannot be read there). The message
    names the first bad entry and its index, e.g. ``state.sigma must be positive and finite, got 0.0 at
    index [1]``, followed by ``hint`` when given.
    """
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if not is_concrete(value):
        return
    bad = ~(torch.isfinite(value) & (value > 0))
    if bool(bad.any()):
        index = bad.nonzero()[0].tolist()
        extra = f" ({hint})" if hint else ""
        got = value[tuple(index)].item()
        error = NonFiniteValueError if not math.isfinite(got) else ValueError  # NaN/inf: a non-finite failure
        raise error(f"{name} must be positive and finite, got {got} at index {index}{extra}")
