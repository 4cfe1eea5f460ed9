"""MAML-A2C on TabularMDP with differentiable PopArt, learning beta and the inner learning rate.

One meta-iteration (TorchOpt's MAML-RL recipe, vectorized):

1. sample ``tasks`` tasks and the iteration's common random numbers (one seeded generator);
2. for each inner step ``k < K``: roll out ``trajectories`` episodes per task with the current fast weights
   (``theta_0`` at ``k = 0``; batched simulator, no grad), then take the inner step on them (any engine; PopArt
   ART/POP inside) -- :func:`metaopt.engines.adapt_tasks` with a :func:`~metaopt.engines.per_step` source;
3. roll out fresh episodes with each task's adapted weights;
4. outer A2C terms on them through the adapted weights; the meta-gradient of ``theta_0`` follows the policy
   and value terms, a learned ``lr``/``beta`` the terms named by ``lr_objective``/``beta_objective`` (the
   policy term by default); outer Adam step.

All randomness of a run flows from one ``torch.Generator`` whose state is checkpointed, so a resumed run is
bit-identical to an uninterrupted one. :meth:`MetaLearner.meta_gradient` and :meth:`MetaLearner.apply` are
separate, so a distributed loop can all-reduce the gradients between them.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.func import functional_call

from metaopt import popart as pa
from metaopt.engines import NonFiniteTaskError, adapt_tasks, check_tasks, map_tasks, per_step, require
from metaopt.envs import BatchedTabularMDP, RolloutNoise, TaskBatch, Trajectories, draw_noise, sample_tasks
from metaopt.inner_optim import InnerOptimizer
from metaopt.maml.checks import PER_TASK, check_finite, nonfinite_gradient_tasks
from metaopt.maml.config import MAMLConfig
from metaopt.meta_params import MetaParameters
from metaopt.rl import A2CConfig, ActorCritic, a2c_terms, make_inner_loop, policy_health, state_table, task_major

__all__ = ["MetaLearner", "IterationData", "Rollouts", "MetaGradient", "PolicyCollapseWarning", "COLLAPSED_SPREAD"]

#: ``logit_spread`` below which ``theta_0``'s policy is taken to ignore the state (see :meth:`MetaLearner.metrics`).
COLLAPSED_SPREAD = 1e-4


class PolicyCollapseWarning(UserWarning):
    """``theta_0``'s policy no longer depends on the state (every hidden unit dead, or its head ignores them)."""



@dataclass
class IterationData:
    """The random inputs of one meta-iteration (identical for every engine and number of ranks).

    Attributes:
        tasks: The iteration's tasks.
        noise_inner: One rollout's common random numbers per inner step.
        noise_post: The post-adaptation rollout's.
    """

    tasks: TaskBatch
    noise_inner: tuple[RolloutNoise, ...]
    noise_post: RolloutNoise

    @property
    def noise_pre(self) -> RolloutNoise:
        """The first inner step's noise (the rollout of ``theta_0``)."""
        return self.noise_inner[0]

    def shard(self, start: int, stop: int) -> IterationData:
        """Tasks ``start:stop`` of the iteration."""
        return IterationData(self.tasks.shard(start, stop), tuple(x.shard(start, stop) for x in self.noise_inner),
                             self.noise_post.shard(start, stop))


class Rollouts(NamedTuple):
    """What :meth:`MetaLearner.adapt_and_rollout` produces for a batch of tasks."""

    pre: Trajectories
    adapted: dict[str, Tensor]
    states: pa.PopArtState | None
    post: Trajectories | None
    inner_ok: Tensor


class MetaGradient(NamedTuple):
    """A meta-gradient (one tensor per entry of :meth:`MetaLearner.parameters`) and per-task values ``[6, n]``."""

    grads: list[Tensor]
    per_task: Tensor


def _returns(rewards: Tensor) -> Tensor:
    """Per-task mean episode return from time-major rewards ``[T, N, B]`` -> ``[N]``."""
    return rewards.sum(0).mean(-1)


