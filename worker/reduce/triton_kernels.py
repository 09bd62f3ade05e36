"""The Triton kernels, in Triton's language; their host sides are ``triton_sums`` and
``triton_regions``.

Triton is imported on first use only (it ships with CUDA builds of torch; CPU machines
have none), and ``triton.jit`` decides at decoration time whether a kernel runs compiled
or in the interpreter (``TRITON_INTERPRET=1``, CPU tensors: the tests), so the kernels
are built by ``kernels()`` once per mode.
"""

from __future__ import annotations

import functools
import os
from types import SimpleNamespace

import torch

#: torch dtype -> (dtype the Triton kernels load, bits to keep when widening it): unsigned
#: types Triton cannot load come in as the signed type of their width, masked back.
LOADS = {
    torch.uint8: (torch.uint8, 0),
    torch.int8: (torch.int8, 0),
    torch.int16: (torch.int16, 0),
    torch.uint16: (torch.int16, 0xFFFF),
    torch.int32: (torch.int32, 0),
    torch.uint32: (torch.int32, 0xFFFFFFFF),
    torch.float32: (torch.float32, 0),
    torch.float64: (torch.float64, 0),
}


def interpreting() -> bool:
    """Whether Triton runs in its interpreter (``TRITON_INTERPRET=1``: CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def loadable(raw: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``raw`` contiguous, as the dtype the kernels load, and the bits to keep of it."""
    load, keep = LOADS[raw.dtype]
    raw = raw.contiguous()
    return (raw if load == raw.dtype else raw.view(load)), keep


def kernels() -> SimpleNamespace:
    """``region_sums`` and ``region_moments``, built for the current interpreter mode."""
    return _build(interpreting())


@functools.lru_cache(maxsize=2)
def _build(interpret: bool) -> SimpleNamespace:
    import triton
    import triton.language as tl

    @triton.jit  # type: ignore[misc]
    def region_sums(
        x_ptr,
        lab_ptr,
        out_ptr,
        n_frames,
        n_pixels,
        K: tl.constexpr,
        KEEP: tl.constexpr,
        WIDE: tl.constexpr,
        BLOCK: tl.constexpr,
        FRAMES: tl.constexpr,
    ):
        c = tl.program_id(0)
        n_blocks = tl.num_programs(0)
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

    @triton.jit  # type: ignore[misc]
    def region_moments(
        x_ptr,
        pix_ptr,
        local_ptr,
        tiles_ptr,
        sum_ptr,
        count_ptr,
        stats_ptr,
        n_frames,
        n_pixels,
        n_slots,
        KEEP: tl.constexpr,
        IS_FLOAT: tl.constexpr,
        MOMENTS: tl.constexpr,
        BLOCK: tl.constexpr,
        BINS: tl.constexpr,
        FRAMES: tl.constexpr,
    ):
        t = tl.program_id(0)
        f0 = tl.program_id(1) * FRAMES
        start = tl.load(tiles_ptr + 2 * t)
        length = tl.load(tiles_ptr + 2 * t + 1)
        offs = tl.arange(0, BLOCK)
        inside = offs < length
        pix = tl.load(pix_ptr + start + offs, mask=inside, other=0).to(tl.int64)
        local = tl.load(local_ptr + start + offs, mask=inside, other=-1)
        hit = local[:, None] == tl.arange(0, BINS)[None, :]
        slot = t * BINS + tl.arange(0, BINS)
        for j in range(0, tl.minimum(FRAMES, n_frames - f0)):
            f = f0 + j
            raw = tl.load(x_ptr + f.to(tl.int64) * n_pixels + pix, mask=inside, other=0)
            if IS_FLOAT:
                v = raw.to(tl.float64)
                valid = inside & (v == v)
                h = hit & valid[:, None]
                s = tl.sum(tl.where(h, v[:, None], 0.0), axis=0)
            else:
                w = raw.to(tl.int64)
                if KEEP != 0:
                    w = w & KEEP
                v = w.to(tl.float64)
                valid = inside
                h = hit & valid[:, None]
                s = tl.sum(tl.where(h, w[:, None], 0), axis=0)
            n = tl.sum(h.to(tl.int64), axis=0)
            out = f.to(tl.int64) * n_slots + slot
            tl.store(sum_ptr + out, s)
            tl.store(count_ptr + out, n)
            if MOMENTS:
                lo = tl.min(tl.where(h, v[:, None], float("inf")), axis=0)
                hi = tl.max(tl.where(h, v[:, None], float("-inf")), axis=0)
                mean = s.to(tl.float64) / tl.maximum(n, 1).to(tl.float64)
                centre = tl.sum(tl.where(h, mean[None, :], 0.0), axis=1)
                d = tl.where(valid, v - centre, 0.0)
                m2 = tl.sum(tl.where(h, (d * d)[:, None], 0.0), axis=0)
                row = f.to(tl.int64) * 3 * n_slots + slot  # stats (frames, 3, slots)
                tl.store(stats_ptr + row, lo)
                tl.store(stats_ptr + row + n_slots, hi)
                tl.store(stats_ptr + row + 2 * n_slots, m2)

    return SimpleNamespace(region_sums=region_sums, region_moments=region_moments)
