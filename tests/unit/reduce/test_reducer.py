"""MaskedReducer's contract: arguments, empty regions, NaN/inf rules, reuse, views."""

from __future__ import annotations

import gc
import sys
import weakref

import numpy as np
import pytest
import torch

from worker.reduce import STATS, MaskedReducer, mask_regions, resolve_device

from .oracle import HAS_CUDA, assert_matches, reducers

# -- arguments ---------------------------------------------------------------------------


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
    with pytest.raises(ValueError, match="strategy"):
        MaskedReducer(mask, ("sum",), "cpu", strategy="csr")
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
    # A CPU tensor is read as the array it views; a bfloat16 one has no numpy type.
    got = reducer.reduce(torch.ones((1, 4, 4), dtype=torch.uint8))
    assert got["sum"].shape == (1, 1)
    with pytest.raises(ValueError):
        reducer.reduce(torch.ones((1, 4, 4), dtype=torch.bfloat16))


# -- non-finite values and empty regions -----------------------------------------------------


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


def test_roi_boxes_with_holes() -> None:
    """Rectangular ROIs with dead pixels and a gap line; NaN/extremes in the holes."""
    rng = np.random.default_rng(11)
    labels = np.zeros((96, 80), dtype=np.int32)
    labels[4:40, 4:36] = 1
    labels[4:40, 44:76] = 2
    labels[50:90, 10:70] = 3
    labels[60:70, 30:40] = 0  # a big hole in box 3
    labels[:, 20:23] = 0  # a gap line through boxes 1 and 3
    labels[rng.random(labels.shape) < 0.02] = 0
    for dtype in (np.uint16, np.int16, np.float32, np.float64):
        frames = (rng.random((9, 96, 80)) * 1000).astype(dtype)
        hole = labels == 0
        if np.dtype(dtype).kind == "f":
            frames[:, hole] = np.where(rng.random(hole.sum()) < 0.5, np.nan, np.inf)
            frames[2, 5, 5] = np.nan
        else:
            frames[:, hole] = np.iinfo(dtype).max
        for reducer in reducers(labels):
            assert_matches(reducer.reduce(frames), frames, labels)


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


# -- layouts, reuse ----------------------------------------------------------------------------


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


def test_reuse_across_blocks_of_different_sizes_and_dtypes() -> None:
    rng = np.random.default_rng(7)
    mask = rng.integers(0, 5, (48, 48))
    for reducer in reducers(mask):
        for n, dtype in [(5, np.uint16), (1, np.uint16), (37, np.float32), (3, np.int8)]:
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
