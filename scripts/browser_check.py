#!/usr/bin/env python3
r"""Open every page of the built book in headless Chromium and check what a reader sees.

    python scripts/browser_check.py                  # checks _build/html, screenshots to _build/screenshots
    python scripts/browser_check.py --html DIR --screenshots DIR

For every HTML page under the build (except Sphinx's ``_static``, ``_sources``, ``_images``)
Chromium loads the page from disk and reports each ``<img>``: the check fails when

* an image did not load (missing file, broken data, naturalWidth 0), on any page;
* a notebook page shows no figure, or fewer figures than its executed notebook produced
  (``_build/html/_sources/...`` or ``_build/jupyter_execute/...``): the sign of a build whose
  kernels ran with a non-inline matplotlib backend, or of outputs dropped on the way;
* a link to another page of the book points at a missing file or a missing ``#anchor``;
* a page loads anything (script, style sheet, font, image) from another host, or names a
  script from another host in its HTML: the book must read the same offline;
* maths: raw TeX delimiters (``\(``, ``\[``, ``$$``, ``\begin{``...) are visible, a formula of
  the source (Sphinx's ``span.math`` / ``div.math``) was not rendered by MathJax, or MathJax
  reports a TeX error in one;
* a page shows a Jupyter widget (a dead slider: the book has no kernel);
* the theme: a page shows more than one search field, or clicking the "Toggle primary
  sidebar" button does not hide the primary sidebar.

Each notebook page is saved twice under the screenshot folder: ``<page>.png`` (the whole
page, capped in height) and ``<page>-figure.png`` (the window around the first figure);
each page with formulas also as ``<page>-maths.png`` (the window around its first display
formula, or its first formula). Nothing but the Python standard library and a Chromium is
used: ``scripts/headless_chromium.py`` drives it over its DevTools protocol through a pipe
(``--remote-debugging-pipe``), the same browser that prints the whole-book PDF.

When no Chromium is installed the check prints a loud warning and exits 0, unless
``BROWSER_CHECK_REQUIRED=1`` (set in CI) makes it fail. ``scripts/setup.sh`` installs
Debian's ``chromium`` where apt-get can be used.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from headless_chromium import CANDIDATES, HEIGHT, Chromium, find_chromium  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SKIP_DIRS = {"_static", "_sources", "_images", "_sphinx_design_static", "_panels_static"}
MAX_FULL_HEIGHT = 16000  # px: longer pages are cut in the full-page screenshot

# Run in the page: make lazy images load, wait for every image, then report images,
# links and element ids.
PAGE_REPORT_JS = r"""
(async () => {
  const imgs = Array.from(document.images);
  imgs.forEach(i => { i.loading = "eager"; });
  await Promise.all(imgs.map(i => (i.complete ? Promise.resolve() :
      new Promise(r => { i.addEventListener("load", r); i.addEventListener("error", r);
                         setTimeout(r, 10000); }))));
  const article = document.querySelector("article, main, [role=main]") || document.body;
  return {
    title: document.title,
    height: Math.max(document.body ? document.body.scrollHeight : 0,
                     document.documentElement ? document.documentElement.scrollHeight : 0),
    images: imgs.map(i => ({
      src: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0,
      width: i.naturalWidth, height: i.naturalHeight,
      output: !!i.closest(".cell_output, .output"),
      removed: !article.contains(i),
    })),
    links: Array.from(document.querySelectorAll("a[href]")).map(a => a.href),
    ids: Array.from(document.querySelectorAll("[id]")).map(e => e.id)
        .concat(Array.from(document.querySelectorAll("a[name]")).map(e => e.name)),
  };
})()
"""


# Wait for MathJax (when the page loads it), then report every formula of the source and
# whether it was rendered, TeX errors, TeX left visible as text, and widget views.
MATHS_REPORT_JS = r"""
(async () => {
  const mj = window.MathJax;
  if (mj && mj.startup && mj.startup.promise) {
    await Promise.race([mj.startup.promise, new Promise(r => setTimeout(r, 20000))]);
  }
  const sources = Array.from(document.querySelectorAll(".math"));
  const unrendered = sources.filter(e => !e.querySelector("mjx-container, .MathJax, .katex"))
      .map(e => e.textContent.trim().slice(0, 80));
  const errors = Array.from(document.querySelectorAll("mjx-merror, .MathJax_Error"))
      .map(e => (e.getAttribute("data-mjx-error") || e.textContent).slice(0, 80));
  const skip = "pre, code, kbd, samp, script, style, textarea, mjx-container, .highlight, .math";
  const raw = /\\\(|\\\)|\\\[|\\\]|\$\$|\\(begin|end)\{|\\(frac|mathbf|mathrm|sum|partial|cdot|sqrt|left|right)\b/;
  const visibleTex = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const parent = n.parentElement;
    if (!parent || parent.closest(skip)) continue;
    const m = n.textContent.match(raw);
    if (m) {
      const i = n.textContent.indexOf(m[0]);
      visibleTex.push(n.textContent.slice(Math.max(0, i - 30), i + 50).replace(/\s+/g, " "));
    }
  }
  const display = document.querySelector("div.math mjx-container, mjx-container[display=true]");
  const first = display || document.querySelector("mjx-container");
  if (first) { first.scrollIntoView({block: "center"}); }
  const widgets = document.querySelectorAll(
      'script[type="application/vnd.jupyter.widget-view+json"], .jupyter-widgets, .widget-area, '
      + '.jp-OutputArea-output .widget-box');
  return {formulas: sources.length, rendered: sources.length - unrendered.length, unrendered,
          errors, visibleTex: visibleTex.slice(0, 5), widgets: widgets.length, mathjax: !!mj};
})()
"""

# The theme: visible search fields, and what "Toggle primary sidebar" does to the sidebar.
THEME_REPORT_JS = r"""
(async () => {
  const shown = e => { const r = e.getBoundingClientRect(), s = getComputedStyle(e);
                       return r.width > 0 && r.height > 0 && s.visibility !== "hidden" && s.display !== "none"
                              && r.right > 0 && r.bottom > 0 && r.left < innerWidth; };
  const fields = Array.from(document.querySelectorAll('input[type=search], input[name=q], .search-button-field'))
      .filter(e => shown(e) && !e.closest("article, .bd-article, .bd-search-container"));  // search.html has its own
  const sidebar = document.querySelector("#pst-primary-sidebar, .bd-sidebar-primary");
  const toggle = Array.from(document.querySelectorAll(
      'button.primary-toggle, label.primary-toggle, '
      + '[title="Toggle primary sidebar"], [aria-label="Toggle primary sidebar"]'))
      .find(shown);
  const report = {searchFields: fields.length, sidebar: !!sidebar, toggle: !!toggle,
                  sidebarShownBefore: !!sidebar && shown(sidebar), sidebarShownAfter: null, restored: null};
  if (sidebar && toggle) {
    toggle.click();
    await new Promise(r => setTimeout(r, 600));
    report.sidebarShownAfter = shown(sidebar);
    toggle.click();  // put it back, for what follows
    await new Promise(r => setTimeout(r, 600));
    report.restored = shown(sidebar);
  }
  return report;
})()
"""

UNFOLD_JS = r"""
(async () => {
  document.querySelectorAll("button.toggle-button.toggle-button-hidden").forEach(b => b.click());
  document.querySelectorAll("details").forEach(d => { d.open = true; });
  await new Promise(r => setTimeout(r, 300));
})()
"""

FIRST_FIGURE_JS = r"""
(() => {
  const img = Array.from(document.images).find(i => i.closest(".cell_output, .output") && i.naturalWidth > 0);
  if (img) { img.scrollIntoView({block: "start"}); window.scrollBy(0, -80); } else { window.scrollTo(0, 0); }
  return new Promise(r => setTimeout(r, 200));
})()
"""


def html_pages(html: Path) -> list[Path]:
    return sorted(p for p in html.rglob("*.html") if not (set(p.relative_to(html).parts[:-1]) & SKIP_DIRS))


def redirect_target(page: Path) -> Path | None:
    """The page a meta-refresh page sends the reader to (None for a normal page)."""
    text = page.read_text(encoding="utf-8", errors="replace")[:2000]
    match = re.search(r'http-equiv="refresh"[^>]*url=([^"\'>]+)', text, re.I)
    if not match:
        return None
    return (page.parent / unquote(urlsplit(match.group(1)).path)).resolve()


def executed_figures(html: Path, page: Path) -> int | None:
    """How many figures the executed notebook behind ``page`` produced (None: not a notebook page).

    Counts image outputs of cells the book shows (cells tagged remove-cell / remove-output
    are not shown); the executed copy is the one myst-nb wrote during the build.
    """
    rel = page.relative_to(html).with_suffix(".ipynb")
    build = html.parent
    for candidate in (build / "jupyter_execute" / rel, html / "_sources" / rel):
        if candidate.exists():
            nb = json.loads(candidate.read_text(encoding="utf-8"))
            count = 0
            for cell in nb.get("cells", []):
                tags = cell.get("metadata", {}).get("tags", [])
                if cell.get("cell_type") != "code" or {"remove-cell", "remove_cell", "remove-output",
                                                      "remove_output"} & set(tags):
                    continue
                for out in cell.get("outputs", []):
                    if any(k.startswith("image/") for k in out.get("data", {})):
                        count += 1
            return count
    return None


LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:", "chrome:", "chrome-extension:", "devtools:")


def external_requests(requests: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The requests a page made to other hosts (the book must need none of them offline)."""
    return sorted({(kind, url) for kind, url in requests if not url.startswith(LOCAL_SCHEMES)})


