"""Benchmark inputs: one detector-like uint16 stack in three storage forms, and a mask.

Files are keyed by their parameters and reused: a folder per (frames, height, width,
seed) holds ``none.h5`` (contiguous), ``gzip.h5`` (gzip 4 + shuffle, (1, H, W) chunks),
``bslz4.h5`` (Bitshuffle-LZ4, (1, H, W) chunks) and ``mask.npy``. The stack is written
in pieces so generating 2 GiB needs a few hundred MiB of memory, and each file appears
under its final name only once complete.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import h5py
import numpy as np

from producer.samples import compression_kwargs, detector_frames, ring_labels

#: The three storage forms the benchmark compares (names as in ``producer.samples``).
FORMS = ("none", "gzip", "bslz4")
#: Dataset path inside every benchmark file (the NeXus default the producer looks for).
DATASET = "/entry/data/data"
#: Where data goes unless FRAMESTATS_BENCH_DATA says otherwise (ignored by git).
DEFAULT_ROOT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".bench-data"
)
#: Frames generated per piece (512x512: 64 MiB of uint16, 512 MiB of float64 scratch).
PIECE = 128


@dataclass(frozen=True)
class Stack:
    """The paths of one generated stack."""

    folder: str
    frames: int
    height: int
    width: int

    def path(self, form: str) -> str:
        return os.path.join(self.folder, f"{form}.h5")

    @property
    def mask(self) -> str:
        return os.path.join(self.folder, "mask.npy")

    @property
    def nbytes(self) -> int:
        """Uncompressed bytes of the stack (what GB/s figures count)."""
        return self.frames * self.height * self.width * 2


def data_root() -> str:
    return os.environ.get("FRAMESTATS_BENCH_DATA") or DEFAULT_ROOT


def bench_mask(h: int, w: int) -> np.ndarray:
    """One boolean region: the detector's annulus (rings 2..4 of 4), the masked-sum case."""
    return ring_labels(h, w, 4) >= 2


def ensure_stack(
    frames: int,
    height: int = 512,
    width: int = 512,
    seed: int = 0,
    forms: tuple[str, ...] = FORMS,
    root: str | None = None,
    log: bool = True,
) -> Stack:
    """Generate (or reuse) the stack in ``forms``; returns its paths."""
    folder = os.path.join(root or data_root(), f"stack-{frames}x{height}x{width}-s{seed}")
    os.makedirs(folder, exist_ok=True)
    stack = Stack(folder, frames, height, width)
    if not os.path.exists(stack.mask):
        tmp = stack.mask + ".tmp.npy"
        np.save(tmp, bench_mask(height, width))
        os.replace(tmp, stack.mask)
    missing = [f for f in forms if not os.path.exists(stack.path(f))]
    if not missing:
        return stack
    if log:
        print(f"generating {frames}x{height}x{width} uint16 as {', '.join(missing)} in {folder}")
    tmp_paths = {f: stack.path(f) + ".tmp" for f in missing}
    files = {f: h5py.File(p, "w") for f, p in tmp_paths.items()}
    try:
        dsets = {}
        for form, fh in files.items():
            chunks = None if form == "none" else (1, height, width)
            dsets[form] = fh.create_dataset(
                DATASET,
                shape=(frames, height, width),
                dtype=np.uint16,
                chunks=chunks,
                **compression_kwargs(form),
            )
        rng = np.random.default_rng(seed)
        for start in range(0, frames, PIECE):
            n = min(PIECE, frames - start)
            piece = detector_frames(n, height, width, np.uint16, seed=int(rng.integers(2**31)))
            for d in dsets.values():
                d[start : start + n] = piece
    finally:
        for fh in files.values():
            fh.close()
    for form, tmp in tmp_paths.items():
        os.replace(tmp, stack.path(form))
    return stack


def file_sizes(stack: Stack, forms: tuple[str, ...] = FORMS) -> dict[str, int]:
    return {f: os.path.getsize(stack.path(f)) for f in forms}


if __name__ == "__main__":  # python -m bench.data FRAMES: generate ahead of a run
    import sys

    s = ensure_stack(int(sys.argv[1]) if len(sys.argv) > 1 else 4096)
    print(s.folder, file_sizes(s))
