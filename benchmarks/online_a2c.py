"""RL lifetime: A2C+PopArt on a TabularMDP whose reward scale is redrawn every N updates; fixed grid vs learned online.

``python benchmarks/online_a2c.py [--seeds 5] [--updates 600] [--period 100] [--out benchmarks/results]``

Runs ``examples/online_a2c.py``'s lifetime (scale ``c = 10^U(-2, 3)`` redrawn every ``--period`` updates, 20
trajectories per update) for every cell of a fixed ``(beta, lr)`` grid and for beta and lr learned online from the
grid's centre, on the same seeds (task, scales and rollout noise). Score: the scale-normalized return (return / c of
the batch each update is about to train on), averaged over the lifetime; per scale decade and the worst decade.
Means over seeds with 95% t-intervals, and the learned run's paired difference to every cell. Writes
``<out>/online_a2c.{json,md}`` and prints the markdown.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metaopt.artifacts import write_json
from metaopt.experiments.study import t_interval

BETAS = (0.001, 0.01, 0.1)
LRS = (0.03, 0.1, 0.3)
START = (0.01, 0.1)


def _example() -> Any:
    path = Path(__file__).resolve().parents[1] / "examples" / "online_a2c.py"
    spec = importlib.util.spec_from_file_location("_online_a2c_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _ci(values: list[float]) -> dict[str, float]:
    mean, half = t_interval(values)
    half = 0.0 if math.isnan(half) else half
    return {"mean": mean, "lo": mean - half, "hi": mean + half}


def _score(rows: list[dict[str, float]]) -> dict[str, Any]:
    decades: dict[int, list[float]] = {}
    for r in rows:
        decades.setdefault(math.floor(math.log10(r["scale"])), []).append(r["normalized_return"])
    per = {d: statistics.fmean(v) for d, v in sorted(decades.items())}
    return {"lifetime": statistics.fmean(r["normalized_return"] for r in rows), "per_decade": per,
            "worst_decade": min(per.values()), "final_beta": rows[-1]["beta"], "final_lr": rows[-1]["lr"]}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the grid and the learned lifetimes, write and print the results."""
    p = argparse.ArgumentParser(prog="benchmarks/online_a2c.py", description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--updates", type=int, default=600)
    p.add_argument("--period", type=int, default=100)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    if args.seeds < 2 or args.updates < 1 or args.period < 1:
        print("benchmarks/online_a2c.py: error: --seeds must be >= 2, --updates and --period >= 1", file=sys.stderr)
        return 2
    ex = _example()
    configs: dict[str, dict[str, Any]] = {f"fixed b={b:g} lr={lr:g}": {"learn": "", "beta": b, "lr": lr}
                                          for b in BETAS for lr in LRS}
    configs["learned (start b=0.01 lr=0.1)"] = {"learn": "beta,lr", "beta": START[0], "lr": START[1]}
    runs: dict[str, Any] = {}
    for name, kw in configs.items():
        start = time.perf_counter()
        scores = [_score(ex.run(ex.Args(updates=args.updates, period=args.period, seed=s, **kw), log=False))
                  for s in range(args.seeds)]
        runs[name] = {"config": kw, "seeds": scores, "lifetime": _ci([s["lifetime"] for s in scores]),
                      "worst_decade": _ci([s["worst_decade"] for s in scores]),
                      "final_beta": statistics.median(s["final_beta"] for s in scores),
                      "final_lr": statistics.median(s["final_lr"] for s in scores),
                      "wall_time_s": time.perf_counter() - start}
        print(f"{name}: lifetime {runs[name]['lifetime']['mean']:.3f}", file=sys.stderr, flush=True)
    learned = runs["learned (start b=0.01 lr=0.1)"]
    for name, r in runs.items():
        diffs = [a["lifetime"] - b["lifetime"] for a, b in zip(learned["seeds"], r["seeds"], strict=True)]
        r["learned_minus_this"] = _ci(diffs) if name != "learned (start b=0.01 lr=0.1)" else None
    cmd = "python benchmarks/online_a2c.py " + " ".join(argv if argv is not None else sys.argv[1:])
    res = {"command": cmd, "seeds": args.seeds, "updates": args.updates, "period": args.period, "runs": runs}
    lines = [f"RL lifetime (A2C+PopArt, TabularMDP, reward scale 10^U(-2,3) redrawn every {args.period} of "
             f"{args.updates} updates, {args.seeds} seeds; mean and 95% t-interval over seeds). Command: `{cmd}`.", "",
             "| run | lifetime return / c | worst scale decade | learned − this (paired) | final β | final lr | "
             "time s |", "|---|---|---|---|---|---|---|"]
    for name, r in runs.items():
        lt, wd, d = r["lifetime"], r["worst_decade"], r["learned_minus_this"]
        dtxt = "–" if d is None else f"{d['mean']:+.3f} ({d['lo']:+.3f}, {d['hi']:+.3f})"
        lines.append(f"| {name} | {lt['mean']:.3f} ({lt['lo']:.3f}–{lt['hi']:.3f}) | {wd['mean']:.3f} "
                     f"({wd['lo']:.3f}–{wd['hi']:.3f}) | {dtxt} | {r['final_beta']:.3g} | {r['final_lr']:.3g} | "
                     f"{r['wall_time_s']:.0f} |")
    md = "\n".join(lines)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "online_a2c.json", res)
    (out / "online_a2c.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
