"""Typed messages and records: chunk tasks, job states, the job manifest.

Every type turns into plain JSON and back. Messages carry references (job, manifest
path, chunk index, frame range), never pixels.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from .constants import MANIFEST_NAME

if TYPE_CHECKING:  # numpy is imported where used: status/cancel/watch need no numpy
    import numpy as np


class JobState(StrEnum):
    """Lifecycle of a job."""

    #: Submitted; chunks are queued, none has started.
    QUEUED = "queued"
    #: At least one chunk started.
    RUNNING = "running"
    #: Every chunk is committed; the output is being written.
    FINALIZING = "finalizing"
    #: The output file is complete at its path.
    DONE = "done"
    #: A chunk failed permanently (or too often); ``reason`` says which and why.
    FAILED = "failed"
    #: Stopped by ``producer cancel``; no output claimed.
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """True when nothing more will happen to the job without ``resume``."""
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class ChunkTask:
    """One unit of work: frames [start, stop) of a job, in global frame numbering."""

    job_id: str
    manifest: str
    index: int
    start: int
    stop: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChunkTask:
        try:
            task = cls(
                job_id=str(data["job_id"]),
                manifest=str(data["manifest"]),
                index=int(data["index"]),
                start=int(data["start"]),
                stop=int(data["stop"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed chunk message {data!r}: {exc}") from exc
        if task.index < 0 or not 0 <= task.start < task.stop:
            raise ValueError(f"malformed chunk message {data!r}: bad index or frame range")
        return task


@dataclass(frozen=True)
class Segment:
    """A run of frames stored contiguously in one dataset of one file.

    Global frames [start, start + count) are the dataset's frames
    offset, offset + step, ..., so a job may span several files and select frames.
    """

    path: str
    dataset: str
    start: int
    count: int
    offset: int = 0
    step: int = 1
    #: Number of the file's first frame in the concatenation of all input files.
    index_base: int = 0

    def frame_index(self) -> np.ndarray:
        """Source frame numbers of this segment's frames (for /results/frame_index)."""
        import numpy as np

        return self.index_base + self.offset + self.step * np.arange(self.count, dtype=np.int64)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Segment:
        return cls(**data)


@dataclass(frozen=True)
class JobSpec:
    """Everything a worker needs to compute and finalize a job; saved as the manifest.

    The manifest sits in the job folder beside the output and is, with the committed
    chunk files, the durable record of the job: ``resume`` rebuilds all Redis state
    from it.
    """

    job_id: str
    segments: tuple[Segment, ...]
    frame_shape: tuple[int, int]
    dtype: str
    n_frames: int
    n_regions: int
    stats: tuple[str, ...]
    boundaries: tuple[int, ...]
    output: str
    workdir: str
    mask_path: str
    mask_sha256: str
    queue: str
    chunk_frames: int
    created: float
    version: str
    inputs: tuple[dict[str, Any], ...] = ()
    masks: tuple[dict[str, Any], ...] = ()
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_reading(
        cls,
        segments: tuple[Segment, ...],
        frame_shape: tuple[int, int],
        dtype: str,
        boundaries: tuple[int, ...] | None = None,
    ) -> JobSpec:
        """A job of ``segments`` with no output, no folder and no queue: what a reader and
        a reducer need to work outside a submitted job (benchmarks, tests)."""
        import numpy as np

        n = sum(s.count for s in segments)
        bounds = boundaries or (0, n)
        return cls(
            job_id="reading", segments=tuple(segments), frame_shape=tuple(frame_shape),  # type: ignore[arg-type]
            dtype=np.dtype(dtype).str, n_frames=n, n_regions=1, stats=("sum",),
            boundaries=bounds, output="/nonexistent/out.h5",
            workdir="/nonexistent/out.h5.parts", mask_path="", mask_sha256="", queue="",
            chunk_frames=max(b - a for a, b in zip(bounds, bounds[1:], strict=False)),
            created=0.0, version="",
        )  # fmt: skip

    @property
    def n_chunks(self) -> int:
        return len(self.boundaries) - 1

    def chunk(self, index: int) -> ChunkTask:
        """The task message for chunk ``index``."""
        return ChunkTask(
            job_id=self.job_id,
            manifest=self.manifest_path,
            index=index,
            start=self.boundaries[index],
            stop=self.boundaries[index + 1],
        )

    def planned(self, task: ChunkTask) -> bool:
        """Whether ``task`` is one of this job's chunks exactly as planned (messages can be
        forged or left over from an earlier plan)."""
        return (
            task.job_id == self.job_id
            and 0 <= task.index < self.n_chunks
            and (task.start, task.stop)
            == (self.boundaries[task.index], self.boundaries[task.index + 1])
        )

    @property
    def manifest_path(self) -> str:
        return os.path.join(self.workdir, MANIFEST_NAME)

    @property
    def frame_bytes(self) -> int:
        import numpy as np

        return int(np.dtype(self.dtype).itemsize * self.frame_shape[0] * self.frame_shape[1])

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["segments"] = [s.to_json() for s in self.segments]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobSpec:
        data = dict(data)
        data["segments"] = tuple(Segment.from_json(s) for s in data["segments"])
        data["frame_shape"] = tuple(data["frame_shape"])
        data["stats"] = tuple(data["stats"])
        data["boundaries"] = tuple(data["boundaries"])
        data["inputs"] = tuple(data.get("inputs", ()))
        data["masks"] = tuple(data.get("masks", ()))
        return cls(**data)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1)

    @classmethod
    def loads(cls, text: str | bytes) -> JobSpec:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("a manifest is a JSON object")
        return cls.from_json(data)
