r"""2D point navigation (Finn et al., 2017's MAML "2D navigation"): batched torch simulator and Gymnasium env.

A task is a goal :math:`g \sim \mathcal U([-0.5, 0.5]^2)` and a reward multiplier :math:`c` (1, or
:math:`c = 10^u,\ u \sim \mathcal U(lo, hi)` in the scaled variant). Every episode starts at the origin; the
observation is the position :math:`x_t`; the action :math:`a_t \in \mathbb R^2` is clipped to the box
:math:`[-0.1, 0.1]^2` and

.. math::
    x_{t+1} = x_t + \operatorname{clip}(a_t, -0.1, 0.1), \qquad r_t = -c\,\lVert x_{t+1} - g \rVert_2,

for ``horizon`` steps (100 by default). The only randomness of a rollout is the policy's: standard normals
``action_z [N, B, T, 2]`` drawn up front (:class:`PointNavNoise`), which a Gaussian policy turns into actions
(:meth:`metaopt.rl.DiagGaussian.sample`). Trajectories record the *sampled* (unclipped) actions, whose
log-probabilities the policy gradient uses.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import gymnasium
import numpy as np
import torch
from gymnasium import spaces

from metaopt.envs.batched import Trajectories
from metaopt.envs.tabular_mdp import _check_positive_int, _check_scale_range

__all__ = ["PointNav2D", "PointNavTasks", "PointNavNoise", "PointNav2DEnv", "POINTNAV_HORIZON", "MAX_ACTION",
           "GOAL_RANGE"]

#: Episode length of MAML's 2D navigation.
POINTNAV_HORIZON = 100
#: Each action coordinate is clipped to ``[-MAX_ACTION, MAX_ACTION]``.
MAX_ACTION = 0.1
#: Goals are uniform on ``[-GOAL_RANGE, GOAL_RANGE]^2``.
GOAL_RANGE = 0.5


class PointNavTasks(NamedTuple):
    """A batch of 2D navigation tasks.

    Attributes:
        goals: ``[N, 2]`` goal positions.
        scales: ``[N]`` reward multipliers :math:`c`.
    """

    goals: torch.Tensor
    scales: torch.Tensor

    @property
    def num_tasks(self) -> int:
        """Number of tasks :math:`N`."""
        return int(self.goals.shape[0])

    def shard(self, start: int, stop: int) -> PointNavTasks:
        """Tasks ``start:stop``."""
        return PointNavTasks(self.goals[start:stop], self.scales[start:stop])

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> PointNavTasks:
        """Cast/move both tensors."""
        return PointNavTasks(*(t.to(device=device, dtype=dtype) for t in self))


class PointNavNoise(NamedTuple):
    """A rollout's common random numbers: ``action_z [N, B, T, 2]`` standard normals (the policy's noise)."""

    action_z: torch.Tensor

    @property
    def num_tasks(self) -> int:
        """Number of tasks :math:`N`."""
        return int(self.action_z.shape[0])

    def shard(self, start: int, stop: int) -> PointNavNoise:
        """Noise of tasks ``start:stop``."""
        return PointNavNoise(self.action_z[start:stop])


def _step(x: torch.Tensor, action: torch.Tensor, goal: torch.Tensor, scale: torch.Tensor
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x', r)``: one step of every episode (``goal``/``scale`` broadcast against ``x [..., 2]``)."""
    nxt = x + action.clamp(-MAX_ACTION, MAX_ACTION)
    return nxt, -scale * torch.linalg.vector_norm(nxt - goal, dim=-1)


