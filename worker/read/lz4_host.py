"""The batched LZ4 call of ``nvcomp.NvcompLZ4`` done on the host with the ``lz4`` package.

Same arguments, same results (decoded blocks, per-block status and size), for tensors
in host memory: it lets the device pipeline run whole on a CPU, in tests and in
``python -m bench.gpu --dry-run``. Not a production path (one block at a time).
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .device_decode import Blocks

#: ``nvcompStatus_t`` values this stand-in reports.
SUCCESS = 0
CANNOT_DECOMPRESS = 12


class HostLZ4:
    """LZ4 blocks decoded one by one by ``lz4.block`` (tensors on the CPU)."""

    name = "host-lz4"
    unshuffles = False

    def __init__(self) -> None:
        import lz4.block

        self._decompress = lz4.block.decompress
        self._error = lz4.block.LZ4BlockError

    @classmethod
    def create(cls) -> HostLZ4 | None:
        try:
            return cls()
        except ImportError:
            return None

    def decompress(self, blocks: Blocks, stream: int) -> None:
        if blocks.comp_ptrs.device.type != "cpu":
            raise ValueError("HostLZ4 decodes tensors in host memory only")
        statuses, actual = blocks.statuses, blocks.actual
        columns = (blocks.comp_ptrs, blocks.comp_sizes, blocks.out_ptrs, blocks.out_sizes)
        for i, (src, n, dst, cap) in enumerate(zip(*(c.tolist() for c in columns), strict=True)):
            try:
                data = self._decompress(ctypes.string_at(src, n), uncompressed_size=cap)
            except self._error:
                statuses[i] = CANNOT_DECOMPRESS
                actual[i] = 0
                continue
            ctypes.memmove(dst, data, len(data))
            statuses[i] = SUCCESS
            actual[i] = len(data)
