"""What one benchmark run measures (:class:`BenchSettings`) and the command line generated from it.

Every field of :class:`BenchSettings` is a flag ``--field-name``; its default is the field's default (stated
once, in the dataclass) and its help is the string written under the field. ``--quick`` starts from the
:data:`QUICK` preset instead, and flags given explicitly override either.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from metaopt._validation import check_choice, check_int
from metaopt.dataclass_args import (
    add_dataclass_arguments,
    dataclass_flags,
    dataclass_overrides,
    flag_name,
    format_value,
)
from metaopt.maml import MAMLConfig

__all__ = ["BenchSettings", "FULL", "QUICK", "METHODS", "UNROLL_MODES", "build_parser", "parse_settings"]

#: Rows of the comparison, in table order: the reference of the ratios (TorchOpt's loop, ``B`` envs stepped per
#: time step, common random numbers), TorchOpt's rollout on common random numbers, TorchOpt's example as users run
#: it, and metaopt's engines.
METHODS = ("baseline", "torchopt-sequential-crn", "torchopt-as-written", "metaopt-higher", "metaopt-torchopt",
           "metaopt-func")
#: Unroll modes: full backpropagation, the last step only (``truncate=1``), first-order.
UNROLL_MODES = ("full", "truncate1", "first_order")


@dataclasses.dataclass
class BenchSettings:
    """What one benchmark run measures (the defaults are the full run; see :data:`QUICK` for CI).

    Each field's documentation is the string right below it (it is also the field's ``--help``).
    """

    name: str = "full"
    """result file stem: <out>/<name>.json and <out>/<name>.md"""
    tasks: int = 40
    """tasks per meta-iteration of the comparison, unroll and PopArt sections"""
    trajectories: int = 20
    """trajectories (episodes) per task and rollout"""
    horizon: int = 10
    """steps per trajectory"""
    warmup: int = 2
    """untimed iterations before timing (per method and configuration)"""
    reps: int = 15
    """timed iterations of the comparison"""
    scaling_reps: int = 5
    """timed iterations of a scale configuration; the most of an unroll configuration"""
    budget_s: float = 12.0
    """time budget [s] of one unroll configuration: fewer repetitions (at least min_reps) when the warm-up shows
    an iteration would exceed it"""
    min_reps: int = 2
    """fewest timed iterations of an unroll configuration"""
    scale: bool = True
    """run the scale sweep: throughput and peak memory against the number of tasks"""
    task_counts: tuple[int, ...] = (10, 40, 160, 640, 2560)
    """task counts of the scale sweep (metaopt-func)"""
    baseline_task_counts: tuple[int, ...] = (10, 40, 160)
    """task counts at which the scale sweep also measures the baseline"""
    unroll: tuple[int, ...] = (1, 4, 16, 64)
    """inner-step counts K of the unroll section (metaopt-func)"""
    popart_reps: int = 21
    """timed iterations of the PopArt section"""
    sequential: bool = True
    """include torchopt-sequential-crn (TorchOpt's rollout, common random numbers) in the comparison"""
    as_written: bool = True
    """include torchopt-as-written (TorchOpt's example as users run it) in the comparison"""
    sanity_draws: int = 4
    """independent meta-gradients per side of the as-written sanity check"""
    matmul_time_s: float = 0.3
    """length [s] of each timed round of the matmul microbenchmark (the machine's FLOP rate)"""
    memory: bool = True
    """measure peak memory (one child process per row)"""
    isolation: str = "spawn"
    """child processes for memory and unroll rows: spawn (fresh interpreter) or fork (forked harness)"""
    threads: int = 1
    """torch.set_num_threads of the harness and its children"""
    seed: int = 0
    """seed of the learners and of the iteration data"""
    dtype: str = "float32"
    """dtype of the timed runs"""
    metric: str = "auto"
    """time used for ratios and targets (both are recorded): cpu (process CPU time), wall (wall-clock) or auto
    (cpu with one thread, else wall: CPU time adds up all threads)"""

    #: Allowed values of the string fields.
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "isolation": ("spawn", "fork"),
        "dtype": ("float32", "float64"),
        "metric": ("auto", "cpu", "wall"),
    }

    def validate(self, *, names: Mapping[str, str] | None = None) -> BenchSettings:
        """Check every field; resolve ``metric="auto"``.

        Args:
            names: How to name fields in messages (e.g. ``{"threads": "--threads"}``); default the field names.

        Returns:
            ``self``, with tuples normalized and ``metric`` resolved to ``cpu`` or ``wall``.

        Raises:
            ValueError: A field is out of range; the message names the field, its value and what was expected.
        """
        names = dict(names or {})

        def n(f: str) -> str:
            return names.get(f, f)

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            raise ValueError(f"{n('name')} must be a non-empty file stem without '/', got {self.name!r}")
        for f in ("tasks", "trajectories", "horizon", "reps", "scaling_reps", "min_reps", "popart_reps",
                  "sanity_draws", "threads"):
            check_int(n(f), getattr(self, f), low=1)
        for f in ("warmup", "seed"):
            check_int(n(f), getattr(self, f), low=0)
        for f in ("task_counts", "baseline_task_counts", "unroll"):
            v = getattr(self, f)
            v = tuple(v) if isinstance(v, Sequence) and not isinstance(v, str) else v
            if not isinstance(v, tuple) or not v or not all(is_int(x) and x >= 1 for x in v):
                raise ValueError(f"{n(f)} must be a non-empty list of ints >= 1, got {v!r}")
            setattr(self, f, v)
        for f in ("scale", "sequential", "as_written", "memory"):
            if not isinstance(getattr(self, f), bool):
                raise ValueError(f"{n(f)} must be True or False, got {getattr(self, f)!r}")
        for f, allowed in self.CHOICES.items():
            check_choice(n(f), getattr(self, f), allowed)
        for f in ("budget_s", "matmul_time_s"):
            b = getattr(self, f)
            if isinstance(b, bool) or not isinstance(b, int | float) or not (math.isfinite(b) and b > 0):
                raise ValueError(f"{n(f)} must be a positive finite number of seconds, got {b!r}")
        if self.metric == "auto":
            self.metric = "cpu" if self.threads == 1 else "wall"
        return self

    def config(self, **overrides: Any) -> MAMLConfig:
        """The reference :class:`~metaopt.maml.MAMLConfig` of this run (TorchOpt's setting), with ``overrides``."""
        base = {"tasks": self.tasks, "trajectories": self.trajectories, "horizon": self.horizon,
                "seed": self.seed, "dtype": self.dtype, "eval_tasks": 1}
        return MAMLConfig(**(base | overrides)).validate()


