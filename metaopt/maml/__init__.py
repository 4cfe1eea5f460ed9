"""The MAML-A2C job: :class:`MAMLConfig` (what to run) and :class:`MetaLearner` (one run's state and step)."""

from metaopt.maml.config import DTYPES, ESTIMATORS, OBJECTIVES, MAMLConfig
from metaopt.maml.learner import PER_TASK, IterationData, MetaGradient, MetaLearner, NonFiniteError, Rollouts

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
]
