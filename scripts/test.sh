#!/usr/bin/env bash
# Set up .venv and run every check the project has, stopping at the first failure:
#
#   0. ruff check                    the linter over the package, tests, benchmarks, scripts
#   1. pytest tests/                 package tests and notebook hygiene
#   2. nbval on notebooks/, book/    every notebook runs top to bottom without error;
#                                    cells marked "# NBVAL_CHECK_OUTPUT" must reproduce
#                                    their stored text output
#   3. the online rehearsal          the chapter-world cells of notebooks 02, 04, 06, 07
#                                    against local stand-ins for the download hosts, so
#                                    the pretrained path (download, cache, hash, safe load,
#                                    class names, DINO's heads) runs (scripts/rehearse_online.py)
#   4. the book build with -W        zero Sphinx warnings, every notebook executes; then the
#                                    downloads (notebooks zip, whole-book PDF)
#   5. the browser check             headless Chromium opens every built page; fails on a
#                                    missing image, a notebook page without its figures, a
#                                    broken link inside the book, TeX not rendered, anything
#                                    loaded from another host, a dead widget, a theme defect;
#                                    screenshots in _build/screenshots/
#
# Not here (too long for CI's budget): bash scripts/test_floors.sh, before each release.
#
#   bash scripts/test.sh
#
# Nothing here times anything: speed lives in benchmarks/. The timeouts are hang guards
# (minutes), so the suite passes on a machine busy with other work.
# Environment knobs: NBVAL_CELL_TIMEOUT (seconds per notebook cell, default 600).
# .ci/run calls this script.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Pretrained weights: the package probes the network itself (one bounded probe per
# process) and falls back to random weights when offline; it never lets the Hugging Face
# hub or torch hub download or retry, so no offline flag is set here.
# Off-screen matplotlib for the package tests only: notebook kernels (nbval, the book)
# must keep ipykernel's inline backend, which ipykernel selects only when MPLBACKEND
# is unset, or their figures disappear.
unset MPLBACKEND
# No stdin in CI; never wait for input.
exec </dev/null

NBVAL_CELL_TIMEOUT="${NBVAL_CELL_TIMEOUT:-600}"  # a hang guard, not a speed limit

declare -a SUMMARY=()
total_start=$(date +%s)

summary() {
    echo
    echo "================ test.sh summary ================"
    for line in "${SUMMARY[@]}"; do echo "  $line"; done
    echo "  total: $(( $(date +%s) - total_start )) s"
    echo "================================================="
}

stage() {  # stage NAME COMMAND...
    local name="$1"; shift
    echo
    echo ">>> [$name] $*"
    local t0 status=0
    t0=$(date +%s)
    "$@" || status=$?
    local dt=$(( $(date +%s) - t0 ))
    if [[ $status -ne 0 ]]; then
        SUMMARY+=("FAIL  $name (${dt} s, exit $status)")
        summary
        echo "test.sh: stage '$name' failed; later stages were not run." >&2
        exit "$status"
    fi
    SUMMARY+=("ok    $name (${dt} s)")
}

stage "setup" bash scripts/setup.sh

# Seconds, and it finds undefined names and unused imports before any test runs
# (configuration: [tool.ruff] in pyproject.toml).
stage "ruff" .venv/bin/python -m ruff check chapter6_utils tests benchmarks scripts

stage "pytest tests" env MPLBACKEND=Agg .venv/bin/python -m pytest tests

shopt -s nullglob
notebooks=(notebooks/*.ipynb book/*.ipynb)  # the model card checks the shipped weights' accuracies
shopt -u nullglob
if (( ${#notebooks[@]} )); then
    stage "nbval notebooks (${#notebooks[@]})" .venv/bin/python -m pytest \
        --nbval-lax --nbval-current-env \
        --nbval-cell-timeout="$NBVAL_CELL_TIMEOUT" \
        --nbval-sanitize-with tests/nbval_sanitize.cfg \
        -p no:cacheprovider \
        "${notebooks[@]}"
else
    SUMMARY+=("skip  nbval notebooks (no notebooks in notebooks/ or book/)")
fi

stage "online rehearsal" .venv/bin/python scripts/rehearse_online.py

stage "book build -W" bash scripts/build_book.sh --skip-setup

stage "browser check" .venv/bin/python scripts/browser_check.py

summary
echo "test.sh: all stages passed."
