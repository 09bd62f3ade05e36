"""Plain torch region statistics on a device: the CUDA engine's path without Triton.

Used where Triton cannot run (a build without it, a failed self-check) and as the
reference the Triton kernels check themselves against; it runs on any torch device,
so the CPU tests cover it.

* Integer sums are exact: frames converted to float32 (<= 16-bit, signed ones shifted
  to be non-negative) and multiplied by a one-hot matrix in tiles of <= 2**20 pixels;
  float32 sums of non-negative integers that stay below 2**24 were computed without
  rounding (every partial sum is <= the result), otherwise the tile is redone in
  float64, exact for < 2**21 pixels of 32-bit values. Tiles are added in int64.
  TF32 must be off for this (``DeviceReducer`` turns it off).
* Float sums are float64; frames with a non-finite sum are redone skipping NaN with
  numpy's nansum rules for +/-inf.
* min/max by ``scatter_reduce``, and std from squared deviations from the mean (a
  second pass over the converted frames, float64).
* Many regions (a one-hot matrix over ``DENSE_ONEHOT_ENTRIES``): ``scatter_add`` of the
  masked pixels gathered in region order instead of the GEMM.
"""

from __future__ import annotations

import numpy as np
import torch

#: Dense one-hot matrices are used up to this many entries.
DENSE_ONEHOT_ENTRIES = 1 << 27
#: Integers below this are exact in float32, and a float32 sum of non-negative
#: integers that stays below it was computed without rounding.
_F32_EXACT = float(2**24)
#: Pixels per GEMM tile: a float64 tile sum of (shifted) 32-bit integers stays exact.
_MAX_TILE_PIXELS = 1 << 20
#: Offsets that make signed integers non-negative (needed by the exactness argument).
_OFFSETS = {("i", 1): 2.0**7, ("i", 2): 2.0**15, ("i", 4): 2.0**31}


