"""``metaopt verify``: run the verification catalogue and print a table (or JSON).

Example::

    metaopt verify                                   # every check on every installed engine
    metaopt verify --checks torchopt-toy,darts --engines func,higher
    metaopt verify --json --out verify.json          # machine-readable, also written to a file

The exit status is 0 when every row passes and 1 otherwise (see :func:`exit_code`), so the command can
gate CI. Argument values are validated up front: an unknown check or engine is an argparse error that
names the argument, the value and the allowed values (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from metaopt.artifacts import check_new_file, check_out_dir, write_text
from metaopt.engines import ENGINES
from metaopt.verify.catalogue import CHECK_NAMES, CheckResult, available_engines, run_catalogue

__all__ = ["add_arguments", "run", "exit_code", "format_table", "to_json", "parse_list"]


def parse_list(allowed: Sequence[str], what: str) -> Callable[[str], list[str]]:
    """Return an argparse ``type`` that parses ``"a,b"`` into names from ``allowed``.

    Args:
        allowed: Valid names.
        what: Kind of name for the error message (``"check"``, ``"engine"``).

    Returns:
        A parser raising :class:`argparse.ArgumentTypeError` (which argparse reports with the option name)
        for empty lists and unknown names.
    """

    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        if not names:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {what}s, got {text!r}")
        unknown = [n for n in names if n not in allowed]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(map(repr, unknown))} in {text!r}; allowed: {', '.join(allowed)}"
            )
        return list(dict.fromkeys(names))  # keep order, drop duplicates

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``verify``'s options to ``parser``."""
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter  # --checks shows its default list
    parser.add_argument("--checks", type=parse_list(CHECK_NAMES, "check"), default=",".join(CHECK_NAMES),
                        help="comma-separated checks to run")
    parser.add_argument("--engines", type=parse_list(ENGINES, "engine"), default=argparse.SUPPRESS,
                        help=f"comma-separated engines out of {','.join(ENGINES)} (default: every installed one)")
    parser.add_argument("--json", action="store_true", help="print JSON (one object per row plus a summary)")
    parser.add_argument("--out", type=Path, default=None,
                        help="also write the printed report to this file (a file path, not a directory)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def exit_code(results: Sequence[CheckResult]) -> int:
    """0 when every row passed, 1 when any failed."""
    return 0 if all(r.passed for r in results) else 1


def _fmt(x: float) -> str:
    return f"{x:.10g}" if math.isfinite(x) else str(x)


def format_table(results: Sequence[CheckResult]) -> str:
    """An aligned plain-text table, one line per row, then a summary line and the notes of failing rows.

    Columns: check, engine, quantity, autograd value, reference value, relative error, tolerance, pass.
    """
    header = ("check", "engine", "quantity", "autograd", "reference", "rel.err", "tol", "pass")
    lines = [
        (r.check, r.engine, r.quantity, _fmt(r.autograd), _fmt(r.reference), f"{r.rel_error:.2e}",
         f"{r.tolerance:.1e}" if math.isfinite(r.tolerance) else "info", "yes" if r.passed else "NO")
        for r in results
    ]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    right = {3, 4, 5, 6}

    def fmt(row: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths,
                                                                                              strict=True))).rstrip()

    out = [fmt(header), "  ".join("-" * w for w in widths), *map(fmt, lines)]
    failed = [r for r in results if not r.passed]
    out.append(f"\n{len(results) - len(failed)}/{len(results)} rows passed"
               + ("" if not failed else f"; FAILED: {len(failed)}"))
    out += [f"  NO: {r.check}/{r.engine}/{r.quantity}: {r.note}" for r in failed]
    if any(not math.isfinite(r.tolerance) for r in results):
        out.append("tol 'info': informational row, not a pass/fail criterion (see its note in --json).")
    return "\n".join(out)


def to_json(results: Sequence[CheckResult]) -> dict[str, Any]:
    """``{"results": [row, ...], "summary": {...}}`` with non-finite floats as ``null``."""
    failed = [r for r in results if not r.passed]
    return {
        "results": [r.to_dict() for r in results],
        "summary": {"rows": len(results), "passed": len(results) - len(failed), "failed": len(failed),
                    "all_passed": not failed},
    }


def run(args: argparse.Namespace) -> int:
    """Run the selected checks; print the table or JSON; return :func:`exit_code`."""
    engines = getattr(args, "engines", None) or list(available_engines())
    missing = [e for e in engines if e not in available_engines()]
    if missing:
        print(f"metaopt verify: error: argument --engines: {missing} not installed "
              f"(pip install 'metaopt-torch[{missing[0]}]')", file=sys.stderr)
        return 2
    if args.out is not None:  # check before the (slow) checks run, so a bad path fails at once
        try:
            check_out_file(args.out, overwrite=args.overwrite)
        except ValueError as err:
            print(f"metaopt verify: error: {err}", file=sys.stderr)
            return 2
    results = run_catalogue(args.checks, engines)
    text = json.dumps(to_json(results), indent=2, allow_nan=False) if args.json else format_table(results)
    print(text)
    if args.out is not None:
        write_text(args.out, text + "\n")
    return exit_code(results)


def check_out_file(out: Path, *, overwrite: bool = False) -> None:
    """``--out`` must name a file that can be written (not a directory, not below a file, writable).

    It must also be a new file unless ``overwrite`` (``--overwrite``).
    """
    if out.is_dir():
        raise ValueError(f"--out must be a file path, got {str(out)!r}, which is a directory (expected e.g. "
                         f"{str(out / 'verify.json')!r})")
    check_out_dir(out.parent)
    check_new_file(out, overwrite=overwrite)
