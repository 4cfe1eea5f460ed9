r"""Tabular MDP tasks (MAML-RL reference setup) and a Gymnasium environment.

A *task* is a random finite MDP with :math:`S` states and :math:`A` actions, following the TabularMDP
benchmark of pytorch-maml-rl / TorchOpt:

.. math::

    P[s, a, \cdot] \sim \operatorname{Dirichlet}(\mathbf{1}_S), \qquad
    R[s, a] \sim \mathcal{N}(1, 1), \qquad
    r_t = c \, (R[s_t, a_t] + z_t), \quad z_t \sim \mathcal{N}(0, 1),

every episode starts in state 0, the observation is the one-hot encoding of the current state and an
episode lasts exactly ``horizon`` steps. The reward multiplier :math:`c` is 1 for the standard benchmark;
the *scaled* variant draws :math:`c = 10^u`, :math:`u \sim \mathcal{U}(lo, hi)` per task so that the
tasks' rewards span several orders of magnitude (default ``(lo, hi) = (-2, 3)``).

Sampling rule shared with :mod:`metaopt.envs.batched` (inverse CDF, "common random numbers"): given
:math:`u \sim \mathcal{U}(0, 1)` the next state is

.. math::

    s' = \min\Big(\#\{k : F_k < u\},\; S - 1\Big), \qquad F_k = \sum_{j \le k} P[s, a, j],

so that the Gymnasium environment and the batched simulator produce identical trajectories from
identical uniforms (see :meth:`TabularMDPEnv.step_with_noise`).

Tasks are stored as torch tensors (``float64`` by default).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import gymnasium
import numpy as np
import torch
from gymnasium import spaces

__all__ = [
    "DEFAULT_HORIZON",
    "DEFAULT_NUM_ACTIONS",
    "DEFAULT_NUM_STATES",
    "DEFAULT_SCALE_RANGE",
    "TabularMDPEnv",
    "TabularMDPTask",
    "TaskBatch",
    "sample_tasks",
]

#: Default number of states of a TabularMDP task.
DEFAULT_NUM_STATES = 10
#: Default number of actions.
DEFAULT_NUM_ACTIONS = 5
#: Default episode length (steps).
DEFAULT_HORIZON = 10
#: Default ``(lo, hi)`` of the scaled variant: :math:`c = 10^u`, :math:`u \sim \mathcal{U}(-2, 3)`.
DEFAULT_SCALE_RANGE: tuple[float, float] = (-2.0, 3.0)

Index = int | slice | Sequence[int] | torch.Tensor


# --------------------------------------------------------------------------------------------------------
# Validation helpers (shared with metaopt.envs.batched)
# --------------------------------------------------------------------------------------------------------
def _check_positive_int(name: str, value: Any) -> int:
    """Return ``value`` if it is a positive ``int``, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be a positive int, got {value!r} of type {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _check_scale_range(scale_range: Any) -> tuple[float, float] | None:
    """Validate ``scale_range`` (``None`` or a pair ``(lo, hi)`` of finite floats with ``lo <= hi``)."""
    if scale_range is None:
        return None
    try:
        lo, hi = (float(v) for v in scale_range)
    except (TypeError, ValueError):
        raise TypeError(
            f"scale_range must be None or a pair (lo, hi) of floats (log10 of the reward scale), got {scale_range!r}"
        ) from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"scale_range must contain finite numbers, got {scale_range!r}")
    if lo > hi:
        raise ValueError(f"scale_range must satisfy lo <= hi, got scale_range={scale_range!r} (lo={lo} > hi={hi})")
    return lo, hi


def _normalize_index(idx: Index, n: int, name: str = "idx") -> slice | torch.Tensor:
    """Turn a task index into something that keeps the task dimension when used for indexing.

    An ``int`` ``i`` becomes ``slice(i, i + 1)``; slices and index tensors/sequences pass through.
    """
    if isinstance(idx, bool):
        raise TypeError(f"{name} must be an int, slice, sequence of ints or tensor, got {idx!r}")
    if isinstance(idx, int | np.integer):
        i = int(idx)
        if not -n <= i < n:
            raise IndexError(f"{name}={i} is out of range for {n} tasks")
        i %= n
        return slice(i, i + 1)
    if isinstance(idx, slice):
        return idx
    if isinstance(idx, torch.Tensor):
        if idx.dtype not in (torch.bool, torch.int64, torch.int32):
            raise TypeError(f"{name} tensor must have an integer or bool dtype, got {idx.dtype}")
        return idx
    try:
        return torch.as_tensor(list(idx), dtype=torch.long)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an int, slice, sequence of ints or tensor, got {idx!r}") from None


