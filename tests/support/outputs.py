"""Job outputs written by the real finalize from made-up committed chunks (no Redis, no
worker): for tests of the output layout and of what reads it."""

from __future__ import annotations

import io
import os
import time

import numpy as np
import pytest

from framestats import __version__, chunkfile
from framestats.constants import MASK_NAME
from framestats.jobdir import JobFolder
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
    labels = np.arange(30).reshape(6, 5) % (spec.n_regions + 1)
    rng = np.random.default_rng(1)
    values = {s: rng.normal(size=(spec.n_frames, spec.n_regions)) for s in spec.stats}
    with JobFolder.create(spec.workdir) as folder:
        buf = io.BytesIO()
        np.save(buf, labels.astype(np.int32))
        folder.write_bytes(MASK_NAME, buf.getvalue())
        for i in range(spec.n_chunks):
            a, b = spec.boundaries[i], spec.boundaries[i + 1]
            chunk = {s: values[s][a:b] for s in spec.stats}
            meta = {"worker": "w@h", "device": "cpu", "decode": "host"}
            chunkfile.write_chunk(folder, spec, chunkfile.ChunkResult(i, a, b, chunk, meta))
        written = finalize.write(spec, folder, lambda i: pytest.fail(f"chunk {i} recomputed"))
        out_dir = os.open(os.path.dirname(spec.output), os.O_RDONLY | os.O_DIRECTORY)
        try:
            folder.publish(written.tmp, out_dir, os.path.basename(spec.output))
        finally:
            os.close(out_dir)
    values["pixel_count"] = np.bincount(labels.ravel(), minlength=spec.n_regions + 1)[1:]
    return values
