"""Triton kernel: exact integer region sums for a few regions, from the raw frames.

The torch path (``cuda_torch``) converts integer frames to a float32 copy in global
memory and multiplies it by a one-hot matrix: ~10 bytes of memory traffic per 2-byte
pixel. Here one kernel reads the raw frames (uint8/int8/(u)int16/(u)int32), widens them
in registers and sums them per (frame, region) in integers: 32-bit for <= 16-bit input
(a program sums at most ``BLOCK`` = 4096 pixels: 4096 * 65535 < 2**31), 64-bit for
32-bit input. Each program writes its partial sums to its own slot and torch adds the
slots in int64, so there are no atomics and results are exact and deterministic.

Only for sum/mean/count of few regions (``MAX_REGIONS``: the kernel loops over the
regions in registers); ``triton_regions`` takes everything else. Triton is imported on
first use only (it ships with CUDA builds of torch; CPU machines have none):
``triton_regions.available()`` says whether it can be used. Under ``TRITON_INTERPRET=1`` the kernel
also runs on CPU tensors (tests).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch

#: Regions this kernel handles (it loops over them per pixel block).
MAX_REGIONS = 16
#: Pixels per program and frames per program.
BLOCK = 4096
FRAMES_PER_PROGRAM = 8

#: torch dtype -> (dtype Triton loads, bits to keep when widening, 64-bit sums).
_LOADS = {
    torch.uint8: (torch.uint8, 0, False),
    torch.int8: (torch.int8, 0, False),
    torch.int16: (torch.int16, 0, False),
    torch.uint16: (torch.int16, 0xFFFF, False),
    torch.int32: (torch.int32, 0, True),
    torch.uint32: (torch.int32, 0xFFFFFFFF, True),
}


def interpreting() -> bool:
    """Whether Triton runs in its interpreter (``TRITON_INTERPRET=1``: CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=2)
def _kernel(interpret: bool) -> Any:
    import triton
    import triton.language as tl

    @triton.jit  # type: ignore[misc]
    def region_sums(
        x_ptr,
        lab_ptr,
        out_ptr,
        n_frames,
        n_pixels,
        n_blocks,
        K: tl.constexpr,
        KEEP: tl.constexpr,
        WIDE: tl.constexpr,
        BLOCK: tl.constexpr,
        FRAMES: tl.constexpr,
    ):
        c = tl.program_id(0)
        f0 = tl.program_id(1) * FRAMES
        offs = c * BLOCK + tl.arange(0, BLOCK)
        inside = offs < n_pixels
        lab = tl.load(lab_ptr + offs, mask=inside, other=0)
        for j in range(FRAMES):
            f = f0 + j
            if f < n_frames:
                raw = tl.load(x_ptr + f.to(tl.int64) * n_pixels + offs, mask=inside, other=0)
                if WIDE:
                    v = raw.to(tl.int64)
                else:
                    v = raw.to(tl.int32)
                if KEEP != 0:
                    v = v & KEEP
                for k in tl.static_range(K):
                    s = tl.sum(tl.where(lab == k + 1, v, 0), axis=0)
                    tl.store(out_ptr + (f.to(tl.int64) * n_blocks + c) * K + k, s.to(tl.int64))

    return region_sums


def supports(dtype: torch.dtype, n_regions: int) -> bool:
    return dtype in _LOADS and 0 < n_regions <= MAX_REGIONS


def region_sums(raw: torch.Tensor, labels: torch.Tensor, n_regions: int) -> torch.Tensor:
    """Exact int64 sums ``(frames, K)`` of integer frames ``raw (frames, pixels)``.

    ``labels`` (pixels,) int32 on the same device: 0 = no region, k = region k.
    """
    load, keep, wide = _LOADS[raw.dtype]
    raw = raw.contiguous()
    if load != raw.dtype:
        raw = raw.view(load)
    n_frames, n_pixels = raw.shape
    n_blocks = max(1, -(-n_pixels // BLOCK))
    partial = torch.empty(n_frames, n_blocks, n_regions, dtype=torch.int64, device=raw.device)
    if n_frames == 0:
        return partial.sum(dim=1)
    grid = (n_blocks, -(-n_frames // FRAMES_PER_PROGRAM))
    _kernel(interpreting())[grid](
        raw,
        labels,
        partial,
        n_frames,
        n_pixels,
        n_blocks,
        K=n_regions,
        KEEP=keep,
        WIDE=wide,
        BLOCK=BLOCK,
        FRAMES=FRAMES_PER_PROGRAM,
    )
    return partial.sum(dim=1)
