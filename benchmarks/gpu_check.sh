#!/usr/bin/env bash
# GPU check: install (torch pinned by constraints.txt), run the CUDA tests, print encoder / decoder /
# fine-tuning timings. Under 5 minutes on a machine with a CUDA GPU; on one without, the tests skip
# and the timings run on the CPU (a dry run of the script itself).
#
#   bash benchmarks/gpu_check.sh                 # installs into ./.venv-gpu (made if missing)
#   PYTHON=.venv/bin/python GPU_CHECK_INSTALL=0 bash benchmarks/gpu_check.sh   # an existing env
#
# Environment: PYTHON (interpreter to use or to make the venv with, default python3), VENV (default
# .venv-gpu), GPU_CHECK_INSTALL=0 (skip pip), PIP_FIND_LINKS / PIP_NO_INDEX (offline wheelhouse).
# Put the printed table in docs/benchmarks.md ("GPU").
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
say() { printf '\n== %s (%ds)\n' "$1" $((SECONDS - start)); }

PY=${PYTHON:-python3}
if [ "${GPU_CHECK_INSTALL:-1}" != 0 ]; then
  VENV=${VENV:-.venv-gpu}
  say "install into $VENV (pip -c constraints.txt: the torch build stays the pinned one)"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  PY="$VENV/bin/python"
  timeout 180 "$PY" -m pip install -q -c constraints.txt -e ".[test]"
fi

say "machine"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
  || echo "nvidia-smi not found"
"$PY" - <<'PY'
import torch
print("torch", torch.__version__, "CUDA", torch.version.cuda, "available:", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(0), "bf16:", torch.cuda.is_bf16_supported())
PY

say "GPU tests (pytest -m gpu; they skip without CUDA)"
rc=0
timeout 120 "$PY" -m pytest -m gpu -q -p no:cacheprovider -rs tests/core/test_gpu.py \
  "tests/core/test_backends.py::test_cuda_autocast_masks_match_fp32" || rc=$?

say "timings"
cuda=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))')
limit=$([ "$cuda" = 1 ] && echo 120 || echo 400)  # the CPU fallback is a slow dry run
timeout "$limit" "$PY" benchmarks/bench_gpu.py --repeats 20 || rc=$?

say "done, exit status $rc"
exit $rc
