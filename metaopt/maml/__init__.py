"""The MAML-A2C job: :class:`MAMLConfig` (what to run) and :class:`MetaLearner` (one run's state and step)."""

from metaopt.maml.checks import PER_TASK, NonFiniteError, check_finite, nonfinite_gradient_tasks
from metaopt.maml.config import DTYPES, ESTIMATORS, OBJECTIVES, MAMLConfig
from metaopt.maml.learner import (
    COLLAPSED_SPREAD,
    IterationData,
    MetaGradient,
    MetaLearner,
    PolicyCollapseWarning,
    Rollouts,
)

__all__ = [
    "COLLAPSED_SPREAD",
    "DTYPES",
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
    "nonfinite_gradient_tasks",
]
