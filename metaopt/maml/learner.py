"""MAML-A2C on any batched environment with differentiable PopArt, learning beta and the inner learning rate.

The environment follows the :class:`~metaopt.envs.BatchedEnv` protocol (TabularMDP by default, 2D navigation
with ``env="pointnav2d"``, or a user's own) and the model returns ``(policy output, normalized value)`` with its
policy's :class:`~metaopt.rl.PolicyDistribution` (``model.distribution``) and a value layer named
``value_head``.

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

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metaopt import popart as pa
from metaopt.engines import NonFiniteTaskError, adapt_tasks, check_tasks, map_tasks, per_step, require
from metaopt.envs import (
    BatchedEnv,
    BatchedTabularMDP,
    PointNav2D,
    TabularMDPFamily,
    TaskBatch,
    Trajectories,
    check_env,
    num_tasks_of,
    scales_of,
    shard,
)
from metaopt.inner_optim import InnerOptimizer
from metaopt.maml.checks import PER_TASK, check_finite, nonfinite_gradient_tasks
from metaopt.maml.config import MAMLConfig
from metaopt.maml.parts import meta_parameter_role, routed_meta_gradient
from metaopt.meta_params import MetaParameters
from metaopt.rl import (
    A2CConfig,
    ActorCritic,
    GaussianActorCritic,
    a2c_terms,
    distribution_of,
    make_inner_loop,
    policy_health,
    state_table,
    task_major,
)

__all__ = ["MetaLearner", "IterationData", "Rollouts", "MetaGradient", "PolicyCollapseWarning", "COLLAPSED_SPREAD",
           "make_env", "make_model"]

#: ``logit_spread`` below which ``theta_0``'s policy is taken to ignore the state (see :meth:`MetaLearner.metrics`).
COLLAPSED_SPREAD = 1e-4


class PolicyCollapseWarning(UserWarning):
    """``theta_0``'s policy no longer depends on the state (every hidden unit dead, or its head ignores them)."""



@dataclass
class IterationData:
    """The random inputs of one meta-iteration (identical for every engine and number of ranks).

    Attributes:
        tasks: The iteration's tasks (the environment's, e.g. a :class:`~metaopt.envs.TaskBatch`).
        noise_inner: One rollout's common random numbers per inner step.
        noise_post: The post-adaptation rollout's.
    """

    tasks: Any
    noise_inner: tuple[Any, ...]
    noise_post: Any

    @property
    def noise_pre(self) -> Any:
        """The first inner step's noise (the rollout of ``theta_0``)."""
        return self.noise_inner[0]

    def shard(self, start: int, stop: int) -> IterationData:
        """Tasks ``start:stop`` of the iteration."""
        return IterationData(shard(self.tasks, start, stop), tuple(shard(x, start, stop) for x in self.noise_inner),
                             shard(self.noise_post, start, stop))


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


def make_env(cfg: MAMLConfig) -> BatchedEnv:
    """The configured environment family: ``cfg.env`` (``tabular`` or ``pointnav2d``), scaled if ``cfg.scaled``."""
    scale = (cfg.scale_lo, cfg.scale_hi) if cfg.scaled else None
    if cfg.env == "pointnav2d":
        return PointNav2D(cfg.episode_length, scale_range=scale, dtype=cfg.torch_dtype, device=cfg.torch_device)
    return TabularMDPFamily(cfg.num_states, cfg.num_actions, cfg.episode_length, scale_range=scale,
                            dtype=cfg.torch_dtype, device=cfg.torch_device)


def make_model(cfg: MAMLConfig, env: BatchedEnv) -> nn.Module:
    """The default agent of ``env``: an actor-critic with a categorical or a Gaussian policy.

    :class:`~metaopt.rl.ActorCritic` for discrete actions, :class:`~metaopt.rl.GaussianActorCritic` for continuous
    ones, with the configured width and activation, initialized on the CPU from the global RNG (the same weights on
    every device) and moved to the run's dtype and device.
    """
    if env.discrete:
        model: nn.Module = ActorCritic(env.observation_size, env.action_size, cfg.hidden, activation=cfg.activation,
                                       device="cpu")
    else:
        model = GaussianActorCritic(env.observation_size, env.action_size, cfg.hidden, activation=cfg.activation,
                                    init_log_std=cfg.init_log_std, device="cpu")
    return model.to(dtype=cfg.torch_dtype, device=cfg.torch_device)


