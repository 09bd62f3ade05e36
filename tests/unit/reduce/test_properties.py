"""Property tests: every engine and strategy against the numpy reference."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from worker.reduce import STATS, cuda_torch

from .oracle import assert_matches, problems, reducers


@settings(deadline=None, max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    problem=problems(),
    stats=st.sets(st.sampled_from(STATS), min_size=1).map(sorted),
    view=st.sampled_from(["as-is", "reversed", "transposed-copy"]),
)
def test_matches_numpy_reference(problem, stats, view) -> None:
    frames, mask = problem
    if view == "reversed":
        frames = frames[:, ::-1]
        mask = mask[::-1]
    elif view == "transposed-copy":  # a non-contiguous view with the same content
        frames = np.ascontiguousarray(frames.transpose(0, 2, 1)).transpose(0, 2, 1)
    for reducer in reducers(mask, stats):
        got = reducer.reduce(frames)
        assert set(got) == set(stats)
        assert_matches(got, frames, mask, stats)


@settings(deadline=None, max_examples=60)
@given(
    frames=hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 9), st.just(24), st.just(40)),
        elements=st.floats(-1e3, 1e3, width=32),
    ),
    labels=hnp.arrays(np.int32, (24, 40), elements=st.integers(0, 300)),
)
def test_many_regions(frames, labels) -> None:
    """K in the hundreds; on the device path the one-hot GEMM gives way to scatter_add."""
    original = cuda_torch.DENSE_ONEHOT_ENTRIES
    cuda_torch.DENSE_ONEHOT_ENTRIES = 1000
    try:
        for reducer in reducers(labels):
            assert_matches(reducer.reduce(frames), frames, labels)
    finally:
        cuda_torch.DENSE_ONEHOT_ENTRIES = original
