r"""Batched torch simulator of tabular MDPs driven by pre-drawn common random numbers.

:class:`BatchedTabularMDP` steps ``[N tasks x B trajectories]`` at once; the only Python loop is over the
``T`` time steps. All randomness comes from a :class:`RolloutNoise` drawn up front, so a rollout is a
deterministic function of (tasks, policy, noise). Because every random number is indexed by
``(task, trajectory, step)``, simulating all tasks at once or each task separately with the sliced noise
(``noise.select(i)``) gives identical trajectories -- provided ``policy_fn`` itself computes each task's
logits independently of the other tasks in the batch (true for per-task tables and, on CPU, for per-task
networks applied with ``torch.func.vmap``; GPU kernels may pick batch-size-dependent reductions).

Sampling rule at step :math:`t` (inverse CDF with ties resolved to the left, clamped for float safety):

.. math::

    a_t &= \min\Big(\#\{k : \textstyle\sum_{j \le k} \pi(j \mid o_t) < u^{a}_t\},\; A - 1\Big),
    \qquad \pi = \operatorname{softmax}(\text{policy\_fn}(o_t)), \\
    s_{t+1} &= \min\Big(\#\{k : \textstyle\sum_{j \le k} P[s_t, a_t, j] < u^{s}_t\},\; S - 1\Big), \\
    r_t &= c \, (R[s_t, a_t] + z_t),

with :math:`u^a, u^s \sim \mathcal{U}(0, 1)` and :math:`z \sim \mathcal{N}(0, 1)`; :math:`s_0 = 0`.
This is the same rule as :meth:`metaopt.envs.tabular_mdp.TabularMDPEnv.step_with_noise`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from metaopt.envs.tabular_mdp import (
    DEFAULT_HORIZON,
    Index,
    TaskBatch,
    _check_positive_int,
    _normalize_index,
)

__all__ = [
    "BatchedTabularMDP",
    "PolicyFn",
    "RolloutNoise",
    "Trajectories",
    "draw_noise",
]

#: Maps observations ``[N, B, S]`` to action logits ``[N, B, A]``.
PolicyFn = Callable[[torch.Tensor], torch.Tensor]


class RolloutNoise(NamedTuple):
    r"""Common random numbers for a rollout; every field is ``[N, B, T]`` and indexed by task on dim 0.

    Attributes:
        action_u: Uniforms :math:`u^a \in [0, 1)` for the action choice.
        transition_u: Uniforms :math:`u^s \in [0, 1)` for the next state.
        reward_z: Standard normals :math:`z` for the reward noise.
    """

    action_u: torch.Tensor
    transition_u: torch.Tensor
    reward_z: torch.Tensor

    @property
    def num_tasks(self) -> int:
        """Number of tasks :math:`N`."""
        return int(self.action_u.shape[0])

    @property
    def num_trajectories(self) -> int:
        """Trajectories per task :math:`B`."""
        return int(self.action_u.shape[1])

    @property
    def horizon(self) -> int:
        """Number of steps :math:`T`."""
        return int(self.action_u.shape[2])

    def select(self, idx: Index) -> RolloutNoise:
        """Noise of the task subset ``idx`` (an ``int`` keeps the task dimension)."""
        ix = _normalize_index(idx, self.num_tasks)
        return RolloutNoise(*(f[ix] for f in self))

    def shard(self, start: int, stop: int) -> RolloutNoise:
        """Noise of tasks ``start:stop``."""
        return self.select(slice(start, stop))


def draw_noise(
    num_tasks: int,
    num_trajectories: int,
    horizon: int = DEFAULT_HORIZON,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> RolloutNoise:
    """Draw the common random numbers of a rollout.

    Draw order (fixed, for reproducibility): ``action_u``, ``transition_u``, ``reward_z``, each of shape
    ``[num_tasks, num_trajectories, horizon]``.

    Args:
        num_tasks: :math:`N` (> 0).
        num_trajectories: :math:`B` (> 0).
        horizon: :math:`T` (> 0).
        generator: Torch generator (``None`` = global RNG). Its device decides the device when
            ``device`` is ``None``.
        dtype: Floating dtype; must match the simulator's ``dtype``.
        device: Device of the tensors.

    Returns:
        A :class:`RolloutNoise`.
    """
    shape = (
        _check_positive_int("num_tasks", num_tasks),
        _check_positive_int("num_trajectories", num_trajectories),
        _check_positive_int("horizon", horizon),
    )
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    action_u = torch.rand(shape, dtype=dtype, device=device, generator=generator)
    transition_u = torch.rand(shape, dtype=dtype, device=device, generator=generator)
    reward_z = torch.randn(shape, dtype=dtype, device=device, generator=generator)
    return RolloutNoise(action_u, transition_u, reward_z)


def inverse_cdf(cdf: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling, the one rule for states and actions: the number of CDF entries ``< u``.

    ``cdf`` is ``[..., K]`` (cumulative probabilities), ``u`` ``[...]`` uniforms; the index is clamped to
    ``K - 1`` against a last entry that rounds below 1.
    """
    index = torch.searchsorted(cdf, u.unsqueeze(-1).contiguous()).squeeze(-1)
    return index.clamp_(max=cdf.shape[-1] - 1)


