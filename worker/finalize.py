"""Finalize: every committed chunk of a job assembled into its output file.

The output is written chunk by chunk (memory bounded by one chunk's results) into a
temporary file inside the job folder, flushed to disk as it grows, then renamed into
place by ``publish`` only if the finalizer still holds the job's finalize lock and the
job was not cancelled: the output path never holds a partial file, and a finalizer
paused past its lock never replaces what another wrote.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from framestats import __version__, jobs
from framestats.chunkfile import ChunkFileInvalid, ChunkResult, read_chunk
from framestats.constants import MASK_NAME
from framestats.jobdir import JobFolder, open_dir
from framestats.limits import output_bytes
from framestats.messages import JobSpec

from . import output
from .periodic import Periodic

log = logging.getLogger("framestats.worker")

#: Computes chunk ``index`` again (its file was missing, another job's or damaged).
Recompute = Callable[[int], ChunkResult]


@dataclass
class Written:
    """An output file written under a temporary name in the job folder."""

    tmp: str
    recomputed: tuple[int, ...]


def _attrs(spec: JobSpec, started: float, end: float) -> dict[str, Any]:
    return {
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
    }


#: Chunk files read ahead of the one being written: reading and checking a file (system
#: calls and zlib, outside the GIL) overlap the HDF5 writes and each other.
READ_AHEAD = 2
#: At most this many bytes of results are read ahead: a job whose chunks' results are
#: large (many regions) has its files read one at a time, in the writing thread.
READ_AHEAD_BYTES = 256 << 20


def _read(folder: JobFolder, spec: JobSpec, index: int) -> ChunkResult | Exception:
    try:
        return read_chunk(folder, spec, index)
    except (FileNotFoundError, ChunkFileInvalid) as exc:
        return exc


def read_ahead(spec: JobSpec) -> int:
    """How many chunk files the finalize of ``spec`` reads ahead (0: none)."""
    _, largest = output_bytes(spec.n_frames, spec.n_regions, len(spec.stats), spec.boundaries)
    return min(READ_AHEAD, READ_AHEAD_BYTES // max(largest, 1))


def _chunks(
    folder: JobFolder, spec: JobSpec, recompute: Recompute
) -> Iterator[tuple[ChunkResult, bool]]:
    """Every chunk's result in order, and whether it was computed again (its file was not a
    whole one of this job). At most ``read_ahead(spec)`` + 1 chunks are held at once."""

    def taken(got: ChunkResult | Exception, index: int) -> tuple[ChunkResult, bool]:
        if not isinstance(got, Exception):
            return got, False
        log.warning("job %s: chunk %d is computed again: %s", spec.job_id, index, got)
        return recompute(index), True

    n, ahead = spec.n_chunks, read_ahead(spec)
    if not ahead:
        for index in range(n):
            yield taken(_read(folder, spec, index), index)
        return
    _ = folder.chunks_fd  # opened once, before the threads share it
    with ThreadPoolExecutor(ahead, thread_name_prefix="finalize-read") as pool:
        pending = deque(pool.submit(_read, folder, spec, i) for i in range(min(ahead, n)))
        for index in range(n):
            if index + ahead < n:
                pending.append(pool.submit(_read, folder, spec, index + ahead))
            yield taken(pending.popleft().result(), index)


class Writeback:
    """Flushes a file to disk in a background thread while its writer goes on.

    ``kick()`` after each piece starts one ``fdatasync`` unless one is still running (the
    next covers what this one would have); ``finish()`` waits for it and raises its error.
    The disk's work then overlaps the writes into the page cache instead of all of it
    waiting for the final fsync (the kernel would start on its own only after seconds).
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="finalize-sync")
        self._running: Future[None] | None = None

    @property
    def flushing(self) -> bool:
        """Whether a flush is running."""
        return self._running is not None and not self._running.done()

    def kick(self) -> None:
        if self.flushing:
            return
        if self._running is not None:
            self._running.result()
        self._running = self._pool.submit(os.fdatasync, self._fd)

    def finish(self) -> None:
        try:
            if self._running is not None:
                self._running.result()
        finally:
            self._pool.shutdown()

    def __enter__(self) -> Writeback:
        return self

    def __exit__(self, *_: object) -> None:
        self._pool.shutdown()  # waits for a running fdatasync: the descriptor outlives it


