"""The independent numpy reference the reduction is tested against, and test helpers.

The reference sums integers in int64 and floats with numpy's nan-functions in float64,
region by region (a boolean index per region: nothing shared with the engines).
Integer sums/means/counts/min/max must match bit for bit; float results within 1e-12
of the scale of the data.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from worker.reduce import STATS, MaskedReducer, mask_regions
from worker.reduce.cpu import STRATEGIES
from worker.reduce.cuda import DeviceReducer

FRAME_DTYPES = ["u1", "u2", "u4", "i1", "i2", "i4", "f4", "f8"]
HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")


def has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


# The interpreter is chosen when Triton is first imported: on a CUDA machine Triton is
# loaded in compiled mode, and the gpu-marked tests cover the real kernels.
needs_triton_interpreter = pytest.mark.skipif(
    not has_triton() or HAS_CUDA, reason="needs triton without CUDA (interpreter mode)"
)


def reference(frames: np.ndarray, labels: np.ndarray, n_regions: int) -> dict[str, np.ndarray]:
    """Plain numpy: int64 sums for integers, nan-functions in float64 for floats."""
    out = {s: np.full((frames.shape[0], n_regions), np.nan) for s in STATS}
    is_int = frames.dtype.kind in "iu"
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # empty / all-NaN slices
        for k in range(1, n_regions + 1):
            v = frames[:, labels == k]
            c = k - 1
            if is_int:
                v64 = v.astype(np.int64)
                out["sum"][:, c] = v64.sum(axis=1)
                out["count"][:, c] = v.shape[1]
                if v.shape[1]:
                    out["mean"][:, c] = v64.sum(axis=1) / v.shape[1]
                    out["min"][:, c] = v64.min(axis=1)
                    out["max"][:, c] = v64.max(axis=1)
                    out["std"][:, c] = np.std(v.astype(np.float64), axis=1)
            else:
                f = v.astype(np.float64)
                out["sum"][:, c] = np.nansum(f, axis=1)
                out["count"][:, c] = (~np.isnan(f)).sum(axis=1)
                if v.shape[1]:
                    out["mean"][:, c] = np.nanmean(f, axis=1)
                    out["min"][:, c] = np.nanmin(f, axis=1)
                    out["max"][:, c] = np.nanmax(f, axis=1)
                    out["std"][:, c] = np.nanstd(f, axis=1)
    return out


def scale(frames: np.ndarray, labels: np.ndarray, n_regions: int) -> np.ndarray:
    """(B, K) sum of |finite x| per region: the yardstick for float tolerances."""
    f = np.abs(frames.astype(np.float64))
    f[~np.isfinite(f)] = 0
    out = np.zeros((frames.shape[0], n_regions))
    for k in range(1, n_regions + 1):
        out[:, k - 1] = f[:, labels == k].sum(axis=1)
    return out


def assert_matches(
    got: dict[str, np.ndarray], frames: np.ndarray, mask: np.ndarray, stats=STATS
) -> None:
    labels, n_regions = mask_regions(mask)
    ref = reference(frames, labels, n_regions)
    size = scale(frames, labels, n_regions)
    exact = {"count", "min", "max"} | ({"sum", "mean"} if frames.dtype.kind in "iu" else set())
    for s in stats:
        a, b = got[s], ref[s]
        assert a.dtype == np.float64 and a.shape == b.shape, s
        if s in exact:
            np.testing.assert_array_equal(a, b, err_msg=s)
            continue
        # Non-finite results must agree exactly (same NaN/inf pattern and signs).
        np.testing.assert_array_equal(np.isfinite(a), np.isfinite(b), err_msg=s)
        nonfinite = ~np.isfinite(b)
        np.testing.assert_array_equal(a[nonfinite], b[nonfinite], err_msg=s)
        tol = 1e-12 * size
        if s in ("mean", "std"):
            count = np.maximum(ref["count"], 1)
            tol = 1e-12 * (size / count + np.abs(b))
        ok = np.isfinite(b)
        assert np.all(np.abs(a[ok] - b[ok]) <= tol[ok] + 1e-300), (s, a, b)


def device_path_reducer(mask: np.ndarray, stats=STATS) -> MaskedReducer:
    """A reducer running the CUDA engine on the CPU (torch path; buffers not pinned)."""
    reducer = MaskedReducer(mask, stats, device="cpu")
    labels, n_regions = mask_regions(mask)
    reducer._impl = DeviceReducer(labels, n_regions, reducer.stats, torch.device("cpu"))
    return reducer


def reducers(mask: np.ndarray, stats=STATS) -> Iterator[MaskedReducer]:
    """Every engine and strategy that runs here: the CPU engine choosing its strategy by
    measurement, each CPU strategy forced, the CUDA engine's torch path on the CPU."""
    yield MaskedReducer(mask, stats, device="cpu")
    for strategy in STRATEGIES:
        yield MaskedReducer(mask, stats, device="cpu", strategy=strategy)
    yield device_path_reducer(mask, stats)


# -- hypothesis strategies ---------------------------------------------------------------


@st.composite
def frame_arrays(draw: st.DrawFn, shape: tuple[int, int, int]) -> np.ndarray:
    code = draw(st.sampled_from(FRAME_DTYPES))
    dtype = np.dtype(draw(st.sampled_from("<>")) + code)
    if dtype.kind == "f":
        width = 8 * dtype.itemsize
        finite = st.floats(-1e6, 1e6, width=width)
        special = st.sampled_from([np.nan, np.inf, -np.inf])
        elements = st.one_of(finite, finite, finite, special)
    else:
        info = np.iinfo(dtype)
        small = st.integers(max(int(info.min), -3), min(int(info.max), 5))
        elements = st.one_of(st.integers(int(info.min), int(info.max)), small)
    return draw(hnp.arrays(dtype, shape, elements=elements))


@st.composite
def masks(draw: st.DrawFn, shape: tuple[int, int]) -> np.ndarray:
    kind = draw(st.sampled_from(["bool", "labels", "all-false", "single", "sparse-labels"]))
    if kind == "bool":
        return draw(hnp.arrays(np.bool_, shape))
    if kind == "all-false":
        return np.zeros(shape, dtype=bool)
    if kind == "single":
        m = np.zeros(shape, dtype=bool)
        m[draw(st.integers(0, shape[0] - 1)), draw(st.integers(0, shape[1] - 1))] = True
        return m
    dtype = draw(st.sampled_from([np.uint8, np.int16, np.int32, np.int64, np.uint16]))
    top = 4 if kind == "labels" else 9  # sparse: labels that never occur are likely
    return draw(hnp.arrays(dtype, shape, elements=st.integers(0, top)))


@st.composite
def problems(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    b, h, w = draw(st.integers(1, 10)), draw(st.integers(1, 12)), draw(st.integers(1, 12))
    return draw(frame_arrays((b, h, w))), draw(masks((h, w)))


def quadrants(size: int) -> np.ndarray:
    labels = np.ones((size, size), dtype=np.int32)
    labels[: size // 2, size // 2 :] = 2
    labels[size // 2 :, : size // 2] = 3
    labels[size // 2 :, size // 2 :] = 4
    return labels
