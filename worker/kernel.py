"""Per-frame statistics inside mask regions: the compute kernel.

``MaskedReducer`` is built once per job (mask, statistics, device) and then reduces
blocks of frames ``(B, H, W)`` to ``{stat: float64 (B, K)}``. It knows nothing of
Celery, Redis or HDF5.

Why it looks the way it does (measured on a 1-thread AMD EPYC with torch 2.13 + MKL):

* torch's integer reductions run at ~1/50 of memory speed, so every block is first
  converted into a *reused* float staging buffer of a few MiB (it stays in cache)
  and reduced there; nothing as large as the input is ever allocated.
* MKL's float GEMV runs at memory speed, but its GEMM with 2..64 output columns runs
  at ~1 G element/s on this CPU, slower than one GEMV per column. So the one-hot
  product is only used where a tile (a band of rows) holds a single region
  (``torch.mv`` with 0/1 weights). Otherwise a tile is reduced by *segments*, in the
  cheapest of three layouts by a small cost model: one strided box view per region
  where regions are disjoint rectangles (ROIs; one torch reduction each), runs of
  constant label along the flattened tile (one ``np.ufunc.reduceat``, ~0.2 ns per
  pixel plus ~14 ns per run), or the masked pixels gathered in region order (for
  masks of many tiny runs). Unmasked pixels inside a box or a run ("holes": dead
  pixels, module gaps) are zeroed in the staging buffer for sums, or overwritten
  with a pixel of the same region for min/max.
* Exactness for integers: all partial sums of non-negative integers are <= the final
  sum and rounding is monotone, so a float32 result < 2**24 proves that no partial
  sum was rounded. <= 16-bit integers (signed ones shifted to be non-negative) are
  summed in float32 and a tile whose result reaches 2**24 is redone in float64.
  32-bit integers are summed in float64, where a tile of <= 2**20 pixels cannot
  reach 2**53. Tile results are added in int64, so sums equal numpy's int64 sums
  bit for bit (limit: the int64 range; the float64 result is that sum rounded once,
  i.e. exact below 2**53).
* Float input is accumulated in float64. A non-finite pixel makes its tile result
  non-finite (x*1 for masked pixels; the GEMV also turns unmasked ones into
  0*inf = nan), and only frames whose tile result is non-finite take an exact slow
  path that skips NaN and applies numpy's nan-function rules to +/-inf.
* min/max ride along in the first pass; std is two-pass (squared deviations from the
  known mean, float64) over the same few frames while they are still in cache.

The CUDA path (:class:`_DeviceReducer`) is plain dense torch: frames go through a
reused pinned host buffer in their raw dtype, are converted on the GPU and reduced
with a one-hot GEMM (scatter_add for large K). TF32 is disabled because the integer
exactness argument needs true float32 products and sums.
"""

from __future__ import annotations

import functools
import logging
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from . import cpu_sums

STATS = ("sum", "mean", "count", "min", "max", "std")

#: Integers below this are exact in float32, and a float32 sum of non-negative
#: integers that stays below it was computed without rounding.
_F32_EXACT = float(2**24)
#: Pixels per tile (whole rows; at least one row). A float64 tile sum of (shifted)
#: 32-bit integers is exact while tiles stay below 2**21 pixels (2**21 * 2**32 = 2**53).
_MAX_TILE_PIXELS = 1 << 20
_MAX_ROW = 1 << 21
#: Staging buffer of the first pass (frames x tile pixels), tuned with bench.kernel.
_STAGE_BYTES = 8 << 20
#: float64 elements staged at a time by the deviation pass (std): stays in L2.
_STD_STAGE_ELEMS = 1 << 18
#: Unmasked gaps up to this long between two runs of one region become holes.
_MAX_HOLE = 8
#: Cost model of the segment layouts, ns on the reference CPU (see bench.kernel).
_NS_PER_PIXEL = 0.2  # reduceat over a run, per pixel
_NS_PER_RUN = 14.0  # reduceat, per run
_NS_PER_HOLE = 2.0  # zeroing or copying a hole
_NS_PER_GATHER = 3.0  # index_select (random access) + reduceat, per masked pixel
_NS_PER_BOX_PIXEL = 0.15  # torch reduction over a strided box view, per pixel
_NS_PER_BOX = 300.0  # per box and frame (call overhead spread over a frame group)
_MAX_BOXES = 64  # regions per tile worth checking for the box layout
#: Dense one-hot matrices on the device are used up to this many entries.
_DENSE_ONEHOT_ENTRIES = 1 << 27
#: Elements per device group (each float64 temporary ~256 MiB).
_DEVICE_GROUP_ELEMS = 1 << 25

#: Offsets that make signed integers non-negative (needed by the exactness argument).
_OFFSETS = {("i", 1): 2.0**7, ("i", 2): 2.0**15, ("i", 4): 2.0**31}
_SUPPORTED = {("u", 1), ("u", 2), ("u", 4), ("i", 1), ("i", 2), ("i", 4), ("f", 4), ("f", 8)}


def resolve_device(spec: str | torch.device | None = None) -> torch.device:
    """Map None/'auto', 'cpu', 'cuda' or 'cuda:N' to a usable torch.device.

    Raises ValueError for an unknown spec or an unavailable CUDA device, so that a
    misconfigured worker fails at start-up rather than on its first chunk.
    """
    text = "auto" if spec is None else str(spec).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"unknown device {spec!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from exc
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise ValueError(f"unsupported device {spec!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} requested but CUDA is not available")
    index = torch.cuda.current_device() if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise ValueError(
            f"device {spec!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
        )
    return torch.device("cuda", index)


def mask_regions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Turn a mask into int32 labels (0 = outside every region) and the region count K.

    A boolean mask is one region. An integer mask is a label image; K is its largest
    label, so labels that never occur are empty regions (their statistics are NaN).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    if mask.dtype == np.bool_:
        return mask.astype(np.int32), 1
    if mask.dtype.kind not in "iu":
        raise ValueError(f"mask must be bool or integer, got dtype {mask.dtype}")
    if mask.size == 0:
        return mask.astype(np.int32), 0
    if mask.dtype.kind == "i" and int(mask.min()) < 0:
        raise ValueError("mask labels must be >= 0 (0 = no region)")
    n_regions = int(mask.max())
    if n_regions > np.iinfo(np.int32).max:
        raise ValueError(f"mask label {n_regions} does not fit int32")
    return mask.astype(np.int32), n_regions


