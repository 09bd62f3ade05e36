"""Per-process cache of what a job needs: manifest, mask, open files, the reducer.

Built on a job's first chunk in a process and reused for its other chunks, so the
mask is loaded and moved to the device once per job per process.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from framestats.chunkfile import ChunkResult
from framestats.constants import MASK_NAME
from framestats.errors import PermanentChunkError
from framestats.jobdir import JobFolder, load_job
from framestats.messages import ChunkTask, JobSpec
from framestats.settings import Settings

from .read import FrameReader
from .valuerange import ValueRange, fit_regions

#: Jobs kept warm per process; older ones are closed.
MAX_JOBS = 4


@dataclass
class JobContext:
    spec: JobSpec
    labels: np.ndarray
    reader: FrameReader
    device: str
    #: The job folder as this process opened it (commits go there, whatever replaces it);
    #: None for a computation that commits nothing (benchmarks).
    folder: JobFolder | None = None
    _reducer: Any = field(default=None, repr=False)
    #: ``--valid-range`` / detector saturation: out-of-range pixels count as NaN.
    value_range: ValueRange | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.value_range is None:
            self.value_range = ValueRange.from_spec(self.spec)
        if not str(self.device).startswith("cpu") and self.reader.buffers is None:
            # GPU: read straight into the reducer's pinned buffers (no host staging copy).
            self.reader.buffers = self.host_buffer

    def host_buffer(self, frames: int, dtype: np.dtype) -> np.ndarray | None:
        """The reducer's host buffer for the reader (None once closed or on a CPU)."""
        reducer = self._reducer  # made by compute() in the caller's thread, not here
        return None if reducer is None else reducer.host_buffer(frames, dtype)  # type: ignore[no-any-return]

    @property
    def reducer(self) -> Any:
        if self._reducer is None:
            from .reduce import MaskedReducer  # torch is imported on first use only

            self._reducer = MaskedReducer(self.labels, self.spec.stats, device=self.device)
        return self._reducer

    def compute(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Statistics of frames [start, stop): {stat: float64 (frames, K)}."""
        out = {s: np.empty((stop - start, self.spec.n_regions)) for s in self.spec.stats}
        reducer = self.reducer  # before reading: the reader may ask it for buffers
        for pos, block in self.reader.blocks(start, stop):
            if self.value_range is not None:
                block = self.value_range.apply(block)
            values = fit_regions(reducer.reduce(block), self.spec.n_regions)
            for s in self.spec.stats:
                out[s][pos - start : pos - start + len(block)] = values[s]
        return out

    def result(self, index: int, heartbeat: Any) -> ChunkResult:
        """Chunk ``index`` computed, with who computed it where."""
        start, stop = self.spec.boundaries[index], self.spec.boundaries[index + 1]
        values = self.compute(start, stop)
        meta = {"worker": heartbeat.id, "device": heartbeat.device, "decode": self.decode_path}
        return ChunkResult(index, start, stop, values, meta)

    @property
    def decode_path(self) -> str:
        """How this process decodes the job's chunks: device, host or hdf5 (``+``-joined
        when the job's datasets differ)."""
        return self.reader.decode_path or "hdf5"

    def close(self) -> None:
        self.reader.close()
        if self.folder is not None:
            self.folder.close()
        self._reducer = None
        if self.value_range is not None:
            self.value_range.close()


class JobCache:
    """LRU of job contexts, keyed by job id."""

    def __init__(self, settings: Settings, device: str) -> None:
        self.settings = settings
        self.data_root = settings.data_root
        self.device = device
        self._jobs: OrderedDict[str, JobContext] = OrderedDict()

    def get(self, task: ChunkTask) -> JobContext:
        ctx = self._jobs.get(task.job_id)
        if ctx is not None:
            self._jobs.move_to_end(task.job_id)
            return ctx
        ctx = self.load(task.manifest, task.job_id)
        self._jobs[task.job_id] = ctx
        while len(self._jobs) > MAX_JOBS:
            _, old = self._jobs.popitem(last=False)
            old.close()
        return ctx

    def load(self, manifest: str, job_id: str) -> JobContext:
        spec, folder = load_job(manifest, job_id, self.data_root)
        try:
            labels = np.load(io.BytesIO(folder.read(MASK_NAME)), allow_pickle=False)
            if labels.shape != tuple(spec.frame_shape):
                raise PermanentChunkError(f"mask copy in {spec.workdir} does not match the job")
            # A valid range is applied to host arrays: such a job decodes on the host.
            off = "off" if ValueRange.from_spec(spec) is not None else None
            reader = FrameReader.for_device(spec, self.settings, self.device, gpu_decode=off)
        except BaseException:
            folder.close()
            raise
        return JobContext(
            spec=spec, folder=folder, labels=labels, reader=reader, device=self.device
        )

    def drop(self, job_id: str) -> None:
        ctx = self._jobs.pop(job_id, None)
        if ctx is not None:
            ctx.close()
