"""PopArt Fig. 1a in one call: binary regression with SGD, ART and PopArt, all seeds vectorized.

Run ``python examples/popart_regression.py --seeds 3 --steps 300`` for a smoke test, or with no arguments
for the paper's 50 seeds x 5000 samples (a few seconds on a CPU). ``--protocol reproduction`` makes the seed
reproduction's choices (error recorded after ART/POP, output layer weight 1 and bias 0, ART lr 10^-3.5),
which brings ART from about 243 to about 133. ``metaopt popart-regression`` is the same experiment with files
(CSV, JSON, PNG) written to a folder and flags that override one protocol choice at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from metaopt.dataclass_args import parse_dataclass
from metaopt.experiments.popart_regression import PROTOCOLS, format_table, run_experiment


@dataclass
class Args:
    """Arguments of the example; each field is a command-line option."""

    seeds: int = 50
    """number of seeds, simulated together as one batch"""
    steps: int = 5000
    """samples per run (outliers at 1000, 2000, ...)"""
    methods: str = "sgd,art,popart"
    """comma-separated methods to compare"""
    protocol: str = "paper"
    """paper (error before ART, nn.Linear head init, ART lr 10^-2.5) or reproduction"""
    art_lr: float | None = None
    """override the protocol's ART learning rate (none: the protocol's)"""
    dtype: str = "float32"
    """simulation dtype: float32 or float64"""
    seed: int = 0
    """base seed: seed i draws weights and targets from seed + i"""


def parse_args(argv: Sequence[str] | None = None) -> Args:
    """Parse :class:`Args` from the command line (help texts are the field docstrings)."""
    return parse_dataclass(
        Args,
        argv,
        description=__doc__.splitlines()[0],
        choices={"dtype": ("float32", "float64"), "protocol": tuple(PROTOCOLS)},
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Run the experiment and print the final RMSE table."""
    args = parse_args(argv)
    results = run_experiment(
        args.seeds, args.steps, args.methods, protocol=args.protocol, art_lr=args.art_lr, dtype=args.dtype,
        seed=args.seed,
    )
    print(format_table(results))


if __name__ == "__main__":
    main()
