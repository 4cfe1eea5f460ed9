"""Check the built site as a reader opens it: ``site/index.html`` from disk, in headless Chromium, no network.

``make docs-check`` runs it after ``make docs`` (CI does). It drives Debian's ``/usr/bin/chromium`` through
Playwright (never a downloaded browser) with every request that is not a local file refused and recorded, and
checks that

1. no page asks for anything outside the site (a CDN script, a web font): every such request fails the check;
2. a navigation link opens its page (an ``.html`` file with the page's heading, not a directory listing);
3. search works without a server: typing into the search box lists results, and a result opens its page;
4. every formula on every page is typeset by the local MathJax (each ``.arithmatex`` element holds MathJax
   output, none is left as raw TeX, MathJax reports no TeX error such as "Misplaced &");
5. every table fits the page or scrolls sideways, with a visible scrollbar, to its last column;
6. every name in each public module's ``__all__`` is in the API reference (``site/objects.inv``);

and writes screenshots into ``--shots`` (a search with results, a page of formulas, a wide table).

Usage: ``python docs/check_site.py [--site site] [--shots site-check]``; exit 0 when every check passes.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOCAL = ("file:", "data:", "blob:", "about:")


# Per table of the article: does it fit the article, or does its nearest sideways-scrolling wrapper show a scrollbar
# and, scrolled to the end, its last column?
TABLES = """() => [...document.querySelectorAll('article table')].map(t => {
    const article = document.querySelector('article').getBoundingClientRect();
    if (t.getBoundingClientRect().right <= article.right + 1 && t.scrollWidth <= t.clientWidth + 1) return {fits: true};
    let box = t.parentElement;
    while (box && box.tagName !== 'ARTICLE' && !['auto', 'scroll'].includes(getComputedStyle(box).overflowX))
        box = box.parentElement;
    if (!box || box.tagName === 'ARTICLE') return {fits: false, scrolls: false, why: 'no scrolling wrapper'};
    const bar = box.offsetHeight - box.clientHeight - parseFloat(getComputedStyle(box).borderTopWidth)
                - parseFloat(getComputedStyle(box).borderBottomWidth);
    box.scrollLeft = box.scrollWidth;
    const last = t.querySelector('tr > :last-child').getBoundingClientRect(), shown = box.getBoundingClientRect();
    const reached = last.right <= shown.right + 1 && last.left >= shown.left - 1;
    box.scrollLeft = 0;
    return {fits: false, scrolls: reached && bar > 0, scrollbar_px: bar, last_column_reached: reached};
})"""


class Failed(Exception):
    """A check failed; the message says which and why."""


def check(ok: Any, message: str) -> None:
    """Raise :class:`Failed` with ``message`` unless ``ok``."""
    if not ok:
        raise Failed(message)


def api_names_documented(site: Path) -> int:
    """Every ``module.NAME`` of each documented module's ``__all__`` has an entry in ``objects.inv``."""
    raw = (site / "objects.inv").read_bytes().split(b"\n", 4)
    inventory = {line.split(" ", 1)[0] for line in zlib.decompress(raw[4]).decode().splitlines()}
    modules = {m for p in (ROOT / "docs" / "api").glob("*.md") for m in re.findall(r"^::: (\S+)", p.read_text(), re.M)}
    missing = [f"{m}.{n}" for m in sorted(modules) for n in getattr(importlib.import_module(m), "__all__", ())
               if f"{m}.{n}" not in inventory]
    check(not missing, f"public names missing from the API reference (give each a docstring or a '#:' comment): "
                       f"{missing}")
    return sum(len(getattr(importlib.import_module(m), "__all__", ())) for m in modules)


