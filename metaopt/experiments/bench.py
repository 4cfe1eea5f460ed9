"""``metaopt bench``: speed and memory of the MAML-A2C job against what users run today.

One run measures, side by side and on the same tasks and random numbers:

* **comparison** -- one meta-iteration at TorchOpt's reference configuration (40 tasks x 20 trajectories
  x 10 steps, one inner ``SGD(0.1)`` step, no PopArt) for

  - ``baseline``: a TorchOpt-style loop written here (:class:`TorchOptBaseline`): tasks one by one,
    Gymnasium :class:`~metaopt.envs.TabularMDPEnv` instances stepped from Python, ``torchopt.MetaSGD``,
    ``extract_state_dict``/``recover_state_dict``, ``outer_loss.backward()`` per task, then outer Adam;
  - ``baseline-sequential``: the same loop with TorchOpt's exact rollout (one env, the 20 episodes one
    after the other, one policy forward per environment step);
  - metaopt's :class:`~metaopt.maml.MetaLearner` on the ``higher``, ``torchopt`` and ``func``
    (vectorized with ``vmap``) engines;

* **identical math** -- the baseline's meta-gradient against metaopt's on one iteration (float64 and
  float32): the baseline drives its environments with ``step_with_noise`` and the iteration's
  :class:`~metaopt.envs.RolloutNoise`, so both produce the same trajectories;
* **tasks** -- time and peak memory against the number of tasks (``func``, and the baseline on the smaller
  counts);
* **unroll** -- time and peak memory against the number of inner steps ``K`` with full, truncated
  (``truncate=1``) and first-order meta-gradients (``func``);
* **popart** -- the ``func`` job with and without PopArt (and with learned ``lr``/``beta``).

Timing: wall-clock and process CPU time of ``step(data)`` (rollouts, adaptation, outer loss, backward,
outer Adam step; task and noise sampling excluded for every method) after warm-up iterations; the median
over repetitions is reported, and ratios use CPU time by default (``BenchSettings.metric``). The comparison,
tasks and PopArt sections interleave their configurations repetition by repetition in the harness process,
so that a change of machine load affects all of them alike; the unroll section times each configuration in
its own child process, together with its memory.

Memory: every (method, configuration) of the memory columns runs in its own child process (``spawn``: a
fresh interpreter; ``fork``: a forked copy of the harness, used by ``--quick``). The child first runs one
iteration of the same method on a one-task problem (so code pages and lazily created state are resident),
samples its data, collects garbage, returns freed heap to the OS (``malloc_trim``), resets the kernel's
peak-RSS mark (``/proc/self/clear_refs``; without it ``ru_maxrss`` is used), and then reports
``peak RSS - RSS before`` over its warm-up and timed iterations: the extra resident memory the job needs,
allocator overhead included.

Results: ``<out>/<name>.json`` and ``<out>/<name>.md``, stamped with the git commit, the machine, the
torch thread count and library versions.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import dataclasses
import gc
import importlib.metadata
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from metaopt.engines import require
from metaopt.envs import RolloutNoise, TabularMDPEnv, TabularMDPTask
from metaopt.maml import IterationData, MAMLConfig, MetaLearner
from metaopt.rl import ActorCritic

__all__ = [
    "BenchSettings",
    "QUICK",
    "FULL",
    "METHODS",
    "TorchOptBaseline",
    "Traj",
    "make_step",
    "check_identical_math",
    "measure",
    "measure_isolated",
    "run_bench",
    "evaluate_targets",
    "render_markdown",
    "write_results",
    "stamp",
    "add_arguments",
    "run",
]

#: Methods of the comparison, in table order.
METHODS = ("baseline", "baseline-sequential", "higher", "torchopt", "func")
#: Unroll modes: full backpropagation, the last step only (``truncate=1``), first-order.
UNROLL_MODES = ("full", "truncate1", "first_order")

StepFn = Callable[[IterationData], Any]


# ------------------------------------------------------------------------------------------ settings
@dataclasses.dataclass
class BenchSettings:
    """What one benchmark run measures.

    Attributes:
        name: Result file stem (``<out>/<name>.json`` and ``.md``).
        tasks: Tasks per meta-iteration of the comparison, PopArt and unroll sections.
        trajectories: Trajectories per task.
        horizon: Steps per trajectory.
        warmup: Untimed iterations before timing (per method and configuration).
        reps: Timed iterations of the comparison and PopArt sections.
        scaling_reps: Timed iterations of a tasks configuration; the most of an unroll configuration.
        budget_s: Time budget of one unroll configuration; fewer repetitions (at least ``min_reps``) are run
            when the warm-up shows an iteration would exceed it.
        min_reps: Fewest timed iterations of an unroll configuration.
        task_counts: Task counts of the tasks section (``func``).
        baseline_task_counts: Task counts at which the baseline is also measured.
        unroll: Inner-step counts ``K`` of the unroll section.
        popart_reps: Timed iterations of the PopArt section.
        sequential: Include ``baseline-sequential`` in the comparison.
        memory: Measure peak memory (child processes).
        isolation: ``spawn`` or ``fork`` for the child processes.
        threads: ``torch.set_num_threads`` of the harness and its children.
        seed: Seed of the learners and the iteration data.
        dtype: Dtype of the timed runs.
        metric: Time used for ratios and targets: ``cpu`` (process CPU time: with one torch thread it
            approximates the wall-clock time on an idle machine and does not count time spent waiting while other
            processes run on a shared machine) or ``wall`` (wall-clock). Both are always recorded.
    """

    name: str = "full"
    tasks: int = 40
    trajectories: int = 20
    horizon: int = 10
    warmup: int = 2
    reps: int = 15
    scaling_reps: int = 5
    budget_s: float = 12.0
    min_reps: int = 2
    task_counts: tuple[int, ...] = (10, 40, 160, 640)
    baseline_task_counts: tuple[int, ...] = (10, 40, 160)
    unroll: tuple[int, ...] = (1, 4, 16, 64)
    popart_reps: int = 21
    sequential: bool = True
    memory: bool = True
    isolation: str = "spawn"
    threads: int = 1
    seed: int = 0
    dtype: str = "float32"
    metric: str = "cpu"

    def validate(self) -> BenchSettings:
        """Check the settings, raising a ``ValueError`` that names the bad field."""
        for f in ("tasks", "trajectories", "horizon", "reps", "scaling_reps", "min_reps", "popart_reps", "threads"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{f} must be an int >= 1, got {v!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup must be an int >= 0, got {self.warmup!r}")
        for f in ("task_counts", "baseline_task_counts", "unroll"):
            v = tuple(getattr(self, f))
            if any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in v):
                raise ValueError(f"{f} must be ints >= 1, got {v!r}")
            setattr(self, f, v)
        if not self.task_counts or not self.unroll:
            raise ValueError("task_counts and unroll must not be empty")
        if self.isolation not in ("spawn", "fork"):
            raise ValueError(f"isolation must be 'spawn' or 'fork', got {self.isolation!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if self.metric not in ("cpu", "wall"):
            raise ValueError(f"metric must be 'cpu' or 'wall', got {self.metric!r}")
        if not self.budget_s > 0:
            raise ValueError(f"budget_s must be > 0, got {self.budget_s!r}")
        return self

    def config(self, **overrides: Any) -> MAMLConfig:
        """The reference :class:`MAMLConfig` of this run, with ``overrides``."""
        base = {"tasks": self.tasks, "trajectories": self.trajectories, "horizon": self.horizon,
                "seed": self.seed, "dtype": self.dtype, "eval_tasks": 1}
        return MAMLConfig(**(base | overrides)).validate()


#: The full run (about 2.5 minutes on two cores, one thread).
FULL = BenchSettings()
#: CI budget: tiny sizes, forked children, well under a minute.
QUICK = BenchSettings(
    name="quick", tasks=4, warmup=1, reps=2, scaling_reps=2, budget_s=2.0, min_reps=1, task_counts=(2, 4),
    baseline_task_counts=(2, 4), unroll=(1, 2), popart_reps=2, isolation="fork",
)


# ------------------------------------------------------------------------------------------ baseline
class Traj(NamedTuple):
    """One task's rollout in TorchOpt's layout (time-major numpy arrays).

    Attributes:
        obs: ``[T, B, S]`` observations.
        acs: ``[T, B]`` actions.
        next_obs: ``[T, B, S]`` observations after each step.
        rews: ``[T, B]`` rewards.
        gammas: ``[T, B]`` ``gamma * (1 - done)``.
    """

    obs: np.ndarray
    acs: np.ndarray
    next_obs: np.ndarray
    rews: np.ndarray
    gammas: np.ndarray


class TorchOptBaseline:
    r"""The MAML-A2C meta-iteration as TorchOpt's MAML-RL example writes it (fresh code).

    Per meta-iteration: ``extract_state_dict`` of the policy and of ``torchopt.MetaSGD``; then task by
    task: roll out ``B`` episodes with the current policy, ``inner_opt.step(inner_loss)``, roll out ``B``
    fresh episodes with the adapted policy, ``outer_loss.backward()`` (meta-gradients summed over tasks in
    ``.grad``), ``recover_state_dict`` of both; finally one outer Adam step. The A2C loss follows the
    example too: bootstrap values from a forward pass on the next observations, lambda-returns in numpy,
    ``torch.distributions.Categorical`` log-probabilities.

    Environments (``rollout``):

    * ``"vector"`` -- ``B`` :class:`~metaopt.envs.TabularMDPEnv` instances stepped in a Python loop at
      every time step, with one batched policy forward per time step (a synchronous vector env, as a
      user would write with ``gymnasium.vector.SyncVectorEnv``, minus its info bookkeeping); the task is
      set on the ``B`` envs once per task (it is the same for the task's two rollouts).
    * ``"sequential"`` -- TorchOpt's ``maml.py`` exactly: one env whose task is set at every rollout, the
      ``B`` episodes one after the other, one policy forward on a single observation per environment step.

    Random numbers: instead of ``pi.sample()`` and the env's own RNG, step ``t`` of episode ``b`` of task
    ``i`` uses ``noise.action_u[i, b, t]`` for the action (inverse CDF of ``softmax(logits)``) and
    ``noise.transition_u``/``noise.reward_z`` through :meth:`TabularMDPEnv.step_with_noise` -- the rule of
    :class:`~metaopt.envs.BatchedTabularMDP` -- so the trajectories equal metaopt's for the same
    :class:`~metaopt.maml.IterationData`.

    Args:
        model: The initial policy ``theta_0`` (copied).
        cfg: The configuration; only TorchOpt's setting is supported (one inner SGD step without
            momentum, no PopArt, nothing learned besides ``theta_0``).
        rollout: ``"vector"`` or ``"sequential"``.
    """

    def __init__(self, model: ActorCritic, cfg: MAMLConfig, *, rollout: str = "vector") -> None:
        cfg.validate()
        unsupported = {
            "inner_steps": (cfg.inner_steps, 1), "inner_optimizer": (cfg.inner_optimizer, "sgd"),
            "inner_momentum": (cfg.inner_momentum, 0.0), "popart": (cfg.popart, False), "learn": (cfg.learn, ()),
            "first_order": (cfg.first_order, False), "truncate": (cfg.truncate, None), "scaled": (cfg.scaled, False),
        }
        bad = {k: v for k, (v, want) in unsupported.items() if v != want}
        if bad:
            raise ValueError(f"the TorchOpt baseline supports TorchOpt's reference setting only; unsupported: {bad}")
        if rollout not in ("vector", "sequential"):
            raise ValueError(f"rollout must be 'vector' or 'sequential', got {rollout!r}")
        self.torchopt = require("torchopt")
        self.cfg, self.rollout = cfg, rollout
        self.dtype = cfg.torch_dtype
        self.np_dtype = np.float64 if cfg.dtype == "float64" else np.float32
        self.policy = copy.deepcopy(model)
        self.inner_opt = self.torchopt.MetaSGD(self.policy, lr=cfg.inner_lr)
        self.outer_opt = torch.optim.Adam(self.policy.parameters(), lr=cfg.outer_lr)
        n_envs = cfg.trajectories if rollout == "vector" else 1
        self.envs = [TabularMDPEnv(cfg.num_states, cfg.num_actions, cfg.horizon) for _ in range(n_envs)]
        self._task: TabularMDPTask | None = None

    # ---------------------------------------------------------------------------------------- rollouts
    def _action(self, obs: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Actions for observations ``[..., S]`` by the inverse CDF of the policy at uniforms ``u [...]``."""
        logits, _ = self.policy(torch.from_numpy(obs).to(self.dtype))
        cdf = torch.softmax(logits, dim=-1).cumsum(dim=-1)
        u_t = torch.as_tensor(np.ascontiguousarray(u), dtype=self.dtype).reshape(*cdf.shape[:-1], 1)
        return torch.searchsorted(cdf, u_t).squeeze(-1).clamp_(max=self.cfg.num_actions - 1).numpy()

    def _buffers(self) -> Traj:
        c = self.cfg
        shape = (c.horizon, c.trajectories)
        return Traj(
            obs=np.zeros((*shape, c.num_states), dtype=np.float32),
            acs=np.zeros(shape, dtype=np.int64),
            next_obs=np.zeros((*shape, c.num_states), dtype=np.float32),
            rews=np.zeros(shape, dtype=self.np_dtype),
            gammas=np.zeros(shape, dtype=self.np_dtype),
        )

    def sample_traj(self, task: TabularMDPTask, noise: tuple[np.ndarray, np.ndarray, np.ndarray]) -> Traj:
        """Roll out ``B`` episodes of ``task`` with the current policy (no grad).

        Args:
            task: The task.
            noise: ``(action_u, transition_u, reward_z)``, each ``[B, T]``.

        Returns:
            The rollout in TorchOpt's layout.
        """
        action_u, transition_u, reward_z = noise
        buf = self._buffers()
        gamma, horizon = self.cfg.gamma, self.cfg.horizon
        with torch.no_grad():
            if self.rollout == "vector":
                if self._task is not task:  # once per task, like ``envs.call("reset_task", task)``
                    for env in self.envs:
                        env.reset_task(task)
                    self._task = task
                obs = np.stack([env.reset()[0] for env in self.envs])
                for t in range(horizon):
                    acs = self._action(obs, action_u[:, t])
                    nxt = np.empty_like(obs)
                    for b, env in enumerate(self.envs):
                        ob, rew, term, trunc, _ = env.step_with_noise(int(acs[b]), transition_u[b, t], reward_z[b, t])
                        nxt[b] = ob
                        buf.rews[t, b] = rew
                        buf.gammas[t, b] = (1.0 - float(term or trunc)) * gamma
                    buf.obs[t], buf.acs[t], buf.next_obs[t] = obs, acs, nxt
                    obs = nxt
            else:
                env = self.envs[0]
                env.reset_task(task)
                for b in range(self.cfg.trajectories):
                    ob, _ = env.reset()
                    for t in range(horizon):
                        ac = int(self._action(ob, action_u[b, t]))
                        nxt, rew, term, trunc, _ = env.step_with_noise(ac, transition_u[b, t], reward_z[b, t])
                        buf.obs[t, b], buf.acs[t, b], buf.next_obs[t, b] = ob, ac, nxt
                        buf.rews[t, b] = rew
                        buf.gammas[t, b] = (1.0 - float(term or trunc)) * gamma
                        ob = nxt
        return buf

    # -------------------------------------------------------------------------------------------- loss
    def a2c_loss(self, traj: Traj) -> Tensor:
        r"""TorchOpt's A2C loss.

        :math:`L = -\operatorname{mean}(\operatorname{sg}(A) \log\pi) + c_v \operatorname{mean}(A^2)` with
        ``A = G - V(s)`` and lambda-returns ``G`` computed in numpy from detached next-state values.
        """
        lam = self.cfg.lam
        _, next_values = self.policy(torch.from_numpy(traj.next_obs).to(self.dtype))
        next_values = next_values.detach().numpy()
        returns = []
        g = next_values[-1]
        for i in reversed(range(next_values.shape[0])):
            g = traj.rews[i] + traj.gammas[i] * ((1.0 - lam) * next_values[i] + lam * g)
            returns.insert(0, g)
        lambda_returns = torch.from_numpy(np.array(returns))
        logits, values = self.policy(torch.from_numpy(traj.obs).to(self.dtype))
        log_probs = torch.distributions.Categorical(logits=logits).log_prob(torch.from_numpy(traj.acs))
        advs = lambda_returns - values
        return -(advs.detach() * log_probs).mean() + self.cfg.value_coef * advs.pow(2).mean()

    # --------------------------------------------------------------------------------------- iteration
    def meta_gradient(self, data: IterationData) -> dict[str, np.ndarray]:
        """Accumulate the meta-gradient of the summed outer losses into the policy's ``.grad``.

        Returns:
            Per-task ``pre_return``, ``post_return`` (mean episode return) and ``outer_loss``.
        """
        to = self.torchopt
        policy_state = to.extract_state_dict(self.policy)
        optim_state = to.extract_state_dict(self.inner_opt)
        pre_r, post_r, losses = [], [], []
        for i in range(data.tasks.num_tasks):
            task = data.tasks.task(i)
            pre = self.sample_traj(task, _task_noise(data.noise_pre, i))
            inner_loss = self.a2c_loss(pre)
            self.inner_opt.step(inner_loss)
            post = self.sample_traj(task, _task_noise(data.noise_post, i))
            outer_loss = self.a2c_loss(post)
            outer_loss.backward()
            to.recover_state_dict(self.policy, policy_state)
            to.recover_state_dict(self.inner_opt, optim_state)
            pre_r.append(np.sum(pre.rews, axis=0).mean())
            post_r.append(np.sum(post.rews, axis=0).mean())
            losses.append(float(outer_loss.detach()))
        return {"pre_return": np.array(pre_r), "post_return": np.array(post_r), "outer_loss": np.array(losses)}

    def step(self, data: IterationData) -> dict[str, np.ndarray]:
        """One meta-iteration: zero grads, :meth:`meta_gradient`, outer Adam step."""
        self.outer_opt.zero_grad()
        info = self.meta_gradient(data)
        self.outer_opt.step()
        return info


