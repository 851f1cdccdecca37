#!/usr/bin/env bash
# Prove the lower bounds of pyproject.toml: install the declared minimum of every dependency
# (and of the "test" extra) in a second virtual environment, .venv-floors, and run pytest there.
#
#   bash scripts/test_floors.sh                       # pytest tests/ against the floors
#   bash scripts/test_floors.sh tests/test_lrp.py -x  # arguments go to pytest
#
#   FLOORS_TORCH="torch==2.13.0 torchvision==0.28.0"  torch and torchvision to test with; default:
#                                                     the versions in .venv, i.e. the machine's
#                                                     (torch is never downloaded for this by default)
#   FLOORS_OVERRIDE="timm==1.0.15 numpy==1.26.0"      try other candidate floors (exploring)
#   FLOORS_KEEP=1                                     reuse .venv-floors instead of recreating it
#
# Each `name>=X` in pyproject.toml is installed as `name==X` (scripts/floors.py); pip resolves
# the rest. torch and torchvision are the exception: a CPU machine cannot hold every torch
# release, so their floor is tested only as far down as FLOORS_TORCH reaches. The script
# prints every installed version of a declared package, then pytest's summary. Exit status:
# pytest's (0 when every test passes at the floors).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
VENV="${FLOORS_VENV:-$ROOT/.venv-floors}"
start=$(date +%s)

if [[ -z "${FLOORS_TORCH:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then
        FLOORS_TORCH="$(.venv/bin/python -c 'from importlib.metadata import version as v
print("torch==" + v("torch"), "torchvision==" + v("torchvision"))')"
    else
        FLOORS_TORCH="torch torchvision"
    fi
fi

if [[ "${FLOORS_KEEP:-0}" == 1 && -x "$VENV/bin/python" ]]; then
    echo "floors: reusing $VENV"
else
    echo "floors: creating $VENV"
    python3 -m venv --clear "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

# The pins: the declared minimums (of the runtime dependencies alone, and with the "test"
# extra), FLOORS_OVERRIDE replacing any of the same name, and torch's.
read -r -a overrides <<< "${FLOORS_OVERRIDE:-}"
read -r -a torch_specs <<< "$FLOORS_TORCH"
write_pins() {  # write_pins EXTRAS FILE
    python3 scripts/floors.py --extras "$1" --skip torch,torchvision > "$2.tmp"
    for o in "${overrides[@]}"; do
        name="$(sed -E 's/[=<>!~ ].*//' <<< "$o" | tr 'A-Z_.' 'a-z--')"
        grep -v -i -E "^${name}==" "$2.tmp" > "$2.tmp2" || true
        mv "$2.tmp2" "$2.tmp"
        echo "$o" >> "$2.tmp"
    done
    printf '%s\n' "${torch_specs[@]}" >> "$2.tmp"
    mv "$2.tmp" "$2"
}
pins="$VENV/floors-constraints.txt"
write_pins test "$pins"
write_pins "" "$VENV/floors-runtime.txt"
echo "floors: pins ($(wc -l < "$pins")): $(tr '\n' ' ' < "$pins")"

quiet_pip() {  # this machine's pip names local index folders that may not exist: drop that notice
    "${PIP[@]}" "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
    return "${PIPESTATUS[0]}"
}
install() {  # quietly; on failure, show pip's reason (which --quiet hides) and stop
    if ! quiet_pip install --quiet "$@"; then
        echo "floors: FAILED: pip cannot install these floors together; pip's reason:" >&2
        "${PIP[@]}" install --dry-run "$@" 2>&1 | grep -A10 -E "conflict is caused|No matching distribution" >&2 || true
        exit 1
    fi
}
install --upgrade pip
# torch first (large; resolved alone so that nothing else can move it), then the package
# itself, built as a wheel as a user gets it, with every declared minimum pinned.
install -c "$pins" "${torch_specs[@]}"

# Runtime first, alone: every declared dependency must import with only what the package
# itself pulls in (a floor whose import needs an undeclared package, such as ipywidgets
# 7.6.0-7.6.3 and ipython_genutils, would pass once the test tools had brought that package).
install -c "$VENV/floors-runtime.txt" .
echo "floors: importing every runtime dependency and every module of chapter6_utils (runtime floors only)"
(cd "$VENV" && "$VENV/bin/python" "$ROOT/scripts/floors.py" --import-check)
[[ "${FLOORS_KEEP:-0}" == 1 ]] && echo "floors: note: FLOORS_KEEP=1 reused the venv, so the runtime-only" \
    "import check may have seen packages left by an earlier run"

install -c "$pins" ".[test]"
echo "floors: the requirements of chapter6-utils[test] are all met"
(cd "$VENV" && "$VENV/bin/python" "$ROOT/scripts/floors.py" --closure-check --extras test)

echo "floors: installed (declared packages):"
"$VENV/bin/python" - "$pins" <<'EOF'
import re, sys
from importlib.metadata import version
from packaging.version import Version  # installed with pytest
wrong = []
for line in open(sys.argv[1]):
    name, _, want = line.strip().partition("==")
    name = re.split(r"[<>=!~ ]", name)[0]
    have = version(name)
    ok = not want or Version(have) == Version(want) or Version(have).public == Version(want).public
    print(f"  {name:16s} {have}" + ("" if ok else f"   (pinned {want}!)"))
    wrong += [] if ok else [name]
sys.exit(f"floors: not installed at the pinned version: {wrong}" if wrong else 0)
EOF

echo "floors: pytest against the floors (setup $(( $(date +%s) - start )) s)"
status=0
# The venv's own pytest (not `python -m pytest`, which would put the source tree first on
# sys.path): the tests import the installed wheel.
env MPLBACKEND=Agg "$VENV/bin/pytest" -p no:cacheprovider -q "${@:-tests}" </dev/null || status=$?
echo "floors: pytest exit $status; total $(( $(date +%s) - start )) s"
exit "$status"
