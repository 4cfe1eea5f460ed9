r"""The batched environment protocol that :class:`metaopt.maml.MetaLearner` trains on, and TabularMDP's implementation.

An environment *family* (a distribution over tasks) is an object with

* ``observation_size`` (int), ``action_size`` (int: the number of actions if ``discrete``, else the action
  dimensions), ``discrete`` (bool) and ``horizon`` (int);
* ``sample_tasks(num_tasks, *, generator) -> tasks``: a ``NamedTuple`` of tensors indexed by task on dim 0
  (optionally with a ``scales`` field ``[N]``: each task's reward multiplier, for normalized metrics);
* ``draw_noise(num_tasks, num_trajectories, *, generator) -> noise``: every random number of a rollout, drawn
  up front (a ``NamedTuple`` of tensors indexed by task on dim 0) -- "common random numbers";
* ``rollout(tasks, act, noise) -> Trajectories``: a deterministic function of its inputs that steps all tasks
  and trajectories at once and calls ``act(observations [N, B, O], action_noise [N, B, ...]) -> actions`` once
  per time step.

Tasks and noise are tensors, so a run's randomness is one ``torch.Generator`` (exact resume), tasks can be split
across processes (:func:`shard`) and a vmapped inner loop sees per-task tensors. The policy turns the step's
action noise into an action (:meth:`metaopt.rl.PolicyDistribution.sample`: uniforms for a categorical policy,
standard normals for a Gaussian one). :class:`TabularMDPFamily` and :class:`~metaopt.envs.PointNav2D` implement
it; so can a user's own environment (see the how-to "Your own environment and model").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, cast, runtime_checkable

import torch

from metaopt.envs.batched import BatchedTabularMDP, RolloutNoise, Trajectories, draw_noise
from metaopt.envs.tabular_mdp import (
    DEFAULT_HORIZON,
    DEFAULT_NUM_ACTIONS,
    DEFAULT_NUM_STATES,
    TaskBatch,
    _check_positive_int,
    sample_tasks,
)

__all__ = ["ActFn", "BatchedEnv", "TabularMDPFamily", "shard", "num_tasks_of", "scales_of", "check_env"]

#: ``act(observations [N, B, O], action_noise [N, B, ...]) -> actions [N, B]`` (long) or ``[N, B, D]`` (float).
ActFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@runtime_checkable
class BatchedEnv(Protocol):
    """A family of tasks simulated in batches from common random numbers (see the module docstring)."""

    observation_size: int
    action_size: int
    discrete: bool
    horizon: int

    def sample_tasks(self, num_tasks: int, *, generator: torch.Generator) -> Any:
        """``num_tasks`` tasks (a NamedTuple of tensors indexed by task on dim 0)."""
        ...

    def draw_noise(self, num_tasks: int, num_trajectories: int, *, generator: torch.Generator) -> Any:
        """Every random number of one rollout of ``num_trajectories`` episodes per task."""
        ...

    def rollout(self, tasks: Any, act: ActFn, noise: Any) -> Trajectories:
        """Step every task and episode for ``horizon`` steps with the actions ``act`` chooses."""
        ...


def check_env(env: Any) -> BatchedEnv:
    """Check that ``env`` has the protocol's attributes and methods; raise naming the first missing one."""
    for attr in ("observation_size", "action_size", "horizon"):
        value = getattr(env, attr, None)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TypeError(f"env.{attr} must be a positive int (the BatchedEnv protocol, metaopt.envs.protocol), "
                            f"got {value!r} on {type(env).__name__}")
    if not isinstance(getattr(env, "discrete", None), bool):
        raise TypeError(f"env.discrete must be a bool (discrete or continuous actions), got "
                        f"{getattr(env, 'discrete', None)!r} on {type(env).__name__}")
    for method in ("sample_tasks", "draw_noise", "rollout"):
        if not callable(getattr(env, method, None)):
            raise TypeError(f"env.{method} must be a method (the BatchedEnv protocol, metaopt.envs.protocol); "
                            f"{type(env).__name__} has none")
    return cast(BatchedEnv, env)


