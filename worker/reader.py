"""Reading a job's frames from HDF5 into reused buffers (h5py only; knows nothing of torch).

Blocks follow the dataset's HDF5 chunking along the frame axis, so every compressed
chunk is decoded once, and ``read_direct`` fills one buffer that lives as long as the
reader: no fresh large allocation per block (those cost a lot on these machines).
"""

from __future__ import annotations

from collections.abc import Iterator

import h5py
import hdf5plugin  # noqa: F401  (registers Bitshuffle-LZ4, LZ4, Blosc, Zstd, ... with HDF5)
import numpy as np

from producer.errors import PermanentChunkError, TransientChunkError
from producer.messages import JobSpec, Segment
from producer.paths import check_allowed

#: Upper bound for one read; blocks are whole HDF5 chunks, at least one.
DEFAULT_BLOCK_BYTES = 32 * 1024 * 1024


class FrameReader:
    """Reads global frame ranges of one job, keeping its files open across chunks."""

    def __init__(
        self,
        spec: JobSpec,
        data_root: tuple[str, ...] = (),
        block_bytes: int = DEFAULT_BLOCK_BYTES,
    ) -> None:
        self.spec = spec
        self.data_root = data_root
        self.block_bytes = block_bytes
        self.dtype = np.dtype(spec.dtype).newbyteorder("=")
        self._files: dict[str, h5py.File] = {}
        self._buffer: np.ndarray | None = None

    def _dataset(self, seg: Segment) -> h5py.Dataset:
        f = self._files.get(seg.path)
        if f is None:
            real = check_allowed(seg.path, self.data_root)
            try:
                f = h5py.File(real, "r")
            except OSError as exc:
                raise TransientChunkError(f"cannot open {seg.path}: {exc}") from exc
            self._files[seg.path] = f
        try:
            return f[seg.dataset]
        except KeyError as exc:
            raise PermanentChunkError(f"dataset {seg.dataset} missing in {seg.path}") from exc

    def _buffer_for(self, frames: int) -> np.ndarray:
        h, w = self.spec.frame_shape
        if self._buffer is None or self._buffer.shape[0] < frames:
            self._buffer = np.empty((frames, h, w), dtype=self.dtype)
        return self._buffer[:frames]

    def block_frames(self, dset: h5py.Dataset) -> int:
        per_chunk = int(dset.chunks[0]) if dset.chunks else 1
        frame_bytes = self.dtype.itemsize * self.spec.frame_shape[0] * self.spec.frame_shape[1]
        chunks = max(1, self.block_bytes // max(1, frame_bytes * per_chunk))
        return chunks * per_chunk

    def blocks(self, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (global first frame, frames) covering [start, stop); the array is reused."""
        for seg in self.spec.segments:
            lo, hi = max(start, seg.start), min(stop, seg.start + seg.count)
            if lo >= hi:
                continue
            dset = self._dataset(seg)
            step_frames = self.block_frames(dset)
            pos = lo
            while pos < hi:
                # Dataset index of this block's first frame; end on an HDF5 chunk boundary.
                first = seg.offset + (pos - seg.start) * seg.step
                if seg.step == 1:
                    per = int(dset.chunks[0]) if dset.chunks else 1
                    end_index = (first // per) * per + step_frames
                    n = min(hi - pos, max(1, end_index - first))
                else:
                    n = min(hi - pos, max(1, step_frames // seg.step))
                buf = self._buffer_for(n)
                sel = np.s_[first : first + n * seg.step : seg.step]
                try:
                    dset.read_direct(buf, source_sel=sel)
                except (OSError, RuntimeError, ValueError) as exc:
                    raise TransientChunkError(
                        f"cannot read frames {pos}-{pos + n} ({seg.path}:{seg.dataset}[{first}:"
                        f"{first + n * seg.step}]): {exc}",
                        frames=(pos, pos + n),
                    ) from exc
                yield pos, buf
                pos += n

    def close(self) -> None:
        for f in self._files.values():
            try:
                f.close()
            except Exception:  # closing a broken file must not mask the real error
                pass
        self._files.clear()
        self._buffer = None
