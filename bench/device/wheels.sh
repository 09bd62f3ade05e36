#!/usr/bin/env bash
# Fill .whl/ (ignored by git) with the wheels run-on-gpu.sh installs on the device machine,
# which has torch, Triton, h5py and numba but not these (CPython 3.12, x86-64 there).
# hdf5plugin is trimmed to the filters the tests and benchmarks use (Bitshuffle, Zstd, LZ4):
# the whole wheel (46 MB) and libnvcomp (30 MB) would not fit the 64 MiB a device call carries.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
mkdir -p .whl
rm -f .whl/*.whl
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  nvidia-libnvcomp-cu13==6.0.0.12 hdf5plugin==7.1.0 lz4==4.4.5 redis==8.1.0 deflate==0.9.0
$PY - <<'PY'
import glob, os, zipfile
keep = ("libh5bshuf", "libh5zstd", "libh5lz4")
(src,) = glob.glob(".whl/hdf5plugin-*.whl")
tmp = src + ".tmp"
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
    for item in zin.infolist():
        name = item.filename
        plugin = "/plugins/" in name and not any(k in name for k in keep)
        if plugin:
            continue
        data = zin.read(name)
        if name.endswith(".dist-info/RECORD"):
            lines = data.decode().splitlines()
            data = "\n".join(
                l for l in lines if not ("/plugins/" in l and not any(k in l for k in keep))
            ).encode() + b"\n"
        zout.writestr(item, data)
os.replace(tmp, src)
PY
du -ch .whl/*.whl | tail -1
