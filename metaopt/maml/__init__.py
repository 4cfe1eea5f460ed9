"""The MAML-A2C job: :class:`MAMLConfig` (what to run) and :class:`MetaLearner` (one run's state and step).

:mod:`metaopt.maml.parts` holds the pieces a hand-written loop can call (:func:`routed_meta_gradient`).
"""

from metaopt.maml.checks import PER_TASK, NonFiniteError, check_finite, nonfinite_gradient_tasks
from metaopt.maml.config import DEFAULT_HORIZONS, DTYPES, ENVS, ESTIMATORS, OBJECTIVES, MAMLConfig
from metaopt.maml.learner import (
    COLLAPSED_SPREAD,
    IterationData,
    MetaGradient,
    MetaLearner,
    PolicyCollapseWarning,
    Rollouts,
    make_env,
    make_model,
)
from metaopt.maml.parts import gradient_signal, meta_parameter_role, routed_meta_gradient

__all__ = [
    "COLLAPSED_SPREAD",
    "DEFAULT_HORIZONS",
    "DTYPES",
    "ENVS",
    "ESTIMATORS",
    "OBJECTIVES",
    "PER_TASK",
    "IterationData",
    "MAMLConfig",
    "MetaGradient",
    "MetaLearner",
    "NonFiniteError",
    "PolicyCollapseWarning",
    "Rollouts",
    "check_finite",
    "gradient_signal",
    "make_env",
    "make_model",
    "meta_parameter_role",
    "nonfinite_gradient_tasks",
    "routed_meta_gradient",
]
