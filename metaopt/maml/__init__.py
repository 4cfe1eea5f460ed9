"""The MAML-A2C job: :class:`MAMLConfig` (what to run) and :class:`MetaLearner` (one run's state and step)."""

from metaopt.maml.checks import PER_TASK, NonFiniteError, check_finite, nonfinite_gradient_tasks
from metaopt.maml.config import DTYPES, ESTIMATORS, OBJECTIVES, MAMLConfig
from metaopt.maml.learner import IterationData, MetaGradient, MetaLearner, Rollouts

__all__ = [
    "DTYPES",
    "ESTIMATORS",
    "OBJECTIVES",
    "PER_TASK",
    "IterationData",
    "MAMLConfig",
    "MetaGradient",
    "MetaLearner",
    "NonFiniteError",
    "Rollouts",
    "check_finite",
    "nonfinite_gradient_tasks",
]
