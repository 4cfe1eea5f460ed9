"""Scaled TabularMDP study: plain MAML vs PopArt-MAML (learned beta and inner lr) over several seeds.

Each task's rewards are multiplied by ``c = 10^u``, ``u ~ U(-2, 3)``, so returns span five orders of
magnitude. For every seed and method this trains ``metaopt``'s MAML-A2C job, then evaluates on the fixed
test tasks with fresh episodes and reports the *scale-normalized* adaptation gain
``mean_tasks((post - pre) / c)`` with a 95% confidence interval over seeds (Student t).

Run ``python examples/maml_rl_scaled_study.py --help`` for the flags; a tiny run:
``python examples/maml_rl_scaled_study.py --seeds 2 --iterations 3 --tasks 4``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import tempfile
from pathlib import Path

import torch

from metaopt.dataclass_args import parse_dataclass
from metaopt.experiments.maml_rl import train
from metaopt.maml import MAMLConfig

T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


@dataclasses.dataclass
class Args:
    """Command-line arguments."""

    seeds: int = 5
    """number of seeds per method"""
    iterations: int = 500
    """meta-iterations per run"""
    tasks: int = 40
    """tasks per meta-iteration"""
    trajectories: int = 20
    """episodes per task (training)"""
    eval_trajectories: int = 100
    """episodes per test task in the final evaluation"""
    eval_repeats: int = 5
    """independent final evaluations averaged per run"""
    methods: str = "maml,popart-maml,popart-value-maml"
    """comma list: maml (no PopArt), popart-maml (PopArt value loss and advantages, learn beta and lr),
    popart-value-maml (PopArt value loss only, learn beta and lr with meta lr 0.01: the demo's setting)"""
    out: str = ""
    """directory for the runs and study.json (default: a temporary directory)"""


def parse() -> Args:
    """Parse :class:`Args` from the command line (help texts are the field docstrings)."""
    return parse_dataclass(Args, description=__doc__.splitlines()[0])


def mean_ci(xs: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% Student-t confidence interval."""
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, float("nan")
    return m, T_975.get(len(xs) - 1, 1.96) * statistics.stdev(xs) / math.sqrt(len(xs))


def main() -> None:
    """Train every method on every seed and print the table."""
    args = parse()
    torch.set_num_threads(1)
    out = Path(args.out or tempfile.mkdtemp(prefix="scaled_study_"))
    methods = {
        "maml": {},
        "popart-maml": {"popart": True, "learn": ("beta", "lr")},
        "popart-value-maml": {"popart": True, "learn": ("beta", "lr"), "popart_advantages": False, "meta_lr": 0.01},
    }
    unknown = [m for m in args.methods.split(",") if m not in methods]
    if unknown:
        raise SystemExit(f"--methods must be a comma list of {','.join(methods)}, got {args.methods!r}")
    methods = {m: methods[m] for m in args.methods.split(",")}
    results: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
    for name, extra in methods.items():
        for seed in range(args.seeds):
            cfg = MAMLConfig(scaled=True, seed=seed, iterations=args.iterations, tasks=args.tasks,
                             trajectories=args.trajectories, eval_every=0, **extra)
            res = train(cfg, out / f"{name}_seed{seed}", progress=False, plot=False, log=lambda s: None)
            row: dict[str, float] = {"seed": seed, "status": res.status, "iterations": res.learner.iteration}
            if res.status == "completed":
                evals = [res.learner.evaluate(seed=10_000 + r, trajectories=args.eval_trajectories)
                         for r in range(args.eval_repeats)]
                pre = statistics.fmean(e["test_pre_return_norm"] for e in evals)
                post = statistics.fmean(e["test_post_return_norm"] for e in evals)
                row |= {"pre_norm": pre, "post_norm": post, "gain_norm": post - pre} | res.learner.meta.summary()
            results[name].append(row)
            print(json.dumps({"method": name} | row))
    print(f"\nscaled TabularMDP (c = 10^U(-2,3)), {args.iterations} iterations, {args.seeds} seeds, "
          "scale-normalized test returns (return / c)")
    print(f"{'method':<30}{'ok':>4}{'pre/c':>10}{'post/c':>10}{'gain/c (95% CI)':>26}")
    for name, rows in results.items():
        ok = [r for r in rows if r["status"] == "completed"]
        if not ok:
            print(f"{name:<30}{0:>4}   all runs stopped: {[r['status'] for r in rows]}")
            continue
        g, h = mean_ci([r["gain_norm"] for r in ok])
        pre = statistics.fmean(r["pre_norm"] for r in ok)
        post = statistics.fmean(r["post_norm"] for r in ok)
        print(f"{name:<30}{len(ok):>4}{pre:>10.3f}{post:>10.3f}{g:>+14.3f} ± {h:.3f}")
    (out / "study.json").write_text(json.dumps(results, indent=1))
    print(f"\nruns and study.json in {out}")


if __name__ == "__main__":
    main()
