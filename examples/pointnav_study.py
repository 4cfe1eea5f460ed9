"""Scaled 2D navigation: PopArt-MAML learning lr and beta vs plain MAML with its inner lr swept.

Every run trains ``MetaLearner`` on ``env="pointnav2d", scaled=True`` (rewards x c, c = 10^U(-2, 3)) and is then
evaluated on the same fixed test tasks: the post-adaptation return divided by each task's c (normalized, so
scales are comparable), per task. Plain MAML's lr is chosen after the fact by its mean normalized return (a choice
that favours the baseline). Reported, over seeds, with 95% t-intervals: the mean normalized post-adaptation
return, per scale bin of log10 c, and the gain of PopArt-MAML over the best plain lr per bin and in the worst bin.
A run whose loss or meta-gradient becomes non-finite is recorded as failed (its return: none).

Writes ``<out>/results.json`` (every run's per-task values) and ``<out>/report.md``::

    python examples/pointnav_study.py --seeds 5 --iterations 60 --out results/pointnav-study
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

from metaopt.maml import MAMLConfig, MetaLearner, NonFiniteError

#: t_{0.975, df} for small samples (95% two-sided intervals).
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
BINS = [(-2.0, -1.0), (-1.0, 0.0), (0.0, 1.0), (1.0, 2.0), (2.0, 3.0)]


def run_one(method: str, lr: float, seed: int, args: argparse.Namespace) -> dict:
    """Train one configuration and evaluate it per test task."""
    popart = method == "popart-maml"
    cfg = MAMLConfig(env="pointnav2d", scaled=True, popart=popart, learn=("lr", "beta") if popart else (),
                     inner_lr=lr, tasks=args.tasks, trajectories=args.trajectories, iterations=args.iterations,
                     horizon=args.horizon, hidden=args.hidden, activation="tanh", eval_tasks=args.eval_tasks,
                     seed=seed, eval_every=0)
    learner = MetaLearner(cfg)
    t0, status = time.perf_counter(), "ok"
    try:
        while learner.iteration < cfg.iterations:
            learner.step()
    except NonFiniteError as err:
        status = f"failed at iteration {err.iteration}: non-finite"
    out = {"method": method, "lr": lr, "seed": seed, "status": status, "seconds": time.perf_counter() - t0}
    if status != "ok":
        return out
    tasks = learner.test_tasks
    gen = torch.Generator().manual_seed(10_007 + seed)
    inner = tuple(learner.env.draw_noise(args.eval_tasks, args.trajectories, generator=gen)
                  for _ in range(cfg.num_inner_steps))
    r = learner.adapt_and_rollout(tasks, inner, learner.env.draw_noise(args.eval_tasks, args.trajectories,
                                                                       generator=gen), "func")
    assert r.post is not None
    scales = tasks.scales.double()
    post = r.post.rewards.double().sum(0).mean(-1) / scales
    pre = r.pre.rewards.double().sum(0).mean(-1) / scales
    out |= {"post_norm": post.tolist(), "pre_norm": pre.tolist(), "log10_scale": scales.log10().tolist(),
            "final_lr": float(learner.meta.summary().get("lr", lr)),
            "final_beta": float(learner.meta.summary().get("beta", float("nan")))}
    if not all(math.isfinite(v) for v in out["post_norm"]):
        out["status"] = "failed: non-finite evaluation"
    return out


def mean_ci(xs: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval (nan for fewer than 2 values)."""
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, float("nan")
    return m, T975.get(len(xs) - 1, 1.96) * statistics.stdev(xs) / math.sqrt(len(xs))


def per_bin(run: dict) -> list[float]:
    """Mean normalized post-adaptation return of the run's test tasks in each scale bin."""
    out = []
    for lo, hi in BINS:
        vals = [v for v, s in zip(run["post_norm"], run["log10_scale"], strict=True) if lo <= s < hi or
                (hi == BINS[-1][1] and s == hi)]
        out.append(statistics.fmean(vals) if vals else float("nan"))
    return out


