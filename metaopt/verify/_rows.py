"""The row type of the verification catalogue (:class:`CheckResult`) and the helpers that fill it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from metaopt.verify.core import relative_error

__all__ = ["F64", "CheckResult"]

F64 = torch.float64


@dataclass(frozen=True)
class CheckResult:
    r"""One compared quantity.

    Attributes:
        check: Catalogue check name (e.g. ``"torchopt-toy"``).
        engine: Engine that computed ``autograd`` (``"func"``, ``"higher"``, ``"torchopt"``), ``"higher-raw"``
            for plain ``higher`` outside metaopt, or ``"-"`` when no engine is involved.
        quantity: What was compared, and against what.
        autograd: The value under test (L2 norm for vectors).
        reference: The independent value (L2 norm for vectors).
        rel_error: :math:`\|a - r\|_2 / \max(\|r\|_2, 10^{-12})` (or as stated in ``note``).
        tolerance: Pass threshold for ``rel_error`` (``inf`` for informational rows).
        passed: ``rel_error <= tolerance`` (False for NaN).
        note: How to read the row.
    """

    check: str
    engine: str
    quantity: str
    autograd: float
    reference: float
    rel_error: float
    tolerance: float
    passed: bool
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (non-finite floats become ``None``)."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def _value(t: Tensor | float) -> float:
    """The number a row shows: the value of a scalar, the L2 norm of a vector."""
    t = torch.as_tensor(t, dtype=F64).detach()
    return float(t.reshape(())) if t.numel() == 1 else float(t.norm())


def _row(
    check: str, engine: str, quantity: str, actual: Tensor | float, reference: Tensor | float, tolerance: float,
    note: str = "",
) -> CheckResult:
    """One row comparing ``actual`` with ``reference`` by :func:`~metaopt.verify.relative_error` (in float64)."""
    a, r = torch.as_tensor(actual, dtype=F64), torch.as_tensor(reference, dtype=F64)
    err = relative_error(a, r)
    return CheckResult(check, engine, quantity, _value(a), _value(r), err, tolerance, bool(err <= tolerance), note)
