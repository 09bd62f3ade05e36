"""Errors of the reading package, caught inside it and turned into the job's chunk errors.

The reader raises ``framestats.errors`` chunk errors to its callers: a chunk refused here
becomes a ``PermanentChunkError`` naming the chunk and its frames.
"""

from __future__ import annotations


class BlockTableError(ValueError):
    """Raised when a Bitshuffle chunk's header or block sizes are inconsistent."""

    def __init__(self, position: int, reason: str) -> None:
        super().__init__(f"chunk {reason}")
        #: Which of the parsed chunks (index into the arrays given to ``parse``).
        self.position = position
        self.reason = reason


class ChunkRefused(ValueError):
    """Raised when a chunk's header, block table or compressed data is inconsistent."""

    def __init__(self, chunk: int, reason: str) -> None:
        super().__init__(f"chunk {chunk}: {reason}")
        #: The dataset's chunk index along the frame axis.
        self.chunk = chunk
        self.reason = reason