def _frame_kind(dtype: np.dtype) -> tuple[str, int]:
    kind = (dtype.kind, dtype.itemsize)
    if kind not in _SUPPORTED:
        raise ValueError(f"unsupported frame dtype {dtype}: use (u)int8/16/32, float32 or float64")
    return kind


def _sum_dtype(kind: tuple[str, int]) -> torch.dtype:
    """float32 where the 2**24 argument makes it exact (<= 16-bit ints), else float64."""
    return torch.float32 if kind[0] in "iu" and kind[1] <= 2 else torch.float64


class MaskedReducer:
    """Per-frame sum/mean/count/min/max/std inside each region of a mask.

    Built once per job and process; ``reduce`` is then called on many blocks and
    reuses its buffers (so one instance must not be used by two threads at once).
    NaN pixels are skipped by every statistic; an empty (or all-NaN) region has sum
    0, count 0 and NaN mean/min/max/std. Integer sums are exact (see module doc).
    """

    n_regions: int
    pixel_count: np.ndarray
    device: torch.device

    def __init__(
        self,
        mask: np.ndarray,
        stats: Sequence[str],
        device: str | torch.device | None = None,
    ) -> None:
        stats = (stats,) if isinstance(stats, str) else tuple(stats)
        if not stats or any(s not in STATS for s in stats):
            raise ValueError(f"stats must be a non-empty subset of {STATS}, got {stats!r}")
        self.stats = tuple(dict.fromkeys(stats))
        labels, self.n_regions = mask_regions(mask)
        self.shape = labels.shape
        counts = np.bincount(labels.ravel(), minlength=self.n_regions + 1)
        self.pixel_count = counts[1:].astype(np.int64)
        self.device = resolve_device(device)
        self._impl: _CpuReducer | _DeviceReducer
        if self.device.type == "cpu":
            self._impl = _CpuReducer(labels, self.n_regions, self.stats)
        else:
            self._impl = _DeviceReducer(labels, self.n_regions, self.stats, self.device)

    def reduce(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """Statistics of a block ``(B, H, W)``: ``{stat: float64 (B, K)}``.

        Accepts (u)int8/16/32 and float32/64 of either byte order, also non-contiguous
        views. No reference to ``frames`` is kept after returning.
        """
        frames = np.asarray(frames)
        if frames.ndim != 3 or frames.shape[1:] != self.shape:
            raise ValueError(
                f"frames must have shape (B, {self.shape[0]}, {self.shape[1]}), got {frames.shape}"
            )
        kind = _frame_kind(frames.dtype)
        if frames.shape[0] == 0 or self.n_regions == 0:
            empty = {"sum": 0.0, "count": 0.0}
            return {
                s: np.full((frames.shape[0], self.n_regions), empty.get(s, np.nan))
                for s in self.stats
            }
        sums, counts, extra = self._impl.reduce(frames, kind)
        return _finish(self.stats, sums, counts, extra)

    def host_buffer(self, frames: int, dtype: np.dtype | type) -> np.ndarray | None:
        """An empty ``(frames, H, W)`` array for the caller to fill, or None (CPU reducer).

        On CUDA it is a view of a reused pinned buffer that ``reduce`` sends straight to
        the device (no staging copy). Buffers alternate: an array stays valid until the
        buffer after next is asked for (a reader's current and prefetched block).
        """
        provider = getattr(self._impl, "host_buffer", None)
        if provider is None:
            return None
        dtype = np.dtype(dtype)
        if (dtype.kind, dtype.itemsize) not in _SUPPORTED:
            return None
        return provider(frames, dtype.newbyteorder("="))  # type: ignore[no-any-return]


def _finish(
    stats: tuple[str, ...], sums: np.ndarray, counts: np.ndarray, extra: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Assemble float64 results; mean/min/max/std are NaN where nothing was counted."""
    empty = counts == 0
    safe = np.where(empty, 1, counts)
    out: dict[str, np.ndarray] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for s in stats:
            if s == "sum":
                out[s] = sums
            elif s == "count":
                out[s] = counts.astype(np.float64)
            elif s == "mean":
                out[s] = np.where(empty, np.nan, sums / safe)
            elif s == "std":
                # numpy's nanstd is NaN for a region holding +/-inf (inf - inf).
                bad = empty | ~np.isfinite(sums)
                out[s] = np.where(bad, np.nan, np.sqrt(extra["ssd"] / safe))
            else:
                out[s] = np.where(empty, np.nan, extra[s])
    return out


def _group_mean(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Means for the deviation pass; 0 where undefined (those results become NaN)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums / counts
    return np.where(np.isfinite(mean), mean, 0.0)


# -- CPU path ------------------------------------------------------------------------

Scratch = Callable[[int], torch.Tensor]


@dataclass(eq=False)
class _Holes:
    """Unmasked pixels folded into a segment, and for each a pixel of that segment."""

    holes: torch.Tensor
    source: torch.Tensor

    def fill(self, values: torch.Tensor, how: str) -> torch.Tensor:
        """Make holes neutral: 'copy' a segment pixel (min/max) or 'zero' them (sums)."""
        if self.holes.numel():
            if how == "copy":
                values[:, self.holes] = values[:, self.source]
            else:
                values.index_fill_(1, self.holes, 0)
        return values


@dataclass(eq=False)
class _Runs(_Holes):
    """Segments = runs of one label along the flattened tile, short gaps folded in."""

    starts: np.ndarray  # (R,) run starts, for reduceat
    take: np.ndarray  # masked runs, grouped by region
    offsets: np.ndarray  # (Kt,) start of each region's group in ``take``
    local: np.ndarray  # (R,) local region index + 1 of each run, 0 = unmasked
    lengths: np.ndarray  # (R,) run lengths

    def values(self, stage: torch.Tensor, scratch: Scratch, how: str) -> torch.Tensor:
        return self.fill(stage, how)

    def partial(self, values: torch.Tensor, ufunc: np.ufunc) -> np.ndarray:
        """Per-run reductions (frames, masked runs), grouped by region."""
        return ufunc.reduceat(values.numpy(), self.starts, axis=1)[:, self.take]

    def combine(self, partial: np.ndarray, ufunc: np.ufunc) -> np.ndarray:
        return ufunc.reduceat(partial, self.offsets, axis=1)

    def subtract(self, values: torch.Tensor, mean: np.ndarray) -> None:
        """values -= the mean (frames, Kt) of each value's region."""
        table = np.zeros((mean.shape[0], mean.shape[1] + 1))
        table[:, 1:] = mean
        values.sub_(torch.from_numpy(np.repeat(table[:, self.local], self.lengths, axis=1)))


@dataclass(eq=False)
class _Boxes(_Holes):
    """Segments = one rectangle per region containing no other region (ROI boxes)."""

    width: int
    boxes: list[tuple[int, int, int, int]]  # (row0, row1, col0, col1) per local region

    def views(self, values: torch.Tensor) -> list[torch.Tensor]:
        grid = values.view(values.shape[0], -1, self.width)
        return [grid[:, a:b, c:d] for a, b, c, d in self.boxes]

    def values(self, stage: torch.Tensor, scratch: Scratch, how: str) -> torch.Tensor:
        return self.fill(stage, how)

    def partial(self, values: torch.Tensor, ufunc: np.ufunc) -> np.ndarray:
        """Per-region reductions (frames, Kt) over strided box views (torch sums faster)."""
        if ufunc is np.add:
            return torch.stack([v.sum(dim=(1, 2)) for v in self.views(values)], dim=1).numpy()
        return np.stack([ufunc.reduce(v.numpy(), axis=(1, 2)) for v in self.views(values)], 1)

    def combine(self, partial: np.ndarray, ufunc: np.ufunc) -> np.ndarray:
        return partial

    def subtract(self, values: torch.Tensor, mean: np.ndarray) -> None:
        for k, view in enumerate(self.views(values)):
            view.sub_(torch.from_numpy(mean[:, k, None, None]))


@dataclass(eq=False)
class _Gathered:
    """Segments = the tile's masked pixels gathered in region order."""

    order: torch.Tensor  # (M,) int64 pixel indices, region by region
    offsets: np.ndarray  # (Kt,) start of each region in ``order``
    sizes: np.ndarray  # (Kt,) pixels per region

    def values(self, stage: torch.Tensor, scratch: Scratch, how: str) -> torch.Tensor:
        out = scratch(stage.shape[0] * self.order.numel()).view(stage.shape[0], -1)
        return torch.index_select(stage, 1, self.order, out=out)

    def fill(self, values: torch.Tensor, how: str) -> torch.Tensor:
        return values  # no holes: only masked pixels are gathered

    def partial(self, values: torch.Tensor, ufunc: np.ufunc) -> np.ndarray:
        return ufunc.reduceat(values.numpy(), self.offsets, axis=1)

    def combine(self, partial: np.ndarray, ufunc: np.ufunc) -> np.ndarray:
        return partial

    def subtract(self, values: torch.Tensor, mean: np.ndarray) -> None:
        values.sub_(torch.from_numpy(np.repeat(mean, self.sizes, axis=1)))


Segments = _Runs | _Boxes | _Gathered


@dataclass(eq=False)
class _Tile:
    """A band of image rows [r0, r1) with its precomputed reduction plan."""

    r0: int
    r1: int
    regions: np.ndarray  # (Kt,) 0-based index of the regions present
    pixels: np.ndarray  # (Kt,) int64 masked pixels per region
    local: np.ndarray  # (n,) int32 local region index + 1 per pixel, 0 = unmasked
    segments: Segments
    span: tuple[int, int] | None  # [lo, hi) of the masked pixels if Kt == 1 (GEMV)
    _weights: dict[torch.dtype, torch.Tensor] = field(default_factory=dict)

    def weights(self, dtype: torch.dtype) -> torch.Tensor:
        """0/1 weights over ``span`` for the single-region GEMV, built once per dtype."""
        if dtype not in self._weights:
            assert self.span is not None
            lo, hi = self.span
            self._weights[dtype] = torch.from_numpy(self.local[lo:hi] > 0).to(dtype)
        return self._weights[dtype]


def _plan_runs(flat: np.ndarray) -> tuple[_Runs, float]:
    """Runs of constant label with short same-region gaps folded in, and their cost."""
    n = flat.size
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [n]))
    label = flat[starts]
    gap = np.zeros(starts.size, dtype=bool)
    if starts.size >= 3:
        gap[1:-1] = (
            (label[1:-1] == 0)
            & (ends[1:-1] - starts[1:-1] <= _MAX_HOLE)
            & (label[:-2] == label[2:])
            & (label[:-2] > 0)
        )
    gaps = np.flatnonzero(gap)
    lengths = ends[gaps] - starts[gaps]
    first = np.repeat(starts[gaps], lengths)
    holes = first + np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    keep = np.ones(starts.size, dtype=bool)
    keep[gaps] = False
    keep[gaps + 1] = False  # the run after a gap continues the run before it
    starts, label = starts[keep], label[keep]

    masked = np.flatnonzero(label > 0)
    take = masked[np.argsort(label[masked], kind="stable")]
    present, offsets = np.unique(label[take], return_index=True)
    runs = _Runs(
        holes=torch.from_numpy(holes.astype(np.int64)),
        source=torch.from_numpy(first.astype(np.int64) - 1),  # last pixel before the gap
        starts=starts.astype(np.intp),
        take=take.astype(np.intp),
        offsets=offsets.astype(np.intp),
        local=np.searchsorted(present, label) + (label > 0),
        lengths=np.diff(np.append(starts, n)),
    )
    cost = _NS_PER_PIXEL * n + _NS_PER_RUN * starts.size + _NS_PER_HOLE * holes.size
    return runs, cost


