"""Triton kernel: all region statistics of any number of regions, privatised per program.

A histogram with hot bins (a few large regions) is slow on a GPU when every pixel does a
global atomic add on its region's total: the adds to one address serialise. Here each
program (one thread block) owns a tile of the mask's pixels and keeps a *private* set of
``BINS`` accumulators for the regions in that tile (in registers and shared memory,
where Triton puts a block's reductions), then writes them once; a torch ``index_add_``
merges the tiles' partials, a few per region.

Tiles come from the masked pixels sorted by region (``plan_tiles``): consecutive entries
of that list, at most ``BLOCK`` of them and at most ``BINS`` regions each. Sorting by
region makes a tile's regions few whatever K is: a large region fills whole tiles, small
ones share a tile. Each program loads its tile's pixel indices and local bin numbers once
and then reduces ``FRAMES`` frames with them, reading the raw frames (no converted copy):

* sum: exact in int64 for integer input, float64 for floats (NaN skipped, +/-inf added,
  so numpy's nansum rules); count: non-NaN pixels; min/max in float64 (exact for 32-bit
  integers);
* the sum of squared deviations from the tile's own region means (two passes over the
  values while they are in registers), merged across tiles with Chan's formula
  (``M2 = sum(M2_t + n_t (mean_t - mean)**2)``): numerically sound in one read of the
  frames, for integers too (within float64 rounding, not bit-exact).

Triton is imported on first use (CUDA builds of torch ship it; CPU machines have none);
under ``TRITON_INTERPRET=1`` the kernel also runs on CPU tensors, which the tests use.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .triton_kernels import LOADS, interpreting, kernels, loadable

#: Sorted pixels per tile (one program), and private bins (regions) per tile.
BLOCK = 512
BINS = 16
#: Frames each program reduces with one load of its tile.
FRAMES = 4


def plan_tiles(
    flat: np.ndarray, block: int = BLOCK, bins: int = BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Tiles of the masked pixels sorted by label.

    Returns (pixels (M,) sorted by region, local bin of each (M,), tile starts (T,),
    tile lengths (T,), region of each tile's bins (T, bins), 0-based, -1 = unused).
    """
    masked = np.flatnonzero(flat)
    order = masked[np.argsort(flat[masked], kind="stable")]
    labels = flat[order].astype(np.int64)
    m = order.size
    change = np.ones(m, dtype=bool)
    change[1:] = labels[1:] != labels[:-1]
    seg_starts = np.flatnonzero(change)
    seg_of = np.cumsum(change) - 1
    starts: list[int] = []
    pos = 0
    while pos < m:
        starts.append(pos)
        end = min(pos + block, m)
        first = int(seg_of[pos])
        if first + bins < seg_starts.size:
            end = min(end, int(seg_starts[first + bins]))
        pos = end
    tile_start = np.asarray(starts, dtype=np.int64)
    tile_len = np.diff(np.append(tile_start, m))
    tile_of = np.repeat(np.arange(tile_start.size), tile_len)
    first_seg = seg_of[tile_start] if m else np.zeros(0, dtype=np.int64)
    local = seg_of - first_seg[tile_of]
    regions = np.full((tile_start.size, bins), -1, dtype=np.int64)
    regions[tile_of, local] = labels - 1
    return order, local, tile_start, tile_len, regions


def available(device: torch.device) -> bool:
    """Triton imports and can run on ``device`` (CUDA, or anything when interpreting)."""
    if device.type != "cuda" and not interpreting():
        return False
    try:
        kernels()
    except Exception:  # no triton, or one that cannot build here
        return False
    return True


def supports(dtype: torch.dtype) -> bool:
    return dtype in LOADS


