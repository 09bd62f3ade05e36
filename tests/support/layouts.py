"""Generated files that mimic real layouts: detectors (Eiger master + data files, VDS,
scans) and an earlier version's committed chunk results."""

from __future__ import annotations

import os
from collections.abc import Sequence

import h5py
import hdf5plugin
import numpy as np

DETECTOR_SPECIFIC = "/entry/instrument/detector/detectorSpecific"


def write_legacy_chunk(
    workdir: str, index: int, start: int, stop: int, stats: dict[str, np.ndarray], meta: dict
) -> None:
    """A chunk result as versions before 2026-11-27 committed it (``.npz``)."""
    import json

    from framestats.paths import LEGACY_CHUNK_SUFFIX, chunk_path

    arrays = {f"stat_{k}": np.ascontiguousarray(v, dtype=np.float64) for k, v in stats.items()}
    arrays["range"] = np.array([start, stop], dtype=np.int64)
    arrays["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    with open(chunk_path(workdir, index, LEGACY_CHUNK_SUFFIX), "wb") as fh:
        np.savez(fh, **arrays)


def write_eiger(
    folder: str,
    name: str,
    blocks: Sequence[np.ndarray],
    pixel_mask: np.ndarray | None = None,
    cutoff: int | None = None,
    saturation_value: int | None = None,
) -> str:
    """``NAME_master.h5`` linking ``NAME_data_00000i.h5`` (Bitshuffle-LZ4, one frame per chunk).

    Link targets are relative file names, as the Eiger writes them.
    """
    master = os.path.join(folder, f"{name}_master.h5")
    first = 1
    with h5py.File(master, "w") as m:
        m.attrs["NX_class"] = "NXroot"
        entry = m.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        data = entry.create_group("data")
        data.attrs["NX_class"] = "NXdata"
        for i, block in enumerate(blocks, start=1):
            fname = f"{name}_data_{i:06d}.h5"
            with h5py.File(os.path.join(folder, fname), "w") as f:
                dset = f.create_dataset(
                    "/entry/data/data",
                    data=block,
                    chunks=(1, *block.shape[1:]),
                    **hdf5plugin.Bitshuffle(cname="lz4"),
                )
                dset.attrs["image_nr_low"] = first
                dset.attrs["image_nr_high"] = first + len(block) - 1
            first += len(block)
            data[f"data_{i:06d}"] = h5py.ExternalLink(fname, "/entry/data/data")
        spec = m.create_group(DETECTOR_SPECIFIC)
        if pixel_mask is not None:
            spec.create_dataset("pixel_mask", data=pixel_mask, **hdf5plugin.Bitshuffle(cname="lz4"))
        if cutoff is not None:
            spec.create_dataset("countrate_correction_count_cutoff", data=np.uint32(cutoff))
        if saturation_value is not None:
            spec.create_dataset("saturation_value", data=np.uint32(saturation_value))
        spec.create_dataset("nimages", data=np.uint64(first - 1))
    return master


def write_vds(
    folder: str, name: str, blocks: Sequence[np.ndarray], bitshuffle: bool = False
) -> tuple[str, list[str]]:
    """A virtual dataset ``/entry/data/data`` over one source file per block (relative names).

    Sources are gzip-compressed, or Bitshuffle-LZ4 with ``bitshuffle``.
    """
    filters = dict(hdf5plugin.Bitshuffle(cname="lz4")) if bitshuffle else {"compression": "gzip"}
    total = sum(len(b) for b in blocks)
    shape = (total, *blocks[0].shape[1:])
    layout = h5py.VirtualLayout(shape=shape, dtype=blocks[0].dtype)
    sources = []
    pos = 0
    for i, block in enumerate(blocks):
        fname = f"{name}_part{i}.h5"
        path = os.path.join(folder, fname)
        with h5py.File(path, "w") as f:
            f.create_dataset("frames", data=block, chunks=(1, *block.shape[1:]), **filters)
        layout[pos : pos + len(block)] = h5py.VirtualSource(fname, "frames", shape=block.shape)
        pos += len(block)
        sources.append(path)
    vds = os.path.join(folder, f"{name}.h5")
    with h5py.File(vds, "w") as f:
        f.create_virtual_dataset("/entry/data/data", layout, fillvalue=0)
    return vds, sources


#: Frame size of the detector layouts the input tests use.
H, W = 12, 10


def pixel_mask() -> np.ndarray:
    """An Eiger-like pixel mask: gaps and dead pixels plus informational upper bits."""
    pm = np.zeros((H, W), np.uint32)
    pm[:, 4] = 1  # a gap column
    pm[2, 7] = 2  # dead
    pm[9, 1] = 1 << 4  # noisy
    pm[5, 5] = 1 << 20  # informational only: a good pixel
    pm[6, 6] = 1 << 31  # virtual-pixel tag only: a good pixel
    pm[7, 8] = (1 << 31) | 8  # tagged and over-responding: bad
    return pm


def eiger_scan(folder: str) -> tuple[str, list[np.ndarray]]:
    """An Eiger master with three data files, a pixel mask and a cutoff of 3000."""
    from producer.samples import detector_frames

    blocks = [detector_frames(n, H, W, seed=n) for n in (5, 8, 3)]
    # A few counts at/above the cutoff, as saturated or flagged pixels would be.
    blocks[0][1, 3, 3] = 65535
    blocks[1][4, 8, 2] = 4000
    blocks[2][0, 0, 0] = 3001
    master = write_eiger(folder, "scan", blocks, pixel_mask=pixel_mask(), cutoff=3000)
    return master, blocks
