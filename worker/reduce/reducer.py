"""``MaskedReducer``: per-frame statistics inside the regions of a mask.

Built once per job (mask, statistics, device), then ``reduce`` turns blocks of frames
``(B, H, W)`` into ``{stat: float64 (B, K)}``. It knows nothing of Celery, Redis or HDF5.
The work is done by an engine: ``cpu.CpuReducer`` (numba loops) or
``cuda.DeviceReducer`` (torch and Triton on a CUDA device).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .cpu import CpuReducer
from .cuda import DeviceReducer

#: The statistics a reducer computes.
STATS = ("sum", "mean", "count", "min", "max", "std")
#: Frame dtypes (kind, itemsize) the engines take.
SUPPORTED = {("u", 1), ("u", 2), ("u", 4), ("i", 1), ("i", 2), ("i", 4), ("f", 4), ("f", 8)}


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


def _check_dtype(dtype: np.dtype) -> None:
    if (dtype.kind, dtype.itemsize) not in SUPPORTED:
        raise ValueError(f"unsupported frame dtype {dtype}: use (u)int8/16/32, float32 or float64")


class MaskedReducer:
    """Per-frame sum/mean/count/min/max/std inside each region of a mask.

    Built once per job and process; ``reduce`` is then called on many blocks and
    reuses its buffers (so one instance must not be used by two threads at once).
    NaN pixels are skipped by every statistic; an empty (or all-NaN) region has sum
    0, count 0 and NaN mean/min/max/std; std is the population standard deviation.
    Integer sums are exact (numpy's int64 sums), float input is accumulated in float64.

    ``strategy`` forces one of the CPU engine's strategies (``cpu.STRATEGIES``); by
    default it is measured per mask and dtype.
    """

    n_regions: int
    pixel_count: np.ndarray
    device: torch.device

    def __init__(
        self,
        mask: np.ndarray,
        stats: Sequence[str],
        device: str | torch.device | None = None,
        strategy: str | None = None,
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
        self._impl: CpuReducer | DeviceReducer
        if self.device.type == "cpu":
            self._impl = CpuReducer(labels, self.n_regions, self.stats, strategy)
        else:
            self._impl = DeviceReducer(labels, self.n_regions, self.stats, self.device)

    def reduce(self, frames: Any) -> dict[str, np.ndarray]:
        """Statistics of a block ``(B, H, W)``: ``{stat: float64 (B, K)}``.

        Takes a numpy array of (u)int8/16/32 or float32/64 in either byte order, also
        non-contiguous views, or a torch tensor on the reducer's device (a CPU tensor is
        read as the numpy array it views). No reference to ``frames`` is kept after
        returning.
        """
        if isinstance(frames, torch.Tensor) and not isinstance(self._impl, DeviceReducer):
            if frames.device.type == "cpu" and frames.dtype != torch.bfloat16:
                frames = frames.numpy()
        if isinstance(frames, torch.Tensor):
            if not isinstance(self._impl, DeviceReducer) or frames.device != self.device:
                raise ValueError(
                    f"a torch tensor must be on the reducer's device {self.device}, "
                    f"got one on {frames.device}"
                )
            shape: tuple[int, ...] = tuple(frames.shape)
            try:
                dtype = torch.empty(0, dtype=frames.dtype).numpy().dtype
            except TypeError as exc:  # bfloat16 and others numpy has no type for
                raise ValueError(f"unsupported frame dtype {frames.dtype}") from exc
        else:
            frames = np.asarray(frames)
            shape, dtype = frames.shape, frames.dtype
        if len(shape) != 3 or shape[1:] != self.shape:
            raise ValueError(
                f"frames must have shape (B, {self.shape[0]}, {self.shape[1]}), got {shape}"
            )
        _check_dtype(dtype)
        if shape[0] == 0 or self.n_regions == 0 or self.pixel_count.sum() == 0:
            empty = {"sum": 0.0, "count": 0.0}
            return {
                s: np.full((shape[0], self.n_regions), empty.get(s, np.nan)) for s in self.stats
            }
        return self._impl.reduce(frames)

    def host_buffer(self, frames: int, dtype: np.dtype | type) -> np.ndarray | None:
        """An empty ``(frames, H, W)`` array for the caller to fill, or None (CPU reducer).

        On CUDA it is a view of a reused pinned buffer that ``reduce`` sends straight to
        the device (no staging copy). Buffers alternate: an array stays valid until the
        buffer after next is asked for (a reader's current and prefetched block).
        """
        if not isinstance(self._impl, DeviceReducer):
            return None
        dtype = np.dtype(dtype)
        if (dtype.kind, dtype.itemsize) not in SUPPORTED:
            return None
        return self._impl.host_buffer(frames, dtype.newbyteorder("="))
