#!/usr/bin/env python3
"""Strip notebooks down to what belongs in git.

    python scripts/clean_notebooks.py               # clean notebooks/ and book/
    python scripts/clean_notebooks.py a.ipynb dir/  # clean these files / folders
    python scripts/clean_notebooks.py --check       # list unclean notebooks, exit 1

For every code cell, outputs and execution counts are cleared, except in cells whose
source contains ``# NBVAL_CHECK_OUTPUT``: nbval compares those cells' stored output,
so they keep their *text* outputs (stdout streams, and the ``text/plain`` part of an
execute result) and lose everything else (images, HTML, widget views, stderr, errors).
nbval only compares a cell that has an execution count, so a checked cell that keeps
an output gets the fixed count 1 (a stable value, so re-running does not churn git);
one left without output has none.
The notebook-level ``widgets`` metadata and per-cell execution timings are removed and
the kernelspec is set to the ``python3`` kernel (the one ``scripts/setup.sh``
registers). A notebook is written back (nbformat, indent 1, trailing newline) only if
cleaning changed it.

``tests/test_notebook_hygiene.py`` imports :func:`clean_notebook` and
:func:`notebook_problems` from here.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import nbformat

CHECK_MARKER = "# NBVAL_CHECK_OUTPUT"
CHECKED_EXECUTION_COUNT = 1
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
CELL_TIMING_KEYS = ("execution", "ExecuteTime")
DEFAULT_DIRS = ("notebooks", "book")
ROOT = Path(__file__).resolve().parent.parent


def _text_outputs(outputs: list) -> list:
    """The outputs a checked cell keeps: stdout streams and text/plain results."""
    kept = []
    for out in outputs:
        kind = out.get("output_type")
        if kind == "stream" and out.get("name") == "stdout":
            kept.append(nbformat.v4.new_output("stream", name="stdout", text=out.get("text", "")))
        elif kind == "execute_result" and "text/plain" in out.get("data", {}):
            kept.append(
                nbformat.v4.new_output(
                    "execute_result",
                    data={"text/plain": out["data"]["text/plain"]},
                    execution_count=CHECKED_EXECUTION_COUNT,
                )
            )
    return kept


def clean_notebook(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Return a cleaned deep copy of ``nb`` (the argument is not modified)."""
    nb = copy.deepcopy(nb)
    nb.metadata.pop("widgets", None)
    nb.metadata["kernelspec"] = nbformat.NotebookNode(dict(KERNELSPEC))
    for cell in nb.cells:
        for key in CELL_TIMING_KEYS:
            cell.get("metadata", {}).pop(key, None)
        if cell.cell_type != "code":
            continue
        if CHECK_MARKER in cell.source:
            cell.outputs = _text_outputs(cell.get("outputs", []))
            cell.execution_count = CHECKED_EXECUTION_COUNT if cell.outputs else None
        else:
            cell.outputs = []
            cell.execution_count = None
    return nb


def notebook_problems(nb: nbformat.NotebookNode) -> list[str]:
    """Describe what is unclean in ``nb``; an empty list means it is clean."""
    problems = []
    if "widgets" in nb.metadata:
        problems.append("notebook metadata has widget state ('widgets')")
    if nb.metadata.get("kernelspec") != KERNELSPEC:
        problems.append(f"kernelspec is {nb.metadata.get('kernelspec')!r}, not {KERNELSPEC!r}")
    cleaned = clean_notebook(nb)
    for i, (cell, clean) in enumerate(zip(nb.cells, cleaned.cells)):
        if cell == clean:
            continue
        what = []
        if any(key in cell.get("metadata", {}) for key in CELL_TIMING_KEYS):
            what.append("execution timing metadata")
        if cell.cell_type == "code":
            if cell.get("execution_count") != clean.get("execution_count"):
                what.append(f"execution count {cell.get('execution_count')!r}"
                            f" (should be {clean.get('execution_count')!r})")
            if cell.get("outputs") != clean.get("outputs"):
                what.append(
                    "non-text outputs" if CHECK_MARKER in cell.source else "outputs"
                )
        problems.append(f"cell {i} has " + (", ".join(what) or "content to clean"))
    return problems


def clean_file(path: Path, check: bool = False) -> bool:
    """Clean one notebook in place (unless ``check``). Return True if it was unclean."""
    nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    cleaned = clean_notebook(nb)
    if cleaned == nb:
        return False
    if not check:
        nbformat.write(cleaned, path)  # indent 1, sorted keys, trailing newline
    return True


def find_notebooks(args: list[str]) -> list[Path]:
    """Notebooks named in ``args`` (files or folders), or all under notebooks/ and book/."""
    paths = [Path(a) for a in args] or [ROOT / d for d in DEFAULT_DIRS]
    found = []
    for p in paths:
        if p.is_dir():
            found += sorted(
                q for q in p.rglob("*.ipynb")
                if ".ipynb_checkpoints" not in q.parts and "_build" not in q.parts
            )
        elif p.suffix == ".ipynb" and p.exists():
            found.append(p)
        elif args:
            raise SystemExit(f"clean_notebooks: not a notebook or folder: {p}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", help="notebooks or folders (default: notebooks/ and book/)")
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if any notebook is unclean")
    opts = parser.parse_args(argv)

    unclean = []
    for path in find_notebooks(opts.paths):
        if opts.check:
            nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
            problems = notebook_problems(nb)
            if problems:
                unclean.append(path)
                print(f"unclean: {path}")
                for p in problems:
                    print(f"    {p}")
        elif clean_file(path):
            unclean.append(path)
            print(f"cleaned: {path}")

    if opts.check and unclean:
        print(f"{len(unclean)} notebook(s) need cleaning: run python scripts/clean_notebooks.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
