#!/usr/bin/env python3
"""Put an "Open in Colab" badge on every notebook and in the README.

    python scripts/colab_badges.py            # add or update the badges (safe to rerun)
    python scripts/colab_badges.py --check    # change nothing; exit 1 if a badge is missing or stale

The repository URL and branch are read from ``_config.yml`` (``repository.url`` and
``repository.branch``), the one place they are kept; change them there and rerun.

* Every notebook in ``notebooks/`` (including ones added later) gets, as its first cell, a
  markdown cell holding only the badge. The cell is recognised by its tag ``colab-badge``
  and is rewritten in place on a rerun, never duplicated. It is also tagged
  ``remove-cell``: the book does not show it, because every book page already has a Colab
  launch button built from the same ``_config.yml`` (and the book then loads no image from
  the network).
* ``README.md`` gets a Colab badge per notebook between the markers
  ``<!-- colab-badges:start -->`` and ``<!-- colab-badges:end -->``, which must exist.

A file is written only when its content changes, in nbformat's layout (indent 1, the same
as ``scripts/clean_notebooks.py``), so a rerun leaves git clean.
``tests/test_notebook_hygiene.py`` imports :func:`notebook_badge_problems` and
:func:`readme_problems`.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = "notebooks"
TAG = "colab-badge"
TAGS = [TAG, "remove-cell"]
CELL_ID = "colab-badge"
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
README_START = "<!-- colab-badges:start -->"
README_END = "<!-- colab-badges:end -->"


def repository(root: Path = ROOT) -> tuple[str, str]:
    """(owner/name, branch) from ``_config.yml``'s ``repository`` section."""
    config = yaml.safe_load((root / "_config.yml").read_text(encoding="utf-8"))
    repo = config.get("repository") or {}
    url = str(repo.get("url", "")).rstrip("/").removesuffix(".git")
    match = re.fullmatch(r"https://github\.com/([\w.-]+/[\w.-]+)", url)
    if not match:
        raise SystemExit(
            f"colab_badges: _config.yml repository.url must be https://github.com/<owner>/<repo>, got {url!r}"
        )
    return match.group(1), str(repo.get("branch") or "main")


def colab_url(relpath: str, root: Path = ROOT) -> str:
    """The Colab address that opens ``relpath`` (relative to the repository root) from GitHub."""
    slug, branch = repository(root)
    return f"https://colab.research.google.com/github/{slug}/blob/{branch}/{relpath}"


def badge_markdown(relpath: str, root: Path = ROOT) -> str:
    return f"[![Open In Colab]({BADGE_IMAGE})]({colab_url(relpath, root)})"


def notebooks(root: Path = ROOT) -> list[Path]:
    return sorted(p for p in (root / NOTEBOOK_DIR).glob("*.ipynb"))


def _relpath(path: Path, root: Path) -> str:
    return path.resolve().relative_to(root.resolve()).as_posix()


def _is_badge(cell) -> bool:
    return cell.cell_type == "markdown" and TAG in cell.get("metadata", {}).get("tags", [])


def with_badge(nb: nbformat.NotebookNode, relpath: str, root: Path = ROOT) -> nbformat.NotebookNode:
    """A copy of ``nb`` whose first cell is the badge cell for ``relpath``, and no other badge cell."""
    nb = copy.deepcopy(nb)
    others = [c for c in nb.cells if not _is_badge(c)]
    cell = nbformat.v4.new_markdown_cell(badge_markdown(relpath, root), metadata={"tags": list(TAGS)})
    # A fixed id keeps reruns (and the same notebook on two branches) byte-identical;
    # notebooks older than nbformat 4.5 have no cell ids at all.
    if (nb.nbformat, nb.nbformat_minor) >= (4, 5):
        cell["id"] = CELL_ID
    else:
        cell.pop("id", None)
    nb.cells = [cell] + others
    return nb


def notebook_badge_problems(path: Path, root: Path = ROOT) -> list[str]:
    """What is wrong with ``path``'s badge; empty when the badge is present and current."""
    nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    badges = [i for i, c in enumerate(nb.cells) if _is_badge(c)]
    if not badges:
        return [f"no Colab badge cell (tag {TAG!r})"]
    problems = []
    if len(badges) > 1:
        problems.append(f"{len(badges)} badge cells (cells {badges}); there must be one")
    if badges[0] != 0:
        problems.append(f"the badge is cell {badges[0]}, not the first cell")
    expected = with_badge(nb, _relpath(path, root), root).cells[0]
    cell = nb.cells[badges[0]]
    if cell.source != expected.source:
        problems.append(f"stale badge {cell.source!r}; expected {expected.source!r}")
    if list(cell.metadata.get("tags", [])) != TAGS:
        problems.append(f"badge cell tags {cell.metadata.get('tags')!r}; expected {TAGS!r}")
    return problems


def readme_block(root: Path = ROOT) -> str:
    lines = [README_START, "", "| notebook | open in Colab |", "|---|---|"]
    for path in notebooks(root):
        rel = _relpath(path, root)
        lines.append(f"| [`{path.stem}`]({rel}) | {badge_markdown(rel, root)} |")
    lines += ["", README_END]
    return "\n".join(lines)


def _readme_updated(text: str, root: Path) -> str:
    pattern = re.compile(re.escape(README_START) + r".*?" + re.escape(README_END), re.S)
    if len(pattern.findall(text)) != 1:
        raise SystemExit(f"colab_badges: README.md must contain one {README_START} ... {README_END} block")
    return pattern.sub(lambda _: readme_block(root), text)


def readme_problems(root: Path = ROOT) -> list[str]:
    text = (root / "README.md").read_text(encoding="utf-8")
    if _readme_updated(text, root) != text:
        return ["README.md's Colab badge table is stale (run python scripts/colab_badges.py)"]
    return []


def apply(root: Path = ROOT, check: bool = False) -> list[str]:
    """Add or update every badge (or, with ``check``, only report). Returns what changed
    (or would change), one line per file."""
    changed = []
    for path in notebooks(root):
        nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
        new = with_badge(nb, _relpath(path, root), root)
        if new != nb:
            changed.append(f"{_relpath(path, root)}: " + "; ".join(notebook_badge_problems(path, root)))
            if not check:
                nbformat.write(new, path)
    readme = root / "README.md"
    text = readme.read_text(encoding="utf-8")
    new_text = _readme_updated(text, root)
    if new_text != text:
        changed.append("README.md: Colab badge table out of date")
        if not check:
            readme.write_text(new_text, encoding="utf-8")
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if anything is missing or stale")
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    changed = apply(opts.root, check=opts.check)
    for line in changed:
        print(("stale: " if opts.check else "updated: ") + line)
    if opts.check and changed:
        print("run: python scripts/colab_badges.py")
        return 1
    if not changed:
        print(f"colab_badges: all {len(notebooks(opts.root))} notebooks and README.md are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
