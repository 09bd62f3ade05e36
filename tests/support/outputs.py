"""Job outputs written by the real finalize from made-up committed chunks (no Redis, no
worker): for tests of the output layout and of what reads it."""

from __future__ import annotations

import os
import time

import numpy as np

from framestats import __version__
from framestats import chunkfile as results
from framestats.constants import CHUNKS_DIR, MASK_NAME
from framestats.messages import JobSpec, Segment
from worker import finalize


def make_spec(tmp_path, n: int = 12, k: int = 3, stats=("sum", "mean"), step: int = 1) -> JobSpec:
    out = str(tmp_path / "out.h5")
    return JobSpec(
        job_id="0123456789abcdef",
        segments=(Segment(str(tmp_path / "scan.h5"), "/entry/data/data", 0, n, 4, step, 0),),
        frame_shape=(6, 5),
        dtype="uint16",
        n_frames=n,
        n_regions=k,
        stats=tuple(stats),
        boundaries=(0, n // 2, n),
        output=out,
        workdir=out + ".parts",
        mask_path=str(tmp_path / "m.npy"),
        mask_sha256="0" * 64,
        queue="framestats",
        chunk_frames=n - n // 2,
        created=time.time() - 5,
        version=__version__,
        inputs=({"file": str(tmp_path / "scan.h5"), "frames": [4, 4 + n]},),
        masks=({"role": "regions", "sha256": "0" * 64},),
        options={"frames": "4:", "invert": False},
    )


def finalized(tmp_path, spec: JobSpec) -> dict[str, np.ndarray]:
    """Commit every chunk of ``spec`` with random statistics, finalize; the values."""
    os.makedirs(os.path.join(spec.workdir, CHUNKS_DIR))
    labels = np.arange(30).reshape(6, 5) % (spec.n_regions + 1)
    np.save(os.path.join(spec.workdir, MASK_NAME), labels.astype(np.int32))
    rng = np.random.default_rng(1)
    values = {s: rng.normal(size=(spec.n_frames, spec.n_regions)) for s in spec.stats}
    for i in range(spec.n_chunks):
        a, b = spec.boundaries[i], spec.boundaries[i + 1]
        chunk = {s: values[s][a:b] for s in spec.stats}
        results.write_chunk(
            spec.workdir, results.ChunkResult(i, a, b, chunk, {"worker": "w@h", "device": "cpu"})
        )
    finalize.finalize(spec)
    values["pixel_count"] = np.bincount(labels.ravel(), minlength=spec.n_regions + 1)[1:]
    return values