def shard(x: Any, start: int, stop: int) -> Any:
    """Tasks ``start:stop`` of a batch of tasks or noise: its own ``shard`` if it has one, else every field sliced."""
    if hasattr(x, "shard"):
        return x.shard(start, stop)
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return type(x)(*(f[start:stop] for f in x))
    raise TypeError(f"tasks and noise must be NamedTuples of tensors indexed by task on dim 0 (or have a "
                    f"shard(start, stop) method), got {type(x).__name__}")


def num_tasks_of(x: Any) -> int:
    """The number of tasks of a batch of tasks or noise (its ``num_tasks``, else its first field's dim 0)."""
    n = getattr(x, "num_tasks", None)
    if isinstance(n, int):
        return n
    if isinstance(x, tuple) and x and isinstance(x[0], torch.Tensor) and x[0].dim() > 0:
        return int(x[0].shape[0])
    raise TypeError(f"tasks must be a NamedTuple of tensors indexed by task on dim 0, got {type(x).__name__}")


def scales_of(tasks: Any, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Each task's reward multiplier ``[N]``: the ``scales`` field, else ones."""
    scales = getattr(tasks, "scales", None)
    if isinstance(scales, torch.Tensor):
        return scales.to(dtype=dtype, device=device)
    return torch.ones(num_tasks_of(tasks), dtype=dtype, device=device)


class TabularMDPFamily:
    r"""TabularMDP tasks (:mod:`metaopt.envs.tabular_mdp`) behind the :class:`BatchedEnv` protocol.

    Args:
        num_states: States ``S`` (the observation is the one-hot state).
        num_actions: Actions ``A``.
        horizon: Episode length.
        scale_range: ``(lo, hi)`` of the scaled variant's :math:`\log_{10} c`, or ``None`` (:math:`c = 1`).
        dtype: Floating dtype of the noise and the rollouts.
        device: Device of the tasks, the noise and the rollouts.
    """

    discrete = True

    def __init__(self, num_states: int = DEFAULT_NUM_STATES, num_actions: int = DEFAULT_NUM_ACTIONS,
                 horizon: int = DEFAULT_HORIZON, *, scale_range: tuple[float, float] | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        self.num_states = self.observation_size = _check_positive_int("num_states", num_states)
        self.num_actions = self.action_size = _check_positive_int("num_actions", num_actions)
        self.horizon = _check_positive_int("horizon", horizon)
        self.scale_range = scale_range
        self.dtype, self.device = dtype, torch.device(device)

    def sample_tasks(self, num_tasks: int, *, generator: torch.Generator) -> TaskBatch:
        """:func:`~metaopt.envs.sample_tasks` from ``generator`` (float64, on the generator's device)."""
        return sample_tasks(num_tasks, num_states=self.num_states, num_actions=self.num_actions, generator=generator,
                            scale_range=self.scale_range)

    def draw_noise(self, num_tasks: int, num_trajectories: int, *, generator: torch.Generator) -> RolloutNoise:
        """:func:`~metaopt.envs.draw_noise`; the action noise (``action_u``) is uniform."""
        return draw_noise(num_tasks, num_trajectories, self.horizon, generator=generator, dtype=self.dtype,
                          device=self.device)

    def simulator(self, tasks: TaskBatch) -> BatchedTabularMDP:
        """The batched simulator of ``tasks``."""
        return BatchedTabularMDP(tasks.to(device=self.device), self.horizon, dtype=self.dtype)

    def rollout(self, tasks: TaskBatch, act: ActFn, noise: RolloutNoise) -> Trajectories:
        """:meth:`BatchedTabularMDP.rollout_act` on ``tasks``."""
        return self.simulator(tasks).rollout_act(act, noise)
