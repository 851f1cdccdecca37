#!/usr/bin/env python3
"""Make the readers' downloads inside the built book (scripts/build_book.sh runs it after a build):

    python scripts/make_downloads.py                 # into _build/html/downloads/
    python scripts/make_downloads.py --html DIR

* ``downloads/chapter6-notebooks.zip``: every notebook of the table of contents, as committed
  (clean: run them to see the outputs), in their folders, with a README.txt saying how to
  install the package they import, and both licences.
* ``downloads/chapter6-companion.pdf``: every page of the table of contents, in its order,
  printed by the same headless Chromium as the browser check (scripts/headless_chromium.py)
  once MathJax has typeset it and its folded solutions are open, then joined into one PDF
  (pypdf) with one bookmark per page.

The intro page links both (book/intro.md). Without a Chromium the zip is still made and the
PDF is not (a loud warning; an error when BROWSER_CHECK_REQUIRED=1, as in CI).
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import sys
import time
import zipfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from headless_chromium import Chromium, find_chromium  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ZIP_NAME = "chapter6-notebooks.zip"
PDF_NAME = "chapter6-companion.pdf"
FIXED_TIME = (2026, 1, 1, 0, 0, 0)  # zip entries carry this date: the same sources give the same zip

# Before printing: every image loaded (not lazy), MathJax done, dropdowns (solutions) open,
# code wrapped.
READY_JS = r"""
(async () => {
  const imgs = Array.from(document.images);
  imgs.forEach(i => { i.loading = "eager"; });
  await Promise.all(imgs.map(i => (i.complete ? Promise.resolve() :
      new Promise(r => { i.addEventListener("load", r); i.addEventListener("error", r); setTimeout(r, 10000); }))));
  const mj = window.MathJax;
  if (mj && mj.startup && mj.startup.promise) {
    await Promise.race([mj.startup.promise, new Promise(r => setTimeout(r, 20000))]);
  }
  document.querySelectorAll("button.toggle-button.toggle-button-hidden").forEach(b => b.click());
  document.querySelectorAll("details").forEach(d => { d.open = true; });
  // Paper cannot scroll: long code lines wrap instead of being cut at the margin.
  const style = document.createElement("style");
  style.textContent = "@media print { pre, pre code { white-space: pre-wrap !important; overflow-wrap: anywhere; } }";
  document.head.appendChild(style);
  await new Promise(r => setTimeout(r, 300));
  return document.title;
})()
"""


def toc_documents(root: Path = ROOT) -> list[str]:
    """The documents of _toc.yml in reading order (the root first), without extensions."""
    toc = yaml.safe_load((root / "_toc.yml").read_text(encoding="utf-8"))
    docs = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("file"), str):
                docs.append(node["file"])
            for key in ("parts", "chapters", "sections"):
                walk(node.get(key, []))
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc)
    return [str(Path(d).with_suffix("")) for d in docs]


def repository_url(root: Path = ROOT) -> str:
    config = yaml.safe_load((root / "_config.yml").read_text(encoding="utf-8"))
    return config["repository"]["url"].rstrip("/")


def make_zip(out: Path, root: Path = ROOT) -> list[str]:
    """Write the notebooks of the table of contents to ``out``; return the names written."""
    notebooks = [f"{d}.ipynb" for d in toc_documents(root) if (root / f"{d}.ipynb").exists()]
    url = repository_url(root)
    readme = (
        "Deep Learning Interpretability: the notebooks of the companion to Chapter 6\n\n"
        "Run them in Jupyter with the companion's package installed:\n\n"
        f'    pip install "chapter6-utils @ git+{url}"\n\n'
        "or open them in Google Colab, where their first cell installs it. The repository\n"
        f"({url}) has everything else: tests, the book, the scripts.\n\n"
        "Code: MIT (LICENSE). Prose and figures: CC BY 4.0 (LICENSE-CC-BY-4.0.txt).\n"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    names = []
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        def add(name: str, data: bytes) -> None:
            info = zipfile.ZipInfo(f"chapter6-notebooks/{name}", FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
            names.append(name)

        add("README.txt", readme.encode())
        for name in notebooks + ["LICENSE", "LICENSE-CC-BY-4.0.txt"]:
            add(name, (root / name).read_bytes())
    return names


def make_pdf(html: Path, out: Path, binary: str, root: Path = ROOT, page_timeout: float = 60.0) -> int:
    """Print every page of the table of contents and join them into ``out``; return the page count."""
    from pypdf import PdfReader, PdfWriter

    pages = [(doc, html / f"{doc}.html") for doc in toc_documents(root)]
    missing = [str(p) for _, p in pages if not p.exists()]
    if missing:
        raise FileNotFoundError(f"pages of the table of contents not built: {missing}")
    writer = PdfWriter()
    browser = Chromium(binary)
    try:
        session = browser.open_tab()
        for doc, page in pages:
            if not browser.load(session, page.resolve().as_uri(), page_timeout):
                print(f"  note: {doc}: no load event in {page_timeout:.0f} s (printing what is there)")
            title = browser.evaluate(session, READY_JS, timeout=page_timeout) or doc
            data = browser.send("Page.printToPDF", {
                "printBackground": True, "preferCSSPageSize": False,
                "paperWidth": 8.27, "paperHeight": 11.69,  # A4, in inches
                "marginTop": 0.5, "marginBottom": 0.5, "marginLeft": 0.5, "marginRight": 0.5,
            }, session=session, timeout=300)["data"]
            reader = PdfReader(io.BytesIO(base64.b64decode(data)))
            writer.append(reader, outline_item=title.split("\u2014")[0].split(" | ")[0].strip())
            print(f"  {doc}: {len(reader.pages)} PDF pages")
    finally:
        browser.close()
    writer.add_metadata({"/Title": "Deep Learning Interpretability: a companion to Chapter 6"})
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as f:
        writer.write(f)
    return len(writer.pages)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--html", type=Path, default=ROOT / "_build" / "html")
    opts = parser.parse_args(argv)
    html = opts.html.resolve()
    if not (html / "index.html").exists():
        print(f"make_downloads: FAILED: no built book in {html}", file=sys.stderr)
        return 1
    downloads = html / "downloads"
    t0 = time.monotonic()
    names = make_zip(downloads / ZIP_NAME)
    print(f"make_downloads: {downloads / ZIP_NAME}: {len(names)} files, "
          f"{(downloads / ZIP_NAME).stat().st_size / 1e6:.1f} MB")
    binary = find_chromium()
    if binary is None:
        print("make_downloads: WARNING: no Chromium (see scripts/headless_chromium.py): the whole-book PDF "
              "was NOT made, and the intro's link to it is dead", file=sys.stderr)
        return 1 if os.environ.get("BROWSER_CHECK_REQUIRED") == "1" else 0
    n = make_pdf(html, downloads / PDF_NAME, binary)
    print(f"make_downloads: {downloads / PDF_NAME}: {n} pages, "
          f"{(downloads / PDF_NAME).stat().st_size / 1e6:.1f} MB ({time.monotonic() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