class Trajectories(NamedTuple):
    """A batch of rollouts, time-major (``T`` first) for backward recursions such as λ-returns.

    Attributes:
        observations: ``[T, N, B, S]`` one-hot observations :math:`o_t` (before the action).
        actions: ``[T, N, B]`` ``long`` actions :math:`a_t`.
        rewards: ``[T, N, B]`` rewards :math:`r_t` (already multiplied by the task scale).
        dones: ``[T, N, B]`` float, ``1.0`` at the last step ``t = T - 1`` (end of the episode), else 0.
        states: ``[T, N, B]`` ``long`` states :math:`s_t` (``None`` for environments without discrete states).
        last_observations: ``[N, B, S]`` one-hot observation :math:`o_T` after the final step.
        scales: ``[N]`` reward multipliers :math:`c`.
    """

    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    dones: torch.Tensor
    states: torch.Tensor | None
    last_observations: torch.Tensor
    scales: torch.Tensor

    @property
    def num_tasks(self) -> int:
        """Number of tasks :math:`N`."""
        return int(self.actions.shape[1])

    def select(self, idx: Index) -> Trajectories:
        """Task subset ``idx`` (dim 1 of time-major fields, dim 0 of the others; ``int`` keeps the dim)."""
        ix = _normalize_index(idx, self.num_tasks)
        return Trajectories(
            observations=self.observations[:, ix],
            actions=self.actions[:, ix],
            rewards=self.rewards[:, ix],
            dones=self.dones[:, ix],
            states=None if self.states is None else self.states[:, ix],
            last_observations=self.last_observations[ix],
            scales=self.scales[ix],
        )