def unsigned_via_signed(raw: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """uint16/uint32 -> dtype through the signed type of the same size.

    torch has only "barebones" uint16/uint32 support; a device without a conversion
    kernel for them still has int16/int32 ones.
    """
    signed, wide = (
        (torch.int16, torch.int32) if raw.dtype == torch.uint16 else (torch.int32, torch.int64)
    )
    bits = raw.view(signed).to(wide) & ((1 << (8 * raw.element_size())) - 1)
    return bits.to(dtype)


def convert(raw: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Raw device frames as ``dtype`` (one conversion kernel where torch has one)."""
    if raw.dtype in (torch.uint16, torch.uint32):
        try:
            return raw.to(dtype)
        except (RuntimeError, NotImplementedError):
            return unsigned_via_signed(raw, dtype)
    return raw.to(dtype)


def kind_of(dtype: torch.dtype) -> tuple[str, int]:
    dt = torch.empty(0, dtype=dtype).numpy().dtype
    return dt.kind, dt.itemsize


class TorchRegions:
    """The mask on a device, and region statistics of ``(frames, pixels)`` tensors."""

    def __init__(self, flat: np.ndarray, n_regions: int, device: torch.device) -> None:
        self.n_regions = n_regions
        self.n_pixels = flat.size
        masked = np.flatnonzero(flat)
        order = masked[np.argsort(flat[masked], kind="stable")]
        self.gather = torch.from_numpy(order.astype(np.int64)).to(device)
        self.segment = torch.from_numpy(flat[order].astype(np.int64) - 1).to(device)
        counts = np.bincount(flat, minlength=n_regions + 1)[1:].astype(np.int64)
        self.pixel_count = torch.from_numpy(counts).to(device)
        self.dense = n_regions * flat.size <= DENSE_ONEHOT_ENTRIES
        self._onehot: dict[torch.dtype, torch.Tensor] = {}
        if self.dense:
            onehot = torch.zeros(flat.size, n_regions, dtype=torch.float32, device=device)
            onehot[self.gather, self.segment] = 1.0
            self._onehot[torch.float32] = onehot

    def onehot(self, dtype: torch.dtype) -> torch.Tensor:
        if dtype not in self._onehot:
            self._onehot[dtype] = self._onehot[torch.float32].to(dtype)
        return self._onehot[dtype]

    def scatter_sum(self, g: torch.Tensor) -> torch.Tensor:
        """Region sums (frames, K) of gathered values (frames, M)."""
        out = torch.zeros(g.shape[0], self.n_regions, dtype=g.dtype, device=g.device)
        return out.scatter_add_(1, self.segment.expand(g.shape[0], -1), g)

    def _gemm_sums(self, x: torch.Tensor) -> torch.Tensor:
        """One-hot GEMM in tiles; float32 results for the 2**24 check, else int64."""
        exact_int = x.dtype == torch.float64
        out = torch.zeros(
            x.shape[0], self.n_regions, dtype=torch.int64 if exact_int else x.dtype, device=x.device
        )
        onehot = self.onehot(x.dtype)
        for p0 in range(0, self.n_pixels, _MAX_TILE_PIXELS):
            part = x[:, p0 : p0 + _MAX_TILE_PIXELS] @ onehot[p0 : p0 + _MAX_TILE_PIXELS]
            out += part.to(torch.int64) if exact_int else part
        return out

    def int_sums(self, raw: torch.Tensor) -> torch.Tensor:
        """Exact int64 region sums (frames, K) of integer frames."""
        kind = kind_of(raw.dtype)
        if not self.dense:
            return self.scatter_sum(convert(raw, torch.int64).index_select(1, self.gather))
        offset = _OFFSETS.get(kind, 0.0)
        sums = None
        if kind[1] <= 2:
            x = convert(raw, torch.float32)
            if offset:
                x += offset
            s32 = self._gemm_sums(x)
            if bool((s32 < _F32_EXACT).all()):  # no partial sum was rounded
                sums = s32.to(torch.int64)
        if sums is None:
            x = convert(raw, torch.float64)
            if offset:
                x += offset
            sums = self._gemm_sums(x)
        if offset:
            sums -= int(offset) * self.pixel_count
        return sums

    def float_sums(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float64 region sums and NaN counts; exact nan-rules for non-finite frames."""
        if self.dense:
            sums = torch.zeros(x.shape[0], self.n_regions, dtype=x.dtype, device=x.device)
            onehot = self.onehot(x.dtype)
            for p0 in range(0, self.n_pixels, _MAX_TILE_PIXELS):
                sums += x[:, p0 : p0 + _MAX_TILE_PIXELS] @ onehot[p0 : p0 + _MAX_TILE_PIXELS]
        else:
            sums = self.scatter_sum(x.index_select(1, self.gather))
        nan_counts = torch.zeros(sums.shape, dtype=torch.int64, device=x.device)
        bad = ~torch.isfinite(sums).all(dim=1)
        if bool(bad.any()):
            rows = bad.nonzero().squeeze(1)
            g = x[rows].index_select(1, self.gather)
            exact = self.scatter_sum(torch.where(torch.isfinite(g), g, 0.0))
            pos = self.scatter_sum((g == torch.inf).to(torch.int64)) > 0
            neg = self.scatter_sum((g == -torch.inf).to(torch.int64)) > 0
            exact = torch.where(pos, torch.inf, exact)
            exact = torch.where(neg, -torch.inf, exact)
            sums[rows] = torch.where(pos & neg, torch.nan, exact)
            nan_counts[rows] = self.scatter_sum(torch.isnan(g).to(torch.int64))
        return sums, nan_counts

    def sums(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(float64 sums, int64 counts) (frames, K) of raw frames."""
        if raw.dtype.is_floating_point:
            sums, nans = self.float_sums(convert(raw, torch.float64))
            return sums, self.pixel_count - nans
        sums = self.int_sums(raw).to(torch.float64)
        return sums, self.pixel_count.expand(sums.shape[0], -1)

    def extremes_and_m2(
        self, raw: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """min, max (NaN skipped) and squared deviations from the mean, float64 (frames, K)."""
        g = convert(raw, torch.float64).index_select(1, self.gather)
        nan = torch.isnan(g)
        index = self.segment.expand(g.shape[0], -1)
        shape = (g.shape[0], self.n_regions)
        mins = torch.full(shape, torch.inf, dtype=g.dtype, device=g.device)
        mins.scatter_reduce_(1, index, torch.where(nan, torch.inf, g), "amin")
        maxs = torch.full(shape, -torch.inf, dtype=g.dtype, device=g.device)
        maxs.scatter_reduce_(1, index, torch.where(nan, -torch.inf, g), "amax")
        mean = sums / counts.clamp(min=1)
        mean = torch.where(torch.isfinite(mean), mean, 0.0)
        dev = torch.where(nan, 0.0, g - mean.index_select(1, self.segment))
        return mins, maxs, self.scatter_sum(dev * dev)
