r"""``metaopt study``: does learning beta and the inner lr beat a tuned plain MAML? Measured, per scale.

The study trains many configurations of :mod:`metaopt.maml` (several seeds each), measures each trained
``theta_0``'s scale-normalized adaptation gain with the exact returns of :mod:`metaopt.exact`, and writes
``study.json``, ``study.md`` and plots into ``--out``. Its parts are described in
:mod:`metaopt.experiments.study._parts`; the report states for each of the issue's targets whether it is met,
with the numbers.

Runs are independent processes (``--workers``); each finished run's result is kept as
``OUT/runs/<run>.json``, so an interrupted study resumes where it stopped.

Example::

    metaopt study --quick --out runs/study_smoke        # seconds
    metaopt study --parts scale --seeds 5 --out runs/study
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from metaopt._validation import check_int
from metaopt.artifacts import check_outputs, write_json, write_text
from metaopt.dataclass_args import add_dataclass_arguments, dataclass_flags, dataclass_overrides
from metaopt.experiments.study._parts import PARTS, QUICK, STATISTICS, StudySettings, build_runs
from metaopt.experiments.study._report import aggregate, markdown, plot, targets
from metaopt.experiments.study._runs import RunSpec, exact_gains, execute, t_interval

__all__ = ["PARTS", "StudySettings", "RunSpec", "build_runs", "execute", "exact_gains", "t_interval",
           "run_study", "add_arguments", "run"]

FLAGS = dataclass_flags(StudySettings)


def _check(s: StudySettings) -> StudySettings:
    for name in ("seeds", "iterations", "tasks", "trajectories", "inner_steps", "meta_lr_seeds",
                 "interior_trajectories", "eval_tasks", "eval_repeats", "workers"):
        check_int(FLAGS[name], getattr(s, name), low=1)
    for name in ("beta_steps", "beta_trajectories"):
        values = getattr(s, name)
        if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
            raise ValueError(f"{FLAGS[name]} must be a non-empty comma list of positive integers, got {values!r}")
    for name in ("lrs", "scales", "meta_lrs", "interior_lrs"):
        values = getattr(s, name)
        if not values or any(not v > 0 for v in values):
            raise ValueError(f"{FLAGS[name]} must be a non-empty comma list of positive numbers, got {values!r}")
    if not s.betas or any(not 0 < b < 1 for b in s.betas):
        raise ValueError(f"{FLAGS['betas']} must be a non-empty comma list of numbers in (0, 1), got {s.betas!r}")
    if not s.beta_starts or any(not 0 < b < 1 for b in s.beta_starts):
        raise ValueError(f"{FLAGS['beta_starts']} must be a non-empty comma list of numbers in (0, 1), "
                         f"got {s.beta_starts!r}")
    if not s.beta_statistics:
        raise ValueError(f"{FLAGS['beta_statistics']} must name at least one of {STATISTICS}, got none")
    if not s.parts:
        raise ValueError(f"{FLAGS['parts']} must name at least one of {PARTS}, got none")
    check_outputs(Path(s.out), plot=s.plot)  # the plots come after every run: check matplotlib first
    return s


def _execute(args: tuple[RunSpec, str]) -> dict[str, Any]:
    return execute(args[0], Path(args[1]))


def run_study(s: StudySettings, *, command: str = "metaopt study", log: Any = print) -> dict[str, Any]:
    """Train (or reuse) every run of the selected parts, then write the report; return the summary."""
    _check(s)
    out = Path(s.out)
    runs = build_runs(s)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = []
    jobs = [(r, str(out / "runs")) for r in runs]
    it: Iterator[dict[str, Any]]
    if s.workers == 1:
        it = map(_execute, jobs)
    else:
        ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        pool = ctx.Pool(s.workers, maxtasksperchild=8)
        it = pool.imap(_execute, jobs)
    try:
        for i, res in enumerate(it, 1):
            results.append(res)
            gain = "failed" if res.get("mean_gain") is None else f"mean {res['mean_gain']:+.3f} worst " \
                   f"{res['worst_gain']:+.3f}"
            log(f"[{i}/{len(runs)}] {res['key']}: {gain}  lr {res['final']['lr']:.3g} beta "
                f"{res['final']['beta']:.3g}  ({res['wall_s']:.0f} s)")
    finally:
        if s.workers != 1:
            pool.close()
            pool.join()
    agg = aggregate(results)
    tgt = targets(agg)
    wall = sum(r["wall_s"] for r in results)
    summary = {"settings": asdict(s), "command": command, "elapsed_s": round(time.perf_counter() - t0, 1),
               "runs_wall_s": round(wall, 1), "aggregate": agg, "targets": tgt}
    write_json(out / "study.json", summary)
    write_text(out / "study.md", markdown(agg, tgt, wall, command))
    if s.plot:
        plot(agg, out)
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the :class:`StudySettings` flags (``--quick`` loads a tiny budget; explicit flags override it)."""
    add_dataclass_arguments(parser, StudySettings, overridable=True)


def run(args: argparse.Namespace) -> int:
    """CLI entry point: 0 done, 2 bad input (one ``error:`` line, nothing written)."""
    given = dataclass_overrides(StudySettings, args)
    values = (QUICK if given.get("quick") else {}) | given
    try:
        s = _check(StudySettings(**values))
    except ValueError as err:
        print(f"metaopt study: error: {err}", file=sys.stderr)
        return 2
    run_study(s, command="metaopt study " + " ".join(sys.argv[2:]))
    print(Path(s.out, "study.md").read_text())
    return 0

