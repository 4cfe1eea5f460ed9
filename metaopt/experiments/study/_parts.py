"""The study's settings and its parts: which runs each part trains.

* ``meta-lr`` -- the outer learning rate of the log-space meta-parameters (``log_lr``, ``logit_beta``): PopArt-MAML
  with learned ``lr`` and ``beta`` on the scaled TabularMDP at each value of ``meta_lrs``;
* ``scale`` -- the headline: plain MAML with its inner lr swept over ``lrs`` at each ``K`` in ``baseline_steps`` (the
  tuned baseline), plain MAML with a learned lr, and PopArt-MAML with learned ``lr`` and ``beta`` (no sweep), trained
  on the scaled TabularMDP (``c = 10^U(-2, 3)``) and evaluated at each fixed scale ``c`` in ``scales``;
* ``interior`` -- a regime with few episodes per inner step (``interior_trajectories``), unscaled: plain MAML's lr
  sweep and a learned lr, with SGD and with Adam as the inner optimizer;
* ``estimators`` -- does the meta-policy-gradient estimator matter for learning? Plain MAML trained with the
  surrogate, DiCE and LVC inner losses (``estimators``), and with the exact meta-gradient of the exact MAML objective
  (:mod:`metaopt.exact`, the ceiling), on the reference TabularMDP and on the scaled one; evaluated with the sampled
  A2C adaptation and with the exact (infinitely many episodes) adaptation step;
* ``ablation`` -- the recommended PopArt-MAML with one of its defaults switched back: no debiasing, POP at the
  first step, the old meta-objective (normalized outer value loss, lr and beta following the total);
* ``beta`` -- what beta does in MAML: for each number of inner steps in ``beta_steps`` (each step on fresh episodes)
  and each per-step batch size in ``beta_trajectories``, PopArt-MAML on the scaled TabularMDP with ``beta`` fixed at
  each of ``betas`` against a learned ``beta`` (a per-parameter ``lr`` learned in every run); and, at the first
  ``K`` and the last batch size (the demo's), the learned-beta run with one shared ``lr`` (the configuration whose
  network died). Every run records its per-iteration meta-gradients of ``logit_beta`` and ``log_lr`` (their signal).
  Each regime runs with each statistics schedule of ``beta_statistics``: ``debiased`` (the recommended default,
  ``beta_t = beta / (1 - (1 - beta)^t)``: the first ART step sets the statistics to the first batch's) or
  ``constant`` (PopArt's Algorithm 1 as published: the statistics start at ``mu = 0, nu = 1`` and move by a constant
  ``beta``; the method names carry ``-constant``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from metaopt.experiments.study._runs import RunSpec
from metaopt.maml import MAMLConfig

__all__ = ["PARTS", "StudySettings", "QUICK", "build_runs"]

#: The study's parts, in the order they run (``--parts``).
PARTS = ("meta-lr", "scale", "interior", "beta", "estimators", "ablation")
#: Statistics schedules of the beta part: the ``debias`` value of each, and the suffix of its method names.
_STATISTICS = {"debiased": (True, ""), "constant": (False, "-constant")}
STATISTICS = tuple(_STATISTICS)


@dataclass
class StudySettings:
    """Settings of ``metaopt study``.

    Attributes:
        parts: Parts to run (comma list): meta-lr, scale, interior, beta, estimators, ablation.
        estimators: Meta-gradient estimators compared in the estimators part (exact: the exact-gradient ceiling).
        seeds: Seeds per configuration (the intervals are over seeds).
        iterations: Meta-iterations per run.
        tasks: Tasks per meta-iteration.
        trajectories: Episodes per task in each inner step and in the outer batch.
        inner_steps: Inner steps K of PopArt-MAML in the meta-lr and scale parts (the recommended configuration's).
        baseline_steps: Inner steps K of the plain-MAML sweeps in the scale part (the baseline gets its best K).
        lrs: Plain MAML's fixed inner learning rates (the swept baseline).
        scales: Reward scales c at which the scale and beta parts evaluate.
        meta_lrs: Outer learning rates of log_lr and logit_beta compared in the meta-lr part.
        meta_lr_seeds: Seeds per value in the meta-lr part.
        interior_trajectories: Episodes per inner step in the interior part.
        interior_optimizers: Inner optimizers of the interior part (each with its own sweep; Adam's steps have the
            size of the lr in every parameter, whatever the gradient's size).
        interior_lrs: Plain MAML's fixed inner learning rates in the interior part with SGD.
        interior_adam_lrs: The same with Adam.
        betas: Fixed PopArt step sizes compared with a learned beta in the beta part.
        beta_steps: Inner steps K of the beta part (each one regime).
        beta_trajectories: Episodes per inner step in the beta part (each one regime).
        beta_statistics: Statistics schedules of the beta part (each one regime): debiased (the recommended
            default) or constant (Algorithm 1's constant beta from mu = 0, nu = 1).
        beta_starts: Initial betas of the beta part's learned-beta runs (each its own method; a start other than
            0.1, MAMLConfig's default, appends -from<start> to the method's name).
        eval_tasks: Fixed test tasks (the same for every run).
        eval_repeats: Adaptations per test task in the evaluation (averaged).
        workers: Runs trained in parallel (one process each, one torch thread each).
        out: Output directory (results of finished runs are kept there and not repeated).
        quick: A tiny budget for a smoke test (a few iterations, two seeds, short sweeps).
        plot: Draw the study's PNG plots (--no-plot: skip them, no matplotlib needed).
    """

    parts: tuple[str, ...] = field(default=PARTS, metadata={"choices": PARTS})
    estimators: tuple[str, ...] = field(default=("surrogate", "dice", "lvc", "exact"),
                                        metadata={"choices": ("surrogate", "dice", "lvc", "exact")})
    seeds: int = 5
    iterations: int = 500
    tasks: int = 40
    trajectories: int = 20
    inner_steps: int = 2
    baseline_steps: tuple[int, ...] = (1, 2)
    lrs: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
    scales: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
    meta_lrs: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3)
    meta_lr_seeds: int = 3
    interior_trajectories: int = 5
    interior_optimizers: tuple[str, ...] = field(default=("sgd", "adam"), metadata={"choices": ("sgd", "adam")})
    interior_lrs: tuple[float, ...] = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 1000.0)
    interior_adam_lrs: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
    betas: tuple[float, ...] = (0.03, 0.1, 0.3, 0.6, 0.9)
    beta_steps: tuple[int, ...] = (2, 5)
    beta_trajectories: tuple[int, ...] = (5, 20)
    beta_statistics: tuple[str, ...] = field(default=("debiased",), metadata={"choices": STATISTICS})
    beta_starts: tuple[float, ...] = (0.1,)
    eval_tasks: int = 40
    eval_repeats: int = 4
    workers: int = 2
    out: str = "runs/study"
    quick: bool = False
    plot: bool = True


#: ``--quick``: what changes for a smoke test.
QUICK: dict[str, Any] = {
    "baseline_steps": (1,), "seeds": 2, "iterations": 3, "tasks": 4, "trajectories": 4, "lrs": (0.1, 10.0),
    "scales": (0.01, 100.0), "meta_lrs": (0.03,), "meta_lr_seeds": 1, "interior_lrs": (1.0, 10.0),
    "interior_adam_lrs": (0.1,), "betas": (0.1,), "beta_steps": (2,), "beta_trajectories": (4,),
    "eval_tasks": 4, "eval_repeats": 1, "workers": 1,
}


def build_runs(s: StudySettings) -> list[RunSpec]:
    """Every run of the selected parts, in a fixed order."""
    base = {"tasks": s.tasks, "trajectories": s.trajectories, "iterations": s.iterations, "eval_every": 0,
            "eval_tasks": 1}
    scaled = base | {"scaled": True}
    popart = {"popart": True, "learn": ("lr", "beta")}
    runs: list[RunSpec] = []

    def add(part: str, method: str, value: float | None, config: dict[str, Any], scales: tuple[float, ...],
            seeds: int, **kw: Any) -> None:
        for seed in range(seeds):
            runs.append(RunSpec(part, method, value, seed, config | {"seed": seed}, scales, s.eval_tasks,
                                eval_repeats=s.eval_repeats, **kw))

    if "meta-lr" in s.parts:
        for m in s.meta_lrs:
            add("meta-lr", "popart-maml", m, scaled | popart | {"inner_steps": s.inner_steps, "meta_lr": m},
                s.scales, s.meta_lr_seeds)
    if "scale" in s.parts:
        k = {"inner_steps": s.inner_steps}
        for steps in s.baseline_steps:
            for lr in s.lrs:
                add("scale", f"maml-K{steps}", lr, scaled | {"inner_steps": steps, "inner_lr": lr}, s.scales, s.seeds)
        add("scale", "maml-learned-lr", None, scaled | k | {"learn": ("lr",)}, s.scales, s.seeds)
        add("scale", "popart-maml", None, scaled | k | popart, s.scales, s.seeds)
        # one inner step (beta has no role there): how much of PopArt-MAML's gain needs the second step?
        add("scale", "popart-maml-K1-learned-lr", None, scaled | {"inner_steps": 1, "popart": True, "learn": ("lr",)},
            s.scales, s.seeds)
    if "interior" in s.parts:
        few = base | {"trajectories": s.interior_trajectories, "inner_steps": 1}
        for opt in s.interior_optimizers:
            tag = "" if opt == "sgd" else "-adam"
            for lr in s.interior_lrs if opt == "sgd" else s.interior_adam_lrs:
                add("interior", f"maml{tag}", lr, few | {"inner_lr": lr, "inner_optimizer": opt}, (1.0,), s.seeds)
            add("interior", f"maml{tag}-learned-lr", None, few | {"learn": ("lr",), "inner_optimizer": opt}, (1.0,),
                s.seeds)
    if "beta" in s.parts:
        per = popart | {"lr_per_parameter": True}
        for stats in s.beta_statistics:
            debias, suffix = _STATISTICS[stats]
            for steps in s.beta_steps:
                for traj in s.beta_trajectories:
                    k = scaled | {"inner_steps": steps, "trajectories": traj, "debias": debias}
                    tag = f"K{steps}-T{traj}{suffix}"
                    for b in s.betas:
                        add("beta", f"fixed-beta-{tag}", b, k | per | {"learn": ("lr",), "beta": b}, s.scales,
                            s.seeds)
                    for start in s.beta_starts:
                        # runs from MAMLConfig's default beta keep the names of the committed study
                        name = f"learned-beta-{tag}" + ("" if start == MAMLConfig.beta else f"-from{start:g}")
                        add("beta", name, None, k | per | {"beta": start}, s.scales, s.seeds)
            k = scaled | {"inner_steps": s.beta_steps[0], "trajectories": s.beta_trajectories[-1], "debias": debias}
            add("beta", f"learned-beta-shared-lr-K{s.beta_steps[0]}-T{s.beta_trajectories[-1]}{suffix}", None,
                k | popart, s.scales, s.seeds)
    if "ablation" in s.parts:
        rec = scaled | popart | {"inner_steps": s.inner_steps}
        for name, change in (("no-debias", {"debias": False}), ("first-pop", {"first_pop": True}),
                             ("old-objective", {"outer_value": "normalized", "lr_objective": "total",
                                                "beta_objective": "total"})):
            add("ablation", f"popart-maml-{name}", None, rec | change, s.scales, s.seeds)
    if "estimators" in s.parts:
        for env, cfg, scales in (("reference", base, (1.0,)), ("scaled", scaled, s.scales)):
            for e in s.estimators:
                trainer = "exact" if e == "exact" else "job"
                config = cfg | {"inner_steps": 1} | ({} if e == "exact" else {"estimator": e})
                add("estimators", f"{env}-{e}", None, config, scales, s.seeds, trainer=trainer, limit=True)
    return runs
