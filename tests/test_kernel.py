"""Tests of worker.kernel against an independent plain-numpy reference.

The reference sums integers in int64 and floats with numpy's nan-functions in float64;
integer sums/counts/min/max must match bit for bit, float results within 1e-12 of the
scale of the data. Both CPU implementations are exercised (the CPU kernel and the
dense torch path used on CUDA, run here on the CPU); gpu-marked tests compare the CUDA
device with the reference and skip without one.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import warnings
import weakref
from collections.abc import Iterator
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from worker import kernel
from worker.kernel import STATS, MaskedReducer, mask_regions, resolve_device

FRAME_DTYPES = ["u1", "u2", "u4", "i1", "i2", "i4", "f4", "f8"]
HAS_CUDA = torch.cuda.is_available()
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")


# -- reference ----------------------------------------------------------------------


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


def reducers(mask: np.ndarray, stats=STATS) -> Iterator[MaskedReducer]:
    """The CPU kernel (numba sums where possible, and forced off), the dense torch
    (CUDA) path run on the CPU."""
    yield MaskedReducer(mask, stats, device="cpu")
    if kernel.cpu_sums.AVAILABLE:
        staged = MaskedReducer(mask, stats, device="cpu")
        assert isinstance(staged._impl, kernel._CpuReducer)
        staged._impl.fused = False
        yield staged
    dense = MaskedReducer(mask, stats, device="cpu")
    labels, n_regions = mask_regions(mask)
    dense._impl = kernel._DeviceReducer(labels, n_regions, dense.stats, torch.device("cpu"))
    yield dense


#: Cost-model settings that force each segment layout of the CPU kernel (boxes only
#: where the mask allows it, runs otherwise).
LAYOUTS: dict[str, dict[str, float]] = {
    "auto": {},
    "runs": {"_NS_PER_GATHER": 1e9, "_NS_PER_BOX": 1e9},
    "boxes": {"_NS_PER_GATHER": 1e9, "_NS_PER_RUN": 1e9, "_NS_PER_BOX": 0.0},
    "gather": {"_NS_PER_GATHER": 0.0},
}


@contextlib.contextmanager
def tuning(**values: float) -> Iterator[None]:
    """Temporarily change kernel tuning constants (tile sizes, cost model)."""
    with contextlib.ExitStack() as stack:
        for name, value in values.items():
            stack.enter_context(mock.patch.object(kernel, name, value))
        yield


# -- strategies ----------------------------------------------------------------------


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
    labels = draw(hnp.arrays(dtype, shape, elements=st.integers(0, top)))
    return labels


@st.composite
def problems(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    b, h, w = draw(st.integers(1, 6)), draw(st.integers(1, 12)), draw(st.integers(1, 12))
    return draw(frame_arrays((b, h, w))), draw(masks((h, w)))


# -- property tests ---------------------------------------------------------------------


@settings(deadline=None, max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(
    problem=problems(),
    stats=st.sets(st.sampled_from(STATS), min_size=1).map(sorted),
    layout=st.sampled_from(list(LAYOUTS)),
    small_tiles=st.booleans(),
    view=st.sampled_from(["as-is", "reversed", "transposed-copy"]),
)
def test_matches_numpy_reference(problem, stats, layout, small_tiles, view) -> None:
    frames, mask = problem
    if view == "reversed":
        frames = frames[:, ::-1]
        mask = mask[::-1]
    elif view == "transposed-copy":  # a non-contiguous view with the same content
        frames = np.ascontiguousarray(frames.transpose(0, 2, 1)).transpose(0, 2, 1)
    knobs = dict(LAYOUTS[layout])
    if small_tiles:
        knobs.update(_MAX_TILE_PIXELS=8, _STAGE_BYTES=64, _STD_STAGE_ELEMS=8)
    with tuning(**knobs):
        for reducer in reducers(mask, stats):
            got = reducer.reduce(frames)
            assert set(got) == set(stats)
            assert_matches(got, frames, mask, stats)


@settings(deadline=None, max_examples=60)
@given(
    frames=hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 4), st.just(24), st.just(40)),
        elements=st.floats(-1e3, 1e3, width=32),
    ),
    labels=hnp.arrays(np.int32, (24, 40), elements=st.integers(0, 300)),
)
def test_many_regions(frames, labels) -> None:
    """K in the hundreds: gathered segments on the CPU, scatter_add on the device path."""
    with tuning(_DENSE_ONEHOT_ENTRIES=1000):
        for reducer in reducers(labels):
            assert_matches(reducer.reduce(frames), frames, labels)


# -- exactness -------------------------------------------------------------------------


def quadrants(size: int) -> np.ndarray:
    labels = np.ones((size, size), dtype=np.int32)
    labels[: size // 2, size // 2 :] = 2
    labels[size // 2 :, : size // 2] = 3
    labels[size // 2 :, size // 2 :] = 4
    return labels


@pytest.mark.parametrize("layout", ["runs", "boxes", "gather"])
@pytest.mark.parametrize("mask_kind", ["all", "holes", "quadrants"])
def test_uint16_sums_beyond_2_24_are_exact(mask_kind: str, layout: str) -> None:
    rng = np.random.default_rng(1)
    size = 512
    frames = rng.integers(60000, 65536, (3, size, size)).astype(np.uint16)
    frames[1] = rng.integers(0, 4, (size, size))  # a frame that stays on the float32 path
    mask: np.ndarray
    if mask_kind == "all":
        mask = np.ones((size, size), dtype=bool)
    elif mask_kind == "holes":
        mask = rng.random((size, size)) > 0.01
    else:
        mask = quadrants(size)
    with tuning(**LAYOUTS[layout]):
        for reducer in reducers(mask, ("sum", "mean", "count", "min", "max")):
            got = reducer.reduce(frames)
            assert got["sum"][0].min() > 2**24
            assert_matches(got, frames, mask, ("sum", "mean", "count", "min", "max"))


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.float32, np.float64])
def test_roi_boxes_with_holes(layout: str, dtype: type) -> None:
    """Rectangular ROIs with dead pixels and a gap line; NaN/extremes in the holes."""
    rng = np.random.default_rng(11)
    labels = np.zeros((96, 80), dtype=np.int32)
    labels[4:40, 4:36] = 1
    labels[4:40, 44:76] = 2
    labels[50:90, 10:70] = 3
    labels[60:70, 30:40] = 0  # a big hole in box 3
    labels[:, 20:23] = 0  # a gap line through boxes 1 and 3
    labels[rng.random(labels.shape) < 0.02] = 0
    frames = (rng.random((9, 96, 80)) * 1000).astype(dtype)
    hole = labels == 0
    if np.dtype(dtype).kind == "f":
        frames[:, hole] = np.where(rng.random(hole.sum()) < 0.5, np.nan, np.inf)
        frames[2, 5, 5] = np.nan
    else:
        frames[:, hole] = np.iinfo(dtype).max
    with tuning(**LAYOUTS[layout]):
        for reducer in reducers(labels):
            assert_matches(reducer.reduce(frames), frames, labels)


def test_signed_16_and_8_bit_negatives_are_exact() -> None:
    rng = np.random.default_rng(2)
    labels = quadrants(64)
    for dtype in (np.int16, np.int8):
        info = np.iinfo(dtype)
        frames = rng.integers(info.min, int(info.max) + 1, (5, 64, 64)).astype(dtype)
        frames[0] = info.min  # extreme: all at the most negative value
        frames[1] = info.max
        for reducer in reducers(labels):
            assert_matches(reducer.reduce(frames), frames, labels)


def test_32_bit_integers_with_large_values_are_exact() -> None:
    rng = np.random.default_rng(3)
    mask = rng.random((64, 64)) > 0.1
    for dtype in (np.uint32, np.int32):
        info = np.iinfo(dtype)
        frames = rng.integers(int(info.max) - 1000, int(info.max) + 1, (4, 64, 64)).astype(dtype)
        frames[1] = rng.integers(int(info.min), int(info.max) + 1, (64, 64))
        frames[2] = info.min
        for reducer in reducers(mask):
            got = reducer.reduce(frames)
            assert_matches(got, frames, mask)
            # Bit for bit: the float64 sum is numpy's int64 sum converted once.
            ref = frames[:, mask].astype(np.int64).sum(axis=1).astype(np.float64)
            np.testing.assert_array_equal(got["sum"][:, 0], ref)


def test_big_endian_input_gives_identical_results() -> None:
    rng = np.random.default_rng(4)
    labels = quadrants(32)
    for code in FRAME_DTYPES:
        native = (rng.random((3, 32, 32)) * 100).astype(code)
        swapped = native.astype(np.dtype(code).newbyteorder(">"))
        for reducer in reducers(labels):
            a, b = reducer.reduce(native), reducer.reduce(swapped)
            for s in STATS:
                np.testing.assert_array_equal(a[s], b[s], err_msg=f"{code} {s}")
            assert_matches(b, swapped, labels)


def test_non_contiguous_views() -> None:
    rng = np.random.default_rng(5)
    base = rng.poisson(5.0, (8, 40, 60)).astype(np.uint16)
    mask = rng.integers(0, 4, (20, 30))
    views = {
        "strided": base[::2, ::2, ::2],
        "negative": base[:4, 20:, :30][:, ::-1, ::-1],
        "fortran": np.asfortranarray(base[:4, :20, :30]),
        "transposed": base[:4, :30, :20].transpose(0, 2, 1),
    }
    for name, frames in views.items():
        assert not frames.flags.c_contiguous, name
        for reducer in reducers(mask):
            assert_matches(reducer.reduce(frames), frames, mask)


def test_read_only_input() -> None:
    frames = np.arange(2 * 6 * 5, dtype=np.uint16).reshape(2, 6, 5)
    frames.flags.writeable = False
    mask = np.arange(30).reshape(6, 5) % 3
    for reducer in reducers(mask):
        assert_matches(reducer.reduce(frames), frames, mask)


# -- non-finite values -------------------------------------------------------------------


def test_nan_and_inf_semantics() -> None:
    labels = np.array([[1, 1, 2, 2, 3, 3, 4, 0]], dtype=np.int32)
    frames = np.array(
        [[[1.0, np.inf, 2.0, np.nan, np.nan, np.nan, 5.0, np.nan]]]
        + [[[np.inf, -np.inf, -np.inf, 1.0, 7.0, 8.0, 5.0, np.inf]]],
        dtype=np.float32,
    )
    for reducer in reducers(labels):
        got = reducer.reduce(frames)
        assert_matches(got, frames, labels)
        np.testing.assert_array_equal(got["sum"][0], [np.inf, 2.0, 0.0, 5.0])
        np.testing.assert_array_equal(got["count"][0], [2, 1, 0, 1])
        assert np.isnan(got["std"][0, 0]) and got["max"][0, 0] == np.inf
        assert np.isnan(got["mean"][0, 2]) and np.isnan(got["min"][0, 2])
        assert np.isnan(got["sum"][1, 0]) and got["sum"][1, 1] == -np.inf


def test_non_finite_outside_the_mask_is_ignored() -> None:
    """0 * inf = nan in a one-hot product must not leak into the results."""
    rng = np.random.default_rng(6)
    mask = np.zeros((64, 64), dtype=bool)
    mask[8:56, 8:56] = True
    mask[30, 30] = False  # a hole inside the region
    frames = rng.normal(size=(6, 64, 64))
    frames[:, ~mask] = np.nan
    frames[::2, 0, 0] = np.inf
    frames[1, 30, 30] = -np.inf
    for reducer in reducers(mask):
        got = reducer.reduce(frames)
        assert np.isfinite(got["sum"]).all()
        assert_matches(got, frames, mask)


def test_empty_and_all_nan_regions() -> None:
    labels = np.zeros((4, 5), dtype=np.int64)
    labels[0, :2] = 1
    labels[1, :] = 3  # label 2 never occurs
    frames = np.ones((2, 4, 5), dtype=np.float64)
    frames[1, 0, :2] = np.nan
    for reducer in reducers(labels):
        got = reducer.reduce(frames)
        assert reducer.n_regions == 3
        np.testing.assert_array_equal(reducer.pixel_count, [2, 0, 5])
        np.testing.assert_array_equal(got["sum"][:, 1], [0, 0])
        np.testing.assert_array_equal(got["count"], [[2, 0, 5], [0, 0, 5]])
        for s in ("mean", "min", "max", "std"):
            assert np.isnan(got[s][:, 1]).all() and np.isnan(got[s][1, 0])
        assert got["sum"][1, 0] == 0
        assert_matches(got, frames, labels)


def test_all_false_mask_and_zero_frames() -> None:
    for reducer in reducers(np.zeros((3, 3), dtype=bool)):
        got = reducer.reduce(np.ones((2, 3, 3), dtype=np.uint8))
        np.testing.assert_array_equal(got["sum"], [[0], [0]])
        assert np.isnan(got["mean"]).all()
    reducer = MaskedReducer(np.ones((3, 3), dtype=bool), STATS, "cpu")
    got = reducer.reduce(np.ones((0, 3, 3), dtype=np.float32))
    assert all(v.shape == (0, 1) for v in got.values())
    for reducer in reducers(np.zeros((0, 4), dtype=bool)):
        got = reducer.reduce(np.ones((2, 0, 4), dtype=np.uint16))
        np.testing.assert_array_equal(got["count"], [[0], [0]])
        assert np.isnan(got["max"]).all()
    no_regions = MaskedReducer(np.zeros((3, 3), dtype=np.uint8), ("sum",), "cpu")
    assert no_regions.n_regions == 0
    assert no_regions.reduce(np.ones((2, 3, 3), dtype=np.uint8))["sum"].shape == (2, 0)


# -- reuse and buffers --------------------------------------------------------------------


def test_reuse_across_blocks_of_different_sizes_and_dtypes() -> None:
    rng = np.random.default_rng(7)
    mask = rng.integers(0, 5, (48, 48))
    for reducer in reducers(mask):
        for n, dtype in [
            (5, np.uint16),
            (1, np.uint16),
            (37, np.float32),
            (3, np.int8),
            (64, np.uint16),
        ]:
            frames = (rng.random((n, 48, 48)) * 200).astype(dtype)
            assert_matches(reducer.reduce(frames), frames, mask)


def test_reducer_does_not_retain_the_input() -> None:
    rng = np.random.default_rng(8)
    mask = rng.integers(0, 3, (32, 32))
    for reducer in reducers(mask):
        for dtype in ("<u2", ">f4"):
            frames = (rng.random((4, 32, 32)) * 50).astype(dtype)
            before = sys.getrefcount(frames)
            first = reducer.reduce(frames)
            assert sys.getrefcount(frames) == before
            ref = weakref.ref(frames)
            expected = {s: v.copy() for s, v in first.items()}
            frames[...] = 0  # callers reuse their buffer: earlier results must not change
            for s in STATS:
                np.testing.assert_array_equal(first[s], expected[s])
            del frames
            gc.collect()
            assert ref() is None


# -- interface ---------------------------------------------------------------------------


def test_mask_regions() -> None:
    labels, k = mask_regions(np.array([[True, False]]))
    assert labels.dtype == np.int32 and k == 1
    np.testing.assert_array_equal(labels, [[1, 0]])
    labels, k = mask_regions(np.array([[0, 7], [2, 0]], dtype=np.uint16))
    assert labels.dtype == np.int32 and k == 7
    np.testing.assert_array_equal(labels, [[0, 7], [2, 0]])
    assert mask_regions(np.zeros((2, 2), dtype=np.int64))[1] == 0
    assert mask_regions(np.zeros((2, 2), dtype=bool))[1] == 1
    for bad in (np.array([[-1, 0]]), np.zeros((2, 2, 2), dtype=bool), np.zeros(3, dtype=bool)):
        with pytest.raises(ValueError):
            mask_regions(bad)
    with pytest.raises(ValueError):
        mask_regions(np.zeros((2, 2), dtype=np.float32))


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None) == resolve_device("auto")
    assert resolve_device(" CPU ").type == "cpu"
    for bad in ("tpu", "bogus", "cuda:x"):
        with pytest.raises(ValueError):
            resolve_device(bad)
    if not HAS_CUDA:
        assert resolve_device(None) == torch.device("cpu")
        for spec in ("cuda", "cuda:0"):
            with pytest.raises(ValueError, match="CUDA"):
                resolve_device(spec)
    else:
        with pytest.raises(ValueError):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_invalid_arguments() -> None:
    mask = np.ones((4, 4), dtype=bool)
    with pytest.raises(ValueError):
        MaskedReducer(mask, ("sum", "median"))
    with pytest.raises(ValueError):
        MaskedReducer(mask, ())
    reducer = MaskedReducer(mask, ("sum",), "cpu")
    assert reducer.device == torch.device("cpu") and reducer.n_regions == 1
    assert reducer.pixel_count.dtype == np.int64
    with pytest.raises(ValueError):
        reducer.reduce(np.ones((2, 4, 5), dtype=np.uint8))
    with pytest.raises(ValueError):
        reducer.reduce(np.ones((4, 4), dtype=np.uint8))
    for dtype in (np.int64, np.uint64, np.float16, np.bool_, np.complex64):
        with pytest.raises(ValueError):
            reducer.reduce(np.ones((1, 4, 4), dtype=dtype))


needs_numba = pytest.mark.skipif(not kernel.cpu_sums.AVAILABLE, reason="needs numba")


@needs_numba
@pytest.mark.parametrize("dtype", FRAME_DTYPES)
def test_fused_cpu_sums_are_used_and_match(dtype: str) -> None:
    """numba loops: used for sum/mean/count of contiguous native frames, exact for
    integers far beyond 2**24 per region and long runs split into chunks."""
    from worker import cpu_sums

    rng = np.random.default_rng(12)
    mask = rng.integers(0, 4, (96, 400))
    mask[:40] = 2  # one run of 16000 pixels, another beyond CHUNK
    mask[40:90, :] = np.where(mask[40:90] > 0, 3, 0)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    if info is not None:
        frames = rng.integers(info.min, info.max, (5, 96, 400), endpoint=True).astype(dtype)
        frames[0] = info.max
        frames[1] = info.min
    else:
        frames = rng.normal(0, 1e3, (5, 96, 400)).astype(dtype)
        frames[0, 0, :7] = np.nan
        frames[1, 50, 3] = np.inf
        frames[2, 50, 3], frames[2, 60, 7] = np.inf, -np.inf
        frames[3, mask == 0] = np.nan  # unmasked NaN is ignored
    stats = ("sum", "mean", "count")
    reducer = MaskedReducer(mask, stats, device="cpu")
    with mock.patch.object(cpu_sums, "region_sums", wraps=cpu_sums.region_sums) as calls:
        got = reducer.reduce(frames)
    assert calls.call_count == 1
    assert_matches(got, frames, mask, stats)
    # Forced off: the staged torch path gives the same counts and (for integers) sums.
    assert isinstance(reducer._impl, kernel._CpuReducer)
    reducer._impl.fused = False
    with mock.patch.object(cpu_sums, "region_sums", side_effect=AssertionError("fused")):
        staged = reducer.reduce(frames)
    np.testing.assert_array_equal(got["count"], staged["count"])
    if info is not None:
        np.testing.assert_array_equal(got["sum"], staged["sum"])


@needs_numba
@pytest.mark.parametrize("dtype", ["float32", "float64", "uint16", "int16", "uint32"])
@pytest.mark.parametrize("n_frames", [1, 3, 4, 7, 9, 13])
def test_fused_cpu_sums_frame_groups(dtype: str, n_frames: int) -> None:
    """Frames are summed in groups of ``cpu_sums.GROUP`` per run, the rest one by one:
    every frame, whatever its place in a group, gets its own sums, NaN counts and inf."""
    from worker import cpu_sums

    rng = np.random.default_rng(n_frames)
    mask = rng.integers(0, 5, (23, 37))
    mask[3:6] = 1  # a long run among short ones
    if np.dtype(dtype).kind == "f":
        frames = rng.normal(0, 1e3, (n_frames, 23, 37)).astype(dtype)
        for f in range(n_frames):  # a different mix of non-finite pixels per frame
            kind = f % 5
            if kind == 1:
                frames[f, 4, 2:9] = np.nan
            elif kind == 2:
                frames[f, 10, 5] = np.inf
                frames[f, 11, 6] = np.nan
            elif kind == 3:
                frames[f, 4, 0], frames[f, 4, 30] = np.inf, -np.inf
            elif kind == 4:
                frames[f, mask == 2] = np.nan  # a whole region NaN
    else:
        info = np.iinfo(dtype)
        frames = rng.integers(info.min, info.max, (n_frames, 23, 37), endpoint=True)
        frames = frames.astype(dtype)
        frames[n_frames - 1] = info.max  # the last (ungrouped or grouped) frame
    stats = ("sum", "mean", "count")
    reducer = MaskedReducer(mask, stats, device="cpu")
    with mock.patch.object(cpu_sums, "region_sums", wraps=cpu_sums.region_sums) as calls:
        got = reducer.reduce(frames)
    assert calls.call_count == 1
    assert_matches(got, frames, mask, stats)
    for f in range(n_frames):  # each frame alone (the one-by-one path) agrees
        alone = reducer.reduce(frames[f : f + 1])
        np.testing.assert_array_equal(alone["count"][0], got["count"][f])
        np.testing.assert_allclose(alone["sum"][0], got["sum"][f], rtol=1e-12, atol=0)


@needs_numba
@pytest.mark.parametrize("dtype", FRAME_DTYPES)
def test_fused_cpu_min_max_std_match_numpy_and_the_staged_path(dtype: str) -> None:
    """min/max/std in numba loops too: exact min/max, std as numpy's (NaN skipped; a
    region holding inf, or only NaN, has NaN std; empty regions NaN)."""
    from worker import cpu_sums

    rng = np.random.default_rng(21)
    mask = rng.integers(0, 5, (31, 45))
    mask[2:5] = 1  # a long run among short ones
    mask[mask == 4] = 0  # label 4 never occurs below K = 5
    mask[0, 0] = 5
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    if info is not None:
        frames = rng.integers(info.min, info.max, (6, 31, 45), endpoint=True).astype(dtype)
        frames[0] = info.max
        frames[1, mask == 2] = info.min
    else:
        frames = (rng.normal(0, 1e3, (6, 31, 45)) + 1e6).astype(dtype)  # mean >> spread
        frames[0, 3, :9] = np.nan
        frames[1, mask == 2] = np.nan  # a whole region NaN
        frames[2, 3, 4] = np.inf
        frames[3, 3, 5], frames[3, 10, 7] = -np.inf, np.nan
        frames[4, mask == 0] = np.nan  # unmasked NaN is ignored
    stats = STATS
    reducer = MaskedReducer(mask, stats, device="cpu")
    with (
        mock.patch.object(cpu_sums, "region_minmax", wraps=cpu_sums.region_minmax) as mm,
        mock.patch.object(cpu_sums, "region_ssd", wraps=cpu_sums.region_ssd) as sd,
    ):
        got = reducer.reduce(frames)
    assert mm.call_count == 1 and sd.call_count == 1
    assert_matches(got, frames, mask, stats)
    assert isinstance(reducer._impl, kernel._CpuReducer)
    reducer._impl.fused = False
    with mock.patch.object(cpu_sums, "region_sums", side_effect=AssertionError("fused")):
        staged = reducer.reduce(frames)
    for s in ("min", "max", "count"):
        np.testing.assert_array_equal(got[s], staged[s])
    np.testing.assert_allclose(got["std"], staged["std"], rtol=1e-9, equal_nan=True)


@needs_numba
def test_fused_cpu_loops_read_other_layouts_through_a_native_copy() -> None:
    """Big-endian and strided frames are copied (byte-swapped) into one reused native
    buffer and take the same loops, so they give the very same results."""
    from worker import cpu_sums

    mask = np.arange(64).reshape(8, 8) % 3
    frames = np.arange(3 * 64, dtype=np.uint16).reshape(3, 8, 8)
    cases = [
        (("sum", "max"), frames.astype(">u2")),
        (("sum",), frames.astype(">f8")),
        (("mean", "std"), frames[:, ::-1]),
    ]
    for stats, data in cases:
        reducer = MaskedReducer(mask, stats, device="cpu")
        native = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("="))
        with mock.patch.object(cpu_sums, "region_sums", wraps=cpu_sums.region_sums) as calls:
            got = reducer.reduce(data)
            again = reducer.reduce(data)
        assert calls.call_count == 2
        assert all(
            c.args[0].dtype.isnative and c.args[0].flags.c_contiguous for c in calls.call_args_list
        )
        assert calls.call_args_list[0].args[0].base is calls.call_args_list[1].args[0].base
        assert_matches(got, data, mask, stats)
        expected = reducer.reduce(native)
        for s in stats:
            np.testing.assert_array_equal(got[s], expected[s])
            np.testing.assert_array_equal(again[s], expected[s])


def test_unsigned_conversion_fallback() -> None:
    """The route for devices without uint16/uint32 conversion kernels."""
    for dtype in (np.uint16, np.uint32):
        values = np.array([[0, 1, 2**15, np.iinfo(dtype).max]], dtype=dtype)
        got = kernel._unsigned_via_signed(torch.from_numpy(values), torch.float64)
        np.testing.assert_array_equal(got.numpy(), values.astype(np.float64))


# -- CUDA ----------------------------------------------------------------------------------


def cuda_cases() -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(9)
    size = 256
    bool_mask = rng.random((size, size)) > 0.02
    rings = quadrants(size)
    many = rng.integers(0, 200, (size, size))
    high = rng.integers(60000, 65536, (4, size, size)).astype(np.uint16)
    yield "uint16 > 2**24", high, bool_mask
    yield "uint16 poisson", rng.poisson(3.0, (7, size, size)).astype(np.uint16), rings
    yield "int16", rng.integers(-32768, 32768, (3, size, size)).astype(np.int16), rings
    yield "int8", rng.integers(-128, 128, (3, size, size)).astype(np.int8), bool_mask
    yield "uint32", rng.integers(2**32 - 99, 2**32, (3, size, size)).astype(np.uint32), many
    yield "int32", rng.integers(-(2**31), 2**31, (3, size, size)).astype(np.int32), rings
    floats = rng.normal(100, 10, (5, size, size)).astype(np.float32)
    floats[0, 3, 3], floats[1, 7, 9], floats[2, 100, 100] = np.nan, np.inf, -np.inf
    floats[3, ~bool_mask] = np.nan
    yield "float32 nan/inf", floats, bool_mask
    yield "float64 labels", rng.normal(0, 1e3, (3, size, size)), many
    yield "big-endian", high.astype(">u2"), rings
    yield "non-contiguous", high[:, ::-1], rings


@gpu
@needs_cuda
@pytest.mark.parametrize("case", list(cuda_cases()), ids=lambda c: c[0])
def test_cuda_matches_reference(case) -> None:
    _, frames, mask = case
    reducer = MaskedReducer(mask, STATS, device="cuda")
    assert reducer.device.type == "cuda"
    assert not torch.backends.cuda.matmul.allow_tf32
    got = reducer.reduce(frames)
    assert_matches(got, frames, mask)
    cpu = MaskedReducer(mask, STATS, device="cpu").reduce(frames)
    for s in ("sum", "count", "min", "max"):
        if frames.dtype.kind in "iu" or s in ("count", "min", "max"):
            np.testing.assert_array_equal(got[s], cpu[s], err_msg=s)


@gpu
@needs_cuda
def test_cuda_scatter_path_and_reuse() -> None:
    rng = np.random.default_rng(10)
    labels = rng.integers(0, 500, (128, 128))
    with tuning(_DENSE_ONEHOT_ENTRIES=1000, _DEVICE_GROUP_ELEMS=128 * 128 * 3):
        reducer = MaskedReducer(labels, STATS, device="cuda")
        for n, dtype in [(7, np.uint16), (1, np.float32), (20, np.int16), (2, ">u4")]:
            frames = (rng.random((n, 128, 128)) * 1000).astype(dtype)
            assert_matches(reducer.reduce(frames), frames, labels)


@gpu
@needs_cuda
def test_cuda_does_not_retain_the_input() -> None:
    reducer = MaskedReducer(np.ones((64, 64), dtype=bool), ("sum",), device="cuda")
    frames = np.ones((4, 64, 64), dtype=np.uint16)
    ref = weakref.ref(frames)
    first = reducer.reduce(frames)["sum"].copy()
    frames[...] = 7
    np.testing.assert_array_equal(reducer.reduce(np.ones((4, 64, 64), np.uint16))["sum"], first)
    del frames
    gc.collect()
    assert ref() is None


# -- host buffers (zero-copy host path) ----------------------------------------------------


def device_path_reducer(mask: np.ndarray, stats=STATS) -> MaskedReducer:
    """A reducer running the CUDA code path on the CPU (its buffers are not pinned)."""
    reducer = MaskedReducer(mask, stats, device="cpu")
    labels, n_regions = mask_regions(mask)
    reducer._impl = kernel._DeviceReducer(labels, n_regions, reducer.stats, torch.device("cpu"))
    return reducer


def test_host_buffer_is_none_for_the_cpu_reducer() -> None:
    reducer = MaskedReducer(np.ones((8, 8), dtype=bool), ("sum",), device="cpu")
    assert reducer.host_buffer(4, np.uint16) is None


@pytest.mark.parametrize("dtype", FRAME_DTYPES)
def test_host_buffer_views_are_sent_without_staging(dtype: str) -> None:
    rng = np.random.default_rng(5)
    mask = rng.integers(0, 4, size=(12, 20))
    reducer = device_path_reducer(mask)
    impl = reducer._impl
    assert isinstance(impl, kernel._DeviceReducer)
    a = reducer.host_buffer(5, np.dtype(dtype))
    b = reducer.host_buffer(3, np.dtype(dtype))
    assert a is not None and b is not None
    assert a.shape == (5, 12, 20) and a.dtype == np.dtype(dtype) and a.flags.c_contiguous
    assert a.ctypes.data != b.ctypes.data  # two buffers alternate
    for buf in (a, b):
        buf[...] = (rng.random(buf.shape) * 200).astype(dtype)
    with mock.patch.object(impl, "_upload", side_effect=AssertionError("staged")):
        for buf in (a, b, a[1:4], b[:1]):
            assert_matches(reducer.reduce(buf), buf.copy(), mask)
    # Anything else is staged: copies, views that are not contiguous, other memory.
    staged = mock.patch.object(impl, "_upload", wraps=impl._upload)
    with staged as upload:
        for other in (a.copy(), a[:, ::2, :].copy(), a[:, :, ::2]):
            if other.shape[1:] == (12, 20):
                assert_matches(reducer.reduce(other), np.ascontiguousarray(other), mask)
        assert upload.called
    # The slot after next is the first one again, grown when asked for more frames.
    c = reducer.host_buffer(5, np.dtype(dtype))
    assert c is not None and c.ctypes.data == a.ctypes.data
    d = reducer.host_buffer(40, np.dtype(dtype))
    assert d is not None and d.shape == (40, 12, 20)
    d[...] = 1
    with mock.patch.object(impl, "_upload", side_effect=AssertionError("staged")):
        assert_matches(reducer.reduce(d), d.copy(), mask)


def test_host_buffer_groups_and_unsupported_dtypes() -> None:
    mask = np.ones((16, 16), dtype=bool)
    reducer = device_path_reducer(mask, ("sum", "max"))
    impl = reducer._impl
    assert isinstance(impl, kernel._DeviceReducer)
    impl.group = 3  # a block of several device groups
    buf = reducer.host_buffer(10, np.uint16)
    assert buf is not None
    buf[...] = np.arange(buf.size, dtype=np.uint16).reshape(buf.shape)
    with mock.patch.object(impl, "_upload", side_effect=AssertionError("staged")):
        assert_matches(reducer.reduce(buf), buf.copy(), mask, ("sum", "max"))
    for dtype in (np.int64, np.float16, np.bool_):
        assert reducer.host_buffer(2, dtype) is None
    assert reducer.host_buffer(2, np.dtype(">u2")).dtype == np.dtype("=u2")


# -- fused Triton kernel (run by Triton's interpreter on the CPU) ---------------------------


def has_triton() -> bool:
    import importlib.util

    return importlib.util.find_spec("triton") is not None


# The interpreter is chosen when Triton is first imported: on a CUDA machine Triton is
# already loaded in compiled mode, and the gpu-marked test below covers the real kernel.
needs_triton = pytest.mark.skipif(
    not has_triton() or torch.cuda.is_available(),
    reason="needs triton without CUDA (interpreter mode)",
)


def test_fused_kernel_is_not_used_on_the_cpu() -> None:
    reducer = device_path_reducer(np.ones((8, 8), dtype=bool), ("sum",))
    impl = reducer._impl
    assert isinstance(impl, kernel._DeviceReducer)
    frames = np.arange(3 * 64, dtype=np.uint16).reshape(3, 8, 8)
    assert_matches(reducer.reduce(frames), frames, np.ones((8, 8), dtype=bool), ("sum",))
    assert impl.fused is False


def test_nothing_imports_triton_at_import_time() -> None:
    import subprocess

    pytest.importorskip("celery")  # worker.tasks needs it; GPU test machines may lack it

    code = (
        "import sys, worker.kernel, worker.fused, worker.context, worker.tasks; "
        "assert 'triton' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@needs_triton
@pytest.mark.parametrize("dtype", ["u1", "i1", "u2", "i2", "u4", "i4"])
@pytest.mark.parametrize("n_regions", [1, 3, 16])
def test_fused_kernel_matches_numpy(monkeypatch, dtype: str, n_regions: int) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    rng = np.random.default_rng(n_regions)
    mask = rng.integers(0, n_regions + 1, size=(33, 150))  # 4950 px: two pixel blocks
    if n_regions == 1:
        mask = mask.astype(bool)
    reducer = device_path_reducer(mask, ("sum", "mean", "count"))
    impl = reducer._impl
    assert isinstance(impl, kernel._DeviceReducer)
    impl.fused = True  # as on CUDA once Triton is found
    info = np.iinfo(np.dtype(dtype))
    frames = rng.integers(info.min, info.max, (11, 33, 150), endpoint=True).astype(dtype)
    frames[0] = info.max  # beyond 2**24 per region: exact only in integers
    frames[1] = info.min
    from worker import fused

    with mock.patch.object(fused, "region_sums", wraps=fused.region_sums) as calls:
        assert_matches(reducer.reduce(frames), frames, mask, ("sum", "mean", "count"))
    assert calls.call_count == 2  # self-check, then the block
    assert impl._fused_ok == {torch.from_numpy(frames[:0]).dtype}


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or not has_triton(), reason="needs CUDA and triton"
)
@pytest.mark.parametrize("dtype", ["u1", "i1", "u2", "i2", "u4", "i4"])
def test_fused_kernel_on_cuda_is_used_and_exact(dtype: str) -> None:
    rng = np.random.default_rng(7)
    mask = rng.integers(0, 17, size=(96, 130))  # 16 regions, several pixel blocks
    info = np.iinfo(np.dtype(dtype))
    frames = rng.integers(info.min, info.max, (37, 96, 130), endpoint=True).astype(dtype)
    frames[0] = info.max  # region sums far beyond 2**24: exact only in integers
    frames[1] = info.min
    reducer = MaskedReducer(mask, ("sum", "mean", "count"), device="cuda")
    assert_matches(reducer.reduce(frames), frames, mask, ("sum", "mean", "count"))
    assert torch.from_numpy(frames[:0]).dtype in reducer._impl._fused_ok


@needs_triton
def test_fused_kernel_self_check_failure_falls_back(monkeypatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    mask = np.ones((16, 16), dtype=bool)
    reducer = device_path_reducer(mask, ("sum",))
    impl = reducer._impl
    assert isinstance(impl, kernel._DeviceReducer)
    impl.fused = True
    frames = np.full((4, 16, 16), 3, dtype=np.uint16)
    from worker import fused

    wrong = mock.patch.object(fused, "region_sums", side_effect=lambda r, lab, k: r[:, :k].long())
    with wrong:
        assert_matches(reducer.reduce(frames), frames, mask, ("sum",))
        assert_matches(reducer.reduce(frames), frames, mask, ("sum",))
    assert impl._fused_bad == {torch.uint16} and not impl._fused_ok


@needs_triton
def test_fused_kernel_leaves_other_frames_alone(monkeypatch) -> None:
    """Float frames and more regions than the kernel handles keep the GEMM path."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    from worker import fused

    rng = np.random.default_rng(3)
    for mask, dtype in (
        (rng.integers(0, fused.MAX_REGIONS + 2, (20, 20)), np.uint16),
        (np.ones((20, 20), dtype=bool), np.float32),
    ):
        reducer = device_path_reducer(mask, ("sum",))
        impl = reducer._impl
        assert isinstance(impl, kernel._DeviceReducer)
        impl.fused = True
        frames = (rng.random((3, 20, 20)) * 100).astype(dtype)
        with mock.patch.object(fused, "region_sums", side_effect=AssertionError("fused")):
            assert_matches(reducer.reduce(frames), frames, mask, ("sum",))