_EXTERNAL_TAG = re.compile(r"""<(?:script|link)\b[^>]*?\b(?:src|href)=["']((?:https?:)?//[^"']+)["'][^>]*>""", re.I)


def external_tags(text: str) -> list[str]:
    """URLs on other hosts that a page's HTML loads as scripts or style sheets (``<script src>``,
    ``<link rel=stylesheet|preload|modulepreload href>``): found in the file, whether or not
    the browser got as far as requesting them."""
    urls = []
    for match in _EXTERNAL_TAG.finditer(text):
        tag = match.group(0).lower()
        if tag.startswith("<script") or re.search(r"rel=[\"']?(stylesheet|preload|modulepreload)", tag):
            urls.append(match.group(1))
    return urls


def maths_problems(rel: str, maths: dict) -> list[str]:
    """Formulas a reader cannot read: TeX shown as text, formulas MathJax did not render, TeX errors."""
    problems = [f"{rel}: raw TeX visible: ...{snippet}..." for snippet in maths["visibleTex"]]
    if maths["unrendered"]:
        why = "" if maths["mathjax"] else " (no MathJax on the page)"
        problems.append(f"{rel}: {len(maths['unrendered'])} of {maths['formulas']} formulas not rendered{why}, "
                        f"first: {maths['unrendered'][0]!r}")
    problems += [f"{rel}: TeX error in a formula: {e}" for e in maths["errors"]]
    if maths["widgets"]:
        problems.append(f"{rel}: {maths['widgets']} Jupyter widget view(s) on the page: a dead widget in a "
                        "static book (tag the explorer cell remove-output; its static grid stands in)")
    return problems


