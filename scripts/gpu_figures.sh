#!/usr/bin/env bash
# Every missing GPU figure in one call, on a bare GPU machine that reaches no package registry:
#   bash scripts/gpu_figures.sh [device=cuda] [model=real|tiny] [budget_s=450] ...   (writes into $OUT when set)
# 1. installs the GPU kit (`make gpu-kit` on a machine that reaches the registry; the folder .gpu-kit travels with
#    the working tree) into a --target folder with --no-index, only where a kit folder is present;
# 2. runs scripts/gpu_figures.py with the same arguments: versions first, then each figure, bounded in time.
# PYTHON picks the interpreter (default: python3, the GPU image's). README "Benchmarks", docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
KIT="${GPU_KIT:-.gpu-kit}"
if compgen -G "$KIT/*.whl" > /dev/null; then
  target="${GPU_KIT_TARGET:-${TMPDIR:-/tmp}/asuka-gpu-kit}"
  start=$(date +%s)
  "$PYTHON" -m pip install -q --disable-pip-version-check --no-index --no-deps --upgrade --target "$target" "$KIT"/*.whl
  echo "gpu kit: installed $(ls "$KIT"/*.whl | wc -l) wheels into $target in $(( $(date +%s) - start )) s"
  export PYTHONPATH="$target${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "gpu kit: no wheels in $KIT, using the installed packages"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 WANDB_MODE=disabled
exec "$PYTHON" scripts/gpu_figures.py python="$PYTHON" "$@"
