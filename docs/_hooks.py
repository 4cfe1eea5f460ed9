"""MkDocs hooks: copy the front-end files the site serves from disk into ``site/assets/vendor/``.

The site must work opened from ``site/index.html`` without a server or a network: MathJax (formulas) and
iframe-worker (the Material theme's search worker under ``file://``) come from the npm registry, pinned in
``docs-assets/package-lock.json`` and installed by ``make docs`` (``npm ci --prefix docs-assets``). Nothing is
loaded from a CDN; ``make docs-check`` (``docs/check_site.py``) proves it in a headless browser with the network
cut.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

ROOT = Path(__file__).resolve().parents[1]
MODULES = ROOT / "docs-assets" / "node_modules"
VENDOR = "assets/vendor"
#: (source under node_modules, destination under site/assets/vendor); each package's LICENSE goes along.
COPIES = (
    ("mathjax/es5", "mathjax"),
    ("mathjax/LICENSE", "mathjax/LICENSE"),
    ("iframe-worker/shim/index.js", "iframe-worker/shim.js"),
    ("iframe-worker/LICENSE", "iframe-worker/LICENSE"),
)


def on_config(config: Any, **kwargs: Any) -> Any:
    """Use the local iframe-worker shim (the offline plugin would otherwise add a CDN's copy)."""
    config.extra["polyfills"] = [f"{VENDOR}/iframe-worker/shim.js"]
    return config


def on_post_build(config: Any, **kwargs: Any) -> None:
    """Copy MathJax and the shim next to the pages."""
    site = Path(config.site_dir)
    for src, dst in COPIES:
        source, target = MODULES / src, site / VENDOR / dst
        if not source.exists():
            raise PluginError(f"{source} is missing: run `make docs` (it runs npm ci --prefix docs-assets)")
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
