"""Verification of meta-gradients against finite differences and analytic values.

:func:`check_gradients` compares the autograd gradient of any scalar objective (typically an outer loss
computed through an unrolled inner loop) with central finite differences in float64 and returns a
per-tensor :class:`GradientReport`. The catalogue of literature checks behind ``metaopt verify`` lives in
:mod:`metaopt.verify.catalogue`.
"""

from metaopt.verify.core import GradientCheck, GradientReport, check_gradients, finite_difference, relative_error

__all__ = ["GradientCheck", "GradientReport", "check_gradients", "finite_difference", "relative_error"]
