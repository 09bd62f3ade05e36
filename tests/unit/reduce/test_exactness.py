"""Exact integers, sound floats: sums bit for bit, variance exact or to 1e-12."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from worker.reduce import STATS, MaskedReducer
from worker.reduce.cpu import STRATEGIES

from .oracle import FRAME_DTYPES, assert_matches, quadrants, reducers


@pytest.mark.parametrize("mask_kind", ["all", "holes", "quadrants"])
def test_uint16_sums_beyond_2_24_are_exact(mask_kind: str) -> None:
    rng = np.random.default_rng(1)
    size = 512
    frames = rng.integers(60000, 65536, (3, size, size)).astype(np.uint16)
    frames[1] = rng.integers(0, 4, (size, size))
    mask: np.ndarray
    if mask_kind == "all":
        mask = np.ones((size, size), dtype=bool)
    elif mask_kind == "holes":
        mask = rng.random((size, size)) > 0.01
    else:
        mask = quadrants(size)
    for reducer in reducers(mask):
        got = reducer.reduce(frames)
        assert got["sum"][0].min() > 2**24
        assert_matches(got, frames, mask)


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


def exact_std(values: np.ndarray) -> float:
    """Population std of integer values, from exact rational arithmetic."""
    ints = [int(v) for v in values]
    n = len(ints)
    var = Fraction(n * sum(v * v for v in ints) - sum(ints) ** 2, n * n)
    return float(var) ** 0.5


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("dtype", ["u1", "i1", "u2", "i2", "u4", "i4"])
def test_integer_std_is_exact(strategy: str, dtype: str) -> None:
    """The variance comes from exact int64 (128-bit for 32-bit input) sums of squares:
    equal to the rational result to the last bit or two, for full-range values (32-bit:
    the widened Python-integer path), near the top of the range with a small spread
    (32-bit: squares wrap int64 many times), and constant regions (std exactly 0)."""
    rng = np.random.default_rng(4)
    info = np.iinfo(dtype)
    labels = rng.integers(0, 4, (20, 33))
    frames = rng.integers(info.min, info.max, (9, 20, 33), endpoint=True).astype(dtype)
    frames[1] = rng.integers(int(info.max) - 3, int(info.max), (20, 33), endpoint=True)
    frames[2] = info.max
    frames[3, labels == 2] = info.min
    frames[3, 0, 0] = info.max  # one outlier in a region of minima
    got = MaskedReducer(labels, STATS, "cpu", strategy=strategy).reduce(frames)
    for f in range(frames.shape[0]):
        for k in range(1, 4):
            want = exact_std(frames[f][labels == k])
            assert got["std"][f, k - 1] == pytest.approx(want, rel=4e-16, abs=0)
    assert (got["std"][2] == 0).all()
    assert_matches(got, frames, labels)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("dtype", ["f4", "f8"])
def test_float_std_of_a_large_mean_and_a_small_spread(strategy: str, dtype: str) -> None:
    """1e6 + noise of 1e-3 (float64; float32 cannot hold the noise, so 1e3 + noise of
    1e-2 there): a naive sum of squares loses every digit; the one-pass update agrees
    with the two-pass float64 reference to 1e-12 relative, NaN pixels skipped."""
    rng = np.random.default_rng(5)
    mean, spread = (1e6, 1e-3) if dtype == "f8" else (1e3, 1e-2)
    labels = rng.integers(0, 5, (40, 50))
    frames = (mean + rng.normal(0.0, spread, (13, 40, 50))).astype(dtype)
    frames[0, 3, :20] = np.nan
    got = MaskedReducer(labels, STATS, "cpu", strategy=strategy).reduce(frames)
    for f in range(frames.shape[0]):
        for k in range(1, 5):
            v = frames[f][labels == k].astype(np.float64)
            v = v[~np.isnan(v)]
            two_pass = np.sqrt(np.mean((v - v.mean()) ** 2))
            assert got["std"][f, k - 1] == pytest.approx(two_pass, rel=1e-12, abs=0)
            assert got["mean"][f, k - 1] == pytest.approx(v.mean(), rel=1e-12, abs=0)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_float_regions_whose_shift_is_an_outlier_are_recomputed(strategy: str) -> None:
    """The one-pass float update shifts each region by one of its own pixels; where that
    pixel lies far out in the tail (a hot pixel) the region is redone two-pass."""
    labels = np.zeros((8, 8), dtype=np.int32)
    labels[2:6, 2:6] = 1
    frames = 1e6 + np.random.default_rng(6).normal(0.0, 1e-6, (10, 8, 8))
    frames[:, 2, 2] = 1e12  # the region's first pixel
    got = MaskedReducer(labels, STATS, "cpu", strategy=strategy).reduce(frames)
    v = frames[:, labels == 1]
    want = np.sqrt(np.mean((v - v.mean(axis=1, keepdims=True)) ** 2, axis=1))
    np.testing.assert_allclose(got["std"][:, 0], want, rtol=1e-12)
    np.testing.assert_allclose(got["sum"][:, 0], v.sum(axis=1), rtol=1e-15)


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


@pytest.mark.parametrize("dtype", FRAME_DTYPES)
def test_strategies_agree_on_integers_bit_for_bit(dtype: str) -> None:
    """All CPU strategies give the same integer results to the bit, and the same
    counts, min and max for floats (only float sums may differ in their last bits)."""
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 7, (37, 41))
    labels[5:9] = 3  # long runs among short ones
    if np.dtype(dtype).kind == "f":
        frames = rng.normal(0, 1e3, (11, 37, 41)).astype(dtype)
        frames[2, 3, :9] = np.nan
        frames[3, 6, 6] = np.inf
    else:
        info = np.iinfo(dtype)
        frames = rng.integers(info.min, info.max, (11, 37, 41), endpoint=True).astype(dtype)
    first, *others = (
        MaskedReducer(labels, STATS, "cpu", strategy=s).reduce(frames) for s in STRATEGIES
    )
    same = STATS if np.dtype(dtype).kind in "iu" else ("count", "min", "max")
    for other in others:
        for s in same:
            np.testing.assert_array_equal(first[s], other[s], err_msg=s)