def _make_generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator | None:
    """Resolve the mutually exclusive ``seed`` / ``generator`` arguments into a generator (or ``None``)."""
    if seed is not None and generator is not None:
        raise ValueError(f"pass either seed or generator, not both (got seed={seed!r} and a generator)")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        return generator
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
            raise TypeError(f"seed must be an int or None, got {seed!r} of type {type(seed).__name__}")
        if seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        return torch.Generator().manual_seed(int(seed))
    return None


# --------------------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------------------
class TabularMDPTask(NamedTuple):
    r"""One tabular MDP task.

    Attributes:
        transitions: ``[S, A, S]`` tensor, ``transitions[s, a, s']`` :math:`= P(s' \mid s, a)`.
        reward_means: ``[S, A]`` tensor of mean rewards :math:`R[s, a]` (before scaling).
        scale: Reward multiplier :math:`c`; the reward is :math:`c\,(R[s, a] + z)`, :math:`z \sim N(0, 1)`.
    """

    transitions: torch.Tensor
    reward_means: torch.Tensor
    scale: float = 1.0

    @property
    def num_states(self) -> int:
        """Number of states :math:`S`."""
        return int(self.transitions.shape[0])

    @property
    def num_actions(self) -> int:
        """Number of actions :math:`A`."""
        return int(self.transitions.shape[1])


def _check_task_tensors(transitions: Any, reward_means: Any, batched: bool) -> None:
    """Validate shapes/values of task tensors (``batched`` adds a leading task dimension)."""
    prefix = "[N, " if batched else "["
    if not isinstance(transitions, torch.Tensor) or not isinstance(reward_means, torch.Tensor):
        raise TypeError(
            f"transitions and reward_means must be torch tensors, got {type(transitions).__name__} and "
            f"{type(reward_means).__name__}"
        )
    nd = 4 if batched else 3
    if transitions.dim() != nd or transitions.shape[-1] != transitions.shape[-3]:
        raise ValueError(f"transitions must have shape {prefix}S, A, S], got {tuple(transitions.shape)}")
    if tuple(reward_means.shape) != tuple(transitions.shape[:-1]):
        raise ValueError(
            f"reward_means must have shape {prefix}S, A] = {tuple(transitions.shape[:-1])} to match "
            f"transitions, got {tuple(reward_means.shape)}"
        )
    if not transitions.is_floating_point() or not reward_means.is_floating_point():
        raise TypeError(
            f"transitions and reward_means must be floating point, got {transitions.dtype} and {reward_means.dtype}"
        )


