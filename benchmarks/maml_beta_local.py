"""Is a learned beta's MAML meta-gradient right? Exact local derivatives of the objective against the sampled one.

``python benchmarks/maml_beta_local.py [--seeds 3] [--iterations 300] [--out benchmarks/results]``

The study's beta part (``metaopt study --parts beta --beta-statistics constant``) finds that with PopArt's constant
beta (statistics moved from ``mu = 0, nu = 1``) a learned beta falls steadily while the fixed-beta grid is best at
large beta. This script asks why, at three points of the job's configuration (scaled TabularMDP, K = 2, T = 20,
per-parameter inner lr learned, float64):

* ``init``: the initial ``theta_0`` and lr at beta = 0.1;
* ``trained beta=0.1`` and ``trained beta=0.9``: ``theta_0`` and the lr after ``--iterations`` meta-iterations with
  beta fixed at that value.

At each point, for each schedule (``constant``, ``debiased``):

* **exact**: the central difference (``logit beta +- 0.3``) of the exact post-adaptation return
  ``J(theta') / c`` (:mod:`metaopt.exact`'s returns of the adapted policy, 40 fixed test tasks, mean over 16
  sampled adaptations with common random numbers), at each reward scale ``c`` and averaged over the scales (the
  study's weighting);
* **sampled**: the job's own meta-gradient ascent direction ``-d(outer loss)/dlogit beta`` (the terms
  ``beta_objective`` names), mean over ``--batches`` fresh training batches (random scales ``c = 10^U(-2, 3)``) at the
  same point, with a 95% t-interval.

The two agree in sign when the sampled meta-gradient points where the exact objective improves. Then, with the
constant schedule, **learned from two starts**: beta learned (with the lr) from beta = 0.1 and from beta = 0.9, the
final beta and the study's exact gain/c (``exact_gains``: 40 test tasks x 6 scales, 4 adaptations). Writes
``<out>/maml_beta_local.{json,md}`` and prints the markdown.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from metaopt.artifacts import write_json
from metaopt.envs import sample_tasks
from metaopt.experiments.study import exact_gains, t_interval
from metaopt.experiments.study._runs import TEST_SEED
from metaopt.maml import MAMLConfig, MetaLearner

SCALES = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
SCHEDULES = {"constant": False, "debiased": True}
POINTS = (("init", 0.1, False), ("trained beta=0.1", 0.1, True), ("trained beta=0.9", 0.9, True))
STEP = 0.3


def config(debias: bool, beta: float, learn: tuple[str, ...], seed: int, iterations: int) -> MAMLConfig:
    """The demo's configuration (K = 2, T = 20, per-parameter lr) with the given statistics schedule, in float64."""
    return MAMLConfig(popart=True, learn=learn, lr_per_parameter=True, scaled=True, inner_steps=2, trajectories=20,
                      tasks=40, beta=beta, debias=debias, seed=seed, iterations=iterations, eval_every=0,
                      eval_tasks=1, dtype="float64").validate()


def test_gains(learner: MetaLearner, repeats: int, seed: int) -> torch.Tensor:
    """The study's exact gain/c (``exact_gains``) on its 40 test tasks, ``[scale, task]``."""
    cfg = learner.cfg
    base = sample_tasks(40, num_states=cfg.num_states, num_actions=cfg.num_actions, seed=TEST_SEED)
    return exact_gains(learner, base, SCALES, trajectories=cfg.trajectories, repeats=repeats, seed=seed)


def exact_slope(learner: MetaLearner, repeats: int, seed: int) -> list[float]:
    """Central difference in ``logit beta`` of the exact ``J(theta') / c`` per scale (mean over the test tasks).

    ``J(theta_0)`` does not depend on beta, so this is the difference of :func:`test_gains` (common random numbers).
    """
    p = learner.meta.logit_beta
    with torch.no_grad():
        x0 = p.detach().clone()
        vals = []
        for d in (STEP, -STEP):
            p.copy_(x0 + d)
            vals.append(test_gains(learner, repeats, seed).mean(1))
        p.copy_(x0)
    return ((vals[0] - vals[1]) / (2 * STEP)).tolist()


def sampled_slopes(learner: MetaLearner, batches: int) -> list[float]:
    """``-d(outer loss)/dlogit beta`` of the job's meta-gradient on ``batches`` fresh training batches."""
    names = [n for n, _ in learner.named_parameters()]
    i = names.index("meta.logit_beta")
    out = []
    for _ in range(batches):
        g = learner.meta_gradient(learner.sample_iteration()).grads[i]
        out.append(-float(g))
    return out