def _task_noise(noise: RolloutNoise, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return noise.action_u[i].numpy(), noise.transition_u[i].numpy(), noise.reward_z[i].numpy()


# ------------------------------------------------------------------------------------------- methods
def make_step(method: str, cfg: MAMLConfig) -> tuple[StepFn, Callable[[], IterationData]]:
    """A method's ``step(data)`` and a sampler of iteration data for ``cfg``.

    The sampler is a separate :class:`MetaLearner` with the same seed, so every method sees the same
    tasks and random numbers, and every method starts from the same ``theta_0``.
    """
    sampler = MetaLearner(cfg)
    if method in ("baseline", "baseline-sequential"):
        base = TorchOptBaseline(sampler.model, cfg, rollout="vector" if method == "baseline" else "sequential")
        return base.step, sampler.sample_iteration
    if method not in ("func", "higher", "torchopt"):
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    learner = MetaLearner(dataclasses.replace(cfg, engine=method))
    return learner.step, sampler.sample_iteration


# ----------------------------------------------------------------------------------- identical math
def _flat(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def check_identical_math(cfg: MAMLConfig, *, rollout: str = "vector") -> dict[str, Any]:
    """Compare the baseline's meta-gradient and trajectories with metaopt ``func``'s on one iteration.

    Args:
        cfg: The configuration (use ``dtype="float64"`` for the proof).
        rollout: The baseline's environment stepping (see :class:`TorchOptBaseline`).

    Returns:
        ``grad_rel_error`` (``||g_base - g_func|| / ||g_func||`` over all parameters),
        ``grad_max_rel_error_per_tensor``, the largest absolute differences of the per-task pre/post returns
        and outer losses, and ``trajectories_identical`` (all per-task returns equal to 1e-9 relative).
    """
    learner = MetaLearner(cfg)
    data = learner.sample_iteration()
    base = TorchOptBaseline(learner.model, cfg, rollout=rollout)
    binfo = base.meta_gradient(data)
    loss, info = learner.meta_loss(data)
    params = list(learner.model.parameters())
    g_func = torch.autograd.grad(loss, params)
    g_base = [p.grad for p in base.policy.parameters()]
    rel = float((_flat(g_base) - _flat(g_func)).norm() / _flat(g_func).norm())
    per_tensor = max(float((b - f).norm() / f.norm().clamp_min(1e-300)) for b, f in zip(g_base, g_func, strict=True))
    pre = float(np.max(np.abs(binfo["pre_return"] - info["pre_return"].double().numpy())))
    post = float(np.max(np.abs(binfo["post_return"] - info["post_return"].double().numpy())))
    outer = float(np.max(np.abs(binfo["outer_loss"] - info["per_task_loss"].double().numpy())))
    scale = float(np.max(np.abs(binfo["post_return"]))) + 1.0
    tol = 1e-9 if cfg.dtype == "float64" else 1e-4
    return {
        "dtype": cfg.dtype, "rollout": rollout, "tasks": cfg.tasks, "trajectories": cfg.trajectories,
        "grad_rel_error": rel, "grad_max_rel_error_per_tensor": per_tensor,
        "max_abs_diff_pre_return": pre, "max_abs_diff_post_return": post, "max_abs_diff_outer_loss": outer,
        "trajectories_identical": bool(max(pre, post) <= tol * scale),
    }


# ------------------------------------------------------------------------------------------ measuring
def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _maxrss_kb() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r // 1024 if sys.platform == "darwin" else r


def _release_memory() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (``VmHWM``) to the current RSS; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _timed(step: StepFn, data: IterationData) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of ``step(data)``."""
    w, c = time.perf_counter(), time.process_time()
    step(data)
    return time.perf_counter() - w, time.process_time() - c


def _summary(wall: list[float], cpu: list[float]) -> dict[str, Any]:
    out: dict[str, Any] = {"reps": len(wall)}
    for prefix, xs in (("", wall), ("cpu_", cpu)):
        q = statistics.quantiles(xs, n=4) if len(xs) >= 2 else [xs[0]] * 3
        out |= {f"{prefix}median_s": statistics.median(xs), f"{prefix}min_s": min(xs), f"{prefix}q1_s": q[0],
                f"{prefix}q3_s": q[2], f"{prefix}times_s": xs}
    return out


def _t(row: dict[str, Any], metric: str) -> float:
    """The median time of ``row`` in ``metric`` (``cpu`` or ``wall``)."""
    return row["cpu_median_s"] if metric == "cpu" else row["median_s"]


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Time and (optionally) peak memory of one method and configuration, in the current process.

    Meant to run in a fresh child (:func:`measure_isolated`); see the module docstring for the method.

    Args:
        spec: ``method``, ``cfg`` (:class:`MAMLConfig` fields), ``warmup``, ``reps``, ``min_reps``,
            ``budget_s``, ``threads``, ``memory``.

    Returns:
        The timing summary (:func:`_summary`) plus ``rss_before_mb``, ``peak_rss_mb``, ``peak_delta_mb``
        and ``memory_method`` when ``memory``.
    """
    torch.set_num_threads(int(spec["threads"]))
    for lib in ("higher", "torchopt"):  # imported up front so no method pays for it inside the measurement
        with contextlib.suppress(ImportError):
            __import__(lib)
    cfg = MAMLConfig(**spec["cfg"]).validate()
    method, memory = spec["method"], bool(spec.get("memory", True))
    primer_step, primer_data = make_step(method, dataclasses.replace(cfg, tasks=1))
    primer_step(primer_data())
    step, sample = make_step(method, cfg)
    warmup, reps = int(spec["warmup"]), int(spec["reps"])
    datas = [sample() for _ in range(warmup + reps)]
    del primer_step, primer_data
    mem_method = "none"
    rss0 = 0
    if memory:
        _release_memory()
        hwm = _reset_peak() and _status_kb("VmHWM") is not None
        mem_method = "VmHWM after clear_refs" if hwm else "ru_maxrss"
        rss0 = _status_kb("VmRSS") or _maxrss_kb()
    first = None
    for d in datas[:warmup]:
        dt = _timed(step, d)[0]
        first = dt if first is None else first
    if first is not None and first > 0:
        reps = max(int(spec.get("min_reps", 1)), min(reps, int(float(spec.get("budget_s", math.inf)) / first)))
    wall, cpu = zip(*(_timed(step, d) for d in datas[warmup:warmup + reps]), strict=True)
    out = {"method": method, "tasks": cfg.tasks, "inner_steps": cfg.inner_steps} | _summary(list(wall), list(cpu))
    if memory:
        peak = _status_kb("VmHWM") if mem_method.startswith("VmHWM") else _maxrss_kb()
        out |= {"rss_before_mb": rss0 / 1024, "peak_rss_mb": peak / 1024, "peak_delta_mb": (peak - rss0) / 1024,
                "memory_method": mem_method}
    return out


def _worker_entry() -> None:
    """Entry point of a ``spawn`` child: spec as JSON on stdin, result as the last stdout line."""
    spec = json.loads(sys.stdin.read())
    print(json.dumps(measure(spec)))


def measure_isolated(spec: dict[str, Any], *, isolation: str = "spawn", timeout_s: float = 600.0) -> dict[str, Any]:
    """Run :func:`measure` in a fresh child process (``spawn``: new interpreter; ``fork``: forked copy).

    Raises:
        RuntimeError: The child failed; the message carries its error output.
    """
    if isolation == "fork" and hasattr(os, "fork") and int(spec["threads"]) == 1:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 0
            try:
                os.close(r)
                payload = json.dumps(measure(spec))
            except BaseException as err:  # noqa: BLE001 - reported to the parent
                payload, code = json.dumps({"error": f"{type(err).__name__}: {err}"}), 1
            with os.fdopen(w, "w") as f:
                f.write(payload)
            os._exit(code)
        os.close(w)
        with os.fdopen(r) as f:
            payload = f.read()
        os.waitpid(pid, 0)
        result = json.loads(payload) if payload else {"error": "child produced no output"}
        if "error" in result:
            raise RuntimeError(f"benchmark child failed for {spec['method']}: {result['error']}")
        return result
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.run(
        [sys.executable, "-c", "from metaopt.experiments.bench import _worker_entry; _worker_entry()"],
        input=json.dumps(spec), capture_output=True, text=True, env=env, timeout=timeout_s, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed for {spec['method']}: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _interleaved(
    steps: dict[Any, StepFn], datas: dict[Any, list[IterationData]], warmup: int
) -> dict[Any, dict[str, Any]]:
    """Time every entry of ``steps`` on its data, alternating entries within each repetition.

    Args:
        steps: ``step(data)`` by key.
        datas: The iteration data by key (equal lengths: ``warmup`` + timed repetitions).
        warmup: Untimed leading iterations.

    Returns:
        The timing summary by key.
    """
    times: dict[Any, list[tuple[float, float]]] = {k: [] for k in steps}
    for i in range(len(next(iter(datas.values())))):
        for k, step in steps.items():
            t = _timed(step, datas[k][i])
            if i >= warmup:
                times[k].append(t)
    return {k: _summary([w for w, _ in t], [c for _, c in t]) for k, t in times.items()}


# ------------------------------------------------------------------------------------------- sections
def _spec(s: BenchSettings, method: str, cfg: MAMLConfig, *, warmup: int, reps: int) -> dict[str, Any]:
    return {"method": method, "cfg": cfg.to_dict(), "warmup": warmup, "reps": reps, "min_reps": s.min_reps,
            "budget_s": s.budget_s, "threads": s.threads, "memory": s.memory}


def _unroll_cfg(s: BenchSettings, k: int, mode: str) -> MAMLConfig:
    return s.config(inner_steps=k, truncate=1 if mode == "truncate1" else None, first_order=mode == "first_order")


def run_bench(s: BenchSettings, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every section of the benchmark and return the results (see :func:`write_results`)."""
    s.validate()
    torch.set_num_threads(s.threads)
    t_start = time.perf_counter()
    res: dict[str, Any] = {"stamp": stamp(s.threads), "settings": dataclasses.asdict(s)}
    iso = s.isolation if s.threads == 1 else "spawn"
    res["settings"]["isolation_used"] = iso

    # identical math -------------------------------------------------------------------------------
    log("identical math: baseline vs func meta-gradient")
    checks = [check_identical_math(s.config(dtype="float64"), rollout="vector"),
              check_identical_math(s.config(dtype="float32"), rollout="vector")]
    if s.sequential:
        checks.append(check_identical_math(s.config(dtype="float64"), rollout="sequential"))
    res["identical_math"] = checks

    # comparison -------------------------------------------------------------------------------------
    methods = [m for m in METHODS if s.sequential or m != "baseline-sequential"]
    log(f"comparison at {s.tasks} tasks: {', '.join(methods)}")
    cfg = s.config()
    steps = {}
    for m in methods:
        steps[m], sample = make_step(m, cfg)
    datas = [sample() for _ in range(s.warmup + s.reps)]
    timing = _interleaved(steps, dict.fromkeys(steps, datas), s.warmup)
    rows = []
    for m in methods:
        row = {"method": m} | timing[m]
        for metric, suffix in ((s.metric, ""), ("wall" if s.metric == "cpu" else "cpu", "_alt")):
            ratio = _t(timing[m], metric) / _t(timing["baseline"], metric)
            row |= {f"speedup_vs_baseline{suffix}": 1.0 / ratio, f"time_ratio_to_baseline{suffix}": ratio}
        if s.memory:
            mem = measure_isolated(_spec(s, m, cfg, warmup=1, reps=1), isolation=iso)
            row |= {k: mem[k] for k in ("peak_delta_mb", "memory_method")}
        rows.append(row)
    res["comparison"] = {"tasks": s.tasks, "rows": rows}
    del steps, datas

    # tasks ------------------------------------------------------------------------------------------
    configs = [(m, n) for m, counts in (("func", s.task_counts), ("baseline", s.baseline_task_counts)) for n in counts]
    log(f"tasks: timing {', '.join(f'{m}@{n}' for m, n in configs)} (interleaved)")
    steps, datas_by = {}, {}
    for m, n in configs:
        steps[(m, n)], sample = make_step(m, s.config(tasks=n))
        datas_by[(m, n)] = [sample() for _ in range(s.warmup + s.scaling_reps)]
    timing = _interleaved(steps, datas_by, s.warmup)
    del steps, datas_by
    rows = []
    for m, n in configs:
        row = {"method": m, "tasks": n, "inner_steps": 1} | timing[(m, n)]
        if s.memory:
            log(f"tasks: memory of {m} at {n} tasks")
            mem = measure_isolated(_spec(s, m, s.config(tasks=n), warmup=1, reps=1), isolation=iso)
            row |= {k: mem[k] for k in ("rss_before_mb", "peak_rss_mb", "peak_delta_mb", "memory_method")}
        rows.append(row)
    res["tasks"] = rows

    # unroll -----------------------------------------------------------------------------------------
    rows = []
    for mode in UNROLL_MODES:
        for k in s.unroll:
            log(f"unroll: K={k} {mode}")
            r = measure_isolated(_spec(s, "func", _unroll_cfg(s, k, mode), warmup=1, reps=s.scaling_reps),
                                 isolation=iso)
            rows.append(r | {"mode": mode})
    res["unroll"] = {"tasks": s.tasks, "rows": rows}

    # popart -----------------------------------------------------------------------------------------
    log("popart overhead (func)")
    variants = {"no PopArt": s.config(), "PopArt": s.config(popart=True),
                "PopArt, learn lr+beta": s.config(popart=True, learn=("lr", "beta"))}
    steps = {}
    for name, c in variants.items():
        steps[name], sample = make_step("func", c)
    datas = [sample() for _ in range(s.warmup + s.popart_reps)]
    timing = _interleaved(steps, dict.fromkeys(steps, datas), s.warmup)
    alt = "wall" if s.metric == "cpu" else "cpu"
    res["popart"] = [{"variant": n} | timing[n] | {
        "overhead": _t(timing[n], s.metric) / _t(timing["no PopArt"], s.metric) - 1.0,
        "overhead_alt": _t(timing[n], alt) / _t(timing["no PopArt"], alt) - 1.0,
    } for n in variants]

    res["targets"] = evaluate_targets(res)
    res["stamp"]["loadavg_end"] = _loadavg()
    res["wall_time_s"] = time.perf_counter() - t_start
    return res


# -------------------------------------------------------------------------------------------- targets
def _linear_r2(xs: Sequence[float], ys: Sequence[float]) -> float:
    if len(xs) < 3:
        return 1.0
    x, y = np.asarray(xs, float), np.asarray(ys, float)
    a, b = np.polyfit(x, y, 1)
    ss_res, ss_tot = float(((y - (a * x + b)) ** 2).sum()), float(((y - y.mean()) ** 2).sum())
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0


def evaluate_targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value and whether it is met (reported, never asserted).

    Rows with ``extra=True`` are not targets of the issue but the same checks against other references
    (TorchOpt's exact rollout, truncated unrolls).
    """
    metric = res.get("settings", {}).get("metric", "cpu")
    out = []
    comp = {r["method"]: r for r in res["comparison"]["rows"]}

    def speedup(name: str, ref: str) -> tuple[float, str]:
        sp = _t(comp[ref], metric) / _t(comp[name], metric)
        alt = "wall" if metric == "cpu" else "cpu"
        alt_sp = _t(comp[ref], alt) / _t(comp[name], alt)
        return sp, f"{sp:.1f}x ({alt}: {alt_sp:.1f}x)"

    sp, text = speedup("func", "baseline")
    out.append({"target": "func >= 30x faster than the baseline per meta-iteration", "measured": text,
                "met": sp >= 30.0, "extra": False})
    for e in ("higher", "torchopt"):
        r = comp[e]["time_ratio_to_baseline"]
        out.append({"target": f"{e} engine <= 1.2x the baseline's time", "measured": f"{r:.2f}x", "met": r <= 1.2,
                    "extra": False})
    func = sorted((r["tasks"], _t(r, metric)) for r in res["tasks"] if r["method"] == "func")
    (n0, t0), (n1, t1) = func[0], func[-1]
    expo = math.log(t1 / t0) / math.log(n1 / n0) if n1 > n0 else float("nan")
    text = f"time x{t1 / t0:.1f} for tasks x{n1 / n0:.0f} (exponent {expo:.2f}"
    if len(func) >= 3:
        (na, ta), (nb, tb) = func[-2], func[-1]
        text += f"; {na} -> {nb}: exponent {math.log(tb / ta) / math.log(nb / na):.2f}"
    out.append({"target": f"func time sub-linear in tasks ({n0} -> {n1})", "measured": text + ")", "met": expo < 1.0,
                "extra": False})
    pop = next(r for r in res["popart"] if r["variant"] == "PopArt")["overhead"]
    out.append({"target": "PopArt overhead <= 10%", "measured": f"{100 * pop:+.1f}%", "met": pop <= 0.10,
                "extra": False})
    rows = res["unroll"]["rows"]
    if rows and "peak_delta_mb" in rows[0]:
        by = {m: sorted((r["inner_steps"], r["peak_delta_mb"]) for r in rows if r["mode"] == m) for m in UNROLL_MODES}
        full = by["full"]
        r2 = _linear_r2([k for k, _ in full], [m for _, m in full])
        dk = full[-1][0] - full[0][0]
        growth = {m: by[m][-1][1] - by[m][0][1] for m in UNROLL_MODES}
        slope = growth["full"] / dk if dk > 0 else float("nan")
        out.append({"target": "memory linear in K for full unrolls", "measured": f"R^2 {r2:.3f}, {slope:.2f} MB per "
                    "inner step", "met": r2 >= 0.95 and growth["full"] > 0, "extra": False})
        for mode, label, extra in (("first_order", "first-order", False), ("truncate1", "truncate=1", True)):
            g = growth[mode]
            out.append({"target": f"memory flat in K for {label}",
                        "measured": f"{g:+.1f} MB from K={full[0][0]} to K={full[-1][0]} ({g / dk if dk else 0:.2f} "
                                    f"MB per step; full: {slope:.2f})",
                        "met": g <= max(5.0, 0.1 * growth["full"]), "extra": extra})
    if "baseline-sequential" in comp:
        sp, text = speedup("func", "baseline-sequential")
        out.append({"target": "func >= 30x faster than TorchOpt's exact rollout (baseline-sequential)",
                    "measured": text, "met": sp >= 30.0, "extra": True})
    return out


# -------------------------------------------------------------------------------------------- output
def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def stamp(threads: int | None = None) -> dict[str, Any]:
    """Commit, machine and library versions of this run."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip() or "unknown"
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, check=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "unknown", None
    return {
        "commit": commit, "dirty": dirty,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"platform": platform.platform(), "processor": _cpu_model(),
                    "cpu_count": os.cpu_count(), "torch_threads": threads or torch.get_num_threads(),
                    "loadavg_start": _loadavg()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                     "higher": _version("higher"), "torchopt": _version("torchopt"),
                     "gymnasium": _version("gymnasium"), "metaopt": _version("metaopt")},
    }


def _ms(x: float) -> str:
    return f"{1000 * x:.1f}" if x < 10 else f"{1000 * x:.0f}"


def _mb(r: dict[str, Any]) -> str:
    return f"{r['peak_delta_mb']:.1f}" if "peak_delta_mb" in r else "-"


def render_markdown(res: dict[str, Any]) -> str:
    """The results as a markdown report."""
    st, s = res["stamp"], res["settings"]
    m, v = st["machine"], st["versions"]
    metric = s.get("metric", "cpu")
    alt = "wall" if metric == "cpu" else "cpu"
    lines = [
        f"# metaopt benchmark: {s['name']}",
        "",
        f"- commit `{st['commit']}`{' (with uncommitted changes)' if st.get('dirty') else ''}, {st['date']}",
        f"- machine: {m['platform']}, {m['processor']}, {m['cpu_count']} CPUs, torch threads {m['torch_threads']}, "
        f"load average {m.get('loadavg_start')} -> {st.get('loadavg_end')}",
        f"- versions: python {v['python']}, torch {v['torch']}, numpy {v['numpy']}, higher {v['higher']}, "
        f"torchopt {v['torchopt']}, gymnasium {v['gymnasium']}",
        f"- config: {s['tasks']} tasks x {s['trajectories']} trajectories x {s['horizon']} steps, 1 inner SGD step "
        f"(lr 0.1), no PopArt unless stated, {s['dtype']}; time of one full meta-iteration (rollouts, adaptation, "
        f"outer loss, backward, outer Adam step): median of the timed repetitions after {s['warmup']} warm-up "
        "iteration(s)",
        "- `baseline`: TorchOpt-style loop (tasks one by one, `torchopt.MetaSGD`, extract/recover_state_dict), "
        "20 Gymnasium `TabularMDPEnv`s stepped in a Python loop per time step with one batched policy forward; "
        "`baseline-sequential`: the same with TorchOpt `maml.py`'s rollout (one env, the 20 episodes in sequence, "
        "one policy forward per env step)",
        f"- ratios and targets use **{metric}** time ({'process CPU time' if metric == 'cpu' else 'wall-clock'}); "
        f"{alt} time is shown alongside",
        f"- memory: peak RSS minus RSS before, in a {s.get('isolation_used', s['isolation'])}ed child process per row",
        f"- wall time of the run: {res.get('wall_time_s', float('nan')):.0f} s",
        "",
        "## Identical math: baseline vs metaopt `func` on the same iteration",
        "",
        "| baseline rollout | dtype | tasks | meta-grad rel. error | max per-tensor rel. error | "
        "max abs diff pre / post return | max abs diff outer loss | same trajectories |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for c in res["identical_math"]:
        lines.append(f"| {c['rollout']} | {c['dtype']} | {c['tasks']} | {c['grad_rel_error']:.2e} | "
                     f"{c['grad_max_rel_error_per_tensor']:.2e} | {c['max_abs_diff_pre_return']:.1e} / "
                     f"{c['max_abs_diff_post_return']:.1e} | {c['max_abs_diff_outer_loss']:.1e} | "
                     f"{'yes' if c['trajectories_identical'] else 'NO'} |")
    lines += [
        "",
        f"## One meta-iteration at the reference configuration ({res['comparison']['tasks']} tasks)",
        "",
        f"| method | {metric} median [ms] | {metric} IQR [ms] | {alt} median [ms] | reps | speedup vs baseline | "
        f"time / baseline | speedup ({alt}) | peak mem. delta [MB] |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    p = "cpu_" if metric == "cpu" else ""
    for r in res["comparison"]["rows"]:
        lines.append(f"| {r['method']} | {_ms(_t(r, metric))} | {_ms(r[p + 'q1_s'])}-{_ms(r[p + 'q3_s'])} | "
                     f"{_ms(_t(r, alt))} | {r['reps']} | {r['speedup_vs_baseline']:.1f}x | "
                     f"{r['time_ratio_to_baseline']:.2f} | {r['speedup_vs_baseline_alt']:.1f}x | {_mb(r)} |")
    lines += ["", "## Scaling in the number of tasks", "",
              f"| method | tasks | {metric} median [ms] | ms per task | {alt} median [ms] | reps | "
              "peak mem. delta [MB] | speedup vs baseline |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    base = {r["tasks"]: _t(r, metric) for r in res["tasks"] if r["method"] == "baseline"}
    for r in res["tasks"]:
        sp = f"{base[r['tasks']] / _t(r, metric):.1f}x" if r["tasks"] in base else "-"
        lines.append(f"| {r['method']} | {r['tasks']} | {_ms(_t(r, metric))} | {_ms(_t(r, metric) / r['tasks'])} | "
                     f"{_ms(_t(r, alt))} | {r['reps']} | {_mb(r)} | {sp} |")
    lines += ["", f"## Scaling in the unroll length K (`func`, {res['unroll']['tasks']} tasks)", "",
              f"| mode | K | {metric} median [ms] | {alt} median [ms] | reps | peak mem. delta [MB] |",
              "|---|---:|---:|---:|---:|---:|"]
    for r in res["unroll"]["rows"]:
        lines.append(f"| {r['mode']} | {r['inner_steps']} | {_ms(_t(r, metric))} | {_ms(_t(r, alt))} | {r['reps']} | "
                     f"{_mb(r)} |")
    lines += ["", "## PopArt overhead (`func`, reference configuration)", "",
              f"| variant | {metric} median [ms] | {metric} IQR [ms] | reps | overhead | overhead ({alt}) |",
              "|---|---:|---:|---:|---:|---:|"]
    for r in res["popart"]:
        lines.append(f"| {r['variant']} | {_ms(_t(r, metric))} | {_ms(r[p + 'q1_s'])}-{_ms(r[p + 'q3_s'])} | "
                     f"{r['reps']} | {100 * r['overhead']:+.1f}% | {100 * r['overhead_alt']:+.1f}% |")
    lines += ["", "## Targets (measured, not asserted)", "", "| target | measured | met |", "|---|---|---|"]
    for t in res["targets"]:
        name = f"{t['target']} *(extra)*" if t.get("extra") else t["target"]
        lines.append(f"| {name} | {t['measured']} | {'yes' if t['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def write_results(res: dict[str, Any], out: Path, name: str) -> tuple[Path, Path]:
    """Write ``<out>/<name>.json`` and ``<out>/<name>.md``; returns both paths."""
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / f"{name}.json", out / f"{name}.md"
    js.write_text(json.dumps(res, indent=1) + "\n")
    md.write_text(render_markdown(res))
    return js, md


# ------------------------------------------------------------------------------------------------ cli
def _int_list(value: str) -> tuple[int, ...]:
    try:
        items = tuple(int(x) for x in value.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of ints, got {value!r}") from None
    if not items or any(x < 1 for x in items):
        raise argparse.ArgumentTypeError(f"expected a comma list of ints >= 1, got {value!r}")
    return items


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the ``bench`` arguments (defaults: the full run; ``--quick``: the CI budget)."""
    p.add_argument("--quick", action="store_true", help="tiny CI budget (4 tasks, K in {1,2}, forked children)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="output directory")
    p.add_argument("--name", default=None, help="result file stem (default: 'quick' or 'full')")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads of the harness and its children")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions of the comparison")
    p.add_argument("--warmup", type=int, default=None, help="untimed warm-up iterations")
    p.add_argument("--task-counts", type=_int_list, default=None, help="task counts of the tasks section (func)")
    p.add_argument("--baseline-task-counts", type=_int_list, default=None, help="task counts for the baseline")
    p.add_argument("--unroll", type=_int_list, default=None, help="inner-step counts K of the unroll section")
    p.add_argument("--isolation", choices=("spawn", "fork"), default=None, help="child processes for memory")
    p.add_argument("--no-memory", action="store_true", help="skip peak-memory measurements")
    p.add_argument("--no-sequential", action="store_true", help="skip the baseline with TorchOpt's exact rollout")
    p.add_argument("--metric", choices=("cpu", "wall"), default=None,
                   help="time used for ratios and targets (both are recorded); default: cpu with one thread, "
                        "else wall (CPU time adds up all threads)")
    p.add_argument("--seed", type=int, default=0, help="seed of the learners and the data")


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    """Resolve ``--quick``/``FULL`` and explicit flags into validated :class:`BenchSettings`."""
    s = dataclasses.replace(QUICK if args.quick else FULL)
    s.threads, s.seed = args.threads, args.seed
    s.metric = args.metric or ("cpu" if args.threads == 1 else "wall")
    s.name = args.name or s.name
    for arg, f in (("reps", "reps"), ("warmup", "warmup"), ("task_counts", "task_counts"),
                   ("baseline_task_counts", "baseline_task_counts"), ("unroll", "unroll"),
                   ("isolation", "isolation")):
        if getattr(args, arg) is not None:
            setattr(s, f, getattr(args, arg))
    s.memory = not args.no_memory
    s.sequential = not args.no_sequential
    return s.validate()


def run(args: argparse.Namespace) -> int:
    """CLI entry point."""
    try:
        s = settings_from_args(args)
    except ValueError as err:
        print(f"metaopt bench: error: {err}", file=sys.stderr)
        return 2
    res = run_bench(s, log=lambda msg: print(f"[bench] {msg}", file=sys.stderr, flush=True))
    js, md = write_results(res, args.out, s.name)
    print(render_markdown(res))
    print(f"results: {js} and {md}")
    return 0
