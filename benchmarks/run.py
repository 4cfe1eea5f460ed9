"""Run the metaopt benchmark: ``python benchmarks/run.py [--quick] [--out DIR] ...``.

A thin wrapper around ``metaopt bench`` (see ``metaopt/experiments/bench.py`` and ``benchmarks/README.md``).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metaopt.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
