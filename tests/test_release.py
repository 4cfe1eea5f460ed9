"""Release metadata agrees with itself: the distribution name, the version in every place, the license."""

from __future__ import annotations

import re
from pathlib import Path

import metaopt

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = (ROOT / "pyproject.toml").read_text()  # read as text: tomllib is 3.11+, the package supports 3.10


def test_distribution_name_and_self_references():
    assert re.search(r'^name = "metaopt-torch"$', PYPROJECT, re.M)
    # An extra that pulls other extras names this distribution (a bare "metaopt[...]" is another project).
    assert re.findall(r'"metaopt-torch\[', PYPROJECT) and not re.findall(r'"metaopt\[', PYPROJECT)
    for path in (ROOT / "README.md", ROOT / "docs" / "getting-started.md"):
        assert not re.search(r"pip install '?metaopt(?![-\w])", path.read_text()), path


def test_version_is_the_same_everywhere():
    assert re.fullmatch(r"\d+\.\d+\.\d+", metaopt.__version__)
    citation = (ROOT / "CITATION.cff").read_text()
    assert re.search(rf'^version: "{re.escape(metaopt.__version__)}"$', citation, re.M), "CITATION.cff's version"
    assert "## [Unreleased]" in (ROOT / "CHANGELOG.md").read_text()


def test_license_is_the_full_apache_text_and_declared():
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text) > 10000
    assert re.search(r'^license = "Apache-2.0"$', PYPROJECT, re.M)
    assert re.search(r'^license-files = \["LICENSE"\]$', PYPROJECT, re.M)
    assert re.search(r"^license: Apache-2.0$", (ROOT / "CITATION.cff").read_text(), re.M)