class MetaLearner:
    """Holds the agent, meta-parameters, outer optimizer and RNG of a MAML-A2C run.

    The run's whole state is ``theta_0`` (the model), the meta-parameters, the outer Adam state, the
    task/noise generator and the iteration counter (:meth:`state_dict`). PopArt's statistics start fresh
    (``mu = 0``, ``sigma = 1``) for every task of every iteration, so there are none to checkpoint. The global
    torch RNG is used only to initialize the model (seeded here), never while training.

    Args:
        cfg: The run's configuration (validated here).
        env: The environment family (:class:`~metaopt.envs.BatchedEnv`); default :func:`make_env` ``(cfg)``. Its
            tasks are drawn from the run's generator, on the run's device.
        model: The agent, ``model(obs) -> (policy output, normalized value)`` with ``model.distribution`` its
            policy's :class:`~metaopt.rl.PolicyDistribution` (categorical if absent); in the run's dtype and on its
            device. Default :func:`make_model` ``(cfg, env)``, initialized after seeding the global RNG with
            ``cfg.seed``.
        value_head: Name of the model's value layer (``{value_head}.weight`` ``[1, H]`` and ``.bias``: PopArt's
            POP rescales them).
    """

    def __init__(self, cfg: MAMLConfig, *, env: BatchedEnv | None = None, model: nn.Module | None = None,
                 value_head: str = "value") -> None:
        self.cfg = cfg.validate()
        if cfg.engine != "func":
            require(cfg.engine)  # fail now, with the install hint, not in the first iteration
        dt, dev = cfg.torch_dtype, cfg.torch_device
        self.env = make_env(cfg) if env is None else check_env(env)
        torch.manual_seed(cfg.seed)
        self.model = make_model(cfg, self.env) if model is None else model
        _check_model(self.model, self.env, cfg, value_head)
        self.distribution = distribution_of(self.model)
        # The one-state-per-row fast path of TabularMDP (one-hot observations, categorical policy).
        self._table = cfg.state_table and isinstance(self.env, TabularMDPFamily) and self.env.discrete
        per = [n for n, _ in self.model.named_parameters()] if cfg.lr_per_parameter else None
        self.meta = MetaParameters(lr=cfg.inner_lr, beta=cfg.beta, learn=cfg.learn, per_parameter=per, dtype=dt,
                                   device=dev)
        self.loss_cfg = A2CConfig(cfg.gamma, cfg.lam, cfg.value_coef, cfg.popart_advantages,
                                  estimator=cfg.estimator)
        self.inner = make_inner_loop(
            self.model, popart=cfg.popart, steps=cfg.num_inner_steps, cfg=self.loss_cfg,
            optimizer=InnerOptimizer(cfg.inner_optimizer, momentum=cfg.inner_momentum),
            first_order=cfg.first_order, truncate=cfg.truncate, debias=cfg.debias, first_pop=cfg.first_pop,
            value_head=value_head,
        )
        groups: list[dict[str, Any]] = [{"params": list(self.model.parameters())}]
        if list(self.meta.parameters()):
            groups.append({"params": list(self.meta.parameters()), "lr": cfg.meta_lr})
        self.optimizer = torch.optim.Adam(groups, lr=cfg.outer_lr)
        self.generator = torch.Generator(device=dev).manual_seed(cfg.seed)
        self.iteration = 0
        self._collapse_warned = False
        self._rollout_restart: Callable[[], None] | None = None
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
    def sample_tasks(self, n: int, *, seed: int | None = None) -> Any:
        """``n`` tasks of the environment, from the run's generator (or a fresh one seeded ``seed``)."""
        c = self.cfg
        gen = self.generator if seed is None else torch.Generator(device=c.torch_device).manual_seed(seed)
        return self.env.sample_tasks(n, generator=gen)

    def sample_iteration(self) -> IterationData:
        """Draw the next iteration's tasks and common random numbers from the run's generator."""
        c = self.cfg
        tasks = self.sample_tasks(c.tasks)
        inner = tuple(self._noise(c.tasks, c.trajectories, self.generator) for _ in range(c.num_inner_steps))
        return IterationData(tasks, inner, self._noise(c.tasks, c.trajectories, self.generator))

    def _noise(self, n: int, b: int, gen: torch.Generator) -> Any:
        return self.env.draw_noise(n, b, generator=gen)

    @contextlib.contextmanager
    def fixed_rollouts(self) -> Iterator[None]:
        """Inside, every rollout repeats the episodes the first pass made (in call order): fixed batches.

        A meta-loss evaluated twice inside sees the same trajectories whatever the weights, so it is a function of
        the parameters through the losses alone -- what a finite-difference check of the meta-gradient needs. (The
        rollouts are not differentiated; a continuous policy's episodes move smoothly with its weights, which central
        differences of a re-sampling meta-loss would pick up.)
        """
        recorded: list[Trajectories] = []
        calls = [0]

        def replay(tasks: Any, sim: Any, params: dict[str, Tensor] | None, noise: Any) -> Trajectories:
            i = calls[0]
            calls[0] += 1
            if i < len(recorded):
                return recorded[i]
            traj = self._sample_rollout(tasks, sim, params, noise)
            recorded.append(traj)
            return traj

        def restart() -> None:
            calls[0] = 0

        self._rollout = replay  # type: ignore[method-assign]
        self._rollout_restart = restart
        try:
            yield
        finally:
            del self._rollout
            self._rollout_restart = None

    def _rollout(self, tasks: Any, sim: Any, params: dict[str, Tensor] | None, noise: Any) -> Trajectories:
        return self._sample_rollout(tasks, sim, params, noise)

    def _simulator(self, tasks: Any) -> BatchedTabularMDP | None:
        """TabularMDP's batched simulator of ``tasks`` (one per adaptation, for its tabular fast paths), else None."""
        if not isinstance(self.env, TabularMDPFamily):
            return None
        return BatchedTabularMDP(tasks.to(device=self.env.device), self.env.horizon, dtype=self.env.dtype)

    def _sample_rollout(self, tasks: Any, sim: Any, params: dict[str, Tensor] | None, noise: Any) -> Trajectories:
        """Roll out ``theta_0`` (``params=None``, shared by all tasks) or per-task stacked ``params`` (no grad)."""
        with torch.no_grad():
            if sim is not None:
                return self._rollout_tabular(sim, params, noise)
            dist, model = self.distribution, self.model
            if params is None:
                return self.env.rollout(tasks, lambda obs, eps: dist.sample(model(obs)[0], eps), noise)
            return self.env.rollout(tasks, lambda obs, eps: dist.sample(torch.func.vmap(
                lambda p, o: functional_call(model, p, (o,))[0])(params, obs), eps), noise)

    def _rollout_tabular(self, sim: Any, params: dict[str, Tensor] | None, noise: Any) -> Trajectories:
        if self._table:
            ref = next(self.model.parameters())

            def logits(p: dict[str, Tensor]) -> Tensor:
                return state_table(self.model, p, sim.num_states, ref)[0]

            own: dict[str, Tensor] = dict(self.model.named_parameters())
            return sim.rollout_table(logits(own) if params is None else torch.func.vmap(logits)(params), noise)
        if params is None:
            return sim.rollout(lambda obs: self.model(obs)[0], noise)
        return sim.rollout(lambda obs: torch.func.vmap(lambda p, o: functional_call(self.model, p, (o,))[0])(
            params, obs), noise)

    def adapt_and_rollout(self, tasks: Any, noise_inner: tuple[Any, ...], noise_post: Any | None,
                          engine: str | None = None) -> Rollouts:
        """Roll out and adapt each task for ``K`` steps (fresh episodes per step), then roll out the adapted weights.

        Non-finite inner loops do not raise here (every rank of a distributed run must reach the same checks);
        they are flagged in ``inner_ok`` (the engines' checked mode) and their weights are NaN. With
        ``noise_post=None`` there is no post-adaptation rollout (``post`` is ``None``).
        """
        c, n = self.cfg, num_tasks_of(tasks)
        if self._rollout_restart is not None:
            self._rollout_restart()  # fixed_rollouts: each pass replays from its first rollout
        first: list[Trajectories] = []  # theta_0's rollout (the later steps' are not kept: memory flat in K)
        sim = self._simulator(tasks)

        def batch(k: int, params: dict[str, Tensor]) -> Any:
            traj = self._rollout(tasks, sim, None if k == 0 else params, noise_inner[k])
            if k == 0:
                first.append(traj)
            return task_major(traj, states=self._table)

        states0 = pa.init_tasks(n, dtype=c.torch_dtype, device=c.torch_device) if c.popart else None
        res = adapt_tasks(self.model, self.inner, per_step(batch), self.meta, engine=engine or c.engine,
                          popart_state=states0, num_tasks=n, check=False)
        ok = torch.ones(n, dtype=c.torch_dtype, device=c.torch_device)
        try:
            check_tasks(res)
        except NonFiniteTaskError as err:
            ok[err.tasks] = 0.0
        post = None if noise_post is None else self._rollout(tasks, sim, res.params, noise_post)
        return Rollouts(first[0], res.params, res.popart_state, post, ok)

    # ------------------------------------------------------------------------------------ meta-loss
    def outer_terms(self, data: IterationData, *, engine: str | None = None, task_slice: slice | None = None
                    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per-task outer policy and value terms ``[n]`` (differentiable) and the per-task values ``[6, n]``."""
        engine = engine or self.cfg.engine
        sl = _check_data(self.cfg, data, task_slice, self.env)
        d = data.shard(sl.start, sl.stop)
        r = self.adapt_and_rollout(d.tasks, d.noise_inner, d.noise_post, engine)
        units = self.cfg.outer_value

        def outer(p: dict[str, Tensor], s: Any, b: Any) -> Tensor:
            state = None if s is None else pa.PopArtState(*s)
            return torch.stack(a2c_terms(self.model, p, b, state, self.loss_cfg, value_units=units))

        assert r.post is not None
        terms = map_tasks(outer, r.adapted, None if r.states is None else tuple(r.states),
                          task_major(r.post, states=self._table), engine=engine)
        scales = scales_of(d.tasks, dtype=self.cfg.torch_dtype, device=self.cfg.torch_device)
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
        g_theta, g_meta = routed_meta_gradient(objective, list(self.model.parameters()), self.meta,
                                               lr_objective=self.cfg.lr_objective,
                                               beta_objective=self.cfg.beta_objective)
        return MetaGradient(g_theta + g_meta, info)

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
            meta_grads = grads[len(list(self.model.parameters())):]
            roles = [meta_parameter_role(n) for n, _ in self.meta.named_parameters()]
            for role, key in (("lr", "grad_log_lr"), ("beta", "grad_logit_beta")):
                if role in roles:
                    m[key] = sum(float(g.sum()) for r_, g in zip(roles, meta_grads, strict=True) if r_ == role)
        if self.cfg.scaled:
            m["train_pre_return_norm"] = float((r["pre_return"] / r["scales"]).mean())
            m["train_post_return_norm"] = float((r["post_return"] / r["scales"]).mean())
        if "logit_spread" in m and m["logit_spread"] < COLLAPSED_SPREAD and not self._collapse_warned:
            self._collapse_warned = True
            warnings.warn(f"iteration {self.iteration}: theta_0's policy no longer depends on the state (logit spread "
                          f"{m['logit_spread']:.2g} < {COLLAPSED_SPREAD:g}, live hidden units {m['live_units']:.0%}); "
                          "adaptation can only shift a state-independent action preference. A per-parameter "
                          "learned lr (lr_per_parameter) keeps the body alive in the job.",
                          PolicyCollapseWarning, stacklevel=2)
        return m

    def health(self) -> dict[str, float]:
        """``theta_0``'s :func:`~metaopt.rl.policy_health` on the environment's probe observations.

        ``live_units`` is the smallest fraction of live units over its hidden layers, ``logit_spread`` the spread of
        the policy's output over the observations (0: the policy ignores them). The observations are every state of
        a TabularMDP, or the environment's ``probe_observations(dtype, device)`` (``[M, O]``); an environment
        without them reports no health (an empty dict).
        """
        c = self.cfg
        probe = getattr(self.env, "probe_observations", None)
        if isinstance(self.env, TabularMDPFamily):
            obs = torch.eye(self.env.num_states, dtype=c.torch_dtype, device=c.torch_device)
        elif callable(probe):
            obs = probe(c.torch_dtype, c.torch_device)
        else:
            return {}
        h = policy_health(self.model, dict(self.model.named_parameters()), obs)
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
    def evaluate(self, seed: int | None = None, trajectories: int | None = None, tasks: Any = None,
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
        b, n = trajectories or c.trajectories, num_tasks_of(tasks)
        inner = tuple(self._noise(n, b, gen) for _ in range(c.num_inner_steps))
        r = self.adapt_and_rollout(tasks, inner, self._noise(n, post_trajectories or b, gen), "func")
        assert r.post is not None
        pre, post = _returns(r.pre.rewards), _returns(r.post.rewards)
        out = {"test_pre_return": float(pre.mean()), "test_post_return": float(post.mean())}
        if c.scaled:
            scales = scales_of(tasks, dtype=c.torch_dtype, device=c.torch_device)
            out["test_pre_return_norm"] = float((pre / scales).mean())
            out["test_post_return_norm"] = float((post / scales).mean())
        return out


def _check_model(model: nn.Module, env: BatchedEnv, cfg: MAMLConfig, value_head: str) -> None:
    """One clear error for a model that cannot run on ``env`` in the configured dtype/device."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module returning (policy output, normalized value), got "
                        f"{type(model).__name__}")
    params = dict(model.named_parameters())
    bad = {n: p.dtype for n, p in params.items() if p.dtype != cfg.torch_dtype}
    if bad:
        name, dtype = next(iter(bad.items()))
        raise TypeError(f"model parameters must have the run's dtype {cfg.torch_dtype} (cfg.dtype={cfg.dtype!r}), got "
                        f"{name} of dtype {dtype}: expected model.to({cfg.torch_dtype})")
    dist = distribution_of(model)
    if (getattr(dist, "kind", None) == "discrete") != env.discrete:
        raise ValueError(f"model.distribution={type(dist).__name__} ({getattr(dist, 'kind', '?')} actions) does not "
                         f"match env {type(env).__name__} (discrete={env.discrete}): expected "
                         f"{'Categorical' if env.discrete else 'DiagGaussian'}")
    weight = params.get(f"{value_head}.weight")
    if weight is None or f"{value_head}.bias" not in params:
        raise ValueError(f"value_head={value_head!r} must name the model's value layer ({value_head}.weight and "
                         f"{value_head}.bias among its parameters), got parameters {list(params)}")
    if cfg.popart and (weight.dim() != 2 or weight.shape[0] != 1):
        raise ValueError(f"value_head={value_head!r}: PopArt needs one value output, {value_head}.weight [1, H]; got "
                         f"shape {tuple(weight.shape)}")


def _check_data(c: MAMLConfig, data: IterationData, task_slice: slice | None, env: BatchedEnv) -> slice:
    """Validate an iteration's inputs; return the task slice as concrete ``start:stop``."""
    if not isinstance(data, IterationData):
        raise TypeError(f"data must be an IterationData (see MetaLearner.sample_iteration), got {type(data).__name__}")
    t = data.tasks
    if isinstance(t, TaskBatch) and isinstance(env, TabularMDPFamily) and (t.num_states, t.num_actions) != (
            env.num_states, env.num_actions):
        raise ValueError(f"data.tasks must have num_states={env.num_states} and num_actions={env.num_actions} (the "
                         f"environment's), got num_states={t.num_states}, num_actions={t.num_actions}")
    if len(data.noise_inner) != c.num_inner_steps:
        raise ValueError(f"data.noise_inner must hold one rollout noise per inner step ({c.num_inner_steps}), got "
                         f"{len(data.noise_inner)}")
    n = num_tasks_of(t)
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
