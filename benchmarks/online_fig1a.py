"""Fig. 1a with beta and lr learned online, against a fixed (beta, lr) grid on the same seeds and targets.

``python benchmarks/online_fig1a.py [--seeds 20] [--steps 5000] [--out benchmarks/results] [--configs a,b]``

Runs ``metaopt.experiments.popart_regression.run_experiment`` for every cell of a fixed grid of PopArt's
``(beta, lr)`` and for each online configuration (:data:`CONFIGS`), all seeds vectorized, and scores every run by
``rmse_inliers`` (each seed's RMSE over all samples except the outliers, median over seeds; 10-90 percentiles).
Writes ``<out>/online_fig1a.json`` and ``<out>/online_fig1a.md`` and prints the markdown. Targets (issue 19):
started far off, learned values within 15% of the best grid cell; started at the paper's values, no worse than the
paper's fixed cell by more than 5%.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from metaopt.artifacts import write_json
from metaopt.experiments.popart_regression import run_experiment

LOG_BETAS = (-3.0, -2.0, -1.5, -1.0, -0.5, -0.2)
LOG_LRS = (-3.5, -3.0, -2.75, -2.5, -2.25, -2.0)
PAPER = (-0.5, -2.5)  # log10 beta, log10 lr
FAR = (-3.0, -3.5)
#: name -> (start (log10 beta, log10 lr), keyword arguments of run_experiment)
CONFIGS: dict[str, tuple[tuple[float, float], dict[str, Any]]] = {
    "far": (FAR, {}),
    "paper-start": (PAPER, {}),
    "far-no-carry": (FAR, {"carry": False}),
    "far-normalized": (FAR, {"reattach": "normalized"}),
    "far-rms": (FAR, {"meta_scale": "rms"}),
    "far-normalized-rms": (FAR, {"reattach": "normalized", "meta_scale": "rms"}),
    "far-forward": (FAR, {"mode": "forward"}),
    "paper-start-forward": (PAPER, {"mode": "forward"}),
    "far-forward-rms": (FAR, {"mode": "forward", "meta_scale": "rms"}),
    "far-k50": (FAR, {"truncation": 50}),
    "far-normalized-k50": (FAR, {"reattach": "normalized", "truncation": 50}),
    "far-meta-lr-0.1": (FAR, {"meta_lr": 0.1}),
    "far-normalized-meta-lr-0.1": (FAR, {"reattach": "normalized", "meta_lr": 0.1}),
}


def _run(seeds: int, steps: int, log_beta: float, log_lr: float, **kw: Any) -> dict[str, Any]:
    start = time.perf_counter()
    res = run_experiment(seeds, steps, "popart", beta=10**log_beta, lr=10**log_lr, **kw)
    hyper = res.final_hyper("popart")
    diverged = int((~torch.isfinite(res.squared_errors["popart"])).any(1).sum())
    return {"rmse_inliers": res.rmse_inliers("popart"), "final_rmse": res.final("popart")["median"],
            "beta": hyper["beta"], "lr": hyper["lr"], "diverged_seeds": diverged,
            "wall_time_s": time.perf_counter() - start}


def _fmt(r: dict[str, float]) -> str:
    return f"{r['median']:.1f} ({r['p10']:.1f}–{r['p90']:.1f})"


def render(res: dict[str, Any]) -> str:
    """The markdown report of a results dict."""
    lines = [f"Fig. 1a, PopArt: `rmse_inliers` (median over {res['seeds']} seeds of each seed's RMSE over all "
             f"{res['steps']} samples except the outliers; 10–90 percentiles), float32, seeds "
             f"{res['seed']}–{res['seed'] + res['seeds'] - 1}. Command: `{res['command']}`"
             + "".join(f"; then `{c}`" for c in res.get("reruns", [])) + ".", "",
             "Fixed grid (rows log10 β, columns log10 lr):", "",
             "| log10 β \\ log10 lr | " + " | ".join(f"{x:g}" for x in res["log_lrs"]) + " |",
             "|---|" + "---|" * len(res["log_lrs"])]
    grid = {(c["log_beta"], c["log_lr"]): c for c in res["grid"]}
    best = res["best_cell"]
    for b in res["log_betas"]:
        cells = []
        for lr in res["log_lrs"]:
            v = grid[(b, lr)]["rmse_inliers"]["median"]
            cells.append(f"**{v:.1f}**" if (b, lr) == (best["log_beta"], best["log_lr"]) else f"{v:.1f}")
        lines.append(f"| {b:g} | " + " | ".join(cells) + " |")
    lines += ["", f"Best cell: log10 β = {best['log_beta']:g}, log10 lr = {best['log_lr']:g}: "
              f"{best['rmse_inliers']['median']:.1f}. Paper's cell (β = 10^-0.5, lr = 10^-2.5): "
              f"{res['paper_cell']['rmse_inliers']['median']:.1f}.", "",
              "Learned online (Adam on log lr and logit β, meta-lr 3e-2, truncation 10, Huber 1; final β and lr: "
              "median (10–90 percentiles) over seeds):", "",
              "| run | start log10 β, log10 lr | options | rmse_inliers | vs best cell | vs paper cell | final β | "
              "final lr | time s |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in res["learned"].items():
        m = r["rmse_inliers"]["median"]
        opts = ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "defaults"
        score = _fmt(r["rmse_inliers"])
        if r.get("diverged_seeds"):
            score += f", **{r['diverged_seeds']}/{res['seeds']} seeds diverged (NaN, counted as worst)**"
        lines.append(
            f"| {name} | {r['start'][0]:g}, {r['start'][1]:g} | {opts} | {score} | "
            f"{m / best['rmse_inliers']['median']:.3f} | {m / res['paper_cell']['rmse_inliers']['median']:.3f} | "
            f"{r['beta']['median']:.3g} ({r['beta']['p10']:.2g}–{r['beta']['p90']:.2g}) | "
            f"{r['lr']['median']:.3g} ({r['lr']['p10']:.2g}–{r['lr']['p90']:.2g}) | {r['wall_time_s']:.0f} |")
    lines += ["", "Targets: `far` within 15% of the best cell (ratio ≤ 1.15): "
              f"{res['targets']['far_within_15pct_of_best']}; `paper-start` no worse than the paper's cell by more "
              f"than 5% (ratio ≤ 1.05): {res['targets']['paper_start_within_5pct_of_paper']}. Grid wall time "
              f"{res['grid_wall_time_s']:.0f} s."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the flags, run the grid and the online configurations, write and print the results."""
    p = argparse.ArgumentParser(prog="benchmarks/online_fig1a.py", description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--configs", default="far,paper-start,far-no-carry,far-normalized,far-rms,far-normalized-rms,"
                   "far-forward,paper-start-forward",
                   help=f"comma list of {sorted(CONFIGS)}")
    p.add_argument("--no-grid", action="store_true", help="skip the grid (only with an existing results file)")
    args = p.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    bad = [c for c in configs if c not in CONFIGS]
    if bad or args.seeds < 1 or args.steps < 1:
        print(f"benchmarks/online_fig1a.py: error: --configs must name items of {sorted(CONFIGS)} (got {bad}); "
              f"--seeds and --steps must be >= 1", file=sys.stderr)
        return 2
    out = Path(args.out)
    path = out / "online_fig1a.json"
    torch.set_num_threads(1)
    common = {"seed": args.seed}
    if args.no_grid:
        res = json.loads(path.read_text())
    else:
        start = time.perf_counter()
        grid = []
        for b in LOG_BETAS:
            for lr in LOG_LRS:
                r = _run(args.seeds, args.steps, b, lr, **common)
                grid.append({"log_beta": b, "log_lr": lr, **r})
                print(f"grid beta=10^{b:g} lr=10^{lr:g}: {r['rmse_inliers']['median']:.1f}", file=sys.stderr,
                      flush=True)
        res = {"seeds": args.seeds, "steps": args.steps, "seed": args.seed, "log_betas": list(LOG_BETAS),
               "log_lrs": list(LOG_LRS), "grid": grid, "grid_wall_time_s": time.perf_counter() - start,
               "learned": {}}
    command = "python benchmarks/online_fig1a.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.no_grid:  # a rerun of some configurations on the stored grid: keep the original command, log the rerun
        res.setdefault("reruns", []).append(command)
    else:
        res["command"] = command
    res["torch"] = torch.__version__
    for name in configs:
        (b, lr), kw = CONFIGS[name]
        r = _run(args.seeds, args.steps, b, lr, learn=("beta", "lr"), **kw, **common)
        res["learned"][name] = {"start": [b, lr], "options": kw, **r}
        print(f"learned {name}: {r['rmse_inliers']['median']:.1f} beta {r['beta']['median']:.3g} lr "
              f"{r['lr']['median']:.3g} ({r['wall_time_s']:.0f} s)", file=sys.stderr, flush=True)
    cells = {(c["log_beta"], c["log_lr"]): c for c in res["grid"]}
    best = min(res["grid"], key=lambda c: c["rmse_inliers"]["median"])
    res["best_cell"], res["paper_cell"] = best, cells[PAPER]
    learned = res["learned"]
    res["targets"] = {
        "far_within_15pct_of_best": None if "far" not in learned else
        learned["far"]["rmse_inliers"]["median"] <= 1.15 * best["rmse_inliers"]["median"],
        "paper_start_within_5pct_of_paper": None if "paper-start" not in learned else
        learned["paper-start"]["rmse_inliers"]["median"] <= 1.05 * cells[PAPER]["rmse_inliers"]["median"],
    }
    assert all(math.isfinite(c["rmse_inliers"]["median"]) for c in res["grid"])
    md = render(res)
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, res)
    (out / "online_fig1a.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