def main(argv: list[str] | None = None) -> int:
    """Run every check (the module docstring lists them); raise :class:`Failed` at the first that fails."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=Path, default=ROOT / "site")
    parser.add_argument("--shots", type=Path, default=ROOT / "site-check")
    args = parser.parse_args(argv)
    site, shots = args.site.resolve(), args.shots.resolve()
    check((site / "index.html").is_file(), f"{site}/index.html does not exist: run `make docs` first")
    check(Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: `make docs-check` installs Debian's chromium")
    shots.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import sync_playwright

    names = api_names_documented(site)
    print(f"API reference: all {names} names of the public modules' __all__ are documented")
    external: list[str] = []
    errors: list[str] = []

    def route(r: Any) -> None:
        if r.request.url.startswith(LOCAL):
            r.continue_()
        else:
            external.append(r.request.url)
            r.abort()

    with sync_playwright() as pw, tempfile.TemporaryDirectory(prefix="metaopt-docs-check-") as profile:
        browser = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=FLAGS, viewport={"width": 1280, "height": 900},
            offline=True, ignore_default_args=["--hide-scrollbars"])  # scrollbars as a reader sees them
        browser.route("**/*", route)
        page = browser.new_page()
        page.on("pageerror", lambda e: errors.append(f"{page.url}: {e}"))
        index = (site / "index.html").as_uri()

        # 2. navigation: the "Getting started" link of the nav opens that page.
        page.goto(index)
        page.locator("nav.md-nav--primary a.md-nav__link", has_text="Getting started").first.click()
        page.wait_for_load_state("load")
        check(page.url.endswith("/getting-started.html"), f"the nav link opened {page.url}, not getting-started.html")
        h1 = page.locator("article h1").first.inner_text()
        check(h1.startswith("Getting started") and "Index of" not in page.content(),
              f"the nav link's page shows {h1!r}")
        print(f"navigation: the nav link opens {page.url.rsplit('/', 1)[-1]} ({h1!r})")

        # 3. search from file://: type a query, results appear, the first opens a page.
        page.goto(index)
        page.locator("label.md-search__icon, .md-search__input").first.click()
        box = page.locator("input.md-search__input")
        box.fill("")
        box.press_sequentially("popart", delay=40)
        results = page.locator(".md-search-result__item")
        results.first.wait_for(state="visible", timeout=15000)
        meta = page.locator(".md-search-result__meta").inner_text()
        count = results.count()
        check(count > 0, f"search for 'popart' lists no result ({meta!r})")
        page.screenshot(path=str(shots / "search.png"))
        target = results.first.locator("a").first.get_attribute("href") or ""
        results.first.locator("a").first.click()
        page.wait_for_load_state("load")
        check(urlsplit(page.url).path.endswith(".html") and page.locator("article h1").count() > 0,
              f"the first search result ({target}) opened {page.url}")
        print(f"search: 'popart' -> {meta!r}, {count} items shown; the first opens {page.url.rsplit('/', 1)[-1]}")

        # 4. formulas on every page.
        pages = sorted(p for p in site.rglob("*.html") if "assets" not in p.parts and p.name != "404.html")
        typeset = with_math = 0
        for html in pages:
            if "arithmatex" not in html.read_text():
                continue
            page.goto(html.as_uri())
            page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=20000)
            page.evaluate("() => MathJax.startup.promise")
            stats = page.evaluate("""() => {
                const els = [...document.querySelectorAll('article .arithmatex')];
                const raw = els.filter(e => !e.querySelector('mjx-container'));
                const bad = [...document.querySelectorAll('article mjx-container')].filter(
                    c => c.querySelector('[data-mjx-error], mjx-merror'));
                return {n: els.length, raw: raw.map(e => e.textContent.slice(0, 80)),
                        errors: bad.map(c => (c.querySelector('[data-mjx-error]') || c).getAttribute('data-mjx-error')
                                             || c.textContent.slice(0, 80)),
                        tex: /\\\\\\(|\\\\\\[/.test(document.querySelector('article').innerText)};
            }""")
            rel = html.relative_to(site).as_posix()
            check(not stats["raw"], f"{rel}: {len(stats['raw'])} formulas not typeset, e.g. {stats['raw'][:3]}")
            check(not stats["errors"], f"{rel}: MathJax errors {stats['errors'][:5]}")
            check(not stats["tex"], rel + r": raw \( or \[ left in the text")
            typeset += stats["n"]
            with_math += 1
        check(typeset > 100, f"only {typeset} formulas found: is arithmatex still configured?")
        page.goto((site / "concepts" / "popart.html").as_uri())
        page.evaluate("() => MathJax.startup.promise")
        page.screenshot(path=str(shots / "formulas.png"))
        print(f"formulas: {typeset} on {with_math} pages, every one typeset by the local MathJax, no TeX error")

        # 5. tables: each fits the page, or scrolls sideways (visible scrollbar) to its last column.
        fitting = scrolling = 0
        for html in pages:
            if "<table" not in html.read_text():
                continue
            page.goto(html.as_uri())
            for t in page.evaluate(TABLES):
                rel = html.relative_to(site).as_posix()
                check(t["fits"] or t["scrolls"], f"{rel}: a table shows {t}: its right-hand columns are hidden")
                fitting, scrolling = fitting + t["fits"], scrolling + (not t["fits"])
        page.goto((site / "results" / "estimators.html").as_uri())
        check(all(t["fits"] for t in page.evaluate(TABLES)),
              "results/estimators.html: the estimator table does not fit the page at 1280 px")
        page.screenshot(path=str(shots / "wide-table.png"), full_page=True)
        print(f"tables: {fitting} fit the page at 1280 px (the estimator table among them), {scrolling} wider ones "
              f"scroll sideways to their last column with a visible scrollbar")
        browser.close()

    check(not external, f"the site requested {len(external)} URLs outside it: {sorted(set(external))[:10]}")
    check(not errors, f"JavaScript errors: {errors[:5]}")
    print(f"no request left the site; screenshots in {shots}")
    return 0


if __name__ == "__main__":
    from playwright.sync_api import TimeoutError as Timeout

    try:
        sys.exit(main())
    except (Failed, Timeout) as failure:  # a timeout: what was awaited (MathJax, search results) never came
        print(f"docs-check failed: {failure}", file=sys.stderr)
        sys.exit(1)
