"""Result figures in the README and the docs, tied to the committed results files that hold them.

A figure in a Markdown page is followed by a marker naming the JSON file (from the repository root), the value's
path in it and the format it is printed with::

    ended at 12.06<!-- fig: docs/results/data/maml_rl/demo.json#summary.test_post_return_norm .2f -->

The marker is an HTML comment: GitHub and MkDocs show only the number. ``tests/test_figures.py`` fails when a
number differs from ``format(value, fmt)`` of its file; ``python tests/_figures.py`` lists the disagreements and
``python tests/_figures.py --write`` rewrites every marked number from its file (after a re-run whose results
file was copied under ``docs/results/data/``).

The path is dot-separated: a dict key, a list index (``train.-1.lr``) or a list item chosen by one of its
fields (``rows[method=func].ms``). The format is a Python format spec (``.2f``, ``+.3f``, ``.3g``, ``.1%``,
``.2e``); a trailing ``%`` in the page belongs to the number (``.1%`` prints it). A Unicode minus (−) in the
page reads as ``-``.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: Markdown files that may hold figures: the README, every page of the docs and the benchmarks' README.
PAGES = ("README.md", "docs/**/*.md", "benchmarks/README.md")
#: Where the committed results files live (each listed in SOURCES with the command that wrote it).
DATA = ROOT / "docs" / "results" / "data"
SOURCES = DATA / "sources.json"

NUMBER = r"[-+−]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+−]?\d+)?%?"
MARKER = re.compile(r"(?P<number>" + NUMBER + r")(?P<close>\**)<!--\s*fig:\s*(?P<file>[^#\s]+)#(?P<path>\S+)"
                    r"\s+(?P<fmt>\S+)\s*-->")
STRAY = re.compile(r"<!--\s*fig:")
SELECT = re.compile(r"^(?P<key>[^\[]+)\[(?P<field>[^=\]]+)=(?P<value>[^\]]+)\]$")


@dataclass(frozen=True)
class Figure:
    """One marked number: where it is, what it says and what its results file says."""

    page: Path
    line: int
    text: str
    file: str
    path: str
    fmt: str
    span: tuple[int, int]  # of the number in the page's text

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def expected(self) -> str:
        return format(lookup(load(self.file), self.path), self.fmt)

    @property
    def agrees(self) -> bool:
        return self.text.replace("−", "-") == self.expected


def load(file: str) -> Any:
    """The JSON results file ``file`` (relative to the repository root)."""
    path = ROOT / file
    if not path.is_file():
        raise FileNotFoundError(f"a figure names {file!r}, which does not exist")
    return json.loads(path.read_text())


def lookup(data: Any, path: str) -> float:
    """The number at ``path`` (``a.b.0.c``, ``a[name=x].c``) in ``data``."""
    node = data
    for part in path.split("."):
        m = SELECT.match(part)
        if m:
            items = node[m["key"]]
            hits = [x for x in items if str(x.get(m["field"])) == m["value"]]
            if len(hits) != 1:
                raise KeyError(f"{path!r}: {len(hits)} items of {m['key']!r} have {m['field']}={m['value']}")
            node = hits[0]
        elif isinstance(node, list):
            node = node[int(part)]
        else:
            if part not in node:
                raise KeyError(f"{path!r}: no key {part!r} (keys: {sorted(node)[:20]})")
            node = node[part]
    if isinstance(node, bool) or not isinstance(node, int | float):
        raise TypeError(f"{path!r} is {node!r}, not a number")
    return float(node)


def pages() -> list[Path]:
    return sorted({p for pattern in PAGES for p in ROOT.glob(pattern) if ".venv" not in p.parts})


def figures(page: Path) -> list[Figure]:
    """Every marked number in ``page``; a marker that follows no number raises."""
    text = page.read_text()
    found = []
    for m in MARKER.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        found.append(Figure(page, line, m["number"], m["file"], m["path"], m["fmt"], m.span("number")))
    if len(found) != len(STRAY.findall(text)):
        lines = [text.count("\n", 0, m.start()) + 1 for m in STRAY.finditer(text)]
        marked = {f.line for f in found}
        raise ValueError(f"{page.relative_to(ROOT)}: a figure marker directly after no number, on line(s) "
                         f"{sorted(set(lines) - marked) or lines}")
    return found


def all_figures() -> list[Figure]:
    return [f for page in pages() for f in figures(page)]


def write(page: Path) -> int:
    """Rewrite every marked number of ``page`` from its results file; return how many changed."""
    text = page.read_text()
    changed = 0
    for f in sorted(figures(page), key=lambda f: f.span[0], reverse=True):
        if not f.agrees:
            text = text[:f.span[0]] + f.expected.replace("-", "−" if "−" in f.text else "-") + text[f.span[1]:]
            changed += 1
    page.write_text(text)
    return changed


def main(argv: list[str]) -> int:
    if argv == ["--write"]:
        for page in pages():
            if n := write(page):
                print(f"{page.relative_to(ROOT)}: {n} figure(s) rewritten")
        return 0
    bad = [f for f in all_figures() if not f.agrees]
    for f in bad:
        print(f"{f.where}: {f.text} but {f.file}#{f.path} formatted {f.fmt!r} is {f.expected}")
    print(f"{len(bad)} of {len(all_figures())} figures disagree with their results files")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
