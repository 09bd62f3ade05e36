"""Reused host buffers for blocks of frames, shared by the readers of one process.

A fresh large array costs its page faults on the first read into it, often more than the
read itself, so a reader takes its buffers from here and gives them back when an
iteration ends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

#: ``(frames, dtype) -> empty (frames, H, W) array or None``: where to read a block
#: (e.g. ``MaskedReducer.host_buffer``, pinned memory the GPU reads without a host
#: copy). It must hand out alternating buffers: an array must stay untouched until
#: the one after next is asked for (the current and the prefetched block).
BufferProvider = Callable[[int, np.dtype], np.ndarray | None]


class BufferPool:
    """Spare read buffers (raw bytes) shared by the readers of one process.

    Every job gets its own reader; taking its buffers from here spares each job's first
    chunk in each process the page faults of fresh memory. A reader holds what it took
    only during one ``blocks`` call, so two readers never share a buffer.
    """

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> np.ndarray:
        """A uint8 array of at least ``nbytes`` (a spare one when one is big enough)."""
        with self._lock:
            for i, buf in enumerate(self._free):
                if buf.nbytes >= nbytes:
                    return self._free.pop(i)
        return np.empty(nbytes, dtype=np.uint8)

    def give(self, buf: np.ndarray) -> None:
        """Return a buffer from ``take``; only the ``keep`` largest spares are kept."""
        with self._lock:
            self._free.append(buf)
            self._free.sort(key=lambda b: b.nbytes, reverse=True)
            del self._free[self.keep :]


#: This process's spare buffers (two: a reader's current and prefetched block).
POOL = BufferPool()
