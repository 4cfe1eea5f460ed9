"""``metaopt popart-regression``: the flags are generated from :class:`Settings` (defaults stated once, there)."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from metaopt.artifacts import check_no_results, check_outputs
from metaopt.dataclass_args import add_dataclass_arguments, dataclass_flags, dataclass_from_args
from metaopt.experiments.popart_regression._experiment import run_experiment
from metaopt.experiments.popart_regression._online import LEARNABLE, META_SCALES
from metaopt.experiments.popart_regression._protocols import (
    DEFAULT_METHODS,
    DTYPES,
    HEAD_INITS,
    PROTOCOLS,
    RECORD_CHOICES,
    _check_arguments,
)
from metaopt.experiments.popart_regression._report import format_table, write_outputs
from metaopt.online import MODES, REATTACH

__all__ = ["Settings", "FLAGS", "add_arguments", "run"]


@dataclass
class Settings:
    """Options of ``metaopt popart-regression``: the arguments of :func:`run_experiment`, the output folder, the plot.

    The experiment's defaults are :func:`run_experiment`'s (the tests check that they agree).
    """

    seeds: int = 50
    """number of seeds, simulated together as one batch"""
    steps: int = 5000
    """samples per run (outliers at samples 1000, 2000, ...)"""
    methods: tuple[str, ...] = field(default=("sgd", "art", "popart"), metadata={"choices": tuple(DEFAULT_METHODS)})
    """comma-separated methods to compare"""
    protocol: str = field(default="paper", metadata={"choices": tuple(PROTOCOLS)})
    """paper: record the test error before ART sees the sample, nn.Linear head init, ART lr 10^-2.5;
    reproduction: the seed reproduction's choices (record after ART/POP, head weight 1 and bias 0, ART lr 10^-3.5)"""
    record: str | None = field(default=None, metadata={"choices": RECORD_CHOICES})
    """override the protocol's recording order: the test error before or after ART (and POP) see the sample"""
    head_init: str | None = field(default=None, metadata={"choices": HEAD_INITS})
    """override the protocol's output-layer init: nn.Linear's (default) or weight 1, bias 0 (ones)"""
    art_lr: float | None = None
    """override the protocol's ART learning rate"""
    dtype: str = field(default="float32", metadata={"choices": tuple(DTYPES)})
    """simulation dtype"""
    seed: int = 0
    """base seed: seed i draws its weights and targets from seed + i"""
    window: int = 10
    """moving-average width of the RMSE curves"""
    learn: tuple[str, ...] = field(default=(), metadata={"choices": LEARNABLE})
    """PopArt hyperparameters learned online through its own updates (comma list of beta, lr; none: fixed)"""
    beta: float | None = None
    """PopArt's beta, the initial value when learned (default: the paper's 10^-0.5)"""
    lr: float | None = None
    """PopArt's lr, the initial value when learned (default: the paper's 10^-2.5)"""
    truncation: int = 10
    """with --learn: a meta-gradient step every this many samples, through the last this many updates"""
    meta_lr: float = 3e-2
    """with --learn: Adam's step size on log lr and logit beta"""
    meta_scale: str = field(default="sigma", metadata={"choices": META_SCALES})
    """with --learn: the meta-error in real units over sg(sigma) or over a running RMS of the seed's errors"""
    huber: float | None = 1.0
    """with --learn: Huber threshold of the scaled meta-error (none: squared error)"""
    carry: bool = True
    """with --learn: carry the statistics' whole-lifetime sensitivity to beta (--no-carry: truncated only)"""
    reattach: str = field(default="pop", metadata={"choices": REATTACH})
    """with --learn: at a window's start keep the unnormalized head (pop) or the normalized head constant"""
    mode: str = field(default="truncated", metadata={"choices": MODES})
    """with --learn: meta-gradients through the last --truncation updates (truncated) or, exactly, through the whole
    lifetime in forward mode (forward; slower)"""
    out: str = "runs/popart_regression"
    """output folder (curves.csv, summary.json, fig1a.png)"""
    plot: bool = True
    """draw fig1a.png (--no-plot: skip it, no matplotlib needed)"""
    overwrite: bool = False
    """replace the results of an earlier run in --out (without it, an --out holding them is refused)"""

    def experiment(self) -> dict[str, Any]:
        """The keyword arguments of :func:`run_experiment` (every field but ``out``, ``plot`` and ``overwrite``)."""
        return {k: v for k, v in asdict(self).items() if k not in ("out", "plot", "overwrite")}


#: Settings field -> command-line flag, for error messages.
FLAGS = dataclass_flags(Settings)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``popart-regression`` flags to ``parser``: one per :class:`Settings` field."""
    add_dataclass_arguments(parser, Settings)


def _check(settings: Settings) -> None:
    """Check everything before any work: the experiment's arguments, ``--out`` and the plot's matplotlib."""
    _check_arguments(**settings.experiment(), names=FLAGS)
    check_outputs(Path(settings.out), plot=settings.plot)
    check_no_results(Path(settings.out), ("curves.csv", "summary.json", "fig1a.png"), overwrite=settings.overwrite)


def run(args: argparse.Namespace) -> int:
    """Run the experiment from parsed arguments, write the outputs and print the final-RMSE table.

    Returns:
        0, or 2 for bad input (one ``error:`` line on stderr naming the flag, nothing written).
    """
    settings = dataclass_from_args(Settings, args)
    try:
        _check(settings)
    except (TypeError, ValueError) as err:
        print(f"metaopt popart-regression: error: {err}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    results = run_experiment(**settings.experiment(), log=print)
    paths = write_outputs(results, settings.out, plot=settings.plot)
    print(format_table(results))
    if {"sgd", "popart"} <= set(results.methods):
        ratio = results.final("sgd")["median"] / results.final("popart")["median"]
        print(f"SGD / PopArt final median RMSE: {ratio:.1f}x")
    print(f"total time {time.perf_counter() - start:.1f} s; wrote {', '.join(str(p) for p in paths.values())}")
    return 0
