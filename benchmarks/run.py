"""Run the metaopt benchmark: ``python benchmarks/run.py [--quick] [--out DIR] [--FIELD VALUE ...]``.

Flags: ``--quick`` (the CI preset), ``--out`` (default ``benchmarks/results``) and one flag per field of
:class:`benchmarks.settings.BenchSettings` (``--help`` lists them with their defaults). Writes
``<out>/<name>.json`` and ``<out>/<name>.md`` and prints the markdown report. Also runs as
``python -m benchmarks.run`` from the repository root.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import ``benchmarks.*`` from the repository root, not benchmarks/
    _here = Path(__file__).resolve().parent
    sys.path = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

from benchmarks.harness import run_bench  # noqa: E402
from benchmarks.report import render_markdown, write_results  # noqa: E402
from benchmarks.settings import parse_settings  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the flags, run the benchmark, write and print the results; returns the exit code (2: bad settings)."""
    try:
        s, out = parse_settings(argv)
    except ValueError as err:
        print(f"benchmarks/run.py: error: {err}", file=sys.stderr)
        return 2
    if out.exists() and not out.is_dir():
        print(f"benchmarks/run.py: error: --out must be a directory, got the file {str(out)!r}", file=sys.stderr)
        return 2
    res = run_bench(s, log=lambda msg: print(f"[bench] {msg}", file=sys.stderr, flush=True))
    js, md = write_results(res, out, s.name)
    print(render_markdown(res))
    print(f"results: {js} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
