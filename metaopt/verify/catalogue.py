r"""The catalogue of meta-gradient checks behind ``metaopt verify``.

Every check recomputes a number that is known independently — an analytic value, a value published with
a library, a finite difference, or a second algorithm — and returns one :class:`CheckResult` row per
compared quantity. Everything runs in float64. The checks (names as used by :func:`run_catalogue`):

``torchopt-toy``
    TorchOpt's toy: the network :math:`f(x) = a x^2` with :math:`a_0 = 1`, meta-parameter :math:`x = 2`,
    one inner SGD step on :math:`a` with learning rate :math:`\eta = 1`:
    :math:`a_1 = a_0 - \eta x^2`, outer loss :math:`L = a_1 x^2`. Analytically
    :math:`\partial L/\partial x = 2 a_0 x - 4 \eta x^3 = -28` and :math:`\partial L/\partial \eta = -x^4 = -16`.
    Plain ``torchopt.MetaSGD`` (outside metaopt) is checked against -28 too.
``higher-toy``
    higher's ``copy_initial_weights`` example: 5 inner SGD steps (lr 0.3, momentum 0.5) of
    ``Linear(1, 1, bias=False)`` on the mean squared error of :math:`y = 3.5 x` (the mean over the 100
    samples reproduces the published numbers; a sum diverges), meta-loss :math:`(w_5 - 3.5)^2`. Published:
    meta-loss 0.011928, :math:`\partial/\partial w_0 = -0.005311`. Raw
    ``higher.innerloop_ctx(copy_initial_weights=True)`` gives the initial weight no gradient at all.
``darts``
    DARTS' one-step hypergradient of :math:`L_{val}(w', \alpha)`, :math:`w' = w - \xi \nabla_w L_{train}(w,
    \alpha)`, on a softmax-mixed set of candidate operations, against DARTS' finite-difference
    Hessian-vector approximation and against central differences of the whole bilevel objective.
``popart``
    Meta-gradients w.r.t. ``log_lr`` and ``logit_beta`` through ``K = 1`` and ``K = 3`` inner steps with
    differentiable PopArt, against central differences, and every engine against ``func``.
``prop3``
    PopArt's Proposition 3: SGD with Pop-Art (Algorithm 1) and Normalized SGD (Algorithm 2,
    :func:`metaopt.popart.normalized_sgd_step`) give the same body parameters and predictions.
``estimators``
    Sampled MAML meta-policy-gradients on TabularMDP against the exact ones (:mod:`metaopt.exact`): each
    estimator's row checks what it promises -- DiCE's mean meta-gradient within its confidence interval of the
    exact one, the mean inner step unbiased (LVC's row; the surrogate's and DiCE's first derivatives equal it
    sample by sample), LVC's and the surrogate's meta-gradients at their exact biased limits, the surrogate's
    bias many standard errors wide (:mod:`metaopt.verify.estimators`).

Vector quantities are reported by their L2 norms in the ``autograd``/``reference`` columns; the relative
error is that of the full vectors, :math:`\|a - r\|_2 / \|r\|_2`, unless the row's ``note`` says otherwise.
Rows with ``tolerance = inf`` are informational (always ``passed``): they show a contrast, not a criterion.

The checks live in one module per family (:mod:`metaopt.verify.checks_toys`,
:mod:`metaopt.verify.checks_darts`, :mod:`metaopt.verify.checks_popart`, :mod:`metaopt.verify.estimators`);
this module keeps the registry (:data:`CHECKS`) and the runner, and re-exports their public names.

Example:
    >>> from metaopt.verify.catalogue import run_catalogue
    >>> rows = run_catalogue(["torchopt-toy"], ["func"])
    >>> [(r.quantity, round(r.autograd, 6), r.reference) for r in rows if r.quantity.endswith("analytic")]
    [('dL/dx vs analytic', -28.0, -28.0), ('dL/dlr vs analytic', -16.0, -16.0)]
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence

import torch

from metaopt.engines import ENGINES
from metaopt.verify._rows import CheckResult
from metaopt.verify._rows import _row as _row  # re-exported: how check modules (here or elsewhere) build rows
from metaopt.verify.checks_darts import (
    DartsProblem,
    check_darts,
    darts_exact_hypergradient,
    darts_fd_hypergradient,
    darts_val_loss,
    make_darts_problem,
)
from metaopt.verify.checks_popart import check_popart, check_prop3
from metaopt.verify.checks_toys import (
    HIGHER_TOY_PUBLISHED,
    ToyNet,
    check_higher_toy,
    check_torchopt_toy,
    higher_toy_data,
    higher_toy_meta_loss,
    higher_toy_model,
    torchopt_toy_meta_loss,
)
from metaopt.verify.estimators import check_estimators

__all__ = [
    "CHECKS",
    "CHECK_NAMES",
    "CheckResult",
    "available_engines",
    "run_catalogue",
    "check_torchopt_toy",
    "check_higher_toy",
    "check_darts",
    "check_popart",
    "check_prop3",
    "check_estimators",
    "ToyNet",
    "torchopt_toy_meta_loss",
    "higher_toy_data",
    "higher_toy_model",
    "higher_toy_meta_loss",
    "DartsProblem",
    "make_darts_problem",
    "darts_val_loss",
    "darts_exact_hypergradient",
    "darts_fd_hypergradient",
    "HIGHER_TOY_PUBLISHED",
]


def available_engines() -> tuple[str, ...]:
    """Engines whose library is importable (``func`` always is)."""
    return tuple(e for e in ENGINES if e == "func" or importlib.util.find_spec(e) is not None)


# ------------------------------------------------------------------------------------------------ runner
CHECKS: dict[str, Callable[[Sequence[str]], list[CheckResult]]] = {
    "torchopt-toy": check_torchopt_toy,
    "higher-toy": check_higher_toy,
    "darts": check_darts,
    "popart": check_popart,
    "prop3": check_prop3,
    "estimators": check_estimators,
}
#: Names of the checks in the catalogue (``metaopt verify --checks``).
CHECK_NAMES: tuple[str, ...] = tuple(CHECKS)


def run_catalogue(checks: Sequence[str] | None = None, engines: Sequence[str] | None = None) -> list[CheckResult]:
    """Run catalogue checks on the given engines.

    Args:
        checks: Check names from :data:`CHECK_NAMES` (default: all).
        engines: Engines from :data:`metaopt.engines.ENGINES` (default: every installed one).

    Returns:
        The result rows of every check, in catalogue order.

    Raises:
        ValueError: an unknown check or engine name, or an engine whose library is not installed.
    """
    checks = list(CHECK_NAMES if checks is None else checks)
    engines = list(available_engines() if engines is None else engines)
    bad = [c for c in checks if c not in CHECKS]
    if bad:
        raise ValueError(f"checks: unknown {bad}; allowed: {list(CHECK_NAMES)}")
    bad = [e for e in engines if e not in ENGINES]
    if bad:
        raise ValueError(f"engines: unknown {bad}; allowed: {list(ENGINES)}")
    missing = [e for e in engines if e not in available_engines()]
    if missing:
        raise ValueError(f"engines: {missing} not installed (pip install 'metaopt-torch[{missing[0]}]')")
    with torch.random.fork_rng(devices=[]):
        return [row for c in checks for row in CHECKS[c](engines)]
