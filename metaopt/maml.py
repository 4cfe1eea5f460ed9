"""MAML-A2C on TabularMDP with differentiable PopArt, learning beta and the inner learning rate.

One meta-iteration (TorchOpt's MAML-RL recipe, vectorized):

1. sample ``tasks`` tasks and the iteration's common random numbers (one seeded generator);
2. roll out ``trajectories`` episodes per task with ``theta_0`` (batched simulator, no grad);
3. adapt ``K`` inner steps per task on those episodes (any engine; PopArt ART/POP inside);
4. roll out fresh episodes with each task's adapted weights;
5. outer A2C loss on them through the adapted weights, summed over tasks; outer Adam step on
   ``theta_0`` and the learned meta-parameters (``log_lr``, ``logit_beta``).

All randomness of a run flows from one ``torch.Generator`` whose state is checkpointed, so a resumed
run is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call

from metaopt import popart as pa
from metaopt._validation import NonFiniteValueError
from metaopt.engines import ENGINES, AdaptResult, adapt, adapt_vmap, require
from metaopt.envs import BatchedTabularMDP, RolloutNoise, TaskBatch, Trajectories, draw_noise, sample_tasks
from metaopt.inner_optim import InnerOptimizer
from metaopt.meta_params import LEARNABLE, MetaParameters
from metaopt.rl import A2CConfig, ActorCritic, Batch, a2c_loss, make_inner_loop, task_major

__all__ = ["MAMLConfig", "MetaLearner", "NonFiniteError", "IterationData"]


class NonFiniteError(RuntimeError):
    """A loss or meta-gradient became NaN/inf; carries the iteration and the offending tasks."""

    def __init__(self, message: str, iteration: int, tasks: list[int]) -> None:
        super().__init__(message)
        self.iteration, self.tasks = iteration, tasks


@dataclass
class MAMLConfig:
    """Configuration of a MAML-A2C run (defaults: TorchOpt's reference setup, no PopArt).

    Attributes:
        engine: Meta-gradient engine: ``func`` (vectorized with vmap), ``higher`` or ``torchopt``.
        tasks: Tasks per meta-iteration.
        trajectories: Episodes per task for each of the inner and the outer batch.
        iterations: Meta-iterations.
        inner_steps: Inner gradient steps ``K``.
        inner_lr: Initial inner learning rate.
        inner_optimizer: ``sgd`` or ``adam``.
        inner_momentum: SGD momentum of the inner optimizer.
        beta: Initial PopArt step size.
        learn: Meta-parameters to learn besides ``theta_0``: subset of ``("lr", "beta")``.
        popart: Use PopArt value normalization in inner and outer losses.
        popart_advantages: With PopArt, scale policy advantages by ``1/sigma``.
        scaled: Scaled TabularMDP: task rewards multiplied by ``c = 10^u``, ``u ~ U(scale_lo, scale_hi)``.
        scale_lo: Lower exponent of the scale range.
        scale_hi: Upper exponent of the scale range.
        outer_lr: Outer Adam learning rate of ``theta_0``.
        meta_lr: Outer Adam learning rate of the learned ``log_lr``/``logit_beta`` (``None``: ``outer_lr``).
        gamma: Discount.
        lam: Lambda of the lambda-returns.
        value_coef: Value-loss weight.
        hidden: Hidden width of the agent.
        num_states: TabularMDP states.
        num_actions: TabularMDP actions.
        horizon: Episode length.
        first_order: First-order meta-gradients.
        truncate: Backpropagate through the last ``truncate`` inner steps only.
        eval_every: Evaluate on fresh test tasks every this many iterations (0 = only at the end).
        eval_tasks: Number of test tasks.
        seed: Seed of everything.
        dtype: ``float32`` or ``float64``.
    """

    engine: str = "func"
    tasks: int = 40
    trajectories: int = 20
    iterations: int = 500
    inner_steps: int = 1
    inner_lr: float = 0.1
    inner_optimizer: str = "sgd"
    inner_momentum: float = 0.0
    beta: float = 0.1
    learn: tuple[str, ...] = field(default_factory=tuple)
    popart: bool = False
    popart_advantages: bool = True
    scaled: bool = False
    scale_lo: float = -2.0
    scale_hi: float = 3.0
    outer_lr: float = 1e-3
    meta_lr: float | None = None
    gamma: float = 0.99
    lam: float = 0.95
    value_coef: float = 0.5
    hidden: int = 32
    num_states: int = 10
    num_actions: int = 5
    horizon: int = 10
    first_order: bool = False
    truncate: int | None = None
    eval_every: int = 50
    eval_tasks: int = 40
    seed: int = 0
    dtype: str = "float32"

    def validate(self, *, names: Mapping[str, str] | None = None) -> MAMLConfig:
        """Check every field, raising one clear error naming the field, its value and what was expected.

        Args:
            names: How to name fields in messages (e.g. ``{"inner_lr": "--inner-lr"}`` for the command
                line); unlisted fields keep their own name.

        Returns:
            ``self`` (with ``learn`` normalized to a tuple).
        """
        names = dict(names or {})

        def n(f: str) -> str:
            return names.get(f, f)

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_real(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if isinstance(self.learn, str):  # "beta,lr" as on the command line
            self.learn = tuple(x.strip() for x in self.learn.split(",") if x.strip())
        self.learn = tuple(self.learn)
        if self.engine not in ENGINES:
            raise ValueError(f"{n('engine')} must be one of {ENGINES}, got {self.engine!r}")
        for name in ("tasks", "trajectories", "iterations", "inner_steps", "hidden", "num_states", "num_actions",
                     "horizon", "eval_tasks"):
            v = getattr(self, name)
            if not is_int(v) or v < 1:
                raise ValueError(f"{n(name)} must be an int >= 1, got {v!r}")
        for name in ("eval_every", "seed"):
            v = getattr(self, name)
            if not is_int(v) or v < 0:
                raise ValueError(f"{n(name)} must be an int >= 0, got {v!r}")
        for name in ("inner_lr", "outer_lr", "meta_lr"):
            v = getattr(self, name)
            if name == "meta_lr" and v is None:
                continue
            if not (is_real(v) and v > 0):
                raise ValueError(f"{n(name)} must be a positive finite number, got {v!r}")
        if not (is_real(self.beta) and 0.0 < self.beta < 1.0):
            raise ValueError(f"{n('beta')} must lie in the open interval (0, 1), got {self.beta!r}")
        unknown = [x for x in self.learn if x not in LEARNABLE]
        if unknown:
            raise ValueError(f"{n('learn')} must be a subset of {LEARNABLE}, got {self.learn!r} (unknown: {unknown})")
        if "beta" in self.learn and not self.popart:
            raise ValueError(
                f"{n('learn')}={self.learn!r} includes 'beta' but {n('popart')} is off; beta is PopArt's step "
                f"size, so expected {n('popart')} on (or drop 'beta' from {n('learn')})"
            )
        if self.inner_optimizer not in ("sgd", "adam"):
            raise ValueError(f"{n('inner_optimizer')} must be 'sgd' or 'adam', got {self.inner_optimizer!r}")
        if not (is_real(self.inner_momentum) and 0.0 <= self.inner_momentum < 1.0):
            raise ValueError(f"{n('inner_momentum')} must lie in [0, 1), got {self.inner_momentum!r}")
        if not (is_real(self.gamma) and 0.0 < self.gamma <= 1.0):
            raise ValueError(f"{n('gamma')} must lie in (0, 1], got {self.gamma!r}")
        if not (is_real(self.lam) and 0.0 <= self.lam <= 1.0):
            raise ValueError(f"{n('lam')} must lie in [0, 1], got {self.lam!r}")
        if not (is_real(self.value_coef) and self.value_coef >= 0):
            raise ValueError(f"{n('value_coef')} must be a finite number >= 0, got {self.value_coef!r}")
        for name in ("scale_lo", "scale_hi"):
            if not is_real(getattr(self, name)):
                raise ValueError(f"{n(name)} must be a finite number (log10 of a reward scale), got "
                                 f"{getattr(self, name)!r}")
        if self.scale_lo > self.scale_hi:
            raise ValueError(f"{n('scale_lo')} must be <= {n('scale_hi')}, got {n('scale_lo')}={self.scale_lo} and "
                             f"{n('scale_hi')}={self.scale_hi}")
        if self.truncate is not None and not (is_int(self.truncate) and 0 <= self.truncate <= self.inner_steps):
            raise ValueError(f"{n('truncate')} must be None or an int in [0, {n('inner_steps')}={self.inner_steps}], "
                             f"got {self.truncate!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"{n('dtype')} must be 'float32' or 'float64', got {self.dtype!r}")
        return self

    @property
    def torch_dtype(self) -> torch.dtype:
        """The torch dtype of the run."""
        return torch.float64 if self.dtype == "float64" else torch.float32

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict."""
        d = asdict(self)
        d["learn"] = list(self.learn)
        return d


@dataclass
class IterationData:
    """The random inputs of one meta-iteration (identical for every engine and number of ranks)."""

    tasks: TaskBatch
    noise_pre: RolloutNoise
    noise_post: RolloutNoise


def _stack_params(params: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    return {n: torch.stack([p[n] for p in params]) for n in params[0]}


def _returns(rewards: Tensor) -> Tensor:
    """Per-task mean episode return from time-major rewards ``[T, N, B]`` -> ``[N]``."""
    return rewards.sum(0).mean(-1)


class MetaLearner:
    """Holds the agent, meta-parameters, outer optimizer and RNG of a MAML-A2C run.

    The run's whole state is ``theta_0`` (the model), the meta-parameters, the outer Adam state, the
    task/noise generator and the iteration counter (:meth:`state_dict`). PopArt's statistics are *not*
    part of it: they are re-initialized (``mu = 0``, ``sigma = 1``) for every task in every iteration and
    only live inside one meta-loss, so there is no PopArt state to carry across iterations or checkpoints.
    The global torch RNG is used only to initialize the model (seeded here), never while training.

    Args:
        cfg: The run's configuration (validated here).
    """

    def __init__(self, cfg: MAMLConfig) -> None:
        self.cfg = cfg.validate()
        if cfg.engine != "func":
            require(cfg.engine)  # fail now, with the install hint, not in the first iteration
        dtype = cfg.torch_dtype
        torch.manual_seed(cfg.seed)
        self.model = ActorCritic(cfg.num_states, cfg.num_actions, cfg.hidden).to(dtype)
        self.meta = MetaParameters(lr=cfg.inner_lr, beta=cfg.beta, learn=cfg.learn, dtype=dtype)
        self.loss_cfg = A2CConfig(cfg.gamma, cfg.lam, cfg.value_coef, cfg.popart_advantages)
        self.inner = make_inner_loop(
            self.model, popart=cfg.popart, steps=cfg.inner_steps, cfg=self.loss_cfg,
            optimizer=InnerOptimizer(cfg.inner_optimizer, momentum=cfg.inner_momentum),
            first_order=cfg.first_order, truncate=cfg.truncate,
        )
        groups = [{"params": list(self.model.parameters())}]
        if list(self.meta.parameters()):
            groups.append({"params": list(self.meta.parameters()), "lr": cfg.meta_lr or cfg.outer_lr})
        self.optimizer = torch.optim.Adam(groups, lr=cfg.outer_lr)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.iteration = 0
        self.test_tasks = sample_tasks(
            cfg.eval_tasks, num_states=cfg.num_states, num_actions=cfg.num_actions, seed=cfg.seed + 1_000_003,
            scale_range=self._scale_range(),
        )

    # ------------------------------------------------------------------------------------------ state
    def parameters(self) -> list[Tensor]:
        """Everything the outer optimizer updates: ``theta_0`` and the learned meta-parameters."""
        return list(self.model.parameters()) + list(self.meta.parameters())

    def state_dict(self) -> dict[str, Any]:
        """Everything needed for a bit-identical resume."""
        return {
            "config": self.cfg.to_dict(),
            "iteration": self.iteration,
            "model": self.model.state_dict(),
            "meta": self.meta.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (the configuration must match)."""
        self.model.load_state_dict(state["model"])
        self.meta.load_state_dict(state["meta"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.iteration = int(state["iteration"])

    def _scale_range(self) -> tuple[float, float] | None:
        return (self.cfg.scale_lo, self.cfg.scale_hi) if self.cfg.scaled else None

    # ----------------------------------------------------------------------------------------- data
    def sample_iteration(self) -> IterationData:
        """Draw the next iteration's tasks and common random numbers from the run's generator."""
        c = self.cfg
        tasks = sample_tasks(
            c.tasks, num_states=c.num_states, num_actions=c.num_actions, generator=self.generator,
            scale_range=self._scale_range(),
        )
        kw = {"generator": self.generator, "dtype": c.torch_dtype}
        return IterationData(
            tasks,
            draw_noise(c.tasks, c.trajectories, c.horizon, **kw),
            draw_noise(c.tasks, c.trajectories, c.horizon, **kw),
        )

    def _initial_states(self, n: int) -> pa.PopArtState | None:
        if not self.cfg.popart:
            return None
        s = pa.init(1, dtype=self.cfg.torch_dtype)
        return pa.PopArtState(*(t.expand(n, 1).clone() for t in s))

    def _policy(self, params: dict[str, Tensor] | None) -> Callable[[Tensor], Tensor]:
        """Policy logits for obs ``[N, B, S]``: shared ``theta_0`` (None) or per-task stacked params."""
        if params is None:
            return lambda obs: self.model(obs)[0]
        return lambda obs: torch.func.vmap(lambda p, o: functional_call(self.model, p, (o,))[0])(params, obs)

    # ------------------------------------------------------------------------------------ meta-loss
    def _check_data(self, data: IterationData, engine: str, task_slice: slice | None) -> slice:
        """Validate ``meta_loss``'s inputs; return the task slice as concrete ``start:stop``."""
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        if not isinstance(data, IterationData):
            raise TypeError(f"data must be an IterationData (see MetaLearner.sample_iteration), got "
                            f"{type(data).__name__}")
        c, t = self.cfg, data.tasks
        if (t.num_states, t.num_actions) != (c.num_states, c.num_actions):
            raise ValueError(
                f"data.tasks must have num_states={c.num_states} and num_actions={c.num_actions} (the config's), "
                f"got num_states={t.num_states}, num_actions={t.num_actions}"
            )
        n = t.num_tasks
        if task_slice is None:
            return slice(0, n)
        if not isinstance(task_slice, slice):
            raise TypeError(f"task_slice must be a slice (start:stop) of the {n} tasks, got {task_slice!r}")
        start = 0 if task_slice.start is None else task_slice.start
        stop = n if task_slice.stop is None else task_slice.stop
        if (task_slice.step not in (None, 1) or not isinstance(start, int) or not isinstance(stop, int)
                or not 0 <= start < stop <= n):
            raise ValueError(
                f"task_slice must be a contiguous, non-empty slice within the iteration's {n} tasks "
                f"(0 <= start < stop <= {n}, step 1), got {task_slice!r}"
            )
        return slice(start, stop)

    def _adapt_and_rollout(
        self, tasks: TaskBatch, pre_noise: RolloutNoise, post_noise: RolloutNoise, engine: str
    ) -> tuple[Trajectories, dict[str, Tensor], pa.PopArtState | None, Trajectories]:
        """Roll out ``theta_0``, adapt per task on those episodes, roll out the adapted weights.

        Returns:
            ``(pre, adapted, states, post)``: the pre-adaptation trajectories, the adapted weights stacked over
            tasks (differentiable to the meta-parameters), the adapted PopArt statistics (or ``None``) and the
            post-adaptation trajectories.
        """
        sim = BatchedTabularMDP(tasks, self.cfg.horizon, dtype=self.cfg.torch_dtype)
        n = tasks.num_tasks
        pre = sim.rollout(self._policy(None), pre_noise)
        pre_batch = task_major(pre)
        states0 = self._initial_states(n)
        if engine == "func":
            res = adapt_vmap(self.model, self.inner, pre_batch, self.meta, popart_state=states0)
            adapted, states = res.params, res.popart_state
        else:
            results = []
            for i in range(n):
                batch_i = {k: v[i] for k, v in pre_batch.items()}
                s_i = None if states0 is None else pa.PopArtState(*(t[i] for t in states0))
                try:
                    results.append(adapt(self.model, self.inner, batch_i, self.meta, engine=engine,
                                         popart_state=s_i))
                except NonFiniteValueError:
                    # The loop engines check ART's targets eagerly (metaopt._validation.check_finite); a task
                    # whose inner loop went non-finite gets NaN weights, so its outer loss is NaN and step()
                    # reports it by task like the vectorized engine (where eager checks are skipped).
                    nan = float("nan")
                    results.append(AdaptResult(
                        {k: v + nan for k, v in self.model.named_parameters()},
                        None if s_i is None else pa.PopArtState(*(t + nan for t in s_i)), [],
                    ))
            adapted = _stack_params([r.params for r in results])
            states = None if states0 is None else pa.PopArtState(
                *(torch.stack([r.popart_state[j] for r in results]) for j in range(3))
            )
        post = sim.rollout(self._policy({k: v.detach() for k, v in adapted.items()}), post_noise)
        return pre, adapted, states, post

    def _per_task_losses(
        self, data: IterationData, *, engine: str | None = None, task_slice: slice | None = None
    ) -> tuple[Tensor, dict[str, Any]]:
        """Like :meth:`meta_loss`, but the outer losses per task ``[n]`` (differentiable), not their sum."""
        engine = engine or self.cfg.engine
        sl = self._check_data(data, engine, task_slice)
        tasks = data.tasks.shard(sl.start, sl.stop)
        pre_noise = data.noise_pre.shard(sl.start, sl.stop)
        post_noise = data.noise_post.shard(sl.start, sl.stop)
        pre, adapted, states, post = self._adapt_and_rollout(tasks, pre_noise, post_noise, engine)
        n = tasks.num_tasks
        post_batch = task_major(post)

        def outer(p: dict[str, Tensor], s: Any, b: Batch) -> Tensor:
            return a2c_loss(self.model, p, b, None if s is None else pa.PopArtState(*s), self.loss_cfg)

        if engine == "func" and states is None:
            per_task = torch.func.vmap(lambda p, b: outer(p, None, b))(adapted, post_batch)
        elif engine == "func":
            per_task = torch.func.vmap(outer)(adapted, tuple(states), post_batch)
        else:
            per_task = torch.stack([
                outer({k: v[i] for k, v in adapted.items()},
                      None if states is None else tuple(t[i] for t in states),
                      {k: v[i] for k, v in post_batch.items()})
                for i in range(n)
            ])
        info = {
            "per_task_loss": per_task.detach(),
            "pre_return": _returns(pre.rewards),
            "post_return": _returns(post.rewards),
            "scales": tasks.scales.to(self.cfg.torch_dtype),
        }
        return per_task, info

    def meta_loss(
        self, data: IterationData, *, engine: str | None = None, task_slice: slice | None = None
    ) -> tuple[Tensor, dict[str, Any]]:
        """Outer loss summed over (a slice of) the iteration's tasks, differentiable to meta-parameters.

        Args:
            data: The iteration's tasks and noise.
            engine: Override the configured engine.
            task_slice: Only these tasks (distributed shards: a contiguous ``start:stop``); default all.

        Returns:
            ``(loss, info)`` with per-task losses and pre/post returns in ``info``.
        """
        per_task, info = self._per_task_losses(data, engine=engine, task_slice=task_slice)
        return per_task.sum(), info

    # ------------------------------------------------------------------------------------------ step
    def step(self, data: IterationData | None = None, *, reduce_grads: Callable[[list[Tensor]], None] | None = None,
             task_slice: slice | None = None, gather_tasks: Callable[[Tensor], Tensor] | None = None,
             ) -> dict[str, float]:
        """One meta-iteration: meta-loss, backward, (optional all-reduce), outer Adam step.

        Distributed use (see :mod:`metaopt.distributed`): every rank passes the same ``data``, its own
        ``task_slice``, a ``reduce_grads`` that sums the gradients over ranks in place, and a
        ``gather_tasks`` that maps a per-task tensor of this rank's tasks (``[..., n_local]``) to the
        iteration's full ``[..., n_tasks]`` tensor. All ranks then see the same losses and gradients, so
        they raise the same :class:`NonFiniteError` at the same point and their metrics are all-task
        averages equal to a one-process run's.

        Args:
            data: The iteration's inputs (default: drawn from the run's generator).
            reduce_grads: Called on the gradient tensors before the optimizer step (distributed all-reduce).
            task_slice: This rank's tasks.
            gather_tasks: All-gather of per-task values across ranks (identity when ``None``).

        Returns:
            Scalar metrics of the iteration.

        Raises:
            NonFiniteError: a loss, a reward or a meta-gradient is NaN/inf; names the iteration and the
                tasks (parameters, the optimizer and the iteration counter are left unchanged).
        """
        t0 = time.perf_counter()
        data = data if data is not None else self.sample_iteration()
        it = self.iteration + 1
        self.optimizer.zero_grad(set_to_none=True)
        loss, info = self.meta_loss(data, task_slice=task_slice)
        local = torch.stack([info["per_task_loss"], info["pre_return"], info["post_return"], info["scales"]])
        per_task, pre_ret, post_ret, scales = gather_tasks(local) if gather_tasks is not None else local
        offset = (task_slice.start or 0) if task_slice is not None else 0
        self._check_losses(it, per_task, pre_ret, post_ret, offset if gather_tasks is None else 0)

        loss.backward()
        params = self.parameters()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        local_bad = not all(bool(torch.isfinite(g).all()) for g in grads)
        if reduce_grads is not None:
            reduce_grads(grads)
        bad_params = [n for (n, _), g in zip(self._named(), grads, strict=True) if not torch.isfinite(g).all()]
        if bad_params:
            mask = self._nonfinite_gradient_tasks(data, task_slice) if local_bad else torch.zeros(
                local.shape[-1], dtype=local.dtype)
            mask = gather_tasks(mask) if gather_tasks is not None else mask
            shift = offset if gather_tasks is None else 0
            tasks = [shift + i for i in mask.nonzero().flatten().tolist()]
            where = (f"from task(s) {tasks}" if tasks
                     else "(no single task's gradient is non-finite: their sum overflowed)")
            raise NonFiniteError(
                f"non-finite meta-gradient at iteration {it} in {bad_params} {where}", it, tasks,
            )
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        self.optimizer.step()
        self.iteration += 1
        metrics = {
            "iteration": self.iteration,
            "outer_loss": float(per_task.sum()) / max(1, per_task.numel()),
            "train_pre_return": float(pre_ret.mean()),
            "train_post_return": float(post_ret.mean()),
            "time_s": time.perf_counter() - t0,
        } | self.meta.summary()
        if self.cfg.scaled:
            metrics["train_pre_return_norm"] = float((pre_ret / scales).mean())
            metrics["train_post_return_norm"] = float((post_ret / scales).mean())
        return metrics

    @staticmethod
    def _check_losses(it: int, per_task: Tensor, pre_ret: Tensor, post_ret: Tensor, offset: int) -> None:
        """Raise :class:`NonFiniteError` naming the iteration and tasks with a non-finite loss or reward."""
        def bad(x: Tensor) -> list[int]:
            return [offset + i for i in (~torch.isfinite(x)).nonzero().flatten().tolist()]

        tasks = sorted(set(bad(per_task)) | set(bad(pre_ret)) | set(bad(post_ret)))
        if not tasks:
            return
        causes = []
        if bad(pre_ret):
            causes.append(f"non-finite rewards in the pre-adaptation rollout of task(s) {bad(pre_ret)}")
        if bad(post_ret):
            causes.append(f"non-finite rewards in the post-adaptation rollout of task(s) {bad(post_ret)}")
        detail = f" ({'; '.join(causes)})" if causes else ""
        raise NonFiniteError(f"non-finite outer loss at iteration {it} for task(s) {tasks}{detail}", it, tasks)

    def _nonfinite_gradient_tasks(self, data: IterationData, task_slice: slice | None) -> Tensor:
        """Which of this rank's tasks have a non-finite meta-gradient (failure path only).

        Each task's meta-loss is recomputed and differentiated on its own: differentiating one entry of the
        batched per-task losses would send zero cotangents through the other tasks' graphs, and ``0 * inf``
        there would flag every task.
        """
        sl = self._check_data(data, self.cfg.engine, task_slice)
        params = self.parameters()
        out = torch.zeros(sl.stop - sl.start, dtype=self.cfg.torch_dtype)
        for i, t in enumerate(range(sl.start, sl.stop)):
            loss, _ = self.meta_loss(data, task_slice=slice(t, t + 1))
            gs = torch.autograd.grad(loss, params, allow_unused=True)
            out[i] = float(any(g is not None and not bool(torch.isfinite(g).all()) for g in gs))
        return out

    def _named(self) -> list[tuple[str, Tensor]]:
        return [(f"model.{n}", p) for n, p in self.model.named_parameters()] + [
            (f"meta.{n}", p) for n, p in self.meta.named_parameters()
        ]

    # ------------------------------------------------------------------------------------- evaluate
    def evaluate(self, seed: int | None = None, trajectories: int | None = None) -> dict[str, float]:
        """Pre- and post-adaptation returns on the fixed test tasks (vectorized ``func`` adaptation).

        The evaluation draws its noise from its own generator (seeded by ``seed``, default the run seed
        plus the iteration), so it never disturbs the training RNG.

        Returns:
            ``test_pre_return``, ``test_post_return`` and, for the scaled variant, the same divided by each
            task's scale ``c`` (``*_norm``).
        """
        c = self.cfg
        seed = c.seed * 7919 + self.iteration if seed is None else seed
        gen = torch.Generator().manual_seed(seed)
        b = trajectories or c.trajectories
        tasks = self.test_tasks
        noise_pre = draw_noise(tasks.num_tasks, b, c.horizon, generator=gen, dtype=c.torch_dtype)
        noise_post = draw_noise(tasks.num_tasks, b, c.horizon, generator=gen, dtype=c.torch_dtype)
        pre, _, _, post = self._adapt_and_rollout(tasks, noise_pre, noise_post, "func")
        out = {"test_pre_return": float(_returns(pre.rewards).mean()),
               "test_post_return": float(_returns(post.rewards).mean())}
        if c.scaled:
            scales = tasks.scales.to(c.torch_dtype)
            out["test_pre_return_norm"] = float((_returns(pre.rewards) / scales).mean())
            out["test_post_return_norm"] = float((_returns(post.rewards) / scales).mean())
        return out
