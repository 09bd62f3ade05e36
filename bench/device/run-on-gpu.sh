#!/usr/bin/env bash
# One device session: the reading tests and every test marked gpu, then python -m bench.gpu
# (results in bench/RESULTS-gpu.md and bench/results-gpu.json, copied to $OUT).
#
# Before: bash bench/device/wheels.sh   (fills .whl/: nvCOMP, a trimmed hdf5plugin, lz4, ...)
# Device: run(command="bash bench/device/run-on-gpu.sh", carry=[".whl"], timeout_s=600)
#         about 5-8 minutes after the machine's start; copy RESULTS-gpu.md and
#         results-gpu.json from the returned files into bench/ and commit them.
# Here:   bash bench/device/run-on-gpu.sh --dry-run   (no GPU: everything but CUDA, toy sizes)
set -u
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d)}
DRY=""
if [ "${1:-}" = "--dry-run" ]; then DRY=--dry-run; fi
if [ -z "$DRY" ]; then
  nvidia-smi -L
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
$PY - <<'PY'
import importlib.util, torch, h5py, hdf5plugin, numpy
from worker.read import nvcomp
lib = nvcomp.load()
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "h5py", h5py.__version__,
      "hdf5plugin", hdf5plugin.version, "numpy", numpy.__version__,
      "triton", importlib.util.find_spec("triton") is not None,
      "lz4", importlib.util.find_spec("lz4") is not None, "nvcomp", lib is not None)
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(0))
PY
echo "=== tests: reading (all) and every test marked gpu"
timeout 200 $PY -m pytest tests/unit/read -q -p no:cacheprovider -o addopts="" -W ignore -rs \
  2>&1 | tee "$OUT/tests-read.txt" | tail -15
timeout 150 $PY -m pytest tests -m gpu -q -p no:cacheprovider -o addopts="" -W ignore -rs \
  --continue-on-collection-errors --ignore=tests/unit/read 2>&1 | tee "$OUT/tests-gpu.txt" | tail -15
echo "=== bench.gpu"
timeout 420 $PY -m bench.gpu $DRY 2>&1 | tee "$OUT/bench-gpu.txt" | tail -45
if [ -z "$DRY" ]; then cp bench/RESULTS-gpu.md bench/results-gpu.json "$OUT/" 2>/dev/null; fi
echo "output in $OUT"
true
