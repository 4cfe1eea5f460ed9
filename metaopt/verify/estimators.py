r"""The proof: sampled MAML meta-gradients of the surrogate, LVC and DiCE estimators against exact ones.

Setup (:class:`EstimatorProblem`). A fixed initial policy :math:`\theta_0` (the job's
:class:`metaopt.rl.ActorCritic`, or a :class:`metaopt.exact.TabularPolicy`) and a few fixed TabularMDP tasks
:math:`n`. One inner SGD step per task on a *sampled* estimator loss :math:`\hat L` of :math:`N`
trajectories drawn from :math:`\pi_{\theta_0}`, run by :func:`metaopt.engines.adapt` (engine ``func``,
``higher`` or ``torchopt``):

.. math:: \theta'_n = \theta_0 - \alpha \nabla_\theta \hat L_n(\theta_0),

then the **exact** outer objective (:func:`metaopt.exact.expected_return`), so that only the inner estimator
is random, and its meta-gradient

.. math:: \hat g = \nabla_{\theta_0} \sum_n J_n(\theta'_n)
    = \sum_n \big(I - \alpha \nabla^2 \hat L_n(\theta_0)\big) \nabla J_n(\theta'_n).

The reference is the exact meta-gradient :math:`g^\star = \nabla_{\theta_0} \sum_n J_n(\theta_0 + \alpha
\kappa \nabla J_n(\theta_0))` (:func:`metaopt.exact.exact_maml_return`, :math:`\kappa` =
:func:`metaopt.estimators.gradient_scale`). As :math:`N \to \infty` each estimator's :math:`\hat g` tends to
an exactly computable limit (``inner_estimator=`` of :func:`~metaopt.exact.exact_maml_return`): :math:`g^\star`
for DiCE, something else for the surrogate and LVC. At finite :math:`N` even DiCE is biased by
:math:`O(1/N)` because :math:`J(\theta')` is nonlinear in the random :math:`\theta'`; its Hessian-vector
product (a linear outer objective) is unbiased at every :math:`N`.

To separate the two sources of bias, every repeat also differentiates the outer objective *linearized* at the
expected step, :math:`\sum_n \nabla J_n(\bar\theta'_n) \cdot \theta'_n` with
:math:`\bar\theta'_n = \theta_0 + \alpha\kappa\nabla J_n(\theta_0)`: its meta-gradient
:math:`\sum_n (I - \alpha\nabla^2 \hat L_n)\nabla J_n(\bar\theta'_n)` has no Jensen gap, so its bias is the
estimator's own (zero for DiCE at every :math:`N`, the exact limit for the surrogate and LVC).

The three estimators use the *same* trajectories in each repeat (common random numbers); at
:math:`\lambda = 1` their first derivatives, hence the inner steps :math:`\theta'`, are then identical, and
they differ only through their Hessians.

This module holds the problem, the sampling and the fast ``metaopt verify`` rows (:func:`check_estimators`);
the full study over :math:`N` with its statistics (bias, variance and bootstrap intervals) is
:mod:`metaopt.experiments.estimator_study` (``metaopt estimator-study``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from metaopt import estimators as est
from metaopt import exact
from metaopt._validation import check_choice, check_int, check_real
from metaopt.engines import ENGINES, InnerLoop, adapt
from metaopt.envs import BatchedTabularMDP, TaskBatch, sample_tasks
from metaopt.meta_params import MetaParameters
from metaopt.verify._rows import F64, CheckResult, _row

__all__ = [
    "BASELINES",
    "EstimatorProblem",
    "SampledMetaGradients",
    "make_problem",
    "sample_meta_gradients",
    "CheckSettings",
    "CHECK_SETTINGS",
    "check_estimators",
]

#: Baselines :math:`b_t(s)` of the estimators: the exact :math:`V_t(s)` of :math:`\pi_{\theta_0}`, the
#: network's value head :math:`V(s)` (the job's), or none.
BASELINES = ("exact", "value", "none")
Params = dict[str, Tensor]


# ------------------------------------------------------------------------------------------------ the problem
@dataclass
class EstimatorProblem:
    r"""A fixed :math:`\theta_0`, fixed tasks and the inner-step settings of the study.

    Attributes:
        model: The policy network (float64); its parameters are :math:`\theta_0`. The logits are
            :func:`metaopt.exact.policy_logits` (output 0 of a tuple).
        tasks: The tasks (float64).
        horizon: :math:`T`.
        lr: Inner SGD rate :math:`\alpha`.
        gamma: Discount of the estimators and of :math:`J` (1 = the job's reported return).
        reduction: The estimators' reduction (``"mean"``: :math:`\kappa = 1/T`, the job's scale).
        baseline: One of :data:`BASELINES`.
        lam: λ of the surrogate/LVC advantages (1 = unbiased first derivative).
    """

    model: nn.Module
    tasks: TaskBatch
    horizon: int = 10
    lr: float = 1.0
    gamma: float = 1.0
    reduction: str = "mean"
    baseline: str = "exact"
    lam: float = 1.0
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(self.model).__name__}")
        if not isinstance(self.tasks, TaskBatch):
            raise TypeError(f"tasks must be a TaskBatch, got {type(self.tasks).__name__}")
        self.tasks = self.tasks.validate().to(F64)
        check_int("horizon", self.horizon, low=1)
        check_real("lr", self.lr, low=0.0, low_open=True)
        check_real("gamma", self.gamma, low=0.0, high=1.0)
        check_choice("reduction", self.reduction, est.REDUCTIONS)
        check_choice("baseline", self.baseline, BASELINES)
        check_real("lam", self.lam, low=0.0, high=1.0)

    # -- basic quantities ----------------------------------------------------------------------------------
    @property
    def num_states(self) -> int:
        """:math:`S`."""
        return self.tasks.num_states

    @property
    def kappa(self) -> float:
        r""":math:`\kappa`: one SGD step follows :math:`\alpha\kappa\nabla J` in expectation."""
        return est.gradient_scale(self.reduction, self.horizon)

    def params(self) -> Params:
        r""":math:`\theta_0` by name (the model's own parameters)."""
        return dict(self.model.named_parameters())

    def logits(self, params: Params | None = None) -> Tensor:
        r"""The ``[S, A]`` logit table of ``params`` (default :math:`\theta_0`)."""
        return exact.policy_logits(self.model, params, num_states=self.num_states)

    def flat(self, grads: Sequence[Tensor | None]) -> Tensor:
        """Concatenate per-parameter gradients (``None`` = zeros) into one ``[P]`` vector."""
        return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                          for g, p in zip(grads, self.model.parameters(), strict=True)])

    def baseline_table(self) -> Tensor | None:
        r"""``[N, T, S]`` baseline values :math:`b_t(s)` at :math:`\theta_0` (``None`` for ``"none"``)."""
        if "baseline" not in self._cache:
            n, t, s = self.tasks.num_tasks, self.horizon, self.num_states
            with torch.no_grad():
                if self.baseline == "exact":
                    table = exact.action_values(self.tasks, self.logits(), horizon=t, gamma=self.gamma).v[:, :-1]
                elif self.baseline == "value":
                    out = self.model(torch.eye(s, dtype=F64))
                    if not isinstance(out, tuple | list) or len(out) < 2:
                        raise ValueError("baseline='value' needs a model returning (logits, values), e.g. ActorCritic")
                    table = out[1].reshape(1, 1, s).expand(n, t, s)
                else:
                    table = None
            self._cache["baseline"] = None if table is None else table.detach().clone()
        return self._cache["baseline"]

    # -- exact references ----------------------------------------------------------------------------------
    def exact_meta_gradient(self, estimator: str | None = None) -> Tensor:
        r"""Exact meta-gradient ``[P]``: :math:`g^\star` (``None``/``"dice"``) or the surrogate's/LVC's limit."""
        key = f"meta:{estimator}"
        if key not in self._cache:
            params = self.params()
            out = exact.exact_maml_return(
                self.logits, params, self.tasks, lr=self.lr, horizon=self.horizon, gamma=self.gamma,
                grad_scale=self.kappa, inner_estimator=estimator, lam=self.lam, values=self.baseline_table(),
            )
            grads = torch.autograd.grad(out.sum(), list(params.values()), allow_unused=True)
            self._cache[key] = self.flat(grads).detach()
        return self._cache[key]

    def task_gradients(self) -> list[Params]:
        r"""Per task, :math:`\nabla J_n(\theta_0)` by parameter name (exact, detached; zeros where unused)."""
        if "task_grads" not in self._cache:
            params = self.params()
            j = exact.expected_return(self.tasks, self.logits(params), horizon=self.horizon, gamma=self.gamma)
            out = []
            for n in range(self.tasks.num_tasks):
                grads = torch.autograd.grad(j[n], list(params.values()), retain_graph=True, allow_unused=True)
                out.append({k: (torch.zeros_like(params[k]) if g is None else g).detach()
                            for k, g in zip(params, grads, strict=True)})
            self._cache["task_grads"] = out
        return self._cache["task_grads"]

    def exact_inner_steps(self) -> Tensor:
        r""":math:`\alpha\kappa\nabla J_n(\theta_0)` per task, flattened and concatenated over tasks, ``[N P]``."""
        return torch.cat([self.flat(list(g.values())) * (self.lr * self.kappa) for g in self.task_gradients()])

    def outer_linearization(self) -> list[Params]:
        r"""Per task, the slope :math:`\nabla J_n(\bar\theta'_n)` of the linearized outer objective (detached).

        :math:`\bar\theta'_n = \theta_0 + \alpha\kappa\nabla J_n(\theta_0)` is the expected inner step.
        """
        if "linear" not in self._cache:
            params = self.params()
            out = []
            for n, grads in enumerate(self.task_gradients()):
                bar = {k: (params[k] + self.lr * self.kappa * g).detach().requires_grad_() for k, g in grads.items()}
                j_bar = exact.expected_return(self.tasks.select(n), self.logits(bar), horizon=self.horizon,
                                              gamma=self.gamma).sum()
                slope = torch.autograd.grad(j_bar, list(bar.values()), allow_unused=True)
                out.append({k: (torch.zeros_like(bar[k]) if g is None else g).detach()
                            for k, g in zip(bar, slope, strict=True)})
            self._cache["linear"] = out
        return self._cache["linear"]

    # -- the sampled inner loop ----------------------------------------------------------------------------
    def inner_loop(self, estimator: str) -> InnerLoop:
        """One SGD step on the estimator's loss (policy term only; the value head does not move)."""
        check_choice("estimator", estimator, tuple(est.ESTIMATORS))
        s = self.num_states

        def loss(params: Params, batch: dict[str, Tensor], state: Any) -> Tensor:
            logp = torch.log_softmax(exact.policy_logits(self.model, params, num_states=s), -1)
            log_probs = logp[batch["states"], batch["actions"]]
            return est.policy_loss(estimator, log_probs, batch["rewards"], batch["dones"], batch.get("values"),
                                   gamma=self.gamma, lam=self.lam, reduction=self.reduction)

        return InnerLoop(loss, steps=1)


