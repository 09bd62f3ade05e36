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

import torch

from .triton_kernels import LOADS, kernels, loadable

#: Regions this kernel handles (it loops over them per pixel block).
MAX_REGIONS = 16
#: Pixels per program and frames per program.
BLOCK = 4096
FRAMES_PER_PROGRAM = 8


def supports(dtype: torch.dtype, n_regions: int) -> bool:
    return dtype in LOADS and not dtype.is_floating_point and 0 < n_regions <= MAX_REGIONS


def region_sums(raw: torch.Tensor, labels: torch.Tensor, n_regions: int) -> torch.Tensor:
    """Exact int64 sums ``(frames, K)`` of integer frames ``raw (frames, pixels)``.

    ``labels`` (pixels,) int32 on the same device: 0 = no region, k = region k.
    """
    raw, keep = loadable(raw)
    n_frames, n_pixels = raw.shape
    n_blocks = max(1, -(-n_pixels // BLOCK))
    partial = torch.empty(n_frames, n_blocks, n_regions, dtype=torch.int64, device=raw.device)
    if n_frames == 0:
        return partial.sum(dim=1)
    grid = (n_blocks, -(-n_frames // FRAMES_PER_PROGRAM))
    kernels().region_sums[grid](
        raw,
        labels,
        partial,
        n_frames,
        n_pixels,
        K=n_regions,
        KEEP=keep,
        WIDE=raw.dtype == torch.int32,
        BLOCK=BLOCK,
        FRAMES=FRAMES_PER_PROGRAM,
    )
    return partial.sum(dim=1)
