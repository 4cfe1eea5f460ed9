"""The documentation's code runs, every snippet is shown on a page, and every public module has an API page.

The site itself is built by ``make docs`` (``mkdocs build --strict``), which CI runs.
"""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SNIPPETS = sorted((DOCS / "snippets").glob("*.py"))
INCLUDE = re.compile(r'^--8<-- "([^"]+)"\s*$', flags=re.MULTILINE)


def _pages() -> dict[Path, str]:
    return {p: p.read_text() for p in DOCS.rglob("*.md")}


def test_there_are_snippets():
    assert {p.name for p in SNIPPETS} >= {"higher_popart.py", "torchopt_popart.py", "vmap_tasks.py",
                                          "verify_meta_gradient.py"}


@pytest.mark.parametrize("snippet", SNIPPETS, ids=lambda p: p.name)
def test_snippet_runs(snippet, capsys):
    runpy.run_path(str(snippet), run_name="__main__")  # each snippet asserts its own claims
    assert capsys.readouterr().out.strip(), f"{snippet.name} printed nothing"


def test_every_snippet_is_included_by_a_page_and_every_include_exists():
    included = {inc for text in _pages().values() for inc in INCLUDE.findall(text)}
    for inc in included:
        assert (ROOT / inc).is_file(), f"a page includes {inc!r}, which does not exist"
    missing = {f"docs/snippets/{p.name}" for p in SNIPPETS} - included
    assert not missing, f"snippets no page includes: {sorted(missing)}"


def _public_modules() -> set[str]:
    """``metaopt``, its public top-level modules and packages, and each job module or package in ``experiments``."""
    pkg = ROOT / "metaopt"
    names = {"metaopt"}
    for p in pkg.iterdir():
        name = _module_name(p)
        if name is None:
            continue
        if name == "experiments":
            names |= {f"metaopt.experiments.{job}" for q in p.iterdir() if (job := _module_name(q)) is not None}
        else:
            names.add(f"metaopt.{name}")
    return names


def _module_name(path: Path) -> str | None:
    """The public module or package name of ``path`` (``None`` for private names and non-modules)."""
    name = path.stem if path.suffix == ".py" else path.name
    if name.startswith("_") or not (path.suffix == ".py" or (path / "__init__.py").is_file()):
        return None
    return name


def test_every_public_module_has_an_api_page_in_the_nav():
    documented = {m for p in (DOCS / "api").glob("*.md") for m in re.findall(r"^::: (\S+)", p.read_text(), re.M)}
    missing = _public_modules() - documented
    assert not missing, f"add a page docs/api/NAME.md with '::: MODULE' and a nav entry in mkdocs.yml for {missing}"
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in (DOCS / "api").glob("*.md"):
        assert f"api/{page.name}" in nav, f"docs/api/{page.name} is not in mkdocs.yml's nav"


def test_results_pages_name_the_command_that_produced_them():
    for page in (DOCS / "results").glob("*.md"):
        text = page.read_text()
        assert re.search(r"(`|```bash\n)(metaopt |python |make )", text), f"{page.name} names no command"



def test_concept_and_how_to_pages_describe_the_current_code():
    # Pages that explain the code carry no "update me" markers (results pages are filled from measurements).
    for page in [*(DOCS / "concepts").glob("*.md"), *(DOCS / "how-to").glob("*.md"), DOCS / "getting-started.md"]:
        assert "<!-- lead:" not in page.read_text(), f"{page.relative_to(ROOT)} still has an update marker"