def _plan_boxes(
    local: np.ndarray, width: int, order: np.ndarray, offsets: np.ndarray
) -> tuple[_Boxes | None, float]:
    """One box per region if every region's bounding box holds no other region's pixels
    and boxes do not overlap (else None), and the cost."""
    grid = local.reshape(-1, width)
    rows, cols = np.divmod(order, width)
    top, bottom = np.minimum.reduceat(rows, offsets), np.maximum.reduceat(rows, offsets) + 1
    left, right = np.minimum.reduceat(cols, offsets), np.maximum.reduceat(cols, offsets) + 1
    cover = np.zeros(grid.shape, dtype=bool)
    boxes, holes, sources = [], [], []
    for k, (a, b, c, d) in enumerate(zip(top, bottom, left, right, strict=True)):
        inside = grid[a:b, c:d]
        if cover[a:b, c:d].any() or ((inside != 0) & (inside != k + 1)).any():
            return None, np.inf
        cover[a:b, c:d] = True
        boxes.append((int(a), int(b), int(c), int(d)))
        r, q = np.nonzero(inside == 0)
        holes.append((r + a) * width + q + c)
        sources.append(np.full(r.size, order[offsets[k]]))  # the region's first pixel
    hole_idx = np.concatenate(holes)
    plan = _Boxes(
        holes=torch.from_numpy(hole_idx.astype(np.int64)),
        source=torch.from_numpy(np.concatenate(sources).astype(np.int64)),
        width=width,
        boxes=boxes,
    )
    area = sum((b - a) * (d - c) for a, b, c, d in boxes)
    cost = _NS_PER_BOX_PIXEL * area + _NS_PER_BOX * len(boxes) + _NS_PER_HOLE * hole_idx.size
    return plan, cost


