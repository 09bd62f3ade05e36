"""Committed chunk results and the job's output file (numpy + h5py; no torch).

A chunk's result is one small file in the job folder beside the output, written under a
temporary name, fsynced and renamed: a crash leaves either no file or a whole one, and a
duplicate delivery rewrites the same bytes. Its layout (``CHUNK_MAGIC``, one line of
JSON, then the statistics as raw little-endian float64) reads in ~0.02 ms; the ``.npz``
it replaced took ~0.23 ms (zip directory, one ``.npy`` header parsed per array), which
made finalize cost 1.8 s for a 1 TiB job of 8,000 chunks. Chunks an earlier version
committed as ``.npz`` are still counted and read, so a job survives an upgrade.

Finalize reads them all, writes the output under a temporary name, fsyncs and renames
it into place: the output path never holds a partial file.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from . import __version__
from .constants import CHUNKS_DIR, MASK_NAME
from .messages import JobSpec
from .paths import CHUNK_SUFFIX, LEGACY_CHUNK_SUFFIX, chunk_index, chunk_path


@dataclass(frozen=True)
class ChunkResult:
    index: int
    start: int
    stop: int
    stats: dict[str, np.ndarray]
    meta: dict[str, Any]


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, write: Any, tmp_dir: str | None = None) -> None:
    """Call ``write(tmp_path)``, fsync the temporary file, rename it to ``path``.

    ``tmp_dir`` (same file system as ``path``) holds the temporary file, so one left by
    a process killed mid-write is removed with that folder instead of lying beside
    ``path``.
    """
    name = f"{os.path.basename(path)}.tmp-{os.getpid()}"
    tmp = os.path.join(tmp_dir, name) if tmp_dir else f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(os.path.dirname(path) or ".")


#: First bytes of a committed chunk file; the JSON line after it names what follows.
CHUNK_MAGIC = b"framestats chunk 1\n"


def write_chunk(workdir: str, result: ChunkResult) -> str:
    """Commit one chunk's statistics; returns the committed path.

    The file: ``CHUNK_MAGIC``, a JSON line ``{"range", "stats", "shape", "meta"}``, then
    each statistic in the order ``stats`` names, ``shape`` = (frames, regions) float64
    values, little-endian, C order.
    """
    path = chunk_path(workdir, result.index)
    names = list(result.stats)
    arrays = [np.ascontiguousarray(result.stats[k], dtype="<f8") for k in names]
    shape = arrays[0].shape if arrays else (result.stop - result.start, 0)
    if any(a.shape != shape or a.ndim != 2 for a in arrays):
        raise ValueError(f"chunk {result.index}: statistics differ in shape")
    head = {
        "range": [result.start, result.stop],
        "stats": names,
        "shape": list(shape),
        "meta": result.meta,
    }
    header = CHUNK_MAGIC + json.dumps(head, sort_keys=True).encode() + b"\n"

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(header)
            for a in arrays:
                fh.write(a.data)

    write_atomic(path, write)
    return path


def _read_legacy(workdir: str, index: int) -> ChunkResult:
    """A chunk an earlier version committed (``.npz``: stat_<name>, range, meta)."""
    with np.load(chunk_path(workdir, index, LEGACY_CHUNK_SUFFIX), allow_pickle=False) as data:
        start, stop = (int(x) for x in data["range"])
        stats = {k[5:]: data[k] for k in data.files if k.startswith("stat_")}
        meta = json.loads(bytes(data["meta"]).decode())
    return ChunkResult(index=index, start=start, stop=stop, stats=stats, meta=meta)


def read_chunk(workdir: str, index: int) -> ChunkResult:
    path = chunk_path(workdir, index)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        if os.path.exists(chunk_path(workdir, index, LEGACY_CHUNK_SUFFIX)):
            return _read_legacy(workdir, index)
        raise
    end = raw.find(b"\n", len(CHUNK_MAGIC))
    if not raw.startswith(CHUNK_MAGIC) or end < 0:
        raise ValueError(f"{path} is not a framestats chunk result")
    head = json.loads(raw[len(CHUNK_MAGIC) : end])
    names = list(head["stats"])
    frames, regions = (int(n) for n in head["shape"])
    body = np.frombuffer(raw, dtype="<f8", offset=end + 1)
    if body.size != len(names) * frames * regions:
        raise ValueError(f"{path} holds {body.size} values, its header says otherwise")
    values = body.reshape(len(names), frames, regions).astype(np.float64)  # aligned, native
    start, stop = (int(x) for x in head["range"])
    stats = {name: values[i] for i, name in enumerate(names)}
    return ChunkResult(index=index, start=start, stop=stop, stats=stats, meta=head["meta"])


def committed(workdir: str) -> set[int]:
    """Indices of the chunks whose result file is in place."""
    folder = os.path.join(workdir, CHUNKS_DIR)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return set()
    return {i for i in map(chunk_index, names) if i is not None}


def is_committed(workdir: str, index: int) -> bool:
    return any(
        os.path.exists(chunk_path(workdir, index, suffix))
        for suffix in (CHUNK_SUFFIX, LEGACY_CHUNK_SUFFIX)
    )


def output_job_id(path: str) -> str | None:
    """The job id recorded in a complete output file, or None."""
    try:
        with h5py.File(path, "r") as f:
            value = f.attrs.get("job_id")
    except (OSError, FileNotFoundError):
        return None
    return (
        value.decode() if isinstance(value, bytes) else (str(value) if value is not None else None)
    )


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
            grp = f.create_group("results")
            for s in spec.stats:
                grp.create_dataset(s, data=out[s])
            grp.create_dataset("pixel_count", data=counts)
            grp.create_dataset("frame_index", data=frame_index)
            grp.attrs["statistics"] = ",".join(spec.stats)
            for k, v in attrs.items():
                f.attrs[k] = v

    write_atomic(spec.output, write, tmp_dir=spec.workdir)
    return {"output": spec.output, "frames": spec.n_frames, "regions": spec.n_regions}


def cleanup(spec: JobSpec) -> None:
    """Remove the job folder once the output is in place."""
    shutil.rmtree(spec.workdir, ignore_errors=True)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
