"""Sample data: detector-like image stacks and masks, for the demo, tests and benchmarks.

Frames look like a pixel detector's: low Poisson counts with a few bright spots, so
compression ratios and value ranges are realistic.
"""

from __future__ import annotations

import os
from typing import Any

import h5py
import hdf5plugin
import numpy as np

#: Compression forms understood by ``write_stack``.
FORMS = ("none", "gzip", "bslz4", "lz4", "zstd", "blosc")


def detector_frames(n: int, h: int, w: int, dtype: Any = np.uint16, seed: int = 0) -> np.ndarray:
    """``n`` frames of low Poisson counts plus bright spots, in ``dtype``."""
    rng = np.random.default_rng(seed)
    base = rng.poisson(2.0, size=(n, h, w)).astype(np.float64)
    spots = max(1, (h * w) // 4096)
    for i in range(n):
        ys, xs = rng.integers(0, h, spots), rng.integers(0, w, spots)
        base[i, ys, xs] += rng.integers(50, 5000, spots)
    dt = np.dtype(dtype)
    if dt.kind in "ui":
        info = np.iinfo(dt)
        base = np.clip(base, info.min, info.max)
    return base.astype(dt)


def compression_kwargs(form: str) -> dict[str, Any]:
    """h5py create_dataset keywords for a compression form."""
    if form == "none":
        return {}
    if form == "gzip":
        return {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    if form == "bslz4":
        return dict(hdf5plugin.Bitshuffle(cname="lz4"))
    if form == "lz4":
        return dict(hdf5plugin.LZ4())
    if form == "zstd":
        return dict(hdf5plugin.Zstd())
    if form == "blosc":
        return dict(hdf5plugin.Blosc(cname="lz4", shuffle=hdf5plugin.Blosc.SHUFFLE))
    raise ValueError(f"unknown compression form {form!r}; choose from {FORMS}")


def write_stack(
    path: str,
    frames: np.ndarray,
    form: str = "none",
    dataset: str = "/entry/data/data",
    chunk_frames: int | None = 1,
) -> str:
    """Write ``frames`` as a 3-D dataset; compressed forms are chunked (chunk_frames, H, W)."""
    kwargs = compression_kwargs(form)
    chunks = None
    if form != "none" or chunk_frames not in (None, 1):
        chunks = (chunk_frames or 1, frames.shape[1], frames.shape[2])
    with h5py.File(path, "w") as f:
        f.create_dataset(dataset, data=frames, chunks=chunks, **kwargs)
    return path


def ring_labels(h: int, w: int, n_rings: int = 4) -> np.ndarray:
    """Integer label mask of concentric rings 1..n_rings around the centre (0 outside)."""
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot(yy - (h - 1) / 2, xx - (w - 1) / 2)
    edges = np.linspace(0, min(h, w) / 2, n_rings + 1)
    labels = np.digitize(r, edges).astype(np.int32)
    labels[labels > n_rings] = 0
    return labels


def make_demo(folder: str, n: int = 400, h: int = 256, w: int = 256) -> tuple[str, str]:
    """A Bitshuffle-LZ4 demo stack and a ring label mask in ``folder``; returns their paths."""
    os.makedirs(folder, exist_ok=True)
    data = os.path.join(folder, "demo.h5")
    mask = os.path.join(folder, "demo_mask.npy")
    if not os.path.exists(data):
        write_stack(data, detector_frames(n, h, w, seed=1), form="bslz4", chunk_frames=1)
    np.save(mask, ring_labels(h, w, 4))
    return data, mask
