"""From one-pass accumulators to statistics: exact integer variance, sound floats."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.reduce import moments


@settings(deadline=None, max_examples=300)
@given(a=st.integers(-(2**63), 2**63 - 1), n=st.integers(1, 2**31 - 1))
def test_divmod_without_integer_division(a: int, n: int) -> None:
    q, r = moments._divmod(np.int64(a), np.int64(n), 1.0 / n)
    assert (q, r) == divmod(a, n)


def integer_acc(values: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Accumulators (5, 1, K) of one frame's regions as the loops would fill them."""
    acc = moments.new_accumulators(1, len(values), is_float=False)
    for k, vals in enumerate(values):
        squares = sum(v * v for v in vals)
        acc[0, 0, k] = sum(vals)
        acc[1, 0, k] = np.uint64(squares % 2**64).view(np.int64)
        acc[2, 0, k] = squares >> 64
        acc[3, 0, k] = min(vals)
        acc[4, 0, k] = max(vals)
    return acc, np.array([len(v) for v in values], dtype=np.int64)


def test_integer_std_on_the_int64_path_and_the_widened_path() -> None:
    """Regions whose n (max - min)**2 fits int64 take the wrapping int64 formula (here
    with squares far beyond 2**64), the others Python integers; both are exact."""
    top = 2**32 - 1
    regions = [
        [top, top - 1, top - 5, top],  # int64 path, squares wrap
        [0, top, 7, top // 3],  # widened
        [-(2**31), 2**31 - 1] * 5,  # widened, signed
        [3, 3, 3],  # constant: 0
    ]
    acc, counts = integer_acc(regions)
    rows = moments.finish_integers(acc, counts)
    for k, vals in enumerate(regions):
        n = len(vals)
        var = Fraction(n * sum(v * v for v in vals) - sum(vals) ** 2, n * n)
        assert rows[5, 0, k] == pytest.approx(float(var) ** 0.5, rel=4e-16, abs=0)
        assert rows[0, 0, k] == sum(vals) and rows[1, 0, k] == sum(vals) / n
        assert (rows[3, 0, k], rows[4, 0, k], rows[2, 0, k]) == (min(vals), max(vals), n)
    assert rows[5, 0, 3] == 0.0


def test_empty_integer_regions() -> None:
    acc = moments.new_accumulators(2, 2, is_float=False)
    rows = moments.finish_integers(acc, np.zeros(2, dtype=np.int64))
    np.testing.assert_array_equal(rows[[0, 2]], 0.0)
    assert np.isnan(rows[[1, 3, 4, 5]]).all()


def test_float_rows_and_the_ill_conditioned_flag() -> None:
    """sum = sum(d) + n c; std from sum(d*d) - sum(d)**2 / n; regions whose shift lies
    far from their mean are flagged for the engine's two-pass redo."""
    values = [np.array([1e6 + 1e-3, 1e6 - 1e-3, 1e6]), np.array([5.0, 5.0 + 1e-9, 5.0])]
    shifts = [1e6, 1e9]  # a pixel of the region / a far outlier
    acc = moments.new_accumulators(1, 2, is_float=True)
    for k, (v, c) in enumerate(zip(values, shifts, strict=True)):
        d = v - c
        acc[:, 0, k] = d.sum(), (d * d).sum(), v.size, v.min(), v.max()
    rows, flagged = moments.finish_floats(acc, np.array([shifts]))
    assert flagged.tolist() == [[False, True]]
    assert rows[0, 0, 0] == pytest.approx(values[0].sum(), rel=1e-15)
    assert rows[5, 0, 0] == pytest.approx(values[0].std(), rel=1e-9)
    np.testing.assert_array_equal(rows[[2, 3, 4], 0, 0], [3, values[0].min(), values[0].max()])


def test_float_std_is_nan_where_the_sum_is_not_finite() -> None:
    acc = moments.new_accumulators(1, 2, is_float=True)
    acc[:, 0, 0] = np.inf, np.inf, 2, 1.0, np.inf
    acc[:, 0, 1] = 0.0, 0.0, 0, np.inf, -np.inf  # empty (all NaN)
    rows, flagged = moments.finish_floats(acc, np.zeros((1, 2)))
    assert rows[0, 0, 0] == np.inf and np.isnan(rows[5, 0, 0])
    assert rows[0, 0, 1] == 0 and rows[2, 0, 1] == 0 and np.isnan(rows[[1, 3, 4, 5], 0, 1]).all()
    assert not flagged.any()


def test_shift_values_are_finite() -> None:
    x = np.array([[1.0, np.nan, np.inf, 4.0]])
    np.testing.assert_array_equal(moments.shift_values(x, np.array([0, 1, 2, 3])), [[1, 0, 0, 4]])