def report(runs: list[dict], args: argparse.Namespace) -> str:
    """The markdown report of all runs."""
    lines = ["# Scaled 2D navigation: PopArt-MAML (learned lr, beta) vs plain MAML (lr swept)", "",
             "Settings: " + ", ".join(f"{k}={v}" for k, v in vars(args).items() if k not in ("out", "report_only")),
             "", f"Command: `python examples/pointnav_study.py --seeds {args.seeds} --iterations {args.iterations} "
             f"--tasks {args.tasks} --trajectories {args.trajectories} --horizon {args.horizon} --hidden {args.hidden} "
             f"--eval-tasks {args.eval_tasks} --plain-lrs {args.plain_lrs}` (one thread per run; the PopArt runs "
             "take K = 2 inner steps, plain MAML K = 1, MAMLConfig's defaults otherwise).", "",
             "Mean normalized post-adaptation return on the fixed test tasks (return / c; higher is better), "
             "mean over seeds with 95% t-intervals; failed = non-finite loss or meta-gradient.", "",
             "| method | inner lr | ok / seeds | pre return (norm) | post return (norm) | " +
             " | ".join(f"log10 c in [{lo:g},{hi:g})" for lo, hi in BINS) + " |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(BINS)]
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["method"], r["lr"]), []).append(r)
    summary: dict[tuple[str, float], dict] = {}
    for (method, lr), rs in sorted(groups.items()):
        ok = [r for r in rs if r["status"] == "ok"]
        cells = [f"{method}", f"{lr:g}", f"{len(ok)} / {len(rs)}"]
        if ok:
            pm, ph = mean_ci([statistics.fmean(r["pre_norm"]) for r in ok])
            m, h = mean_ci([statistics.fmean(r["post_norm"]) for r in ok])
            bins = [mean_ci([per_bin(r)[b] for r in ok]) for b in range(len(BINS))]
            cells += [f"{pm:.2f} ± {ph:.2f}", f"{m:.2f} ± {h:.2f}"] + [f"{bm:.2f} ± {bh:.2f}" for bm, bh in bins]
            summary[(method, lr)] = {"ok": ok, "mean": m, "seeds": len(rs)}
        else:
            cells += ["failed"] * (2 + len(BINS))
        lines.append("| " + " | ".join(cells) + " |")
    plain = {k: v for k, v in summary.items() if k[0] == "plain-maml" and len(v["ok"]) == v["seeds"]}
    ours = [v for k, v in summary.items() if k[0] == "popart-maml"]
    lines += [""]
    if plain and ours:
        best = max(plain, key=lambda k: plain[k]["mean"])
        a = {r["seed"]: r for r in ours[0]["ok"]}
        b = {r["seed"]: r for r in plain[best]["ok"]}
        seeds = sorted(set(a) & set(b))
        lines += [f"Gain of PopArt-MAML over plain MAML at its best lr ({best[1]:g}, chosen among the lrs whose every "
                  f"seed finished), paired by seed ({len(seeds)} seeds):", "",
                  "| scale bin | gain (norm. return) | 95% interval |", "|---|---:|---:|"]
        diffs_all = [statistics.fmean(a[s]["post_norm"]) - statistics.fmean(b[s]["post_norm"]) for s in seeds]
        m, h = mean_ci(diffs_all)
        lines.append(f"| all | {m:+.3f} | [{m - h:+.3f}, {m + h:+.3f}] |")
        worst = None
        for i, (lo, hi) in enumerate(BINS):
            d = [per_bin(a[s])[i] - per_bin(b[s])[i] for s in seeds]
            m, h = mean_ci(d)
            lines.append(f"| log10 c in [{lo:g},{hi:g}) | {m:+.3f} | [{m - h:+.3f}, {m + h:+.3f}] |")
            worst = m if worst is None or m < worst else worst
        lines += ["", f"Worst-scale gain (the smallest per-bin mean gain): {worst:+.3f}."]
    else:
        lines.append("No paired comparison: no plain-MAML lr finished on every seed, or no PopArt-MAML run finished.")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Parse the flags, run every configuration and seed, write the results and the report."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--iterations", type=int, default=60)
    p.add_argument("--tasks", type=int, default=10)
    p.add_argument("--trajectories", type=int, default=10)
    p.add_argument("--horizon", type=int, default=100)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--eval-tasks", type=int, default=40)
    p.add_argument("--plain-lrs", default="0.01,0.1,1.0")
    p.add_argument("--out", type=Path, default=Path("results/pointnav-study"))
    p.add_argument("--report-only", action="store_true", help="rewrite report.md from <out>/results.json")
    args = p.parse_args()
    if args.report_only:
        saved = json.loads((args.out / "results.json").read_text())
        for key, value in saved["settings"].items():
            if key not in ("out", "report_only"):
                setattr(args, key, value)
        (args.out / "report.md").write_text(report(saved["runs"], args))
        print((args.out / "report.md").read_text())
        return
    torch.set_num_threads(1)
    configs = [("popart-maml", 0.1)] + [("plain-maml", float(x)) for x in args.plain_lrs.split(",")]
    runs = []
    for seed in range(args.seeds):
        for method, lr in configs:
            r = run_one(method, lr, seed, args)
            print(f"{method:12s} lr={lr:<6g} seed={seed} {r['status']:>8s} {r['seconds']:.0f}s "
                  f"{statistics.fmean(r['post_norm']) if 'post_norm' in r else float('nan'):.3f}", flush=True)
            runs.append(r)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) for k, v in vars(args).items()}
    (args.out / "results.json").write_text(json.dumps({"settings": settings, "runs": runs}, indent=1))
    (args.out / "report.md").write_text(report(runs, args))
    print((args.out / "report.md").read_text())


if __name__ == "__main__":
    main()