def point(debias: bool, beta: float, trained: bool, seed: int, a: argparse.Namespace) -> dict[str, Any]:
    """One seed at one point: train with beta fixed (if ``trained``), then measure both slopes at beta."""
    probe = MetaLearner(config(debias, beta, ("lr", "beta"), seed, a.iterations))
    if trained:
        fixed = MetaLearner(config(debias, beta, ("lr",), seed, a.iterations))
        for _ in range(a.iterations):
            fixed.step()
        probe.model.load_state_dict(fixed.model.state_dict())
        with torch.no_grad():
            for name, t in probe.meta.log_lrs.items():
                t.copy_(fixed.meta.log_lrs[name])
    return {"exact": exact_slope(probe, a.repeats, seed), "sampled": sampled_slopes(probe, a.batches)}


def learned_from(beta: float, seed: int, a: argparse.Namespace) -> dict[str, float]:
    """Learn beta and the lr from ``beta`` (constant schedule): final beta and exact gain/c (mean over scales)."""
    learner = MetaLearner(config(False, beta, ("lr", "beta"), seed, a.iterations))
    for _ in range(a.iterations):
        learner.step()
    gains = test_gains(learner, 4, seed)
    return {"beta": float(torch.sigmoid(learner.meta.logit_beta.detach())), "gain": float(gains.mean()),
            "worst_gain": float(gains.mean(1).min())}


def markdown(res: dict[str, Any]) -> str:
    lines = ["# Is a learned beta's MAML meta-gradient right? (generated)", "",
             f"Command: `{res['command']}` ({res['wall_s']:.0f} s). Scaled TabularMDP, K = 2, T = 20, per-parameter "
             "lr, float64. exact: d(J(theta')/c)/dlogit beta by central differences (+-0.3) of the exact "
             "post-adaptation return, mean over seeds; sampled: the job's meta-gradient ascent direction "
             f"-d(outer loss)/dlogit beta over {res['batches']} fresh training batches per seed, mean ± 95% "
             "t-interval over all of them. Positive: a larger beta is better.", "",
             "| schedule | point | exact, mean over c | " + " | ".join(f"exact c={c:g}" for c in SCALES)
             + " | sampled | signs agree |", "|---|---|---|" + "---|" * len(SCALES) + "---|---|"]
    for r in res["rows"]:
        em = r["exact_mean"]
        sm, sh = r["sampled"]
        agree = "yes" if (em > 0) == (sm > 0) else "no"
        lines.append(f"| {r['schedule']} | {r['point']} | {em:+.4f} | "
                     + " | ".join(f"{x:+.4f}" for x in r["exact_by_scale"]) + f" | {sm:+.2e} ± {sh:.1e} | {agree} |")
    lines += ["", "Constant schedule, beta learned (with the lr) from two starts; exact gain/c, mean over scales, "
              "± 95% t-interval over seeds:", "", "| start | final beta (per seed) | gain/c | worst-c gain/c |",
              "|---|---|---|---|"]
    for r in res["starts"]:
        g, gh = r["gain"]
        w, wh = r["worst_gain"]
        lines.append(f"| {r['start']:g} | " + " / ".join(f"{b:.3g}" for b in r["beta"])
                     + f" | {g:+.3f} ± {gh:.3f} | {w:+.3f} ± {wh:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--repeats", type=int, default=16)
    p.add_argument("--batches", type=int, default=10)
    p.add_argument("--out", default="benchmarks/results")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rows = []
    for sched, debias in SCHEDULES.items():
        for name, beta, trained in POINTS:
            per_seed = [point(debias, beta, trained, s, a) for s in range(a.seeds)]
            by_scale = [statistics.fmean(x["exact"][j] for x in per_seed) for j in range(len(SCALES))]
            sampled = [v for x in per_seed for v in x["sampled"]]
            rows.append({"schedule": sched, "point": name, "beta": beta, "exact_by_scale": by_scale,
                         "exact_mean": statistics.fmean(by_scale), "sampled": t_interval(sampled),
                         "per_seed": per_seed})
            print(f"{sched} {name}: exact {statistics.fmean(by_scale):+.4f} sampled {t_interval(sampled)[0]:+.2e}",
                  file=sys.stderr, flush=True)
    starts = []
    for beta in (0.1, 0.9):
        per_seed = [learned_from(beta, s, a) for s in range(a.seeds)]
        starts.append({"start": beta, "beta": [x["beta"] for x in per_seed],
                       "gain": t_interval([x["gain"] for x in per_seed]),
                       "worst_gain": t_interval([x["worst_gain"] for x in per_seed])})
        print(f"learned from {beta}: {starts[-1]}", file=sys.stderr, flush=True)
    res = {"command": "python benchmarks/maml_beta_local.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "seeds": a.seeds, "iterations": a.iterations, "repeats": a.repeats, "batches": a.batches,
           "scales": list(SCALES), "wall_s": round(time.perf_counter() - t0, 1), "rows": rows, "starts": starts}
    out = Path(a.out)
    write_json(out / "maml_beta_local.json", res)
    md = markdown(res)
    (out / "maml_beta_local.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