class TaskBatch(NamedTuple):
    """A batch of :math:`N` tabular MDP tasks (stacked on dim 0).

    Attributes:
        transitions: ``[N, S, A, S]`` transition probabilities.
        reward_means: ``[N, S, A]`` mean rewards (before scaling).
        scales: ``[N]`` reward multipliers :math:`c`.
    """

    transitions: torch.Tensor
    reward_means: torch.Tensor
    scales: torch.Tensor

    @property
    def num_tasks(self) -> int:
        """Number of tasks :math:`N`."""
        return int(self.transitions.shape[0])

    @property
    def num_states(self) -> int:
        """Number of states :math:`S`."""
        return int(self.transitions.shape[1])

    @property
    def num_actions(self) -> int:
        """Number of actions :math:`A`."""
        return int(self.transitions.shape[2])

    def task(self, i: int) -> TabularMDPTask:
        """Return task ``i`` as a :class:`TabularMDPTask` (views, no copy)."""
        if isinstance(i, bool) or not isinstance(i, int | np.integer):
            raise TypeError(f"i must be an int task index, got {i!r}")
        j = cast(slice, _normalize_index(i, self.num_tasks, "i")).start  # an int normalizes to a slice
        return TabularMDPTask(self.transitions[j], self.reward_means[j], float(self.scales[j]))

    def select(self, idx: Index) -> TaskBatch:
        """Return the sub-batch ``idx`` (an ``int`` keeps the task dimension, i.e. gives ``N = 1``)."""
        ix = _normalize_index(idx, self.num_tasks)
        return TaskBatch(self.transitions[ix], self.reward_means[ix], self.scales[ix])

    def shard(self, start: int, stop: int) -> TaskBatch:
        """Return tasks ``start:stop`` (same as ``select(slice(start, stop))``)."""
        return self.select(slice(start, stop))

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> TaskBatch:
        """Cast/move all tensors."""
        return TaskBatch(*(t.to(device=device, dtype=dtype) for t in self))

    @staticmethod
    def from_tasks(tasks: Sequence[TabularMDPTask]) -> TaskBatch:
        """Stack single tasks into a batch."""
        tasks = list(tasks)
        if not tasks:
            raise ValueError("tasks must be a non-empty sequence of TabularMDPTask, got an empty sequence")
        for t in tasks:
            _check_task_tensors(t.transitions, t.reward_means, batched=False)
        dtype = tasks[0].transitions.dtype
        return TaskBatch(
            torch.stack([t.transitions for t in tasks]),
            torch.stack([t.reward_means for t in tasks]),
            torch.tensor([float(t.scale) for t in tasks], dtype=dtype, device=tasks[0].transitions.device),
        )

    def validate(self) -> TaskBatch:
        """Check shapes/dtypes and return ``self``; raises ``ValueError``/``TypeError`` otherwise."""
        _check_task_tensors(self.transitions, self.reward_means, batched=True)
        if not isinstance(self.scales, torch.Tensor) or tuple(self.scales.shape) != (self.num_tasks,):
            shape = tuple(self.scales.shape) if isinstance(self.scales, torch.Tensor) else type(self.scales)
            raise ValueError(f"scales must be a tensor of shape [N] = ({self.num_tasks},), got {shape}")
        return self


def sample_tasks(
    num_tasks: int,
    *,
    num_states: int = DEFAULT_NUM_STATES,
    num_actions: int = DEFAULT_NUM_ACTIONS,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    scale_range: tuple[float, float] | None = None,
    dtype: torch.dtype = torch.float64,
) -> TaskBatch:
    r"""Sample a batch of tabular MDP tasks (vectorized).

    .. math::

        P[n, s, a, \cdot] \sim \operatorname{Dirichlet}(\mathbf{1}_S), \quad
        R[n, s, a] \sim \mathcal{N}(1, 1), \quad
        c_n = 10^{u_n},\; u_n \sim \mathcal{U}(lo, hi) \text{ (or } c_n = 1 \text{ if unscaled)}.

    The Dirichlet draw is implemented as normalized :math:`\operatorname{Exp}(1)` variables so it can use an
    explicit generator. Draw order: transitions, reward means, then scales (only if ``scale_range``).

    Args:
        num_tasks: Number of tasks :math:`N` (> 0).
        num_states: Number of states :math:`S`.
        num_actions: Number of actions :math:`A`.
        seed: Seed for a fresh ``torch.Generator``; mutually exclusive with ``generator``.
        generator: Generator to draw from (advanced in place).
        scale_range: ``(lo, hi)`` of :math:`\log_{10} c`, or ``None`` for :math:`c = 1`.
            The standard scaled variant uses :data:`DEFAULT_SCALE_RANGE`.
        dtype: Floating dtype of the returned tensors.

    Returns:
        The :class:`TaskBatch`. The same seed gives identical tasks.

    Raises:
        ValueError: Non-positive sizes, ``lo > hi``, both ``seed`` and ``generator``.
        TypeError: Arguments of the wrong type.
    """
    num_tasks = _check_positive_int("num_tasks", num_tasks)
    num_states = _check_positive_int("num_states", num_states)
    num_actions = _check_positive_int("num_actions", num_actions)
    scale_range = _check_scale_range(scale_range)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    gen = _make_generator(seed, generator)
    device = gen.device if gen is not None else torch.device("cpu")
    shape = (num_tasks, num_states, num_actions)

    expo = torch.empty((*shape, num_states), dtype=torch.float64, device=device).exponential_(generator=gen)
    # Guard against the (measure-zero) all-zero row before normalizing.
    expo = expo.clamp_min(torch.finfo(torch.float64).tiny)
    transitions = expo / expo.sum(dim=-1, keepdim=True)
    reward_means = 1.0 + torch.randn(shape, dtype=torch.float64, device=device, generator=gen)
    if scale_range is None:
        scales = torch.ones(num_tasks, dtype=torch.float64, device=device)
    else:
        lo, hi = scale_range
        u = lo + (hi - lo) * torch.rand(num_tasks, dtype=torch.float64, device=device, generator=gen)
        scales = torch.pow(10.0, u)
    return TaskBatch(transitions.to(dtype), reward_means.to(dtype), scales.to(dtype))


