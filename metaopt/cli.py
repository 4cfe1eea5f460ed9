"""The ``metaopt`` command line: one subcommand per job.

Each subcommand lives in its own module that exposes ``add_arguments(parser)`` and ``run(args) -> int``;
modules are imported only when their subcommand runs, so ``metaopt --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from metaopt._version import __version__
from metaopt.dataclass_args import ArgumentParser

__all__ = ["main", "SUBCOMMANDS"]

#: name -> (module path, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "popart-regression": (
        "metaopt.experiments.popart_regression",
        "Reproduce PopArt Fig. 1a: binary regression with SGD, ART and PopArt over many seeds.",
    ),
    "verify": (
        "metaopt.verify.cli",
        "Run the catalogue of meta-gradient checks (analytic values and finite differences) on every engine.",
    ),
    "maml-rl": (
        "metaopt.experiments.maml_rl",
        "MAML-A2C on TabularMDP or 2D navigation (--env), optionally with PopArt and a learned beta and inner lr.",
    ),
    "study": (
        "metaopt.experiments.study",
        "Does learning beta and the inner lr beat a tuned plain MAML? Trains the sweeps and reports, per scale.",
    ),
    "estimator-study": (
        "metaopt.experiments.estimator_study",
        "Bias and variance of sampled MAML meta-gradients (surrogate, LVC, DiCE) against exact ones on TabularMDP.",
    ),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Build the top-level parser; only ``command``'s module is imported to add its arguments."""
    parser = ArgumentParser(
        prog="metaopt",
        description="Differentiable PopArt and verified meta-gradients for meta-RL.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module).add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metaopt`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except BrokenPipeError:  # e.g. `metaopt verify | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
