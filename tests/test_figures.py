"""The README's and the docs' result figures agree with the committed results files of the runs that made them.

How a figure is marked, and how to add one: ``tests/_figures.py`` and CONTRIBUTING.md ("Numbers in the docs").
"""

from __future__ import annotations

import json

import _figures as F
import pytest

FIGURES = F.all_figures()


def test_pages_have_marked_figures():
    on = {f.page.relative_to(F.ROOT).as_posix() for f in FIGURES}
    assert {"README.md", "docs/results/fig1a.md", "docs/results/maml-rl.md"} <= on, on


@pytest.mark.parametrize("figure", FIGURES, ids=lambda f: f"{f.where}:{f.path}")
def test_figure_agrees_with_its_results_file(figure):
    assert figure.agrees, (f"{figure.where} says {figure.text}, but {figure.file}#{figure.path} formatted "
                           f"{figure.fmt!r} is {figure.expected} (python tests/_figures.py --write updates it)")


def test_every_results_file_names_its_command_and_is_used():
    sources = json.loads(F.SOURCES.read_text())
    files = {p.relative_to(F.ROOT).as_posix() for p in F.DATA.rglob("*.json")} - {"docs/results/data/sources.json"}
    assert set(sources) == files, f"sources.json and the files differ: {set(sources) ^ files}"
    for file, entry in sources.items():
        assert entry["command"].startswith(("metaopt ", "python ", "make ")), (file, entry)
        assert entry["output"], file
    used = {f.file for f in FIGURES}
    assert not files - used, f"results files no figure reads: {sorted(files - used)}"


# ---------------------------------------------------------------------------------------- the checker itself
@pytest.fixture
def page(tmp_path, monkeypatch):
    data = tmp_path / "r.json"
    data.write_text(json.dumps({"s": {"x": 9.7167, "g": 2.3428, "neg": -0.00091},
                                "rows": [{"m": "a", "v": 1.0}, {"m": "b", "v": 0.275}]}))
    monkeypatch.setattr(F, "ROOT", tmp_path)
    return tmp_path / "p.md"


def test_checker_reads_paths_formats_and_fails_on_a_wrong_figure(page):
    page.write_text("pre 9.72<!-- fig: r.json#s.x .2f --> gain +2.34<!-- fig: r.json#s.g +.2f -->,\n"
                    "| **9.7**<!-- fig: r.json#s.x .1f --> | −0.0009<!-- fig: r.json#s.neg .1g --> | "
                    "27.5%<!-- fig: r.json#rows[m=b].v .1% --> | 1.0<!-- fig: r.json#rows.0.v .1f --> |\n")
    figs = F.figures(page)
    assert [f.text for f in figs] == ["9.72", "+2.34", "9.7", "−0.0009", "27.5%", "1.0"]
    assert all(f.agrees for f in figs), [(f.text, f.expected) for f in figs]
    assert figs[2].line == 2
    page.write_text("pre 9.70<!-- fig: r.json#s.x .2f -->\n")  # the demo's stale figure
    (bad,) = F.figures(page)
    assert not bad.agrees and bad.expected == "9.72"
    assert F.write(page) == 1 and page.read_text() == "pre 9.72<!-- fig: r.json#s.x .2f -->\n"


def test_checker_refuses_a_marker_after_no_number_and_a_missing_key(page):
    page.write_text("the demo <!-- fig: r.json#s.x .2f -->\n")
    with pytest.raises(ValueError, match="after no number"):
        F.figures(page)
    page.write_text("1.0<!-- fig: r.json#s.nope .2f -->\n")
    with pytest.raises(KeyError, match="nope"):
        _ = F.figures(page)[0].expected


@pytest.mark.parametrize("generated", ["benchmarks/results/online_fig1a.md", "benchmarks/results/online_a2c.md"])
def test_readme_copies_generated_tables_verbatim(generated):
    # The README repeats these commands' generated tables (the docs include the files themselves): every table row of
    # the file must appear unchanged in the README, so a re-run that changes a number fails until the README follows.
    readme = (F.ROOT / "README.md").read_text().splitlines()
    rows = [line for line in (F.ROOT / generated).read_text().splitlines() if line.startswith("|")]
    assert rows, generated
    missing = [row for row in rows if row not in readme]
    assert not missing, f"README.md lacks {len(missing)} row(s) of {generated}, first: {missing[0]}"