# --------------------------------------------------------------------------------------------------------
# Gymnasium environment
# --------------------------------------------------------------------------------------------------------
class TabularMDPEnv(gymnasium.Env):
    r"""Gymnasium tabular MDP (registered as ``metaopt/TabularMDP-v0``; scaled: ``metaopt/ScaledTabularMDP-v0``).

    Observation: one-hot ``float32`` vector of the current state; episodes start in state 0. Each step
    samples :math:`s' \sim P[s, a, \cdot]` and :math:`r = c\,(R[s, a] + z)`, :math:`z \sim N(0, 1)`, using
    the env's ``np_random`` through the inverse-CDF rule of the module docstring.

    Episode end: the horizon is a time limit (time is not part of the observation), so the step with index
    ``horizon - 1`` returns ``terminated=False, truncated=True``. Stepping after that raises ``RuntimeError``.

    ``info`` carries ``"scale"`` (the task's :math:`c`), ``"state"`` (current state) and ``"step"`` (number
    of steps taken in the episode).

    If no task was set with :meth:`reset_task` (or ``reset(options={"task": task})``), a default task is drawn
    from the env's own RNG on ``reset``; reseeding (``reset(seed=...)``) redraws that default task so that
    seeded resets are reproducible.

    Args:
        num_states: Number of states :math:`S`.
        num_actions: Number of actions :math:`A`.
        horizon: Episode length.
        scale_range: ``None`` (unscaled, :math:`c = 1`) or ``(lo, hi)`` of :math:`\log_{10} c`.
        task: Optional initial task.
        render_mode: Only ``None`` is supported.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        num_states: int = DEFAULT_NUM_STATES,
        num_actions: int = DEFAULT_NUM_ACTIONS,
        horizon: int = DEFAULT_HORIZON,
        scale_range: tuple[float, float] | None = None,
        task: TabularMDPTask | None = None,
        render_mode: str | None = None,
    ) -> None:
        super().__init__()
        self.num_states = _check_positive_int("num_states", num_states)
        self.num_actions = _check_positive_int("num_actions", num_actions)
        self.horizon = _check_positive_int("horizon", horizon)
        self.scale_range = _check_scale_range(scale_range)
        if render_mode is not None:
            raise ValueError(f"render_mode must be None (no rendering supported), got {render_mode!r}")
        self.render_mode = render_mode
        self.observation_space = spaces.Box(0.0, 1.0, (self.num_states,), dtype=np.float32)
        self.action_space = spaces.Discrete(self.num_actions)
        self._task: TabularMDPTask | None = None
        self._task_is_default = False
        self._cdf: np.ndarray | None = None
        self._reward_means: np.ndarray | None = None
        self._scale = 1.0
        self._state = 0
        self._t = 0
        self._needs_reset = True
        if task is not None:
            self.reset_task(task)

    # ---- tasks -------------------------------------------------------------------------------------------
    @property
    def task(self) -> TabularMDPTask | None:
        """The current task (``None`` until set or lazily sampled on ``reset``)."""
        return self._task

    def sample_tasks(self, num_tasks: int) -> TaskBatch:
        """Sample tasks with this env's sizes and scale range, seeded from the env's ``np_random``.

        Args:
            num_tasks: Number of tasks (> 0).

        Returns:
            A :class:`TaskBatch` (``float64``); reproducible after ``reset(seed=...)``.
        """
        num_tasks = _check_positive_int("num_tasks", num_tasks)
        seed = int(self.np_random.integers(0, 2**63 - 1))
        return sample_tasks(
            num_tasks,
            num_states=self.num_states,
            num_actions=self.num_actions,
            seed=seed,
            scale_range=self.scale_range,
        )

    def reset_task(self, task: TabularMDPTask) -> None:
        """Set the task used by subsequent episodes (takes effect at the next ``reset``).

        Args:
            task: A :class:`TabularMDPTask` with ``transitions`` of shape ``[S, A, S]`` and
                ``reward_means`` of shape ``[S, A]`` matching the env.

        Raises:
            TypeError: ``task`` is not a :class:`TabularMDPTask`.
            ValueError: Shapes do not match the env or rows of ``transitions`` are not distributions.
        """
        if not isinstance(task, TabularMDPTask):
            raise TypeError(f"task must be a TabularMDPTask, got {type(task).__name__}")
        _check_task_tensors(task.transitions, task.reward_means, batched=False)
        expected = (self.num_states, self.num_actions, self.num_states)
        if tuple(task.transitions.shape) != expected:
            raise ValueError(
                f"task.transitions must have shape {expected} for this env, got {tuple(task.transitions.shape)}"
            )
        p = task.transitions.detach().cpu().to(torch.float64).numpy()
        if (p < 0).any() or not np.allclose(p.sum(-1), 1.0, atol=1e-5):
            raise ValueError("task.transitions rows must be probability distributions (>= 0, summing to 1)")
        scale = float(task.scale)
        if not math.isfinite(scale):
            raise ValueError(f"task.scale must be finite, got {task.scale!r}")
        self._task = task
        self._task_is_default = False
        self._cdf = np.cumsum(p, axis=-1)
        self._reward_means = task.reward_means.detach().cpu().to(torch.float64).numpy().copy()
        self._scale = scale
        self._needs_reset = True

    # ---- gymnasium API ------------------------------------------------------------------------------------
    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.num_states, dtype=np.float32)
        obs[self._state] = 1.0
        return obs

    def _info(self) -> dict[str, Any]:
        return {"scale": self._scale, "state": self._state, "step": self._t}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode in state 0.

        Args:
            seed: Reseeds ``np_random`` (and redraws the default task if no task was set explicitly).
            options: Optional ``{"task": TabularMDPTask}`` to switch task before resetting.

        Returns:
            ``(observation, info)``.
        """
        super().reset(seed=seed)
        if options and options.get("task") is not None:
            self.reset_task(options["task"])
        if seed is not None and self._task_is_default:
            self._task = None
        if self._task is None:
            self.reset_task(self.sample_tasks(1).task(0))
            self._task_is_default = True
        self._state = 0
        self._t = 0
        self._needs_reset = False
        return self._obs(), self._info()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Take ``action`` using the env's ``np_random`` for the transition uniform and reward noise.

        Returns:
            ``(observation, reward, terminated, truncated, info)``; ``truncated`` is ``True`` at the horizon.
        """
        self._check_steppable(action)
        u = float(self.np_random.random())
        z = float(self.np_random.standard_normal())
        return self.step_with_noise(action, u, z)

    def step_with_noise(
        self, action: Any, transition_u: float, reward_z: float
    ) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        r"""Deterministic step driven by given random numbers (common random numbers).

        .. math::

            s' = \min(\#\{k : F_k < u\}, S - 1), \quad F = \operatorname{cumsum}(P[s, a, \cdot]),
            \qquad r = c\,(R[s, a] + z).

        Args:
            action: Action in ``[0, A)``.
            transition_u: Uniform :math:`u \in [0, 1)` selecting the next state.
            reward_z: Standard-normal reward noise :math:`z`.

        Returns:
            Same as :meth:`step`.
        """
        a = self._check_steppable(action)
        assert self._cdf is not None and self._reward_means is not None
        s = self._state
        next_state = min(int(np.count_nonzero(self._cdf[s, a] < transition_u)), self.num_states - 1)
        reward = self._scale * (float(self._reward_means[s, a]) + float(reward_z))
        self._state = next_state
        self._t += 1
        truncated = self._t >= self.horizon
        if truncated:
            self._needs_reset = True
        return self._obs(), float(reward), False, truncated, self._info()

    def _check_steppable(self, action: Any) -> int:
        if self._needs_reset:
            raise RuntimeError("call reset() before step() (episode not started or already over)")
        if isinstance(action, np.ndarray) and action.shape == ():
            action = action.item()
        if isinstance(action, bool) or not isinstance(action, int | np.integer):
            raise TypeError(f"action must be an int in [0, {self.num_actions}), got {action!r}")
        if not 0 <= int(action) < self.num_actions:
            raise ValueError(f"action must be in [0, {self.num_actions}), got {action!r}")
        return int(action)
