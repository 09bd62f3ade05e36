"""nvCOMP's batched LZ4 decompressor, through ctypes on ``libnvcomp.so.6``.

One call decodes every LZ4 block of a batch on the GPU. The library comes from the
``nvidia-libnvcomp-cu13`` wheel (``pip install framestats[gpu]``) or a system install;
its C API (``nvcomp/lz4.h`` of nvCOMP 6) is:

    nvcompStatus_t nvcompBatchedLZ4DecompressAsync(
        const void *const *comp_ptrs, const size_t *comp_bytes,
        const size_t *out_buffer_bytes, size_t *out_actual_bytes, size_t num_chunks,
        void *temp, size_t temp_bytes, void *const *out_ptrs,
        nvcompBatchedLZ4DecompressOpts_t opts, nvcompStatus_t *statuses,
        cudaStream_t stream);

with the options a 64-byte struct passed by value. The pointer and size arrays live in
device memory; here they are int64 torch tensors (``size_t`` and pointers are 8 bytes).
The CUDA backend is asked for explicitly: nvCOMP documents that corrupt input to the
hardware decompression engine is undefined behaviour, while the CUDA kernels report it
per block in ``statuses``.

``HostLZ4`` (``lz4_host.py``) does the same call's work with the ``lz4`` package on
the CPU, so everything around this call is tested without a GPU.
"""

from __future__ import annotations

import ctypes
import functools
import os
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .device_decode import Blocks

#: The nvCOMP major version whose C API this binding follows.
MAJOR = 6
#: nvcompDecompressBackend_t: the CUDA kernels (not the hardware engine).
BACKEND_CUDA = 2
#: nvcompBitshuffleMode_t: none, or least significant bit first (bitshuffle's order).
BITSHUFFLE_NONE = 0
BITSHUFFLE_LSB_FIRST = 2
#: nvcompType_t of unsigned elements by size.
UNSIGNED_TYPE = {1: 1, 2: 3, 4: 5, 8: 7}
SONAME = "libnvcomp.so.6"


class DecompressOpts(ctypes.Structure):
    """``nvcompBatchedLZ4DecompressOpts_t`` (64 bytes)."""

    _fields_ = [
        ("backend", ctypes.c_int),
        ("sort_before_hw_decompress", ctypes.c_int),
        ("data_type", ctypes.c_int),
        ("bitshuffle_mode", ctypes.c_int),
        ("reserved", ctypes.c_char * 48),
    ]


class Alignments(ctypes.Structure):
    """``nvcompAlignmentRequirements_t``."""

    _fields_ = [("input", ctypes.c_size_t), ("output", ctypes.c_size_t), ("temp", ctypes.c_size_t)]


class Properties(ctypes.Structure):
    """``nvcompProperties_t``."""

    _fields_ = [("version", ctypes.c_uint32), ("cudart_version", ctypes.c_uint32)]


def library_paths() -> list[str]:
    """Where ``libnvcomp.so.6`` may be: the wheel's folder first, then the system's."""
    paths = []
    try:
        import nvidia.libnvcomp as wheel

        folder = os.path.dirname(wheel.__file__)
        paths += [os.path.join(folder, sub, SONAME) for sub in ("lib64", "lib")]
    except ImportError:
        pass
    return [p for p in paths if os.path.isfile(p)] + [SONAME]


@functools.cache
def load() -> ctypes.CDLL | None:
    """libnvcomp of major version ``MAJOR`` with its LZ4 functions typed, or None."""
    for path in library_paths():
        try:
            lib = ctypes.CDLL(path, ctypes.RTLD_LOCAL)
            props = Properties()
            lib.nvcompGetProperties.argtypes = [ctypes.POINTER(Properties)]
            lib.nvcompGetProperties.restype = ctypes.c_int
            if lib.nvcompGetProperties(ctypes.byref(props)) != 0:
                continue
            if props.version // 1000 != MAJOR:
                continue
            _declare(lib)
            return lib
        except (OSError, AttributeError):
            continue
    return None


