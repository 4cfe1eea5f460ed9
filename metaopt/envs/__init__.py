r"""Environments: the TabularMDP benchmark (Gymnasium) and a batched torch simulator.

Importing this package registers (idempotently) the Gymnasium ids

* ``metaopt/TabularMDP-v0`` -- unscaled tasks (:math:`c = 1`),
* ``metaopt/ScaledTabularMDP-v0`` -- per-task reward scale :math:`c = 10^u`, :math:`u \sim U(-2, 3)`,
* ``metaopt/PointNav2D-v0`` and ``metaopt/ScaledPointNav2D-v0`` -- 2D navigation (:mod:`metaopt.envs.pointnav`).

Batched families for training (:class:`BatchedEnv` protocol): :class:`TabularMDPFamily` and :class:`PointNav2D`.
"""

import gymnasium

from metaopt.envs.batched import BatchedTabularMDP, PolicyFn, RolloutNoise, Trajectories, draw_noise
from metaopt.envs.pointnav import (
    GOAL_RANGE,
    MAX_ACTION,
    POINTNAV_HORIZON,
    PointNav2D,
    PointNav2DEnv,
    PointNavNoise,
    PointNavTasks,
)
from metaopt.envs.protocol import (
    ActFn,
    BatchedEnv,
    TabularMDPFamily,
    check_env,
    num_tasks_of,
    scales_of,
    shard,
)
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
    "GOAL_RANGE",
    "MAX_ACTION",
    "POINTNAV_ENV_ID",
    "POINTNAV_HORIZON",
    "SCALED_POINTNAV_ENV_ID",
    "ActFn",
    "BatchedEnv",
    "PointNav2D",
    "PointNav2DEnv",
    "PointNavNoise",
    "PointNavTasks",
    "TabularMDPFamily",
    "check_env",
    "num_tasks_of",
    "scales_of",
    "shard",
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
#: Gymnasium id of 2D navigation (``gymnasium.make(POINTNAV_ENV_ID)``).
POINTNAV_ENV_ID = "metaopt/PointNav2D-v0"
#: Gymnasium id of scaled 2D navigation (each task's rewards multiplied by its scale c).
SCALED_POINTNAV_ENV_ID = "metaopt/ScaledPointNav2D-v0"
_POINTNAV_ENTRY_POINT = "metaopt.envs.pointnav:PointNav2DEnv"


def register_envs() -> None:
    """Register the TabularMDP and 2D navigation ids with Gymnasium (no-op if already registered)."""
    if ENV_ID not in gymnasium.registry:
        gymnasium.register(id=ENV_ID, entry_point=_ENTRY_POINT)
    if SCALED_ENV_ID not in gymnasium.registry:
        gymnasium.register(id=SCALED_ENV_ID, entry_point=_ENTRY_POINT, kwargs={"scale_range": DEFAULT_SCALE_RANGE})
    if POINTNAV_ENV_ID not in gymnasium.registry:
        gymnasium.register(id=POINTNAV_ENV_ID, entry_point=_POINTNAV_ENTRY_POINT, max_episode_steps=POINTNAV_HORIZON)
    if SCALED_POINTNAV_ENV_ID not in gymnasium.registry:
        gymnasium.register(id=SCALED_POINTNAV_ENV_ID, entry_point=_POINTNAV_ENTRY_POINT,
                           max_episode_steps=POINTNAV_HORIZON, kwargs={"scale_range": DEFAULT_SCALE_RANGE})


register_envs()