class TritonRegions:
    """The mask's tiles on a device, and the kernel's statistics of ``(frames, pixels)``."""

    def __init__(self, flat: np.ndarray, n_regions: int, device: torch.device) -> None:
        order, local, start, length, regions = plan_tiles(flat)
        self.n_regions = n_regions
        self.n_tiles = start.size
        self.pixels = torch.from_numpy(order.astype(np.int32)).to(device)
        self.local = torch.from_numpy(local.astype(np.int32)).to(device)
        self.tiles = torch.from_numpy(np.stack([start, length], axis=1).astype(np.int32)).to(device)
        used = np.flatnonzero(regions.ravel() >= 0)
        self.slots = torch.from_numpy(used).to(device)
        self.slot_region = torch.from_numpy(regions.ravel()[used]).to(device)

    def reduce(
        self, raw: torch.Tensor, moments: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, Any]:
        """(sums float64, counts int64, mins, maxs, M2) (frames, K); the last three only
        with ``moments``. Integer sums are exact int64 before the final conversion."""
        raw, keep = loadable(raw)
        n_frames, n_pixels = raw.shape
        n_slots = self.n_tiles * BINS
        dev = raw.device
        is_float = raw.dtype.is_floating_point
        shape = (n_frames, n_slots)
        part_sum = torch.empty(shape, dtype=torch.float64 if is_float else torch.int64, device=dev)
        part_n = torch.empty(shape, dtype=torch.int64, device=dev)
        # (frames, 3, slots): min, max and M2; without ``moments`` the kernel is compiled
        # without those stores and gets a real tensor that is never written.
        part_stats = (
            torch.empty((n_frames, 3, n_slots), dtype=torch.float64, device=dev)
            if moments
            else part_n
        )
        if n_frames and self.n_tiles:
            grid = (self.n_tiles, -(-n_frames // FRAMES))
            # inf - inf is NaN by design; the interpreter computes with numpy, which warns.
            with np.errstate(invalid="ignore", over="ignore"):
                kernels().region_moments[grid](
                    raw,
                    self.pixels,
                    self.local,
                    self.tiles,
                    part_sum,
                    part_n,
                    part_stats,
                    n_frames,
                    n_pixels,
                    n_slots,
                    KEEP=keep,
                    IS_FLOAT=is_float,
                    MOMENTS=moments,
                    BLOCK=BLOCK,
                    BINS=BINS,
                    FRAMES=FRAMES,
                )
        return self._merge(part_sum, part_n, part_stats if moments else None)

    def _merge(
        self, part_sum: torch.Tensor, part_n: torch.Tensor, part_stats: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, Any]:
        """Each region's total over its tiles' partials (Chan's formula for M2)."""
        region = self.slot_region
        frames = part_sum.shape[0]
        shape = (frames, self.n_regions)
        dev = part_sum.device
        s = part_sum.index_select(1, self.slots)
        n = part_n.index_select(1, self.slots)
        sums = torch.zeros(shape, dtype=s.dtype, device=dev).index_add_(1, region, s)
        counts = torch.zeros(shape, dtype=torch.int64, device=dev).index_add_(1, region, n)
        sums64 = sums.to(torch.float64)
        if part_stats is None:
            return sums64, counts, None, None, None
        part_min, part_max, part_m2 = part_stats.unbind(1)
        index = region.expand(frames, -1)
        mins = torch.full(shape, torch.inf, dtype=torch.float64, device=dev)
        mins.scatter_reduce_(1, index, part_min.index_select(1, self.slots), "amin")
        maxs = torch.full(shape, -torch.inf, dtype=torch.float64, device=dev)
        maxs.scatter_reduce_(1, index, part_max.index_select(1, self.slots), "amax")
        nf = n.to(torch.float64)
        tile_mean = s.to(torch.float64) / nf.clamp(min=1)
        mean = sums64 / counts.clamp(min=1).to(torch.float64)
        spread = torch.where(n > 0, nf * (tile_mean - mean.index_select(1, region)) ** 2, 0.0)
        terms = part_m2.index_select(1, self.slots) + spread
        m2 = torch.zeros(shape, dtype=torch.float64, device=dev).index_add_(1, region, terms)
        return sums64, counts, mins, maxs, m2