def _declare(lib: ctypes.CDLL) -> None:
    p, n = ctypes.c_void_p, ctypes.c_size_t
    lib.nvcompBatchedLZ4DecompressAsync.argtypes = [p, p, p, p, n, p, n, p, DecompressOpts, p, p]
    lib.nvcompBatchedLZ4DecompressAsync.restype = ctypes.c_int
    lib.nvcompBatchedLZ4DecompressGetTempSize.argtypes = [
        n,
        n,
        DecompressOpts,
        ctypes.POINTER(ctypes.c_size_t),
        n,
        p,
    ]
    lib.nvcompBatchedLZ4DecompressGetTempSize.restype = ctypes.c_int
    lib.nvcompBatchedLZ4DecompressGetRequiredAlignments.argtypes = [
        DecompressOpts,
        ctypes.POINTER(Alignments),
    ]
    lib.nvcompBatchedLZ4DecompressGetRequiredAlignments.restype = ctypes.c_int
    lib.nvcompGetStatusString.argtypes = [ctypes.c_int]
    lib.nvcompGetStatusString.restype = ctypes.c_char_p


def options(itemsize: int = 0) -> DecompressOpts:
    """CUDA backend; with ``itemsize``, nvCOMP's own inverse bitshuffle of that element size."""
    if itemsize:
        return DecompressOpts(BACKEND_CUDA, 0, UNSIGNED_TYPE[itemsize], BITSHUFFLE_LSB_FIRST)
    return DecompressOpts(BACKEND_CUDA, 0, 0, BITSHUFFLE_NONE)


class NvcompLZ4:
    """Batched LZ4 blocks decoded on a CUDA device by nvCOMP.

    ``bitshuffle_itemsize``: also undo bitshuffle inside nvCOMP (its 8 KiB sub-chunk
    mode; right only where every block is at most 8 KiB). 0: plain LZ4, the unshuffle
    is done afterwards (``unshuffle.py``).
    """

    name = "nvcomp"

    def __init__(self, lib: ctypes.CDLL, bitshuffle_itemsize: int = 0) -> None:
        self.lib = lib
        self.opts = options(bitshuffle_itemsize)
        self.unshuffles = bool(bitshuffle_itemsize)
        self._temp: torch.Tensor | None = None

    @classmethod
    def create(cls, bitshuffle_itemsize: int = 0) -> NvcompLZ4 | None:
        """A decoder when libnvcomp loads and takes blocks at any byte offset, else None."""
        lib = load()
        if lib is None:
            return None
        align = Alignments()
        status = lib.nvcompBatchedLZ4DecompressGetRequiredAlignments(
            options(bitshuffle_itemsize), ctypes.byref(align)
        )
        # Blocks start wherever the previous one ended: inputs must be byte-aligned.
        if status != 0 or align.input != 1 or align.output > max(1, bitshuffle_itemsize):
            return None
        return cls(lib, bitshuffle_itemsize)

    def status_text(self, status: int) -> str:
        text = self.lib.nvcompGetStatusString(status)
        return text.decode(errors="replace") if text else f"status {status}"

    def temp_bytes(self, blocks: int, largest: int, total: int) -> int:
        got = ctypes.c_size_t()
        status = self.lib.nvcompBatchedLZ4DecompressGetTempSize(
            blocks, largest, self.opts, ctypes.byref(got), total, None
        )
        if status != 0:
            raise RuntimeError(f"nvCOMP temp size: {self.status_text(status)}")
        return int(got.value)

    def decompress(self, blocks: Blocks, stream: int) -> None:
        """Enqueue the decoding of the batch's blocks on ``stream`` (a ``cudaStream_t``)."""
        count = blocks.comp_ptrs.numel()
        need = self.temp_bytes(count, blocks.largest, blocks.total)
        temp_ptr = None
        if need:
            if self._temp is None or self._temp.numel() < need:
                self._temp = torch.empty(need, dtype=torch.uint8, device=blocks.comp_ptrs.device)
            temp_ptr = self._temp.data_ptr()
        status = self.lib.nvcompBatchedLZ4DecompressAsync(
            blocks.comp_ptrs.data_ptr(),
            blocks.comp_sizes.data_ptr(),
            blocks.out_sizes.data_ptr(),
            blocks.actual.data_ptr(),
            count,
            temp_ptr,
            need,
            blocks.out_ptrs.data_ptr(),
            self.opts,
            blocks.statuses.data_ptr(),
            stream or None,
        )
        if status != 0:
            raise RuntimeError(f"nvCOMP LZ4 decompress: {self.status_text(status)}")