def _plan_tile(labels: np.ndarray, r0: int, r1: int) -> _Tile:
    """Choose the cheapest segment layout and precompute bookkeeping for rows [r0, r1)."""
    flat = labels[r0:r1].ravel()
    masked = np.flatnonzero(flat)
    present = np.unique(flat[masked])
    local = np.zeros(flat.size, dtype=np.int32)
    local[masked] = np.searchsorted(present, flat[masked]) + 1
    pixels = np.bincount(local, minlength=present.size + 1)[1:].astype(np.int64)
    order = masked[np.argsort(local[masked], kind="stable")]
    offsets = np.concatenate(([0], np.cumsum(pixels)[:-1])).astype(np.intp)
    runs, runs_cost = _plan_runs(flat)
    candidates: list[tuple[float, Segments]] = [(runs_cost, runs)]
    if present.size <= _MAX_BOXES:
        boxes, boxes_cost = _plan_boxes(local, labels.shape[1], order, offsets)
        if boxes is not None:
            candidates.append((boxes_cost, boxes))
    gathered = _Gathered(torch.from_numpy(order.astype(np.int64)), offsets, pixels)
    candidates.append((_NS_PER_GATHER * masked.size, gathered))
    segments = min(candidates, key=lambda c: c[0])[1]
    span = (int(masked[0]), int(masked[-1]) + 1) if present.size == 1 else None
    return _Tile(r0, r1, (present - 1).astype(np.int64), pixels, local, segments, span)


def _exact_float_sums(values: np.ndarray, tile: _Tile) -> tuple[np.ndarray, np.ndarray]:
    """Sums and NaN counts (rows, Kt) by numpy's nansum rules, for flagged frames.

    NaNs are skipped; a region with +inf (-inf) sums to +inf (-inf), with both to NaN.
    """
    idx = np.flatnonzero(tile.local)
    rows, n_local = values.shape[0], tile.regions.size
    v = values[:, idx]
    bins = (tile.local[idx].astype(np.int64) - 1) + n_local * np.arange(rows)[:, None]

    def count(sel: np.ndarray) -> np.ndarray:
        return np.bincount(bins[sel], minlength=rows * n_local).reshape(rows, n_local)

    finite = np.isfinite(v)
    sums = np.bincount(bins[finite], weights=v[finite], minlength=rows * n_local)
    sums = sums.reshape(rows, n_local)
    pos, neg = count(v == np.inf) > 0, count(v == -np.inf) > 0
    sums = np.where(pos, np.inf, sums)
    sums = np.where(neg, -np.inf, sums)
    return np.where(pos & neg, np.nan, sums), count(np.isnan(v))


@dataclass
class _Block:
    """A group of frames being reduced, its torch view and its rows of the outputs."""

    frames: np.ndarray
    tensor: torch.Tensor | None  # zero-copy view where torch can read the array
    extra: dict[str, np.ndarray]  # min/max/ssd accumulators of these frames

    @classmethod
    def of(cls, frames: np.ndarray, extra: dict[str, np.ndarray]) -> _Block:
        # torch reads native byte order and non-negative strides without a copy.
        if not (frames.dtype.isnative and all(s >= 0 for s in frames.strides)):
            return cls(frames, None, extra)
        with warnings.catch_warnings():
            # Read-only input (e.g. a memmap) is fine: the view is only ever read.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return cls(frames, torch.from_numpy(frames), extra)

    def rows(self, start: int, stop: int) -> _Block:
        tensor = None if self.tensor is None else self.tensor[start:stop]
        return _Block(self.frames[start:stop], tensor, {})


