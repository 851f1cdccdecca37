#!/usr/bin/env bash
# Build the Jupyter Book (JB 1) into _build/html, executing every notebook, then the
# readers' downloads (scripts/make_downloads.py: a zip of the notebooks and the whole-book PDF,
# in _build/html/downloads/, linked from the intro page).
#
#   bash scripts/build_book.sh                 # set up .venv, then build everything
#   bash scripts/build_book.sh --skip-setup    # build only (used by scripts/test.sh)
#   bash scripts/build_book.sh --incremental   # reuse _build: only changed pages are
#                                              # re-read and re-executed
#   bash scripts/build_book.sh --no-downloads  # the HTML only
#
# Sphinx warnings are errors (-W), broken references are reported (-n), and
# --keep-going reports every warning before failing. Exit status is non-zero on any
# warning or notebook error. The book root is the repository root (_config.yml and
# _toc.yml live there), so the HTML lands in ./_build/html (index: _build/html/index.html).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

SETUP=1
DOWNLOADS=1
ALL=(--all)
for arg in "$@"; do
    case "$arg" in
        --skip-setup) SETUP=0 ;;
        --incremental) ALL=() ;;
        --no-downloads) DOWNLOADS=0 ;;
        -h|--help) sed -n '2,16p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "build_book.sh: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

if [[ $SETUP == 1 ]]; then
    bash scripts/setup.sh
fi

# The notebook kernels must use matplotlib's inline backend (ipykernel selects it
# only when MPLBACKEND is unset); an inherited MPLBACKEND=Agg would silently drop
# every figure from the book.
unset MPLBACKEND

start=$(date +%s)
echo "build_book: jupyter-book build . -> _build/html (warnings are errors)"
status=0
.venv/bin/jupyter-book build . --path-output . --builder html -W -n --keep-going "${ALL[@]}" || status=$?
elapsed=$(( $(date +%s) - start ))

if [[ $status -ne 0 ]]; then
    echo "build_book: FAILED (exit $status) after ${elapsed} s; see the warnings above" \
         "and any notebook traceback under _build/html/reports/" >&2
    exit "$status"
fi
if [[ ! -f _build/html/index.html ]]; then
    echo "build_book: FAILED: _build/html/index.html was not produced (${elapsed} s)" >&2
    exit 1
fi
if [[ $DOWNLOADS == 1 ]]; then
    .venv/bin/python scripts/make_downloads.py
fi
echo "build_book: OK in $(( $(date +%s) - start )) s -> $PWD/_build/html/index.html"