class MetaLearner:
    """Holds the agent, meta-parameters, outer optimizer and RNG of a MAML-A2C run.

    The run's whole state is ``theta_0`` (the model), the meta-parameters, the outer Adam state, the
    task/noise generator and the iteration counter (:meth:`state_dict`). PopArt's statistics start fresh
    (``mu = 0``, ``sigma = 1``) for every task of every iteration, so there are none to checkpoint. The global
    torch RNG is used only to initialize the model (seeded here), never while training.

    Args:
        cfg: The run's configuration (validated here).
    """

    def __init__(self, cfg: MAMLConfig) -> None:
        self.cfg = cfg.validate()
        if cfg.engine != "func":
            require(cfg.engine)  # fail now, with the install hint, not in the first iteration
        dt, dev = cfg.torch_dtype, cfg.torch_device
        torch.manual_seed(cfg.seed)
        # Initialized on the CPU from the seeded global RNG (the same weights on every device), then moved.
        self.model = ActorCritic(cfg.num_states, cfg.num_actions, cfg.hidden, activation=cfg.activation,
                                 device="cpu").to(dtype=dt, device=dev)
        per = [n for n, _ in self.model.named_parameters()] if cfg.lr_per_parameter else None
        self.meta = MetaParameters(lr=cfg.inner_lr, beta=cfg.beta, learn=cfg.learn, per_parameter=per, dtype=dt,
                                   device=dev)
        self.loss_cfg = A2CConfig(cfg.gamma, cfg.lam, cfg.value_coef, cfg.popart_advantages,
                                  estimator=cfg.estimator)
        self.inner = make_inner_loop(
            self.model, popart=cfg.popart, steps=cfg.num_inner_steps, cfg=self.loss_cfg,
            optimizer=InnerOptimizer(cfg.inner_optimizer, momentum=cfg.inner_momentum),
            first_order=cfg.first_order, truncate=cfg.truncate, debias=cfg.debias, first_pop=cfg.first_pop,
        )
        groups: list[dict[str, Any]] = [{"params": list(self.model.parameters())}]
        if list(self.meta.parameters()):
            groups.append({"params": list(self.meta.parameters()), "lr": cfg.meta_lr})
        self.optimizer = torch.optim.Adam(groups, lr=cfg.outer_lr)
        self.generator = torch.Generator(device=dev).manual_seed(cfg.seed)
        self.iteration = 0
        self._collapse_warned = False
        self.test_tasks = self.sample_tasks(cfg.eval_tasks, seed=cfg.seed + 1_000_003)

    # ------------------------------------------------------------------------------------------ state
    def parameters(self) -> list[Tensor]:
        """Everything the outer optimizer updates: ``theta_0`` and the learned meta-parameters."""
        out: list[Tensor] = [*self.model.parameters(), *self.meta.parameters()]
        return out

    def named_parameters(self) -> list[tuple[str, Tensor]]:
        """:meth:`parameters` with names (``model.*``, ``meta.*``)."""
        out: list[tuple[str, Tensor]] = [(f"model.{n}", p) for n, p in self.model.named_parameters()]
        return out + [(f"meta.{n}", p) for n, p in self.meta.named_parameters()]

    def state_dict(self) -> dict[str, Any]:
        """Everything needed for a bit-identical resume (tensors on the run's device)."""
        return {"config": self.cfg.to_dict(), "iteration": self.iteration, "model": self.model.state_dict(),
                "meta": self.meta.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (the configuration must match; tensors may come from any device)."""
        self.model.load_state_dict(state["model"])
        self.meta.load_state_dict(state["meta"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"].cpu())
        self.iteration = int(state["iteration"])

    # ----------------------------------------------------------------------------------------- data
    def sample_tasks(self, n: int, *, seed: int | None = None) -> TaskBatch:
        """``n`` tasks of the configured kind, from the run's generator (or a fresh one seeded ``seed``)."""
        c = self.cfg
        gen = self.generator if seed is None else torch.Generator(device=c.torch_device).manual_seed(seed)
        return sample_tasks(n, num_states=c.num_states, num_actions=c.num_actions, generator=gen,
                            scale_range=(c.scale_lo, c.scale_hi) if c.scaled else None)

    def sample_iteration(self) -> IterationData:
        """Draw the next iteration's tasks and common random numbers from the run's generator."""
        c = self.cfg
        tasks = self.sample_tasks(c.tasks)
        inner = tuple(self._noise(c.tasks, c.trajectories, self.generator) for _ in range(c.num_inner_steps))
        return IterationData(tasks, inner, self._noise(c.tasks, c.trajectories, self.generator))

    def _noise(self, n: int, b: int, gen: torch.Generator) -> RolloutNoise:
        c = self.cfg
        return draw_noise(n, b, c.horizon, generator=gen, dtype=c.torch_dtype, device=c.torch_device)

    def _rollout(self, sim: BatchedTabularMDP, params: dict[str, Tensor] | None, noise: RolloutNoise
                 ) -> Trajectories:
        """Roll out ``theta_0`` (``params=None``, shared by all tasks) or per-task stacked ``params`` (no grad)."""
        with torch.no_grad():
            if self.cfg.state_table:
                ref = next(self.model.parameters())

                def logits(p: dict[str, Tensor]) -> Tensor:
                    return state_table(self.model, p, self.cfg.num_states, ref)[0]

                own: dict[str, Tensor] = dict(self.model.named_parameters())
                return sim.rollout_table(logits(own) if params is None else torch.func.vmap(logits)(params), noise)
            if params is None:
                return sim.rollout(lambda obs: self.model(obs)[0], noise)
            return sim.rollout(lambda obs: torch.func.vmap(lambda p, o: functional_call(self.model, p, (o,))[0])(
                params, obs), noise)

    def adapt_and_rollout(self, tasks: TaskBatch, noise_inner: tuple[RolloutNoise, ...],
                          noise_post: RolloutNoise | None, engine: str | None = None) -> Rollouts:
        """Roll out and adapt each task for ``K`` steps (fresh episodes per step), then roll out the adapted weights.

        Non-finite inner loops do not raise here (every rank of a distributed run must reach the same checks);
        they are flagged in ``inner_ok`` (the engines' checked mode) and their weights are NaN. With
        ``noise_post=None`` there is no post-adaptation rollout (``post`` is ``None``).
        """
        c, n = self.cfg, tasks.num_tasks
        sim = BatchedTabularMDP(tasks.to(device=c.torch_device), c.horizon, dtype=c.torch_dtype)
        first: list[Trajectories] = []  # theta_0's rollout (the later steps' are not kept: memory flat in K)

        def batch(k: int, params: dict[str, Tensor]) -> Any:
            traj = self._rollout(sim, None if k == 0 else params, noise_inner[k])
            if k == 0:
                first.append(traj)
            return task_major(traj, states=c.state_table)

        states0 = None
        if c.popart:
            s = pa.init(1, dtype=c.torch_dtype, device=c.torch_device)
            states0 = pa.PopArtState(*(t.expand(n, 1).clone() for t in s))
        res = adapt_tasks(self.model, self.inner, per_step(batch), self.meta, engine=engine or c.engine,
                          popart_state=states0, num_tasks=n, check=False)
        ok = torch.ones(n, dtype=c.torch_dtype, device=c.torch_device)
        try:
            check_tasks(res)
        except NonFiniteTaskError as err:
            ok[err.tasks] = 0.0
        post = None if noise_post is None else self._rollout(sim, res.params, noise_post)
        return Rollouts(first[0], res.params, res.popart_state, post, ok)

    # ------------------------------------------------------------------------------------ meta-loss
    def outer_terms(self, data: IterationData, *, engine: str | None = None, task_slice: slice | None = None
                    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per-task outer policy and value terms ``[n]`` (differentiable) and the per-task values ``[6, n]``."""
        engine = engine or self.cfg.engine
        sl = _check_data(self.cfg, data, task_slice)
        d = data.shard(sl.start, sl.stop)
        r = self.adapt_and_rollout(d.tasks, d.noise_inner, d.noise_post, engine)
        units = self.cfg.outer_value

        def outer(p: dict[str, Tensor], s: Any, b: Any) -> Tensor:
            state = None if s is None else pa.PopArtState(*s)
            return torch.stack(a2c_terms(self.model, p, b, state, self.loss_cfg, value_units=units))

        assert r.post is not None
        terms = map_tasks(outer, r.adapted, None if r.states is None else tuple(r.states),
                          task_major(r.post, states=self.cfg.state_table), engine=engine)
        scales = d.tasks.scales.to(dtype=self.cfg.torch_dtype, device=self.cfg.torch_device)
        info = torch.stack([terms[:, 0].detach(), terms[:, 1].detach(), _returns(r.pre.rewards),
                            _returns(r.post.rewards), scales, r.inner_ok])
        return terms[:, 0], terms[:, 1], info

    def meta_loss(self, data: IterationData, *, engine: str | None = None, task_slice: slice | None = None
                  ) -> tuple[Tensor, Tensor]:
        """The total outer loss ``sum_tasks(policy + value_coef * value)`` (differentiable) and the per-task values."""
        policy, value, info = self.outer_terms(data, engine=engine, task_slice=task_slice)
        return self.loss_cfg.policy_coef * policy.sum() + self.loss_cfg.value_coef * value.sum(), info

    def meta_gradient(self, data: IterationData, *, task_slice: slice | None = None) -> MetaGradient:
        """The meta-gradient of (a slice of) the iteration's tasks, summed over them.

        ``theta_0`` follows ``policy + value_coef * value``; a learned ``lr``/``beta`` follows the terms its
        ``*_objective`` names (one extra backward pass through the unroll when they differ).
        """
        policy, value, info = self.outer_terms(data, task_slice=task_slice)
        lc = self.loss_cfg
        objective = {"policy": lc.policy_coef * policy.sum(), "value": lc.value_coef * value.sum()}
        objective["total"] = objective["policy"] + objective["value"]
        names = self.named_parameters()
        wanted = [self.cfg.lr_objective if n.startswith("meta.log_lr") else  # log_lr or per-parameter log_lrs.*
                  self.cfg.beta_objective if n == "meta.logit_beta" else "total" for n, _ in names]
        grads: list[Tensor | None] = [None] * len(names)
        order = sorted(set(wanted), key=lambda o: o == "total")  # "total" last: it may free the graph
        for j, obj in enumerate(order):
            idx = [i for i, w in enumerate(wanted) if w == obj]
            gs = torch.autograd.grad(objective[obj], [names[i][1] for i in idx], allow_unused=True,
                                     retain_graph=j < len(order) - 1)
            for i, g in zip(idx, gs, strict=True):
                grads[i] = g
        return MetaGradient([torch.zeros_like(p) if g is None else g for (_, p), g in zip(names, grads, strict=True)],
                            info)

    def apply(self, grads: list[Tensor]) -> None:
        """One outer Adam step with ``grads`` (one per entry of :meth:`parameters`)."""
        for p, g in zip(self.parameters(), grads, strict=True):
            p.grad = g
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.iteration += 1

    def metrics(self, per_task: Tensor, seconds: float, grads: list[Tensor] | None = None) -> dict[str, float]:
        """The logged scalars of an iteration from all its tasks' :data:`PER_TASK` values.

        With the iteration's meta-gradient ``grads`` (one per :meth:`parameters` entry), also ``grad_log_lr`` (the
        derivative with respect to a common shift of every ``log_lr``: the sum over per-parameter rates) and
        ``grad_logit_beta`` for the learned meta-parameters. ``live_units`` and ``logit_spread`` are ``theta_0``'s
        :meth:`health`; when the policy stops depending on the state a :class:`PolicyCollapseWarning` is emitted
        (once per learner).
        """
        r = dict(zip(PER_TASK, per_task, strict=True))
        m = {"iteration": self.iteration, "outer_loss": float((r["policy_loss"] + self.cfg.value_coef
                                                               * r["value_loss"]).mean()),
             "train_pre_return": float(r["pre_return"].mean()), "train_post_return": float(r["post_return"].mean()),
             "time_s": seconds} | self.meta.summary() | self.health()
        if grads is not None:
            named = dict(zip([n for n, _ in self.named_parameters()], grads, strict=True))
            lr = [float(g.sum()) for n, g in named.items() if n.startswith("meta.log_lr")]
            if "lr" in self.cfg.learn and lr:
                m["grad_log_lr"] = sum(lr)
            if "meta.logit_beta" in named:
                m["grad_logit_beta"] = float(named["meta.logit_beta"])
        if self.cfg.scaled:
            m["train_pre_return_norm"] = float((r["pre_return"] / r["scales"]).mean())
            m["train_post_return_norm"] = float((r["post_return"] / r["scales"]).mean())
        if m["logit_spread"] < COLLAPSED_SPREAD and not self._collapse_warned:
            self._collapse_warned = True
            warnings.warn(f"iteration {self.iteration}: theta_0's policy no longer depends on the state (logit spread "
                          f"{m['logit_spread']:.2g} < {COLLAPSED_SPREAD:g}, live hidden units {m['live_units']:.0%}); "
                          "adaptation can only shift a state-independent action preference. A per-parameter "
                          "learned lr (lr_per_parameter) keeps the body alive in the job.",
                          PolicyCollapseWarning, stacklevel=2)
        return m

    def health(self) -> dict[str, float]:
        """``theta_0``'s :func:`~metaopt.rl.policy_health` on every state.

        ``live_units`` is the smallest fraction of live units over its hidden layers, ``logit_spread`` the spread of
        the log-probabilities over states (0: the policy ignores the state).
        """
        c = self.cfg
        eye = torch.eye(c.num_states, dtype=c.torch_dtype, device=c.torch_device)
        h = policy_health(self.model, dict(self.model.named_parameters()), eye)
        return {"live_units": min(h.live_units, default=1.0), "logit_spread": h.logit_spread}

    def step(self, data: IterationData | None = None) -> dict[str, float]:
        """One meta-iteration in one process: meta-gradient, checks, outer Adam step; returns the metrics.

        Raises:
            NonFiniteError: a loss, a reward, an inner loop or the meta-gradient is NaN/inf; names the iteration
                and the tasks (parameters, the optimizer and the iteration counter are left unchanged).
        """
        t0 = time.perf_counter()
        data = data if data is not None else self.sample_iteration()
        mg = self.meta_gradient(data)
        check_finite(self, mg.per_task, mg.grads, lambda: nonfinite_gradient_tasks(self, data))
        self.apply(mg.grads)
        return self.metrics(mg.per_task, time.perf_counter() - t0, mg.grads)

    # ------------------------------------------------------------------------------------- evaluate
    def evaluate(self, seed: int | None = None, trajectories: int | None = None, tasks: TaskBatch | None = None,
                 post_trajectories: int | None = None) -> dict[str, float]:
        """Pre- and post-adaptation returns on the fixed test tasks (or ``tasks``), vectorized ``func`` adaptation.

        The evaluation draws its noise from its own generator (seeded by ``seed``, default the run seed plus
        the iteration), so it never disturbs the training RNG. ``trajectories`` episodes per task feed each inner
        step (default: the training value); the post-adaptation return is measured on ``post_trajectories``
        episodes (default: ``trajectories``). The pre-adaptation return is the first inner batch's.

        Returns:
            ``test_pre_return``, ``test_post_return`` and, for the scaled variant, the same divided by each
            task's scale ``c`` (``*_norm``).
        """
        c = self.cfg
        gen = torch.Generator(device=c.torch_device).manual_seed(c.seed * 7919 + self.iteration if seed is None
                                                                 else seed)
        tasks = self.test_tasks if tasks is None else tasks
        b = trajectories or c.trajectories
        inner = tuple(self._noise(tasks.num_tasks, b, gen) for _ in range(c.num_inner_steps))
        r = self.adapt_and_rollout(tasks, inner, self._noise(tasks.num_tasks, post_trajectories or b, gen), "func")
        assert r.post is not None
        pre, post = _returns(r.pre.rewards), _returns(r.post.rewards)
        out = {"test_pre_return": float(pre.mean()), "test_post_return": float(post.mean())}
        if c.scaled:
            scales = tasks.scales.to(dtype=c.torch_dtype, device=c.torch_device)
            out["test_pre_return_norm"] = float((pre / scales).mean())
            out["test_post_return_norm"] = float((post / scales).mean())
        return out


def _check_data(c: MAMLConfig, data: IterationData, task_slice: slice | None) -> slice:
    """Validate an iteration's inputs; return the task slice as concrete ``start:stop``."""
    if not isinstance(data, IterationData):
        raise TypeError(f"data must be an IterationData (see MetaLearner.sample_iteration), got {type(data).__name__}")
    t = data.tasks
    if (t.num_states, t.num_actions) != (c.num_states, c.num_actions):
        raise ValueError(f"data.tasks must have num_states={c.num_states} and num_actions={c.num_actions} (the "
                         f"config's), got num_states={t.num_states}, num_actions={t.num_actions}")
    if len(data.noise_inner) != c.num_inner_steps:
        raise ValueError(f"data.noise_inner must hold one rollout noise per inner step ({c.num_inner_steps}), got "
                         f"{len(data.noise_inner)}")
    n = t.num_tasks
    if task_slice is None:
        return slice(0, n)
    if not isinstance(task_slice, slice):
        raise TypeError(f"task_slice must be a slice (start:stop) of the {n} tasks, got {task_slice!r}")
    start = 0 if task_slice.start is None else task_slice.start
    stop = n if task_slice.stop is None else task_slice.stop
    if (task_slice.step not in (None, 1) or not isinstance(start, int) or not isinstance(stop, int)
            or not 0 <= start < stop <= n):
        raise ValueError(f"task_slice must be a contiguous, non-empty slice within the iteration's {n} tasks "
                         f"(0 <= start < stop <= {n}, step 1), got {task_slice!r}")
    return slice(start, stop)
