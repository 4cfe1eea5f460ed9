r"""Environments: the TabularMDP benchmark (Gymnasium) and a batched torch simulator.

Importing this package registers (idempotently) the Gymnasium ids

* ``metaopt/TabularMDP-v0`` -- unscaled tasks (:math:`c = 1`),
* ``metaopt/ScaledTabularMDP-v0`` -- per-task reward scale :math:`c = 10^u`, :math:`u \sim U(-2, 3)`.
"""

import gymnasium

from metaopt.envs.batched import BatchedTabularMDP, PolicyFn, RolloutNoise, Trajectories, draw_noise
from metaopt.envs.tabular_mdp import (
    DEFAULT_HORIZON,
    DEFAULT_NUM_ACTIONS,
    DEFAULT_NUM_STATES,
    DEFAULT_SCALE_RANGE,
    TabularMDPEnv,
    TabularMDPTask,
    TaskBatch,
    sample_tasks,
)

__all__ = [
    "DEFAULT_HORIZON",
    "DEFAULT_NUM_ACTIONS",
    "DEFAULT_NUM_STATES",
    "DEFAULT_SCALE_RANGE",
    "ENV_ID",
    "SCALED_ENV_ID",
    "BatchedTabularMDP",
    "PolicyFn",
    "RolloutNoise",
    "TabularMDPEnv",
    "TabularMDPTask",
    "TaskBatch",
    "Trajectories",
    "draw_noise",
    "register_envs",
    "sample_tasks",
]

#: Gymnasium id of the TabularMDP environment (``gymnasium.make(ENV_ID)``).
ENV_ID = "metaopt/TabularMDP-v0"
#: Gymnasium id of the scaled variant (each task's rewards multiplied by its scale c).
SCALED_ENV_ID = "metaopt/ScaledTabularMDP-v0"
_ENTRY_POINT = "metaopt.envs.tabular_mdp:TabularMDPEnv"


def register_envs() -> None:
    """Register :data:`ENV_ID` and :data:`SCALED_ENV_ID` with Gymnasium (no-op if already registered)."""
    if ENV_ID not in gymnasium.registry:
        gymnasium.register(id=ENV_ID, entry_point=_ENTRY_POINT)
    if SCALED_ENV_ID not in gymnasium.registry:
        gymnasium.register(id=SCALED_ENV_ID, entry_point=_ENTRY_POINT, kwargs={"scale_range": DEFAULT_SCALE_RANGE})


register_envs()
