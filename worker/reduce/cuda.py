"""The CUDA engine: frames on the device, reduced by Triton kernels or plain torch.

Host frames are copied in their raw dtype (fewer bytes than float) into a reused host
buffer (pinned on CUDA) and sent with a non-blocking copy; two buffers alternate so
that the host copy of one group overlaps the transfer and compute of the last. A reader
can also fill those buffers itself (``host_buffer``: no staging copy), and a caller that
already has the frames on the device (device-side decompression) passes the tensor.

Which computation reduces a group of frames:

* ``triton_sums``: sum/mean/count of integer frames with at most ``MAX_REGIONS``
  regions (the fastest, measured in bench/RESULTS-gpu.md);
* ``triton_regions``: everything else (any K, floats, min/max/std) in one read;
* ``cuda_torch``: the same results without Triton (a build without it, or a kernel
  that failed its self-check, which runs once per dtype against this path).

The engine runs on any torch device, so CPU tests cover it (Triton under its
interpreter there).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np
import torch

from . import moments
from .cuda_torch import TorchRegions, kind_of

#: Elements per device group (each float64 temporary ~256 MiB).
GROUP_ELEMS = 1 << 25

_logged: set[str] = set()


def _log_once(message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        logging.getLogger(__name__).warning(message)


class DeviceReducer:
    """Region statistics on a torch device (see the module doc)."""

    def __init__(
        self, labels: np.ndarray, n_regions: int, stats: tuple[str, ...], device: torch.device
    ) -> None:
        if device.type == "cuda":
            # Exactness of the torch path's integer sums needs full float32 products.
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        self.device = device
        self.n_regions = n_regions
        self.stats = stats
        self.all_moments = bool({"min", "max", "std"} & set(stats))
        self.flat = np.ascontiguousarray(labels).ravel()
        self.n_pixels = self.flat.size
        self.shape = labels.shape
        self.torch = TorchRegions(self.flat, n_regions, device)
        self.group = max(1, GROUP_ELEMS // max(1, self.n_pixels))
        #: Triton kernels: None = decide on first use (CUDA and importable), True/False
        #: forced (tests set True under ``TRITON_INTERPRET=1``).
        self.triton: bool | None = None
        #: (kernel name, dtype) pairs that passed / failed their self-check.
        self.checked: set[tuple[str, torch.dtype]] = set()
        self.failed: set[tuple[str, torch.dtype]] = set()
        self._sums_labels: torch.Tensor | None = None
        self._regions: Any = None
        self._host: dict[tuple[np.dtype, int], tuple[torch.Tensor, torch.cuda.Event | None]] = {}
        #: Buffers handed out by ``host_buffer`` (uint8, pinned on CUDA), the event of the
        #: last transfer out of each, and the slot to hand out next. The reader fills them
        #: in its own (prefetch) thread, hence the lock.
        self._direct: list[tuple[torch.Tensor, torch.cuda.Event | None] | None] = [None, None]
        self._direct_next = 0
        self._direct_lock = threading.Lock()

    # -- host to device ------------------------------------------------------------------

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

    # -- which computation -----------------------------------------------------------------

    def _triton_ok(self, name: str, raw: torch.Tensor) -> bool:
        """Whether Triton kernel ``name`` reduces frames of this dtype.

        Needs CUDA (or ``triton = True``, set by tests under ``TRITON_INTERPRET=1``), an
        importable Triton and a passing self-check against the torch path on a small
        random block of full-range values; otherwise the torch path is used, logged once.
        """
        key = (name, raw.dtype)
        if self.triton is False or key in self.failed:
            return False
        if key in self.checked:
            return True
        from . import triton_regions

        if self.triton is None:
            self.triton = self.device.type == "cuda" and triton_regions.available(self.device)
            if not self.triton:
                _log_once("Triton kernels not available: using the torch path")
                return False
        probe = _probe(raw.dtype, self.n_pixels).to(self.device)
        try:
            good = self._agrees(name, probe)
        except Exception as exc:  # a Triton that cannot build or run here
            good = False
            _log_once(f"Triton kernel {name} failed ({exc!r}): using the torch path")
        if not good:
            _log_once(f"Triton kernel {name} disagrees for {raw.dtype}: using the torch path")
            self.failed.add(key)
            return False
        self.checked.add(key)
        return True

    def _agrees(self, name: str, probe: torch.Tensor) -> bool:
        """The kernel's results on ``probe`` equal the torch path's: sums, counts, min and
        max exactly (float sums to 1e-12), M2 to 1e-9 where the sum is finite."""
        want_sums, want_counts = self.torch.sums(probe)
        if name == "sums":
            return bool(torch.equal(self._triton_sums(probe).to(torch.float64), want_sums))
        sums, counts, mins, maxs, m2 = self.regions.reduce(probe, True)
        want_min, want_max, want_m2 = self.torch.extremes_and_m2(probe, want_sums, want_counts)
        finite = torch.isfinite(want_sums)
        if probe.dtype.is_floating_point:
            same_sums = torch.equal(torch.isfinite(sums), finite) and torch.allclose(
                sums[finite], want_sums[finite], rtol=1e-12, atol=1e-300
            )
        else:
            same_sums = torch.equal(sums, want_sums)
        return (
            bool(same_sums)
            and bool(torch.equal(counts, want_counts.expand_as(counts)))
            and bool(torch.equal(mins, want_min))
            and bool(torch.equal(maxs, want_max))
            and bool(torch.allclose(m2[finite], want_m2[finite], rtol=1e-9, atol=1e-6))
        )

    @property
    def regions(self) -> Any:
        if self._regions is None:
            from .triton_regions import TritonRegions

            self._regions = TritonRegions(self.flat, self.n_regions, self.device)
        return self._regions

    def _triton_sums(self, raw: torch.Tensor) -> torch.Tensor:
        from . import triton_sums

        if self._sums_labels is None:
            self._sums_labels = torch.from_numpy(self.flat.astype(np.int32)).to(self.device)
        return triton_sums.region_sums(raw, self._sums_labels, self.n_regions)

    def _group(
        self, raw: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, Any]:
        """(sums, counts, mins, maxs, M2) of one group of raw frames (frames, pixels)."""
        from . import triton_sums

        if not self.all_moments:
            if triton_sums.supports(raw.dtype, self.n_regions) and self._triton_ok("sums", raw):
                sums = self._triton_sums(raw).to(torch.float64)
                return sums, self.torch.pixel_count.expand(sums.shape[0], -1), None, None, None
            if self._triton_ok("regions", raw):
                return self.regions.reduce(raw, False)
            return (*self.torch.sums(raw), None, None, None)
        if self._triton_ok("regions", raw):
            return self.regions.reduce(raw, True)
        sums, counts = self.torch.sums(raw)
        return (sums, counts, *self.torch.extremes_and_m2(raw, sums, counts))

    def reduce(self, frames: Any) -> dict[str, np.ndarray]:
        """Statistics of a numpy block or of a device tensor ``(B, H, W)``."""
        parts: list[tuple[Any, ...]] = []
        for i, b0 in enumerate(range(0, frames.shape[0], self.group)):
            block = frames[b0 : b0 + self.group]
            if isinstance(block, torch.Tensor):
                raw = block.reshape(block.shape[0], -1)
            else:
                raw = self._send(block, i % 2)
            parts.append(self._group(raw))
        sums, counts, mins, maxs, m2 = (
            None if p[0] is None else torch.cat(p).cpu().numpy() for p in zip(*parts, strict=True)
        )
        assert sums is not None and counts is not None
        return moments.finish(self.stats, sums, counts, mins, maxs, m2)


def _probe(dtype: torch.dtype, n_pixels: int) -> torch.Tensor:
    """A small block of full-range values (with NaN and +/-inf for floats)."""
    rng = np.random.default_rng(12345)
    kind = kind_of(dtype)
    np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
    if kind[0] == "f":
        values = rng.normal(0.0, 1e3, (5, n_pixels)).astype(np_dtype)
        values.ravel()[:: max(1, n_pixels // 7)] = np.nan
        values[1, 0] = np.inf
        values[2, -1] = -np.inf
    else:
        info = np.iinfo(np_dtype)
        values = rng.integers(info.min, info.max, (5, n_pixels), endpoint=True).astype(np_dtype)
    return torch.from_numpy(values)