def write(spec: JobSpec, folder: JobFolder, recompute: Recompute) -> Written:
    """Write the output into a temporary file of the job folder; returns its name."""
    labels = np.load(io.BytesIO(folder.read(MASK_NAME)), allow_pickle=False)
    counts = np.bincount(labels.ravel(), minlength=spec.n_regions + 1)[1:].astype(np.int64)
    frame_index = np.concatenate([seg.frame_index() for seg in spec.segments])
    tmp, fd = folder.new_tmp(os.path.basename(spec.output))
    try:
        with Writeback(fd) as writeback:
            # The descriptor's /proc name: HDF5 opens exactly this file, whatever the folder.
            with h5py.File(f"/proc/self/fd/{fd}", "w") as f:
                datasets = output.create(
                    f, spec, _attrs(spec, spec.created, time.time()), counts, frame_index
                )
                again = _fill(f, datasets, spec, _chunks(folder, spec, recompute), writeback)
            writeback.finish()
        os.fsync(fd)
    except BaseException:
        folder.unlink(tmp)
        raise
    finally:
        os.close(fd)
    return Written(tmp, again)


def _fill(
    f: h5py.File,
    datasets: dict[str, h5py.Dataset],
    spec: JobSpec,
    chunks: Iterator[tuple[ChunkResult, bool]],
    writeback: Writeback,
) -> tuple[int, ...]:
    """Every chunk's rows into the datasets, who computed them into the root attributes;
    returns the chunks computed again."""
    devices: set[str] = set()
    workers: set[str] = set()
    again: list[int] = []
    rows = 0
    for chunk, recomputed in chunks:
        if recomputed:
            again.append(chunk.index)
        for s in spec.stats:
            datasets[s][chunk.start : chunk.stop] = chunk.stats[s]
        writeback.kick()
        rows += chunk.stop - chunk.start
        decode = chunk.meta.get("decode")
        devices.add(str(chunk.meta.get("device", "?")) + (f" decode={decode}" if decode else ""))
        workers.add(str(chunk.meta.get("worker", "?")))
    if rows != spec.n_frames:  # the datasets are not pre-filled: every row is written
        raise RuntimeError(f"chunks cover {rows} of {spec.n_frames} frames")
    f.attrs["devices"] = ",".join(sorted(devices))
    f.attrs["workers"] = ",".join(sorted(workers))
    return tuple(again)


def publish(spec: JobSpec, folder: JobFolder, written: Written, roots: tuple[str, ...]) -> None:
    """Rename the written output into place."""
    out_dir = open_dir(os.path.dirname(spec.output), roots, "output folder")
    try:
        folder.publish(written.tmp, out_dir, os.path.basename(spec.output))
    finally:
        os.close(out_dir)


def cleanup(spec: JobSpec, folder: JobFolder) -> None:
    """Remove the job folder once the output is in place, if it is still this job's
    folder (a new submit may have replaced it)."""
    try:
        same = os.stat(spec.workdir, follow_symlinks=False).st_ino == os.fstat(folder.fd).st_ino
    except OSError:
        return
    if same:
        shutil.rmtree(spec.workdir, ignore_errors=True)


class LockKeeper:
    """Renews the finalize lock while the output is written."""

    def __init__(self, client: Any, job_id: str, token: str, ttl: float) -> None:
        def renew() -> bool:  # False once the lock is another's: the publish gate refuses
            return jobs.renew_finalize(client, job_id, token, ttl)

        self._renewal = Periodic(f"finalize lock of job {job_id}", ttl / 3, renew)

    def __enter__(self) -> LockKeeper:
        self._renewal.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._renewal.stop(wait=5)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