#: The full run (about 3 minutes on two cores, one thread).
FULL = BenchSettings()
#: CI budget: tiny sizes, forked children, well under a minute.
QUICK = BenchSettings(
    name="quick", tasks=4, warmup=1, reps=2, scaling_reps=2, budget_s=2.0, min_reps=1, task_counts=(2, 8),
    baseline_task_counts=(2,), unroll=(1, 2), popart_reps=2, sanity_draws=2, matmul_time_s=0.05, isolation="fork",
)


# ------------------------------------------------------------------------------------------ command line
def build_parser(presets: Mapping[str, BenchSettings] | None = None) -> argparse.ArgumentParser:
    """The parser of ``python benchmarks/run.py``: ``--out``, one flag per preset and one per settings field.

    Field flags come from :func:`metaopt.dataclass_args.add_dataclass_arguments` and default to ``None`` (not
    given), so only the flags actually given override the preset; ``--help`` shows each field's default and the
    presets' values, read from :class:`BenchSettings`.

    Args:
        presets: Preset name -> settings (default ``{"quick": QUICK}``); each becomes a ``--name`` switch.
    """
    presets = {"quick": QUICK} if presets is None else dict(presets)
    parser = argparse.ArgumentParser(
        prog="benchmarks/run.py",
        description="Benchmark the MAML-A2C job (speed, memory, FLOP rate) against TorchOpt-style loops.",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"),
                        help="output directory (default: benchmarks/results)")
    for name, preset in presets.items():
        changed = [f"{flag_name(f.name)} {format_value(getattr(preset, f.name))}"
                   for f in dataclasses.fields(BenchSettings) if getattr(preset, f.name) != f.default]
        parser.add_argument(f"--{name}", action="store_true", help=f"start from the {name} preset: "
                            + ", ".join(changed).replace("%", "%%"))
    add_dataclass_arguments(parser, BenchSettings, choices=BenchSettings.CHOICES, overridable=True,
                            presets={name: dataclasses.asdict(p) for name, p in presets.items()})
    return parser


def parse_settings(argv: Sequence[str] | None = None) -> tuple[BenchSettings, Path]:
    """Parse the command line into validated settings and the output directory.

    Raises:
        SystemExit: Malformed flags (argparse's usage error, exit code 2).
        ValueError: Well-formed but invalid values; the message names the flag, the value and what was expected.
    """
    args = build_parser().parse_args(argv)
    preset = QUICK if args.quick else FULL
    s = dataclasses.replace(preset, **dataclass_overrides(BenchSettings, args))
    return s.validate(names=dataclass_flags(BenchSettings)), args.out
