"""Finalize: every committed chunk of a job assembled into its output file, atomically.

The output is written under a temporary name inside the job folder, fsynced and renamed
into place: the output path never holds a partial file.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any

import h5py
import numpy as np

from framestats import __version__
from framestats.chunkfile import is_committed, read_chunk, write_atomic
from framestats.constants import MASK_NAME
from framestats.messages import JobSpec

from . import output


def finalize(spec: JobSpec, finished: float | None = None) -> dict[str, Any]:
    """Assemble every committed chunk into the output file, atomically; returns a summary.

    Raises FileNotFoundError naming the first missing chunk when the job is incomplete.
    """
    missing = [i for i in range(spec.n_chunks) if not is_committed(spec.workdir, i)]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} chunk results missing (first: chunk {missing[0]}) in {spec.workdir}"
        )
    labels = np.load(os.path.join(spec.workdir, MASK_NAME), allow_pickle=False)
    counts = np.bincount(labels.ravel(), minlength=spec.n_regions + 1)[1:].astype(np.int64)
    out = {s: np.empty((spec.n_frames, spec.n_regions), dtype=np.float64) for s in spec.stats}
    devices: set[str] = set()
    workers: set[str] = set()
    started = spec.created
    for i in range(spec.n_chunks):
        chunk = read_chunk(spec.workdir, i)
        if (chunk.start, chunk.stop) != (spec.boundaries[i], spec.boundaries[i + 1]):
            raise ValueError(f"chunk {i} covers frames {chunk.start}-{chunk.stop}, expected others")
        for s in spec.stats:
            out[s][chunk.start : chunk.stop] = chunk.stats[s]
        devices.add(str(chunk.meta.get("device", "?")))
        workers.add(str(chunk.meta.get("worker", "?")))
    frame_index = np.concatenate([seg.frame_index() for seg in spec.segments])
    end = finished if finished is not None else time.time()
    attrs = {
        "job_id": spec.job_id,
        "input_files": json.dumps(list(spec.inputs) or [s.to_json() for s in spec.segments]),
        "input_file": spec.segments[0].path,
        "dataset": spec.segments[0].dataset,
        "mask_path": spec.mask_path,
        "mask_sha256": spec.mask_sha256,
        "masks": json.dumps(list(spec.masks)),
        "statistics": ",".join(spec.stats),
        "chunk_frames": spec.chunk_frames,
        "n_chunks": spec.n_chunks,
        "chunking": json.dumps(
            {"frames_per_task": spec.chunk_frames, "boundaries_count": len(spec.boundaries)}
        ),
        "options": json.dumps(spec.options, sort_keys=True),
        "package": "framestats",
        "version": __version__,
        "producer_version": spec.version,
        "start_time": _iso(started),
        "end_time": _iso(end),
        "devices": ",".join(sorted(devices)),
        "workers": ",".join(sorted(workers)),
    }

    def write(tmp: str) -> None:
        with h5py.File(tmp, "w") as f:
            datasets = output.create(f, spec, attrs, counts, frame_index)
            for s in spec.stats:
                datasets[s][...] = out[s]

    write_atomic(spec.output, write, tmp_dir=spec.workdir)
    return {"output": spec.output, "frames": spec.n_frames, "regions": spec.n_regions}


def cleanup(spec: JobSpec) -> None:
    """Remove the job folder once the output is in place."""
    shutil.rmtree(spec.workdir, ignore_errors=True)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