def make_problem(
    *,
    policy: str = "network",
    num_tasks: int = 4,
    num_states: int = 10,
    num_actions: int = 5,
    hidden: int = 32,
    horizon: int = 10,
    lr: float = 1.0,
    gamma: float = 1.0,
    reduction: str = "mean",
    baseline: str = "exact",
    seed: int = 0,
) -> EstimatorProblem:
    r"""Build the study's problem: tasks from ``sample_tasks(seed=seed + 1)``, :math:`\theta_0` from ``seed``.

    Args:
        policy: ``"network"`` (:class:`metaopt.rl.ActorCritic` with ``hidden`` units, ``torch.manual_seed(seed)``
            init, the job's network) or ``"tabular"`` (:class:`metaopt.exact.TabularPolicy` with standard-normal
            logits from ``seed``).
        num_tasks: Number of fixed tasks.
        num_states: :math:`S`.
        num_actions: :math:`A`.
        hidden: Hidden width of the network.
        horizon: :math:`T`.
        lr: Inner SGD rate :math:`\alpha`.
        gamma: Discount.
        reduction: Estimator reduction.
        baseline: One of :data:`BASELINES`.
        seed: Seed.

    Returns:
        An :class:`EstimatorProblem`.
    """
    check_choice("policy", policy, ("network", "tabular"))
    seed = check_int("seed", seed, low=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if policy == "network":
            from metaopt.rl import ActorCritic  # the job's network (imported here: verify does not need the job)

            model: nn.Module = ActorCritic(num_states, num_actions, check_int("hidden", hidden, low=1)).to(F64)
        else:
            model = exact.TabularPolicy(num_states, num_actions, torch.randn(num_states, num_actions, dtype=F64))
    tasks = sample_tasks(num_tasks, num_states=num_states, num_actions=num_actions, seed=seed + 1)
    return EstimatorProblem(model, tasks, horizon=horizon, lr=lr, gamma=gamma, reduction=reduction, baseline=baseline)


# ------------------------------------------------------------------------------------------------ sampling
@dataclass
class SampledMetaGradients:
    r"""Per-repeat samples of one estimator at one ``N``.

    Attributes:
        meta_gradients: ``[R, P]`` sampled meta-gradients :math:`\hat g` (summed over tasks).
        linearized: ``[R, P]`` meta-gradients of the outer objective linearized at the expected step,
            :math:`\nabla_{\theta_0} \sum_n \nabla J_n(\bar\theta'_n) \cdot \theta'_n
            = \sum_n (I - \alpha \nabla^2 \hat L_n) \nabla J_n(\bar\theta'_n)`: no Jensen gap, so its mean is
            :math:`g^\star` exactly for DiCE at every :math:`N` (and the exact limit for the others).
        inner_steps: ``[R, N_tasks P]`` :math:`\theta'_n - \theta_0`, concatenated over tasks.
        seconds: Wall time of the adaptation and meta-gradient (rollouts excluded), all repeats.
    """

    meta_gradients: Tensor
    linearized: Tensor
    inner_steps: Tensor
    seconds: float


def sample_meta_gradients(
    problem: EstimatorProblem,
    estimators: Sequence[str],
    num_trajectories: int,
    repeats: int,
    *,
    engine: str = "func",
    seed: int = 0,
) -> tuple[dict[str, SampledMetaGradients], float]:
    """Draw ``repeats`` sampled meta-gradients per estimator; all estimators share each repeat's trajectories.

    Args:
        problem: The problem.
        estimators: Names from :data:`metaopt.estimators.ESTIMATORS`.
        num_trajectories: :math:`N` inner trajectories per task.
        repeats: :math:`R`.
        engine: Meta-gradient engine for :func:`metaopt.engines.adapt`.
        seed: Seed of the rollout noise (the repeats draw from one generator seeded with ``seed``).

    Returns:
        ``({estimator: SampledMetaGradients}, rollout_seconds)``.
    """
    for e in estimators:
        check_choice("estimators", e, tuple(est.ESTIMATORS))
    n_traj, repeats = check_int("num_trajectories", num_trajectories, low=1), check_int("repeats", repeats, low=2)
    check_choice("engine", engine, ENGINES)
    gen = torch.Generator().manual_seed(check_int("seed", seed, low=0))
    sim = BatchedTabularMDP(problem.tasks, problem.horizon, dtype=F64)
    meta = MetaParameters(lr=problem.lr, dtype=F64)
    loops = {e: problem.inner_loop(e) for e in estimators}
    params = list(problem.model.parameters())
    baseline = problem.baseline_table()
    slopes = problem.outer_linearization()
    times = dict.fromkeys(estimators, 0.0)
    meta_grads: dict[str, list[Tensor]] = {e: [] for e in estimators}
    linear: dict[str, list[Tensor]] = {e: [] for e in estimators}
    steps: dict[str, list[Tensor]] = {e: [] for e in estimators}
    rollout_s = 0.0
    t_idx = torch.arange(problem.horizon)[:, None]
    table = problem.logits().detach()  # pi_theta0, the same for every repeat

    def policy(obs: Tensor) -> Tensor:
        return obs @ table

    for _ in range(repeats):
        start = time.perf_counter()
        traj = sim.rollout(policy, sim.draw_noise(n_traj, generator=gen))
        assert traj.states is not None  # a TabularMDP rollout
        batches = []
        for n in range(problem.tasks.num_tasks):
            b = {"states": traj.states[:, n], "actions": traj.actions[:, n], "rewards": traj.rewards[:, n],
                 "dones": traj.dones[:, n]}
            if baseline is not None:
                b["values"] = baseline[n][t_idx, traj.states[:, n]]
            batches.append(b)
        rollout_s += time.perf_counter() - start
        for e in estimators:
            start = time.perf_counter()
            adapted = [adapt(problem.model, loops[e], b, meta, engine=engine).params for b in batches]
            logits = torch.stack([problem.logits(p) for p in adapted])
            outer = exact.expected_return(problem.tasks, logits, horizon=problem.horizon, gamma=problem.gamma).sum()
            grads = torch.autograd.grad(outer, params, retain_graph=True, allow_unused=True)
            meta_grads[e].append(problem.flat(grads).detach())
            outer_lin = torch.stack([(slope[k] * p[k]).sum() for slope, p in zip(slopes, adapted, strict=True)
                                     for k in slope]).sum()
            linear[e].append(problem.flat(torch.autograd.grad(outer_lin, params, allow_unused=True)).detach())
            theta0 = problem.params()
            steps[e].append(torch.cat([torch.cat([(p[k] - theta0[k]).detach().reshape(-1) for k in theta0])
                                       for p in adapted]))
            times[e] += time.perf_counter() - start
    out = {e: SampledMetaGradients(torch.stack(meta_grads[e]), torch.stack(linear[e]), torch.stack(steps[e]),
                                   times[e]) for e in estimators}
    return out, rollout_s


# ------------------------------------------------------------------------------------------------ catalogue rows
class CheckSettings(NamedTuple):
    r"""Settings of the fast ``metaopt verify`` rows (:func:`check_estimators`): a tabular policy on two small tasks.

    Attributes:
        num_states: :math:`S`.
        num_actions: :math:`A`.
        horizon: :math:`T`.
        lr: Inner SGD rate :math:`\alpha`.
        trajectories: :math:`N` inner trajectories per task.
        repeats: :math:`R`.
        z: Width of the pass band in standard errors.
    """

    num_states: int = 4
    num_actions: int = 3
    horizon: int = 5
    lr: float = 2.0
    trajectories: int = 2000
    repeats: int = 60
    z: float = 4.0


#: The settings :func:`check_estimators` runs with.
CHECK_SETTINGS = CheckSettings()


def check_estimators(engines: Sequence[str]) -> list[CheckResult]:
    r"""Rows for ``metaopt verify``: each estimator's promised property, through each engine.

    Problem: a :class:`metaopt.exact.TabularPolicy` (standard-normal logits) on two small tasks
    (:data:`CHECK_SETTINGS`), exact baseline :math:`V_t(s)`, :math:`\gamma = 1`, ``reduction="mean"``; per
    engine ``repeats`` sampled inner steps of ``trajectories`` trajectories per task (the same rollouts for
    every engine and estimator). A statistical row passes when the mean of the samples lies within
    :math:`z \cdot \|\text{se}\|` of the exact value (the ``tolerance`` column holds
    :math:`z \|\text{se}\| / \|\text{reference}\|`, so ``rel_error <= tolerance`` is the criterion); the
    surrogate's bias row inverts it: ``rel_error`` there is :math:`z \|\text{se}\| / \|\bar g - g^\star\|`
    and must be :math:`\le 1` (the bias exceeds :math:`z` standard errors).

    Rows per engine:

    * ``lvc: mean inner step vs lr*kappa*grad J`` — LVC's first derivative is unbiased;
    * ``dice: mean meta-gradient vs exact`` — DiCE's meta-gradient at large :math:`N` is within its CI;
    * ``dice: mean linearized meta-gradient vs exact`` — with the outer objective linearized at the expected
      step (no Jensen gap) DiCE is unbiased at every :math:`N`;
    * ``surrogate: z*SE / |bias| of meta-gradient`` — the surrogate's bias lies outside its CI;
    * ``surrogate|lvc: mean meta-gradient vs exact limit`` — each biased estimator converges to the limit
      :func:`metaopt.exact.exact_maml_return` predicts (``inner_estimator=``).
    """
    cfg = CHECK_SETTINGS
    name, z = "estimators", cfg.z
    with torch.random.fork_rng(devices=[]):
        problem = make_problem(policy="tabular", num_tasks=2, num_states=cfg.num_states,
                               num_actions=cfg.num_actions, horizon=cfg.horizon, lr=cfg.lr, seed=3)
    exact_g = problem.exact_meta_gradient(None)
    limits = {e: problem.exact_meta_gradient(e) for e in ("surrogate", "lvc")}
    exact_steps = problem.exact_inner_steps()
    note = (f"N={cfg.trajectories} trajectories/task, R={cfg.repeats} repeats, tabular S={cfg.num_states} "
            f"A={cfg.num_actions} T={cfg.horizon}, lr={cfg.lr}; tolerance = {z:g}*||SE||/||reference||")
    rows: list[CheckResult] = []
    for engine in engines:
        samples, _ = sample_meta_gradients(problem, ("surrogate", "lvc", "dice"), cfg.trajectories, cfg.repeats,
                                           engine=engine, seed=11)

        def within(quantity: str, x: Tensor, ref: Tensor, _engine: str = engine) -> CheckResult:
            se = float((x.std(0) / math.sqrt(x.shape[0])).norm())
            return _row(name, _engine, quantity, x.mean(0), ref, z * se / float(ref.norm()), note)

        rows.append(within("lvc: mean inner step vs lr*kappa*grad J", samples["lvc"].inner_steps, exact_steps))
        rows.append(within("dice: mean meta-gradient vs exact", samples["dice"].meta_gradients, exact_g))
        rows.append(within("dice: mean linearized meta-gradient vs exact", samples["dice"].linearized, exact_g))
        sur = samples["surrogate"].meta_gradients
        se = float((sur.std(0) / math.sqrt(sur.shape[0])).norm())
        bias = float((sur.mean(0) - exact_g).norm())
        ratio = z * se / max(bias, 1e-300)
        rows.append(CheckResult(name, engine, "surrogate: z*SE / |bias| of meta-gradient", float(sur.mean(0).norm()),
                                float(exact_g.norm()), ratio, 1.0, bool(ratio <= 1.0),
                                f"rel_error column = {z:g}*||SE|| / ||mean - exact||; <= 1 means the bias is "
                                f"outside the CI (biased for every N); {note}"))
        for e in ("surrogate", "lvc"):
            rows.append(within(f"{e}: mean meta-gradient vs exact limit", samples[e].meta_gradients, limits[e]))
    return rows
