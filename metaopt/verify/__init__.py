"""Verification of meta-gradients against finite differences and analytic values.

:func:`check_gradients` compares the autograd gradient of any scalar objective (typically an outer loss
computed through an unrolled inner loop) with central finite differences in float64 and returns a
per-tensor :class:`GradientReport`. The catalogue of literature checks behind ``metaopt verify`` lives in
:mod:`metaopt.verify.catalogue` (:func:`run_catalogue` returns one :class:`CheckResult` per compared
quantity).
"""

from metaopt.verify.catalogue import CHECK_NAMES, CheckResult, run_catalogue
from metaopt.verify.core import GradientCheck, GradientReport, check_gradients, finite_difference, relative_error

__all__ = [
    "CHECK_NAMES",
    "CheckResult",
    "GradientCheck",
    "GradientReport",
    "check_gradients",
    "finite_difference",
    "relative_error",
    "run_catalogue",
]
