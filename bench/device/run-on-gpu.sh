#!/usr/bin/env bash
# One device session: CUDA kernel tests, kernel benchmark on cuda, GPU feeding benchmark.
set -u
export PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
python3 -c "import torch, h5py, hdf5plugin, numpy; print('torch', torch.__version__, 'h5py', h5py.__version__, 'numpy', numpy.__version__, torch.cuda.get_device_name(0))"
echo "=== kernel tests (all, gpu included)"
timeout 150 python3 -m pytest tests/test_kernel.py tests/test_reader.py -q -p no:cacheprovider -o addopts="" -W ignore 2>&1 | tee $OUT/kernel-tests.txt | tail -25
echo "=== bench.kernel cuda"
timeout 120 python3 -m bench.kernel --device cuda 2>&1 | tee $OUT/bench-kernel-cuda.txt | tail -30
echo "=== bench.gpu"
timeout 220 python3 -m bench.gpu 2>&1 | tee $OUT/bench-gpu.txt | tail -40
cp bench/RESULTS-gpu.md $OUT/ 2>/dev/null
true
