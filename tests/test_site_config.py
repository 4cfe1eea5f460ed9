"""The site's configuration keeps it readable offline (the browser check itself is ``make docs-check``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MKDOCS = (ROOT / "mkdocs.yml").read_text()


def test_site_loads_nothing_from_the_network():
    assert re.search(r"^use_directory_urls: false$", MKDOCS, re.M)  # pages are files: links work from file://
    assert re.search(r"^  - offline$", MKDOCS, re.M)  # search index inlined for file://
    assert re.search(r"^  font: false", MKDOCS, re.M)  # no web-font CDN
    assets = re.findall(r"^extra_(?:javascript|css):\n((?:  - .*\n)+)", MKDOCS, re.M)
    entries = [line.split("- ", 1)[1].split("#")[0].strip() for block in assets for line in block.splitlines()]
    assert entries and not [e for e in entries if "://" in e], entries
    for page in [*(ROOT / "docs").rglob("*.md"), *(ROOT / "docs").rglob("*.js"), *(ROOT / "docs").rglob("*.css")]:
        assert not re.search(r"<(?:script|link)[^>]+(?:src|href)=\"https?://", page.read_text()), page


def test_vendored_front_end_files_are_pinned():
    package = json.loads((ROOT / "docs-assets" / "package.json").read_text())
    lock = json.loads((ROOT / "docs-assets" / "package-lock.json").read_text())
    for name, version in package["dependencies"].items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), (name, version)  # exact versions
        assert lock["packages"][f"node_modules/{name}"]["version"] == version, name
    assert "mathjax" in package["dependencies"] and "iframe-worker" in package["dependencies"]
