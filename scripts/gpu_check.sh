#!/usr/bin/env bash
# Run the package tests and the benchmarks on a CUDA machine that has torch, torchvision
# and timm but no network and no venv (a lent GPU box). Wheels for what it lacks (captum,
# zennit) may sit in .whl/ (see the device notes in the closing notes of issue 3).
#
#   bash scripts/gpu_check.sh            # logs to $OUT (or /tmp/gpu_check)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-/tmp/gpu_check}"; mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" CHAPTER6_OFFLINE=1 HF_HUB_OFFLINE=1 MPLBACKEND=Agg PYTHONUNBUFFERED=1
nvidia-smi -L || true
python3 -c "import torch, timm; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'timm', timm.__version__)"
# Widgets need ipywidgets/IPython and notebook hygiene needs the book tooling: not here.
python3 -m pytest -q -p no:cacheprovider -x tests --ignore=tests/test_widgets.py \
    --ignore=tests/test_notebook_hygiene.py 2>&1 | tee "$OUT/pytest.log"
python3 benchmarks/run.py --repeat 5 2>&1 | tee "$OUT/bench.log"