class _CpuReducer:
    """CPU path: staged float tiles; GEMV for single-region tiles, segments otherwise."""

    def __init__(self, labels: np.ndarray, n_regions: int, stats: tuple[str, ...]) -> None:
        self.n_regions = n_regions
        self.stats = stats
        self.minmax = "min" in stats or "max" in stats
        self.pixel_count = np.bincount(labels.ravel(), minlength=n_regions + 1)[1:]
        width = labels.shape[1]
        if width >= _MAX_ROW:
            raise ValueError(f"frame width {width} is not below {_MAX_ROW} pixels")
        self.width = width
        self._buffers: dict[tuple[str, torch.dtype], torch.Tensor] = {}
        #: Fused numba sums (``worker.cpu_sums``) for sum/mean/count: None = wherever
        #: numba imports (faster than the staged torch path on every measured mask and
        #: dtype, see bench/RESULTS.md); tests set True/False to force a path.
        self.fused: bool | None = None
        self._runs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._labels = labels
        self._copy: np.ndarray | None = None

    @functools.cached_property
    def tiles(self) -> list[_Tile]:
        """The staged path's tiles, planned on its first use (~10 ms for 512x512): jobs
        whose blocks all take the fused loops never pay for them."""
        labels = self._labels
        height, width = labels.shape
        tile_rows = max(1, min(height, _MAX_TILE_PIXELS // max(1, width)))
        tiles: list[_Tile] = []
        masked_rows = np.flatnonzero(labels.any(axis=1))
        if masked_rows.size:
            # Runs of consecutive rows with masked pixels: unmasked rows are never read.
            for span in np.split(masked_rows, np.flatnonzero(np.diff(masked_rows) > 1) + 1):
                last = int(span[-1]) + 1
                for r0 in range(int(span[0]), last, tile_rows):
                    tiles.append(_plan_tile(labels, r0, min(r0 + tile_rows, last)))
        return tiles

    @functools.cached_property
    def max_tile(self) -> int:
        return max((t.local.size for t in self.tiles), default=1)

    def _use_fused(self) -> bool:
        """Whether the numba loops reduce blocks (wherever numba imports, unless off)."""
        if self.fused is False:
            return False
        if not cpu_sums.AVAILABLE:
            if self.fused:
                raise RuntimeError("fused CPU sums forced on but numba is not installed")
            return False
        if self._runs is None:
            self._runs = cpu_sums.plan_runs(self._labels)
        return True

    def _native(self, frames: np.ndarray) -> np.ndarray:
        """``frames`` as the numba loops read them: C-contiguous, native byte order
        (big-endian or strided views are copied into a reused buffer)."""
        if cpu_sums.usable(frames):
            return frames
        dtype = frames.dtype.newbyteorder("=")
        nbytes = frames.size * dtype.itemsize
        if self._copy is None or self._copy.nbytes < nbytes:
            self._copy = np.empty(nbytes, dtype=np.uint8)
        out = self._copy[:nbytes].view(dtype).reshape(frames.shape)
        np.copyto(out, frames, casting="equiv")  # byte-swaps
        return out

    def _buffer(self, name: str, dtype: torch.dtype, n: int) -> torch.Tensor:
        """A reused flat buffer of n elements (grown when needed, never shrunk)."""
        buf = self._buffers.get((name, dtype))
        if buf is None or buf.numel() < n:
            buf = torch.empty(n, dtype=dtype)
            self._buffers[(name, dtype)] = buf
        return buf[:n]

    def _stage(
        self, block: _Block, tile: _Tile, dtype: torch.dtype, offset: float = 0.0
    ) -> torch.Tensor:
        """Convert the tile's rows of a frame group into the staging buffer (frames, pixels)."""
        frames, rows = block.frames.shape[0], tile.r1 - tile.r0
        out = self._buffer("stage", dtype, frames * rows * self.width)
        if block.tensor is not None:
            out.view(frames, rows, self.width).copy_(block.tensor[:, tile.r0 : tile.r1])
        else:  # big-endian or negative strides: numpy byte-swaps and casts in one go
            dest = out.view(frames, rows, self.width).numpy()
            np.copyto(dest, block.frames[:, tile.r0 : tile.r1], casting="safe")
        if offset:
            out.add_(offset)
        return out.view(frames, -1)

    def _values(self, stage: torch.Tensor, tile: _Tile, how: str) -> torch.Tensor:
        """The tile's values for segment reductions, holes made neutral (see _Holes)."""
        scratch = lambda n: self._buffer("values", stage.dtype, n)  # noqa: E731
        return tile.segments.values(stage, scratch, how)

    # -- pass 1: min/max, sums and NaN counts ---------------------------------------

    def _min_max(
        self, stage: torch.Tensor, tile: _Tile, block: _Block, offset: float, is_float: bool
    ) -> None:
        values = self._values(stage, tile, "copy")
        seg = tile.segments
        for name, nan_skipping, plain in (
            ("max", np.fmax, np.maximum),
            ("min", np.fmin, np.minimum),
        ):
            if name in block.extra:
                ufunc = nan_skipping if is_float else plain  # plain is faster, no NaN in ints
                found = seg.combine(seg.partial(values, ufunc), ufunc) - offset
                acc = block.extra[name]
                acc[:, tile.regions] = nan_skipping(acc[:, tile.regions], found)

    def _int_sums(self, block: _Block, tile: _Tile, kind: tuple[str, int]) -> np.ndarray:
        """Exact int64 sums (frames, Kt) of one tile of integer frames (min/max too)."""
        offset = _OFFSETS.get(kind, 0.0)
        dtype = _sum_dtype(kind)
        stage = self._stage(block, tile, dtype, offset)
        if self.minmax:
            self._min_max(stage, tile, block, offset, is_float=False)
        sums = None
        if tile.span is not None:
            lo, hi = tile.span
            r = torch.mv(stage[:, lo:hi], tile.weights(dtype)).numpy()
            if dtype == torch.float64 or r.max() < _F32_EXACT:
                sums = r.astype(np.int64)[:, None]
        if sums is None:
            seg = tile.segments
            partial = seg.partial(self._values(stage, tile, "zero"), np.add)
            if dtype == torch.float32 and partial.max() >= _F32_EXACT:
                # A segment reached 2**24: redo the tile in float64 (exact, <= 2**20 px).
                stage = self._stage(block, tile, torch.float64, offset)
                partial = seg.partial(self._values(stage, tile, "zero"), np.add)
            sums = seg.combine(partial.astype(np.int64), np.add)
        if offset:
            sums -= np.int64(offset) * tile.pixels
        return sums

    def _float_sums(self, block: _Block, tile: _Tile) -> tuple[np.ndarray, np.ndarray | None]:
        """float64 sums (frames, Kt), NaN counts (None: no NaN) of one tile (min/max too)."""
        stage = self._stage(block, tile, torch.float64)
        if self.minmax:
            self._min_max(stage, tile, block, 0.0, is_float=True)
        if tile.span is not None:
            lo, hi = tile.span
            r = torch.mv(stage[:, lo:hi], tile.weights(torch.float64)).numpy()
            if np.isfinite(r).all():
                return r[:, None].copy(), None
        seg = tile.segments
        sums = seg.combine(seg.partial(self._values(stage, tile, "zero"), np.add), np.add)
        flagged = np.flatnonzero(~np.isfinite(sums).all(axis=1))
        if flagged.size == 0:
            return sums, None
        # Only holes (unmasked pixels, never read here) were modified in the stage.
        exact, nans = _exact_float_sums(stage.numpy()[flagged], tile)
        sums[flagged] = exact
        nan_counts = np.zeros(sums.shape, dtype=np.int64)
        nan_counts[flagged] = nans
        return sums, nan_counts

    # -- pass 2: squared deviations ---------------------------------------------------

    def _squared_deviations(
        self, block: _Block, tile: _Tile, mean: np.ndarray, is_float: bool
    ) -> None:
        """Add sum((x - mean)**2) per region to block.extra['ssd'], in float64."""
        step = max(1, _STD_STAGE_ELEMS // tile.local.size)
        for f0 in range(0, block.frames.shape[0], step):
            stage = self._stage(block.rows(f0, f0 + step), tile, torch.float64)
            centre = mean[f0 : f0 + step][:, tile.regions]
            if tile.span is not None:
                lo, hi = tile.span
                dev = stage[:, lo:hi].sub_(torch.from_numpy(centre)).square_()
                if is_float:  # unmasked NaN/inf would turn 0 weights into NaN
                    torch.nan_to_num_(dev, nan=0.0, posinf=0.0)
                ssd = torch.mv(dev, tile.weights(torch.float64)).numpy()[:, None]
            else:
                seg = tile.segments
                values = self._values(stage, tile, "zero")
                seg.subtract(values, centre)
                values.square_()
                if is_float:  # NaN pixels are skipped; inf only where std is NaN anyway
                    torch.nan_to_num_(values, nan=0.0, posinf=0.0)
                seg.fill(values, "zero")
                ssd = seg.combine(seg.partial(values, np.add), np.add)
            block.extra["ssd"][f0 : f0 + step, tile.regions] += ssd

    # -- driver ---------------------------------------------------------------------

    def _reduce_fused(
        self, frames: np.ndarray, kind: tuple[str, int]
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """The numba loops: sums (one read), then min/max and squared deviations (one
        read each, only when asked)."""
        assert self._runs is not None
        with np.errstate(invalid="ignore", over="ignore"):
            fsums, fnans = cpu_sums.region_sums(frames, self._runs, self.n_regions, kind)
        sums = fsums.astype(np.float64)
        counts = self.pixel_count - fnans
        extra: dict[str, np.ndarray] = {}
        if self.minmax:
            mins, maxs = cpu_sums.region_minmax(frames, self._runs, self.n_regions)
            extra.update((s, v) for s, v in (("min", mins), ("max", maxs)) if s in self.stats)
        if "std" in self.stats:
            with np.errstate(invalid="ignore", over="ignore"):
                extra["ssd"] = cpu_sums.region_ssd(frames, self._runs, _group_mean(sums, counts))
        return sums, counts, extra

    def reduce(
        self, frames: np.ndarray, kind: tuple[str, int]
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        if self._use_fused():
            return self._reduce_fused(self._native(frames), kind)
        shape = (frames.shape[0], self.n_regions)
        is_float = kind[0] == "f"
        sums = np.zeros(shape, dtype=np.float64 if is_float else np.int64)
        nan_counts = np.zeros(shape, dtype=np.int64)
        extra: dict[str, np.ndarray] = {
            s: np.full(shape, np.nan) for s in ("min", "max") if s in self.stats
        }
        if "std" in self.stats:
            extra["ssd"] = np.zeros(shape)
        itemsize = 4 if _sum_dtype(kind) == torch.float32 else 8
        group = max(1, _STAGE_BYTES // (self.max_tile * itemsize))
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf, overflow: as numpy
            for b0 in range(0, frames.shape[0], group):
                rows = slice(b0, b0 + group)
                block = _Block.of(frames[rows], {k: v[rows] for k, v in extra.items()})
                for tile in self.tiles:
                    if is_float:
                        s, nans = self._float_sums(block, tile)
                        sums[rows, tile.regions] += s
                        if nans is not None:
                            nan_counts[rows, tile.regions] += nans
                    else:
                        sums[rows, tile.regions] += self._int_sums(block, tile, kind)
                if "ssd" in extra:  # second pass over the same frames, still in cache
                    counts = self.pixel_count - nan_counts[rows]
                    mean = _group_mean(sums[rows].astype(np.float64), counts)
                    for tile in self.tiles:
                        self._squared_deviations(block, tile, mean, is_float)
        return sums.astype(np.float64), self.pixel_count - nan_counts, extra


# -- device (CUDA) path --------------------------------------------------------------


_logged: set[str] = set()


def _log_once(message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        logging.getLogger(__name__).warning(message)


def _unsigned_via_signed(raw: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """uint16/uint32 -> dtype through the signed type of the same size.

    torch has only "barebones" uint16/uint32 support; a device without a conversion
    kernel for them still has int16/int32 ones.
    """
    signed, wide = (
        (torch.int16, torch.int32) if raw.dtype == torch.uint16 else (torch.int32, torch.int64)
    )
    bits = raw.view(signed).to(wide) & ((1 << (8 * raw.element_size())) - 1)
    return bits.to(dtype)


class _DeviceReducer:
    """Dense torch path for CUDA; it runs on any torch device, so CPU tests cover it.

    Frames are copied in their raw dtype (fewer bytes than float) into a reused host
    buffer (pinned on CUDA) and sent with a non-blocking copy; two buffers alternate
    so that the host copy of one group overlaps the transfer and compute of the last.
    """

    def __init__(
        self, labels: np.ndarray, n_regions: int, stats: tuple[str, ...], device: torch.device
    ) -> None:
        if device.type == "cuda":
            # Exactness of integer sums needs full float32 products and sums.
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        self.device = device
        self.n_regions = n_regions
        self.stats = stats
        flat = labels.ravel()
        self.n_pixels = flat.size
        self.shape = labels.shape
        masked = np.flatnonzero(flat)
        order = masked[np.argsort(flat[masked], kind="stable")]
        self.gather = torch.from_numpy(order.astype(np.int64)).to(device)
        self.segment = torch.from_numpy(flat[order].astype(np.int64) - 1).to(device)
        counts = np.bincount(flat, minlength=n_regions + 1)[1:].astype(np.int64)
        self.pixel_count = torch.from_numpy(counts).to(device)
        self.dense = n_regions * flat.size <= _DENSE_ONEHOT_ENTRIES
        self._onehot: dict[torch.dtype, torch.Tensor] = {}
        if self.dense:
            onehot = torch.zeros(flat.size, n_regions, dtype=torch.float32, device=device)
            onehot[self.gather, self.segment] = 1.0
            self._onehot[torch.float32] = onehot
        self.group = max(1, _DEVICE_GROUP_ELEMS // max(1, flat.size))
        #: Fused Triton integer sums: None = decide on first use (see ``_fused_for``).
        self.fused: bool | None = None
        self._fused_ok: set[torch.dtype] = set()
        self._fused_bad: set[torch.dtype] = set()
        self._flat_labels = flat.astype(np.int32)
        self._fused_labels: torch.Tensor | None = None
        self._host: dict[tuple[np.dtype, int], tuple[torch.Tensor, torch.cuda.Event | None]] = {}
        #: Buffers handed out by ``host_buffer`` (uint8, pinned on CUDA), the event of the
        #: last transfer out of each, and the slot to hand out next. The reader fills them
        #: in its own (prefetch) thread, hence the lock.
        self._direct: list[tuple[torch.Tensor, torch.cuda.Event | None] | None] = [None, None]
        self._direct_next = 0
        self._direct_lock = threading.Lock()

    def onehot(self, dtype: torch.dtype) -> torch.Tensor:
        if dtype not in self._onehot:
            self._onehot[dtype] = self._onehot[torch.float32].to(dtype)
        return self._onehot[dtype]

    def _upload(self, block: np.ndarray, slot: int) -> torch.Tensor:
        """Copy a block into a reused host buffer (raw dtype) and send it to the device."""
        native = block.dtype.newbyteorder("=")
        key = (native, slot)
        host, event = self._host.get(key, (None, None))
        if host is None:
            host = torch.from_numpy(np.empty(self.group * self.n_pixels, dtype=native))
            if self.device.type == "cuda":
                host = host.pin_memory()
        if event is not None:
            event.synchronize()  # the last transfer out of this buffer has finished
        staged = host[: block.size]
        np.copyto(staged.numpy().reshape(block.shape), block, casting="equiv")  # byte-swaps
        on_device = staged.view(block.shape[0], -1).to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            event = torch.cuda.current_stream(self.device).record_event()
        self._host[key] = (host, event)
        return on_device

    def host_buffer(self, frames: int, dtype: np.dtype) -> np.ndarray:
        """A ``(frames, H, W)`` host array (pinned on CUDA) for the caller to fill.

        ``reduce`` recognises a view of it and sends it without a host copy. Two
        buffers alternate, so a buffer is handed out again only after the next one
        was: the caller must be done with an array before asking for the one after
        next. A buffer whose last transfer has not finished is waited for here.
        """
        dtype = np.dtype(dtype)
        nbytes = frames * self.n_pixels * dtype.itemsize
        with self._direct_lock:
            slot = self._direct_next
            self._direct_next ^= 1
            entry = self._direct[slot]
        if entry is not None and entry[1] is not None:
            entry[1].synchronize()  # the last transfer out of this buffer has finished
        if entry is None or entry[0].numel() < nbytes:
            cuda = self.device.type == "cuda"
            buf = torch.empty(max(nbytes, 1), dtype=torch.uint8, pin_memory=cuda)
            entry = (buf, None)
            with self._direct_lock:
                self._direct[slot] = entry
        return entry[0].numpy()[:nbytes].view(dtype).reshape(frames, *self.shape)

    def _direct_view(self, block: np.ndarray) -> tuple[int, torch.Tensor, torch.Tensor] | None:
        """(slot, its buffer, raw tensor over it) when ``block`` is a view of a buffer."""
        if not (block.flags.c_contiguous and block.dtype.isnative and block.nbytes):
            return None
        start = block.ctypes.data
        for slot, entry in enumerate(self._direct):
            if entry is None:
                continue
            base = entry[0].data_ptr()
            offset = start - base
            if 0 <= offset and offset + block.nbytes <= entry[0].numel():
                raw = entry[0][offset : offset + block.nbytes]
                as_torch = torch.from_numpy(np.empty(0, dtype=block.dtype)).dtype
                return slot, entry[0], raw.view(as_torch).view(block.shape[0], -1)
        return None

    def _send(self, block: np.ndarray, slot: int) -> torch.Tensor:
        """A block on the device: straight from a host buffer of ours, else staged."""
        direct = self._direct_view(block)
        if direct is None:
            return self._upload(block, slot)
        index, buf, raw = direct
        on_device = raw.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            event = torch.cuda.current_stream(self.device).record_event()
            with self._direct_lock:
                entry = self._direct[index]
                if entry is not None and entry[0] is buf:
                    self._direct[index] = (buf, event)
        return on_device

    @staticmethod
    def _convert(raw: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Raw device frames as ``dtype`` (one conversion kernel where torch has one)."""
        if raw.dtype in (torch.uint16, torch.uint32):
            try:
                return raw.to(dtype)
            except (RuntimeError, NotImplementedError):
                return _unsigned_via_signed(raw, dtype)
        return raw.to(dtype)

    def _scatter_sum(self, g: torch.Tensor) -> torch.Tensor:
        """Region sums (frames, K) of gathered values (frames, M)."""
        out = torch.zeros(g.shape[0], self.n_regions, dtype=g.dtype, device=g.device)
        return out.scatter_add_(1, self.segment.expand(g.shape[0], -1), g)

    def _gemm_sums(self, x: torch.Tensor) -> torch.Tensor:
        """One-hot GEMM in tiles of <= 2**20 pixels; float32 for 2**24 checks, else int64.

        float64 tiles of (shifted) integers are exact, so they are added in int64.
        """
        exact_int = x.dtype == torch.float64
        out = torch.zeros(
            x.shape[0], self.n_regions, dtype=torch.int64 if exact_int else x.dtype, device=x.device
        )
        onehot = self.onehot(x.dtype)
        for p0 in range(0, self.n_pixels, _MAX_TILE_PIXELS):
            part = x[:, p0 : p0 + _MAX_TILE_PIXELS] @ onehot[p0 : p0 + _MAX_TILE_PIXELS]
            out += part.to(torch.int64) if exact_int else part
        return out

    def _fused_for(self, raw: torch.Tensor) -> bool:
        """Whether the fused Triton kernel sums these frames (decided once per dtype).

        Needs CUDA (or ``fused = True``, set by tests under ``TRITON_INTERPRET=1``), an
        importable Triton and a passing self-check against the GEMM path on a small
        random block of full-range values; otherwise the GEMM path is used, logged once.
        """
        if self.fused is False or raw.dtype in self._fused_bad:
            return False
        from . import fused

        if not fused.supports(raw.dtype, self.n_regions):
            return False
        if self.fused is None:
            self.fused = self.device.type == "cuda" and fused.available(self.device)
            if not self.fused:
                _log_once("fused Triton kernel not available: using the GEMM path")
                return False
        if raw.dtype not in self._fused_ok:
            if self._fused_labels is None:
                self._fused_labels = torch.from_numpy(self._flat_labels).to(self.device)
            info = np.iinfo(torch.empty(0, dtype=raw.dtype).numpy().dtype)
            rng = np.random.default_rng(12345)
            probe = rng.integers(info.min, info.max, (5, self.n_pixels), endpoint=True)
            sample = torch.from_numpy(probe.astype(info.dtype)).to(self.device)
            try:
                got = fused.region_sums(sample, self._fused_labels, self.n_regions)
                good = torch.equal(got, self._gemm_int_sums(sample))
            except Exception as exc:  # a Triton that cannot build or run here
                good = False
                _log_once(f"fused Triton kernel failed ({exc!r}): using the GEMM path")
            if not good:
                _log_once(f"fused Triton kernel disagrees for {raw.dtype}: using the GEMM path")
                self._fused_bad.add(raw.dtype)
                return False
            self._fused_ok.add(raw.dtype)
        return True

    def _int_sums(self, raw: torch.Tensor, kind: tuple[str, int]) -> torch.Tensor:
        """Exact int64 region sums of integer frames."""
        if self._fused_for(raw):
            from . import fused

            assert self._fused_labels is not None
            return fused.region_sums(raw, self._fused_labels, self.n_regions)
        return self._gemm_int_sums(raw, kind)

    def _gemm_int_sums(
        self, raw: torch.Tensor, kind: tuple[str, int] | None = None
    ) -> torch.Tensor:
        """Exact int64 region sums of integer frames: converted copy and one-hot GEMM."""
        if kind is None:
            dt = torch.empty(0, dtype=raw.dtype).numpy().dtype
            kind = (dt.kind, dt.itemsize)
        if not self.dense:
            g = self._convert(raw, torch.int64).index_select(1, self.gather)
            return self._scatter_sum(g)
        offset = _OFFSETS.get(kind, 0.0)
        if _sum_dtype(kind) == torch.float32:
            x = self._convert(raw, torch.float32)
            if offset:
                x += offset
            # float32 sums of non-negative integers < 2**24 are exact (see module doc).
            s32 = self._gemm_sums(x)
            sums = s32.to(torch.int64) if bool((s32 < _F32_EXACT).all()) else None
        else:
            sums = None
        if sums is None:
            x = self._convert(raw, torch.float64)
            if offset:
                x += offset
            sums = self._gemm_sums(x)
        if offset:
            sums -= int(offset) * self.pixel_count
        return sums

    def _float_sums(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float64 region sums and NaN counts; exact nan-rules for non-finite frames."""
        if self.dense:
            sums = torch.zeros(x.shape[0], self.n_regions, dtype=x.dtype, device=x.device)
            onehot = self.onehot(x.dtype)
            for p0 in range(0, self.n_pixels, _MAX_TILE_PIXELS):
                sums += x[:, p0 : p0 + _MAX_TILE_PIXELS] @ onehot[p0 : p0 + _MAX_TILE_PIXELS]
        else:
            sums = self._scatter_sum(x.index_select(1, self.gather))
        nan_counts = torch.zeros(sums.shape, dtype=torch.int64, device=x.device)
        bad = ~torch.isfinite(sums).all(dim=1)
        if bool(bad.any()):
            rows = bad.nonzero().squeeze(1)
            g = x[rows].index_select(1, self.gather)
            exact = self._scatter_sum(torch.where(torch.isfinite(g), g, 0.0))
            pos = self._scatter_sum((g == torch.inf).to(torch.int64)) > 0
            neg = self._scatter_sum((g == -torch.inf).to(torch.int64)) > 0
            exact = torch.where(pos, torch.inf, exact)
            exact = torch.where(neg, -torch.inf, exact)
            sums[rows] = torch.where(pos & neg, torch.nan, exact)
            nan_counts[rows] = self._scatter_sum(torch.isnan(g).to(torch.int64))
        return sums, nan_counts

    def _second_pass(
        self,
        x: torch.Tensor,
        sums: torch.Tensor,
        counts: torch.Tensor,
        parts: dict[str, list[torch.Tensor]],
    ) -> None:
        """min/max by scatter_reduce, squared deviations from the mean by scatter_add."""
        g = x.index_select(1, self.gather)
        nan = torch.isnan(g)
        index = self.segment.expand(g.shape[0], -1)
        for name, fill, how in (("max", -torch.inf, "amax"), ("min", torch.inf, "amin")):
            if name in parts:
                init = torch.full(
                    (g.shape[0], self.n_regions), fill, dtype=g.dtype, device=g.device
                )
                parts[name].append(init.scatter_reduce_(1, index, torch.where(nan, fill, g), how))
        if "ssd" in parts:
            mean = sums / counts.clamp(min=1)
            mean = torch.where(torch.isfinite(mean), mean, 0.0)
            dev = torch.where(nan, 0.0, g - mean.index_select(1, self.segment))
            parts["ssd"].append(self._scatter_sum(dev * dev))

    def reduce(
        self, frames: np.ndarray, kind: tuple[str, int]
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        is_float = kind[0] == "f"
        parts: dict[str, list[torch.Tensor]] = {"sum": [], "count": []}
        parts.update({s: [] for s in ("min", "max") if s in self.stats})
        if "std" in self.stats:
            parts["ssd"] = []
        for i, b0 in enumerate(range(0, frames.shape[0], self.group)):
            raw = self._send(frames[b0 : b0 + self.group], i % 2)
            x = self._convert(raw, torch.float64) if is_float or len(parts) > 2 else None
            if is_float:
                assert x is not None
                sums, nan_counts = self._float_sums(x)
                counts = self.pixel_count - nan_counts
            else:
                sums = self._int_sums(raw, kind).to(torch.float64)
                counts = self.pixel_count.expand(sums.shape[0], -1)
            parts["sum"].append(sums)
            parts["count"].append(counts)
            if x is not None and len(parts) > 2:
                self._second_pass(x, sums, counts, parts)
        out = {k: torch.cat(v).cpu().numpy() for k, v in parts.items()}
        return out.pop("sum"), out.pop("count"), out
