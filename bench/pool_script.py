"""The bincount baseline as a user's own script: a fresh interpreter, a process pool.

``python -m bench.pool_script FILE LABELS.npy OUT.npy [--processes 2] [--dataset PATH]``

What someone without framestats would write for per-frame region sums: each of
``--processes`` processes (the platform's default start method) reads a contiguous
share of the frames with h5py (hdf5plugin decodes Bitshuffle-LZ4) and sums each frame
by region with numpy ``bincount(labels, weights=frame)``; the sums (frames, K) go to
OUT.npy. Timed from outside, start to exit, it is the baseline a ``producer submit
--wait`` command is compared with like for like: both start an interpreter and import
their libraries (``bench.regions`` also times a warm pool, which starts nothing).

Only numpy, h5py and hdf5plugin are imported: nothing of the project, which would make
the baseline pay for imports a user's script does not have.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor

import h5py
import hdf5plugin  # noqa: F401  (Bitshuffle-LZ4 for h5py)
import numpy as np

#: The frames' dataset in ``bench.data``'s stacks.
DATASET = "/entry/data/data"
#: Frames per read.
BLOCK = 64


def bincount_sums(
    path: str, dataset: str, flat: np.ndarray, k: int, lo: int, hi: int
) -> np.ndarray:
    """Frames [lo, hi) of ``path:dataset`` summed per region of ``flat`` labels 1..k.

    Reads into one reused block and converts each frame into one reused float64 buffer
    (bincount's weights): a new 32 MiB block and 2 MiB of weights per frame would be
    fresh pages from the kernel in a new process, most of a cold run's time."""
    out = np.empty((hi - lo, k))
    with h5py.File(path, "r") as f:
        dset = f[dataset]
        block = np.empty((min(BLOCK, hi - lo), *dset.shape[1:]), dset.dtype)
        weights = np.empty(block[0].size)
        for a in range(lo, hi, BLOCK):
            n = min(BLOCK, hi - a)
            dset.read_direct(block, np.s_[a : a + n], np.s_[:n])
            for i in range(n):
                np.copyto(weights, block[i].ravel())
                out[a - lo + i] = np.bincount(flat, weights=weights, minlength=k + 1)[1:]
    return out


def _share(path: str, dataset: str, labels_path: str, lo: int, hi: int) -> np.ndarray:
    flat = np.load(labels_path).ravel()
    return bincount_sums(path, dataset, flat, int(flat.max()), lo, hi)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file")
    ap.add_argument("labels", help=".npy of integer labels 1..K (0: no region)")
    ap.add_argument("out", help=".npy written with the sums (frames, K)")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--dataset", default=DATASET)
    args = ap.parse_args(argv)
    with h5py.File(args.file, "r") as f:
        frames = f[args.dataset].shape[0]
    n = args.processes
    cuts = [round(i * frames / n) for i in range(n + 1)]
    with ProcessPoolExecutor(n) as pool:
        parts = pool.map(
            _share, [args.file] * n, [args.dataset] * n, [args.labels] * n, cuts[:-1], cuts[1:]
        )
        np.save(args.out, np.concatenate(list(parts)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