def theme_problems(rel: str, theme: dict) -> list[str]:
    """One search field at most; the primary-sidebar toggle, where there is one, must hide the sidebar."""
    problems = []
    if theme["searchFields"] > 1:
        problems.append(f"{rel}: {theme['searchFields']} search fields shown (one expected)")
    if theme["sidebar"] and theme["sidebarShownBefore"]:
        if not theme["toggle"]:
            problems.append(f"{rel}: a primary sidebar but no visible 'Toggle primary sidebar' button")
        elif theme["sidebarShownAfter"]:
            problems.append(f"{rel}: clicking 'Toggle primary sidebar' did not hide the sidebar")
    return problems


def check(html: Path, shots: Path, page_timeout: float = 60.0, binary: str | None = None) -> int:
    html = html.resolve()
    pages = html_pages(html)
    if not pages:
        print(f"browser_check: FAILED: no HTML pages under {html} (build the book first)")
        return 1
    shots.mkdir(parents=True, exist_ok=True)
    for old in shots.glob("*.png"):
        old.unlink()
    failures: list[str] = []
    reports: dict[Path, dict] = {}
    t0 = time.monotonic()
    browser = Chromium(binary)
    try:
        version = browser.send("Browser.getVersion").get("product", "?")
        print(f"browser_check: {version}, {len(pages)} pages under {html}")
        session = browser.open_tab()
        for page in pages:
            rel = page.relative_to(html).as_posix()
            target = redirect_target(page)
            if target is not None:  # e.g. the root index.html, a meta refresh to the first page
                if not target.exists():
                    failures.append(f"{rel}: redirects to a missing page {target}")
                print(f"  {rel}: redirect to {target.relative_to(html) if target.exists() else target}")
                continue
            if not browser.load(session, page.resolve().as_uri(), page_timeout):
                print(f"  note: {rel}: no load event in {page_timeout:.0f} s (checking what is there)")
            report = browser.evaluate(session, PAGE_REPORT_JS, timeout=page_timeout)
            reports[page] = report
            local = [i for i in report["images"] if i["src"].startswith(("file:", "data:"))]
            broken = [i["src"] for i in local if not i["ok"]]
            for src in broken:
                failures.append(f"{rel}: image did not load: {src}")
            figures = [i for i in local if i["ok"] and i["output"] and not i["removed"]]
            expected = executed_figures(html, page)
            stem = page.relative_to(html).with_suffix("").as_posix().replace("/", "__")
            line = f"  {rel}: {len(local) - len(broken)}/{len(local)} images loaded"
            maths = browser.evaluate(session, MATHS_REPORT_JS, timeout=page_timeout)
            failures += maths_problems(rel, maths)
            if maths["formulas"]:
                line += f", {maths['rendered']}/{maths['formulas']} formulas rendered"
                browser.evaluate(session, "new Promise(r => setTimeout(r, 200))")
                browser.screenshot(session, shots / f"{stem}-maths.png")
            failures += [f"{rel}: loads {kind.lower()} from another host: {url}"
                         for kind, url in external_requests(browser.requests)]
            failures += [f"{rel}: names a script or style sheet on another host: {url}"
                         for url in external_tags(page.read_text(encoding="utf-8", errors="replace"))]
            if expected is not None:
                line += f", {len(figures)} figures shown / {expected} produced"
                # Every chapter notebook draws figures; other notebook pages (the model
                # card) must show all they produced, which may be none.
                if rel.startswith("notebooks/") and (expected == 0 or not figures):
                    failures.append(f"{rel}: notebook page shows no figure (executed notebook produced {expected})")
                elif len(figures) < expected:
                    failures.append(f"{rel}: {len(figures)} figures shown, {expected} produced by the notebook")
                # Open folded content (solutions are dropdowns) so the screenshots show it.
                browser.evaluate(session, UNFOLD_JS)
                height = browser.evaluate(session, "document.documentElement.scrollHeight") or HEIGHT
                browser.screenshot(session, shots / f"{stem}.png", full_height=min(int(height), MAX_FULL_HEIGHT))
                browser.evaluate(session, FIRST_FIGURE_JS)
                browser.screenshot(session, shots / f"{stem}-figure.png")
            theme = browser.evaluate(session, THEME_REPORT_JS, timeout=page_timeout)
            failures += theme_problems(rel, theme)
            line += f", {theme['searchFields']} search field(s)"
            if theme["toggle"]:
                line += ", sidebar toggle " + ("hides" if theme["sidebarShownAfter"] is False else "does NOT hide")
            print(line)
    finally:
        browser.close()

    # links between pages of the book: the file must exist, and so must the #anchor
    ids = {p.resolve(): set(r["ids"]) for p, r in reports.items()}
    bad_links = set()
    for page, report in reports.items():
        for href in report["links"]:
            parts = urlsplit(href)
            if parts.scheme != "file":
                continue
            target = Path(unquote(parts.path))
            if not target.exists():
                bad_links.add(f"{page.relative_to(html).as_posix()}: link to missing file {target}")
            elif parts.fragment and target.resolve() in ids and unquote(parts.fragment) not in ids[target.resolve()]:
                bad_links.add(f"{page.relative_to(html).as_posix()}: link to missing anchor "
                              f"{target.name}#{parts.fragment}")
    failures += sorted(bad_links)

    print(f"browser_check: screenshots of notebook pages in {shots} ({time.monotonic() - t0:.0f} s)")
    if failures:
        print(f"browser_check: FAILED ({len(failures)} problems):")
        for f in failures:
            print(f"  - {f}")
        return 1
    print(f"browser_check: OK: {len(pages)} pages, every image loaded, every notebook page shows its figures, "
          "every formula rendered, nothing loaded from another host")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--html", type=Path, default=ROOT / "_build" / "html")
    parser.add_argument("--screenshots", type=Path, default=ROOT / "_build" / "screenshots")
    parser.add_argument("--page-timeout", type=float, default=60.0, help="seconds to wait for a page to load")
    opts = parser.parse_args(argv)
    binary = find_chromium()
    if binary is None:
        banner = "!" * 78
        print(f"{banner}\nbrowser_check: NO CHROMIUM FOUND ({', '.join(CANDIDATES)}); the rendered pages "
              "were NOT checked.\nInstall it (Debian/Ubuntu: apt-get install chromium) or set CHROMIUM=/path.\n"
              f"{banner}", file=sys.stderr)
        return 1 if os.environ.get("BROWSER_CHECK_REQUIRED") == "1" else 0
    return check(opts.html, opts.screenshots, opts.page_timeout, binary)


if __name__ == "__main__":
    sys.exit(main())
