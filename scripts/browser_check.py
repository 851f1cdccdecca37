#!/usr/bin/env python3
"""Open every page of the built book in headless Chromium and check what a reader sees.

    python scripts/browser_check.py                  # checks _build/html, screenshots to _build/screenshots
    python scripts/browser_check.py --html DIR --screenshots DIR

For every HTML page under the build (except Sphinx's ``_static``, ``_sources``, ``_images``)
Chromium loads the page from disk and reports each ``<img>``: the check fails when

* an image did not load (missing file, broken data, naturalWidth 0), on any page;
* a notebook page shows no figure, or fewer figures than its executed notebook produced
  (``_build/html/_sources/...`` or ``_build/jupyter_execute/...``): the sign of a build whose
  kernels ran with a non-inline matplotlib backend, or of outputs dropped on the way;
* a link to another page of the book points at a missing file or a missing ``#anchor``.

Images from other hosts (none are expected) are listed but not required to load, since the
check must pass offline. Each notebook page is saved twice under the screenshot folder:
``<page>.png`` (the whole page, capped in height) and ``<page>-figure.png`` (the window
around the first figure). Nothing but the Python standard library and Debian's ``chromium``
is used: Chromium is driven over its DevTools protocol through a pipe
(``--remote-debugging-pipe``).

When no Chromium is installed the check prints a loud warning and exits 0, unless
``BROWSER_CHECK_REQUIRED=1`` (set in CI) makes it fail. ``scripts/setup.sh`` installs
Debian's ``chromium`` where apt-get can be used.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
SKIP_DIRS = {"_static", "_sources", "_images", "_sphinx_design_static", "_panels_static"}
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WIDTH, HEIGHT = 1280, 900
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


class Chromium:
    """A headless Chromium driven over the DevTools protocol through a pipe (fds 3 and 4)."""

    def __init__(self, binary: str, timeout: float = 60.0):
        self.timeout = timeout
        self._profile = tempfile.mkdtemp(prefix="browser-check-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire_pipes():  # runs in the child: the protocol expects fd 3 (in) and fd 4 (out)
            r, w = os.dup(to_browser_r), os.dup(from_browser_w)  # above 4, whatever the originals were
            os.dup2(r, 3)
            os.dup2(w, 4)
            os.set_inheritable(3, True)
            os.set_inheritable(4, True)

        args = [binary, "--headless=new", "--remote-debugging-pipe", f"--user-data-dir={self._profile}",
                "--disable-gpu", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--disable-background-networking", "--disable-sync", "--mute-audio", "--hide-scrollbars",
                "--allow-file-access-from-files", f"--window-size={WIDTH},{HEIGHT}", "about:blank"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses to start its sandbox as root
        # Chromium's own log goes to a file: an unread pipe could fill up and stall it.
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self._log,
                                     preexec_fn=wire_pipes, close_fds=False)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict] = []

    # -- protocol -----------------------------------------------------------------------
    def _read_message(self, deadline: float) -> dict:
        import select

        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    self._log.seek(0)
                    err = self._log.read().decode(errors="replace")[-2000:]
                    raise RuntimeError(f"Chromium closed the DevTools pipe (exit {self.proc.poll()}):\n{err}")
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float | None = None) -> dict:
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._events.append(reply)

    def wait_event(self, method: str, session: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self._events):
                if ev.get("method") == method and ev.get("sessionId") == session:
                    del self._events[: i + 1]
                    return True
            try:
                self._events.append(self._read_message(deadline))
            except TimeoutError:
                return False

    # -- pages ---------------------------------------------------------------------------
    def open_tab(self) -> str:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send("Page.enable", session=session)
        self.send("Runtime.enable", session=session)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False}, session=session)
        return session

    def load(self, session: str, url: str, timeout: float) -> bool:
        self._events.clear()
        self.send("Page.navigate", {"url": url}, session=session)
        return self.wait_event("Page.loadEventFired", session, timeout)

    def evaluate(self, session: str, expression: str, timeout: float = 30.0):
        result = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                "returnByValue": True}, session=session, timeout=timeout)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, session: str, path: Path, full_height: int | None = None) -> None:
        """The window as it is scrolled now, or (``full_height``) the page from the top with
        the window made that tall (a clip beyond the viewport shifts the book's layout)."""
        if full_height is not None:
            self.send("Emulation.setDeviceMetricsOverride", {"width": WIDTH, "height": full_height,
                                                            "deviceScaleFactor": 1, "mobile": False},
                      session=session)
            self.evaluate(session, "window.scrollTo(0, 0); new Promise(r => setTimeout(r, 300))")
        try:
            data = self.send("Page.captureScreenshot", {"format": "png"}, session=session, timeout=120)["data"]
        finally:
            if full_height is not None:
                self.send("Emulation.setDeviceMetricsOverride", {"width": WIDTH, "height": HEIGHT,
                                                                "deviceScaleFactor": 1, "mobile": False},
                          session=session)
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except Exception:  # noqa: BLE001 -- closing anyway
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self._profile, ignore_errors=True)
        self._log.close()


def find_chromium() -> str | None:
    for name in [os.environ.get("CHROMIUM", "")] + list(CANDIDATES):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


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


def check(html: Path, shots: Path, page_timeout: float = 60.0, binary: str | None = None) -> int:
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
            remote = [i for i in report["images"] if not i["src"].startswith(("file:", "data:"))]
            broken = [i["src"] for i in local if not i["ok"]]
            for src in broken:
                failures.append(f"{rel}: image did not load: {src}")
            figures = [i for i in local if i["ok"] and i["output"] and not i["removed"]]
            expected = executed_figures(html, page)
            line = f"  {rel}: {len(local) - len(broken)}/{len(local)} images loaded"
            if remote:
                line += f", {len(remote)} from other hosts (not checked offline)"
            if expected is not None:
                line += f", {len(figures)} figures shown / {expected} produced"
                # Every chapter notebook draws figures; other notebook pages (the model
                # card) must show all they produced, which may be none.
                if rel.startswith("notebooks/") and (expected == 0 or not figures):
                    failures.append(f"{rel}: notebook page shows no figure (executed notebook produced {expected})")
                elif len(figures) < expected:
                    failures.append(f"{rel}: {len(figures)} figures shown, {expected} produced by the notebook")
                stem = page.relative_to(html).with_suffix("").as_posix().replace("/", "__")
                # Open folded content (solutions are dropdowns) so the screenshots show it.
                browser.evaluate(session, UNFOLD_JS)
                height = browser.evaluate(session, "document.documentElement.scrollHeight") or HEIGHT
                browser.screenshot(session, shots / f"{stem}.png", full_height=min(int(height), MAX_FULL_HEIGHT))
                browser.evaluate(session, FIRST_FIGURE_JS)
                browser.screenshot(session, shots / f"{stem}-figure.png")
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
    print(f"browser_check: OK: {len(pages)} pages, every image loaded, every notebook page shows its figures")
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