class PointNav2D:
    r"""The 2D navigation family behind the :class:`~metaopt.envs.BatchedEnv` protocol (continuous actions).

    Args:
        horizon: Episode length (default 100).
        scale_range: ``(lo, hi)`` of :math:`\log_{10} c` for the scaled variant, or ``None`` (:math:`c = 1`).
        dtype: Floating dtype of tasks, noise and rollouts.
        device: Their device.

    Example:
        >>> import torch
        >>> from metaopt.envs import PointNav2D
        >>> env = PointNav2D(horizon=5)
        >>> gen = torch.Generator().manual_seed(0)
        >>> tasks, noise = env.sample_tasks(3, generator=gen), env.draw_noise(3, 4, generator=gen)
        >>> traj = env.rollout(tasks, lambda obs, z: 0.1 * z, noise)
        >>> tuple(traj.rewards.shape), tuple(traj.actions.shape)  # [T, tasks, episodes(, 2)]
        ((5, 3, 4), (5, 3, 4, 2))
    """

    observation_size = 2
    action_size = 2
    discrete = False

    def __init__(self, horizon: int = POINTNAV_HORIZON, *, scale_range: tuple[float, float] | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        self.horizon = _check_positive_int("horizon", horizon)
        self.scale_range = _check_scale_range(scale_range)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        self.dtype, self.device = dtype, torch.device(device)

    def sample_tasks(self, num_tasks: int, *, generator: torch.Generator) -> PointNavTasks:
        r"""Goals :math:`\mathcal U([-0.5, 0.5]^2)`, then (scaled variant) :math:`c = 10^{\mathcal U(lo, hi)}`."""
        n = _check_positive_int("num_tasks", num_tasks)
        kw: dict[str, Any] = {"dtype": self.dtype, "device": generator.device, "generator": generator}
        goals = (torch.rand(n, 2, **kw) * 2 - 1) * GOAL_RANGE
        if self.scale_range is None:
            scales = torch.ones(n, dtype=self.dtype, device=generator.device)
        else:
            lo, hi = self.scale_range
            scales = 10.0 ** (lo + (hi - lo) * torch.rand(n, **kw))
        return PointNavTasks(goals, scales).to(device=self.device)

    def draw_noise(self, num_tasks: int, num_trajectories: int, *, generator: torch.Generator) -> PointNavNoise:
        """Standard normals ``[N, B, T, 2]`` for the policy's actions."""
        shape = (_check_positive_int("num_tasks", num_tasks),
                 _check_positive_int("num_trajectories", num_trajectories), self.horizon, 2)
        return PointNavNoise(torch.randn(shape, dtype=self.dtype, device=generator.device,
                                         generator=generator).to(self.device))

    def probe_observations(self, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
        """A 5 x 5 grid of positions over the goal square ``[M = 25, 2]`` (for policy-health diagnostics)."""
        axis = torch.linspace(-GOAL_RANGE, GOAL_RANGE, 5, dtype=dtype, device=device)
        return torch.cartesian_prod(axis, axis)

    @torch.no_grad()
    def rollout(self, tasks: PointNavTasks, act: Any, noise: PointNavNoise) -> Trajectories:
        """Step every task and episode from the origin; ``act(x [N, B, 2], z [N, B, 2]) -> actions [N, B, 2]``.

        Returns:
            Time-major :class:`~metaopt.envs.Trajectories` with ``actions [T, N, B, 2]`` (as sampled, before
            clipping) and ``states=None``.
        """
        if not isinstance(tasks, PointNavTasks):
            raise TypeError(f"tasks must be PointNavTasks (PointNav2D.sample_tasks), got {type(tasks).__name__}")
        if not isinstance(noise, PointNavNoise):
            raise TypeError(f"noise must be a PointNavNoise (PointNav2D.draw_noise), got {type(noise).__name__}")
        z = noise.action_z
        n, b, t_max = tasks.num_tasks, int(z.shape[1]), self.horizon
        if tuple(z.shape) != (n, b, t_max, 2) or z.dtype != self.dtype:
            raise ValueError(f"noise.action_z must be [N, B, T, 2] = [{n}, B, {t_max}, 2] of dtype {self.dtype} "
                             f"(num_tasks={n}, horizon={t_max}), got {tuple(z.shape)} of dtype {z.dtype}")
        goal = tasks.goals.to(self.dtype)[:, None, :]
        scale = tasks.scales.to(self.dtype)[:, None]
        x = torch.zeros(n, b, 2, dtype=self.dtype, device=self.device)
        obs = torch.empty(t_max, n, b, 2, dtype=self.dtype, device=self.device)
        actions = torch.empty(t_max, n, b, 2, dtype=self.dtype, device=self.device)
        rewards = torch.empty(t_max, n, b, dtype=self.dtype, device=self.device)
        for t in range(t_max):
            obs[t] = x
            a = act(x, z[:, :, t])
            if not isinstance(a, torch.Tensor) or tuple(a.shape) != (n, b, 2):
                raise ValueError(f"act must return actions of shape [N, B, 2] = {[n, b, 2]}, got "
                                 f"{list(getattr(a, 'shape', [type(a).__name__]))}")
            actions[t] = a
            x, rewards[t] = _step(x, a.to(self.dtype), goal, scale)
        dones = torch.zeros(t_max, n, b, dtype=self.dtype, device=self.device)
        dones[-1] = 1.0
        return Trajectories(obs, actions, rewards, dones, None, x, tasks.scales.to(self.dtype).clone())


class PointNav2DEnv(gymnasium.Env[np.ndarray, np.ndarray]):
    """One 2D navigation task as a Gymnasium environment (the same dynamics as :class:`PointNav2D`).

    ``reset(seed=...)`` draws a new task (goal and, in the scaled variant, scale) unless ``options={"goal": ...}``
    fixes the goal (and ``options["scale"]`` the scale).

    Args:
        horizon: Episode length.
        scale_range: As :class:`PointNav2D`.
    """

    metadata = {"render_modes": []}  # noqa: RUF012  (gymnasium's class attribute)

    def __init__(self, horizon: int = POINTNAV_HORIZON, scale_range: tuple[float, float] | None = None) -> None:
        self.horizon = _check_positive_int("horizon", horizon)
        self.scale_range = _check_scale_range(scale_range)
        self.observation_space = spaces.Box(-np.inf, np.inf, (2,), dtype=np.float64)
        self.action_space = spaces.Box(-MAX_ACTION, MAX_ACTION, (2,), dtype=np.float64)
        self.goal = np.zeros(2)
        self.scale = 1.0
        self._x = np.zeros(2)
        self._t = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start at the origin with a new (or the given) task."""
        super().reset(seed=seed)
        options = options or {}
        if "goal" in options:
            self.goal = np.asarray(options["goal"], dtype=np.float64).reshape(2)
        else:
            self.goal = self.np_random.uniform(-GOAL_RANGE, GOAL_RANGE, size=2)
        if "scale" in options:
            self.scale = float(options["scale"])
        elif self.scale_range is not None:
            self.scale = float(10.0 ** self.np_random.uniform(*self.scale_range))
        self._x, self._t = np.zeros(2), 0
        return self._x.copy(), {"goal": self.goal.copy(), "scale": self.scale}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Move by the clipped action; reward ``-c ||x' - g||``; truncated after ``horizon`` steps."""
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -MAX_ACTION, MAX_ACTION)
        self._x = self._x + a
        self._t += 1
        reward = -self.scale * float(np.linalg.norm(self._x - self.goal))
        return self._x.copy(), reward, False, self._t >= self.horizon, {}