class BatchedTabularMDP:
    """Vectorized simulator of ``N`` tabular MDP tasks (no Python loop over tasks or trajectories).

    Args:
        tasks: The :class:`~metaopt.envs.tabular_mdp.TaskBatch` to simulate (cast to ``dtype``).
        horizon: Episode length :math:`T`.
        dtype: Floating dtype of observations, rewards and the CDFs (``float32`` default).

    Example:
        >>> import torch
        >>> from metaopt.envs import BatchedTabularMDP, sample_tasks
        >>> sim = BatchedTabularMDP(sample_tasks(4, seed=0))
        >>> noise = sim.draw_noise(8, generator=torch.Generator().manual_seed(1))
        >>> traj = sim.rollout(lambda obs: torch.zeros(*obs.shape[:2], 5), noise)
        >>> tuple(traj.rewards.shape)  # [T, tasks, trajectories]
        (10, 4, 8)
    """

    def __init__(self, tasks: TaskBatch, horizon: int = DEFAULT_HORIZON, *, dtype: torch.dtype = torch.float32):
        if not isinstance(tasks, TaskBatch):
            raise TypeError(f"tasks must be a TaskBatch, got {type(tasks).__name__}")
        tasks.validate()
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        self.horizon = _check_positive_int("horizon", horizon)
        self.dtype = dtype
        self.tasks = tasks.to(dtype=dtype)
        self.device = self.tasks.transitions.device
        self.num_tasks = tasks.num_tasks
        self.num_states = tasks.num_states
        self.num_actions = tasks.num_actions
        # CDF over next states, [N, S, A, S]; the sampling rule counts entries < u.
        self._transition_cdf = self.tasks.transitions.cumsum(dim=-1).contiguous()
        self._eye = torch.eye(self.num_states, dtype=dtype, device=self.device)

    def select(self, idx: Index) -> BatchedTabularMDP:
        """Simulator of the task subset ``idx`` (same horizon and dtype)."""
        return BatchedTabularMDP(self.tasks.select(idx), self.horizon, dtype=self.dtype)

    def draw_noise(self, num_trajectories: int, *, generator: torch.Generator | None = None) -> RolloutNoise:
        """:func:`draw_noise` with this simulator's ``N``, ``T``, dtype and device."""
        return draw_noise(
            self.num_tasks,
            num_trajectories,
            self.horizon,
            generator=generator,
            dtype=self.dtype,
            device=self.device,
        )

    # ---- validation ---------------------------------------------------------------------------------------
    def _check_noise(self, noise: RolloutNoise) -> tuple[int, int]:
        if not isinstance(noise, RolloutNoise):
            raise TypeError(f"noise must be a RolloutNoise, got {type(noise).__name__}")
        for name, field in zip(noise._fields, noise, strict=True):
            if not isinstance(field, torch.Tensor):
                raise TypeError(f"noise.{name} must be a torch.Tensor, got {type(field).__name__}")
        b = int(noise.action_u.shape[1]) if noise.action_u.dim() == 3 else -1
        expected = (self.num_tasks, b, self.horizon)
        for name, field in zip(noise._fields, noise, strict=True):
            if tuple(field.shape) != expected:
                raise ValueError(
                    f"noise.{name} must have shape [N, B, T] = [{self.num_tasks}, B, {self.horizon}] "
                    f"(num_tasks={self.num_tasks}, horizon={self.horizon}) with the same B for all fields, "
                    f"got {tuple(field.shape)}"
                )
            if field.dtype != self.dtype:
                raise TypeError(f"noise.{name} must have dtype {self.dtype} (the simulator's), got {field.dtype}")
        return self.num_tasks, b

    # ---- simulation ---------------------------------------------------------------------------------------
    def _step_env(
        self, state: torch.Tensor, action: torch.Tensor, u: torch.Tensor, z: torch.Tensor, task_idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Next state and reward for ``[N, B]`` states/actions with uniforms ``u`` and normals ``z``."""
        cdf = self._transition_cdf[task_idx, state, action]  # [N, B, S]
        next_state = inverse_cdf(cdf, u)
        reward = self.tasks.scales[:, None] * (self.tasks.reward_means[task_idx, state, action] + z)
        return next_state, reward

    def _run(self, noise: RolloutNoise, choose: Callable[[int, torch.Tensor], torch.Tensor]) -> Trajectories:
        """Step all tasks and trajectories; ``choose(t, state)`` gives the actions ``[N, B]`` at step ``t``."""
        n, b = self._check_noise(noise)
        t_max = self.horizon
        # Time-major, contiguous views of the noise: [T, N, B].
        transition_u, reward_z = (f.permute(2, 0, 1).contiguous() for f in (noise.transition_u, noise.reward_z))
        task_idx = torch.arange(n, device=self.device)[:, None].expand(n, b)
        state = torch.zeros((n, b), dtype=torch.long, device=self.device)
        actions = torch.empty((t_max, n, b), dtype=torch.long, device=self.device)
        rewards = torch.empty((t_max, n, b), dtype=self.dtype, device=self.device)
        states = torch.empty((t_max, n, b), dtype=torch.long, device=self.device)
        for t in range(t_max):
            states[t] = state
            action = choose(t, state)
            actions[t] = action
            state, rewards[t] = self._step_env(state, action, transition_u[t], reward_z[t], task_idx)
        dones = torch.zeros((t_max, n, b), dtype=self.dtype, device=self.device)
        dones[-1] = 1.0
        return Trajectories(
            observations=self._eye[states],
            actions=actions,
            rewards=rewards,
            dones=dones,
            states=states,
            last_observations=self._eye[state],
            scales=self.tasks.scales.clone(),
        )

    @torch.no_grad()
    def rollout(self, policy_fn: PolicyFn, noise: RolloutNoise) -> Trajectories:
        """Roll out ``policy_fn`` on all tasks and trajectories at once (under ``torch.no_grad``).

        Args:
            policy_fn: Maps observations ``[N, B, S]`` to action logits ``[N, B, A]`` (e.g. a per-task
                network applied with ``torch.func.vmap``). Logits are cast to the simulator's dtype.
            noise: :class:`RolloutNoise` of shape ``[N, B, T]`` matching this simulator.

        Returns:
            Time-major :class:`Trajectories`.

        Raises:
            TypeError: ``policy_fn`` is not callable or returns a non-tensor; wrong noise type/dtype.
            ValueError: Noise shape mismatch with the task batch/horizon, or logits of the wrong shape.
        """
        if not callable(policy_fn):
            raise TypeError(f"policy_fn must be callable, got {type(policy_fn).__name__}")
        self._check_noise(noise)
        action_u = noise.action_u.permute(2, 0, 1)

        def choose(t: int, state: torch.Tensor) -> torch.Tensor:
            obs = self._eye[state]
            logits = policy_fn(obs)
            expected = (*obs.shape[:2], self.num_actions)
            if not isinstance(logits, torch.Tensor):
                raise TypeError(f"policy_fn must return a torch.Tensor of logits, got {type(logits).__name__}")
            if tuple(logits.shape) != expected:
                raise ValueError(
                    f"policy_fn must return logits of shape [N, B, A] = {list(expected)}, got {list(logits.shape)}"
                )
            probs = torch.softmax(logits.to(self.dtype), dim=-1)
            cdf = probs.cumsum(dim=-1).contiguous()
            return inverse_cdf(cdf, action_u[t])

        return self._run(noise, choose)

    @torch.no_grad()
    def rollout_act(self, act: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], noise: RolloutNoise
                    ) -> Trajectories:
        """Roll out a policy that turns the step's uniforms into actions (the :class:`~metaopt.envs.BatchedEnv` form).

        ``act(observations [N, B, S], action_u [N, B]) -> actions [N, B]`` (e.g.
        :meth:`metaopt.rl.Categorical.sample` of a network's logits: then the actions equal :meth:`rollout`'s).
        """
        self._check_noise(noise)
        action_u = noise.action_u.permute(2, 0, 1)

        def choose(t: int, state: torch.Tensor) -> torch.Tensor:
            action = act(self._eye[state], action_u[t])
            if not isinstance(action, torch.Tensor) or tuple(action.shape) != tuple(state.shape) or (
                    action.is_floating_point()):
                raise ValueError(f"act must return integer actions of shape [N, B] = {list(state.shape)}, got "
                                 f"{getattr(action, 'dtype', type(action).__name__)} "
                                 f"{list(getattr(action, 'shape', []))}")
            return action.to(torch.long)

        return self._run(noise, choose)

    @torch.no_grad()
    def rollout_table(self, logits: torch.Tensor, noise: RolloutNoise) -> Trajectories:
        """Roll out tabular policies given by their logits in every state (under ``torch.no_grad``).

        Observations are one-hot states, so a policy network's logits for every possible observation form a table
        ``[N, S, A]`` (one forward pass over the ``S`` states instead of one per visited state). Sampling follows
        the same rule and noise as :meth:`rollout`, so for a network ``f``,
        ``rollout_table(f(eye(S)), noise)`` equals ``rollout(f, noise)`` whenever ``f`` gives the same logits for a
        state in either batch (exact up to the last bit of the network's arithmetic).

        Args:
            logits: ``[N, S, A]`` per-task logits, or ``[S, A]`` shared by all tasks.
            noise: :class:`RolloutNoise` of shape ``[N, B, T]`` matching this simulator.

        Returns:
            Time-major :class:`Trajectories`.
        """
        self._check_noise(noise)
        n, s, a = self.num_tasks, self.num_states, self.num_actions
        if not isinstance(logits, torch.Tensor) or logits.shape[-2:] != (s, a) or logits.dim() not in (2, 3) or (
                logits.dim() == 3 and logits.shape[0] != n):
            raise ValueError(f"logits must have shape [N, S, A] = {[n, s, a]} or [S, A] = {[s, a]}, got "
                             f"{list(getattr(logits, 'shape', [type(logits).__name__]))}")
        cdf = torch.softmax(logits.to(self.dtype), dim=-1).cumsum(dim=-1).expand(n, s, a).contiguous()
        action_u = noise.action_u.permute(2, 0, 1)
        task_idx = torch.arange(n, device=self.device)[:, None]

        def choose(t: int, state: torch.Tensor) -> torch.Tensor:
            return inverse_cdf(cdf[task_idx, state], action_u[t])  # CDFs [N, B, A]

        return self._run(noise, choose)

    @torch.no_grad()
    def rollout_actions(self, actions: torch.Tensor, noise: RolloutNoise) -> Trajectories:
        """Step with given actions (``noise.action_u`` is ignored); for tests and open-loop evaluation.

        Args:
            actions: ``[N, B, T]`` integer actions in ``[0, A)``.
            noise: :class:`RolloutNoise` of shape ``[N, B, T]``.

        Returns:
            Time-major :class:`Trajectories` whose ``actions`` equal ``actions.permute(2, 0, 1)``.
        """
        n, b = self._check_noise(noise)
        if not isinstance(actions, torch.Tensor) or actions.dtype.is_floating_point or actions.is_complex():
            raise TypeError(f"actions must be an integer torch.Tensor, got {getattr(actions, 'dtype', actions)!r}")
        if tuple(actions.shape) != (n, b, self.horizon):
            raise ValueError(
                f"actions must have shape [N, B, T] = {[n, b, self.horizon]} to match noise, got {list(actions.shape)}"
            )
        if actions.numel() and (int(actions.min()) < 0 or int(actions.max()) >= self.num_actions):
            raise ValueError(
                f"actions must lie in [0, {self.num_actions}), got range [{actions.min()}, {actions.max()}]"
            )
        acts = actions.permute(2, 0, 1).to(device=self.device, dtype=torch.long)
        return self._run(noise, lambda t, state: acts[t])
