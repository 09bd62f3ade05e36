"""Splitting a job's frames into chunk tasks.

Tasks split the frame axis at HDF5 chunk boundaries, so no compressed chunk is
decoded by two tasks, and never span two segments (files).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .messages import Segment

#: Smallest task the sizing rule makes (a task costs a few ms of bookkeeping).
MIN_TASK_BYTES = 32 * 1024 * 1024
#: Tasks the sizing rule gives each live worker process of a small job, at least.
TASKS_PER_PROCESS = 2


def task_bytes_for(total_bytes: int, max_bytes: int, processes: int) -> int:
    """Bytes per task for a job of ``total_bytes`` on ``processes`` live worker processes.

    Large jobs get ``max_bytes`` (FRAMESTATS_TASK_MIB): every task costs a few ms of
    queue and commit work, so fewer, larger tasks are faster. A job too small to give
    every process ``TASKS_PER_PROCESS`` tasks of that size gets smaller ones, down to
    ``MIN_TASK_BYTES``, so that it still spreads over the cluster.
    """
    share = -(-total_bytes // (TASKS_PER_PROCESS * max(1, processes)))
    return max(min(max_bytes, share), min(MIN_TASK_BYTES, max_bytes))


@dataclass(frozen=True)
class Plan:
    """Task boundaries in global frame numbers: task i is [boundaries[i], boundaries[i+1])."""

    boundaries: tuple[int, ...]
    #: Frames in the largest task (what ``--chunk-frames`` or the task size gave, or the
    #: whole job when it is smaller): what submit reports and the output records.
    frames_per_task: int
    note: str | None = None

    @property
    def n_chunks(self) -> int:
        return len(self.boundaries) - 1


def frames_per_task(
    hdf5_chunk_frames: int, frame_bytes: int, task_bytes: int, chunk_frames: int | None
) -> tuple[int, str | None]:
    """Frames per task: a multiple of the HDF5 chunking, near the requested size."""
    c = max(1, hdf5_chunk_frames)
    if chunk_frames is not None:
        n = max(c, round(chunk_frames / c) * c)
        note = None
        if n != chunk_frames:
            note = (
                f"--chunk-frames {chunk_frames} rounded to {n} to align with the "
                f"dataset's HDF5 chunking of {c} frames"
            )
        return n, note
    target = max(1, task_bytes // max(1, frame_bytes))
    return max(c, target // c * c), None


def split_segment(segment: Segment, per_task: int, hdf5_chunk_frames: int) -> list[int]:
    """Start frames (global) of the tasks that cover one segment, aligned to HDF5 chunks."""
    c = max(1, hdf5_chunk_frames)
    starts = [segment.start]
    if segment.step == 1:
        # Dataset index of the first frame; the first task ends at an aligned index.
        first = segment.offset
        aligned = (first // per_task + 1) * per_task if per_task % c == 0 else first + per_task
        pos = aligned - first
    else:
        pos = per_task
    while pos < segment.count:
        starts.append(segment.start + pos)
        pos += per_task
    return starts


def plan(
    segments: Sequence[Segment],
    hdf5_chunk_frames: Sequence[int],
    frame_bytes: int,
    task_bytes: int,
    chunk_frames: int | None = None,
    processes: int | None = None,
) -> Plan:
    """Boundaries for all segments; per-task size from the coarsest HDF5 chunking.

    ``processes``: live worker processes to size the tasks for (``task_bytes_for``, with
    ``task_bytes`` as the largest); None: tasks of ``task_bytes``.
    """
    if chunk_frames is not None and chunk_frames < 1:
        raise ValueError("chunk size must be positive")
    total = segments[-1].start + segments[-1].count
    if processes is not None:
        task_bytes = task_bytes_for(total * frame_bytes, task_bytes, processes)
    c = max(hdf5_chunk_frames) if hdf5_chunk_frames else 1
    per_task, note = frames_per_task(c, frame_bytes, task_bytes, chunk_frames)
    bounds: list[int] = []
    for seg, seg_c in zip(segments, hdf5_chunk_frames, strict=True):
        bounds.extend(split_segment(seg, per_task, seg_c))
    bounds.append(total)
    largest = max(b - a for a, b in zip(bounds, bounds[1:], strict=False))
    return Plan(boundaries=tuple(bounds), frames_per_task=largest, note=note)
