#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in .venv.
#
#   bash scripts/setup.sh          # create .venv if missing, install, register kernel
#   bash scripts/setup.sh --lab    # the same, plus JupyterLab (extra "dev")
#   bash scripts/setup.sh --force  # reinstall even if nothing seems to have changed
#
# Also installs Debian's `chromium` (for scripts/browser_check.py) when no Chromium or
# Chrome is found and apt-get can be used (as root, or with password-less sudo); where it
# cannot, it says so loudly and the browser check is skipped with a warning (CI sets
# BROWSER_CHECK_REQUIRED=1 to make that a failure). CHAPTER6_NO_APT=1 skips the attempt.
#
# Idempotent: a second run is quick. The install is skipped when pyproject.toml has
# not changed since the last successful run and the key packages still import.
# pip never reinstalls torch/torchvision/timm: pyproject.toml declares ranges, and an
# already-installed version that satisfies them is kept.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
STAMP="$VENV/.chapter6-setup-stamp"

FORCE=0
EXTRAS="test,book"
CHECK="import chapter6_utils, jupyter_book, nbval, sphinx_exercise, ipykernel, ruff, crp"
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        --lab) EXTRAS="test,book,dev"; CHECK="$CHECK, jupyterlab" ;;
        -h|--help) sed -n '2,11p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "setup.sh: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

start=$(date +%s)

if [[ ! -x "$PY" ]]; then
    echo "setup: creating virtual environment in .venv"
    python3 -m venv "$VENV"
fi

want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
have="$(cat "$STAMP" 2>/dev/null || true)"

if [[ $FORCE == 0 && "$want" == "$have" ]] && "$PY" -c "$CHECK" 2>/dev/null; then
    echo "setup: .venv is up to date (pyproject.toml unchanged); skipping pip install"
else
    echo "setup: installing chapter6-utils with extras [$EXTRAS] into .venv (this can take a few minutes)"
    # This machine's pip configuration names local index folders that do not exist
    # for most packages; drop pip's one-line notice about each (it is harmless).
    "$PY" -m pip install --quiet --disable-pip-version-check -e ".[$EXTRAS]" 2>&1 \
        | { grep -v "is ignored: it is neither a file nor a directory" || true; }
    # zennit-crp (import name crp), which tests/test_concepts.py compares concept relevance
    # with, declares zennit<=0.4.6 while the project needs zennit>=0.5.1; its code runs on
    # zennit 0.5.1, so it is installed without its declared dependencies (--no-deps).
    # pip would refuse the conflict, so it cannot be an extra in pyproject.toml.
    "$PY" -m pip install --quiet --disable-pip-version-check --no-deps "zennit-crp==0.6.0" 2>&1 \
        | { grep -v "is ignored: it is neither a file nor a directory" || true; }
    echo "$want" > "$STAMP"
fi

# Register the venv's interpreter as the Jupyter kernel named "python3", inside the
# venv (--sys-prefix). nbval and the book build then run notebooks with this python,
# whatever other "python3" kernels exist on the machine.
"$PY" -m ipykernel install --sys-prefix --name python3 --display-name "Python 3" >/dev/null
echo "setup: kernel 'python3' -> $PY"

# Headless Chromium for scripts/browser_check.py (run by scripts/test.sh after the book build).
if command -v chromium >/dev/null || command -v chromium-browser >/dev/null \
        || command -v google-chrome >/dev/null || command -v google-chrome-stable >/dev/null; then
    :
elif [[ "${CHAPTER6_NO_APT:-0}" != 1 ]] && command -v apt-get >/dev/null; then
    SUDO=()
    [[ $(id -u) -ne 0 ]] && sudo -n true 2>/dev/null && SUDO=(sudo -n)
    if [[ $(id -u) -eq 0 || ${#SUDO[@]} -gt 0 ]]; then
        echo "setup: installing Debian's chromium for the browser check (apt-get)"
        if ! { "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium \
                || { "${SUDO[@]}" apt-get update -q && "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
                     apt-get install -y -q --no-install-recommends chromium; }; } >/tmp/chapter6-apt.log 2>&1; then
            echo "setup: WARNING: apt-get could not install chromium (log: /tmp/chapter6-apt.log);" \
                 "the browser check will be skipped" >&2
        fi
    else
        echo "setup: WARNING: no Chromium, and apt-get needs root: run 'sudo apt-get install chromium'" \
             "or the browser check will be skipped" >&2
    fi
else
    echo "setup: WARNING: no Chromium or Chrome found and no apt-get; install one (or set CHROMIUM=/path)" \
         "or the browser check will be skipped" >&2
fi

echo "setup: done in $(( $(date +%s) - start )) s"
