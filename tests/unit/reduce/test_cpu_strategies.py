"""The CPU engine's strategies, each on its own, and how one is chosen."""

from __future__ import annotations

import contextlib
import sys
from unittest import mock

import numpy as np
import pytest

from worker.reduce import STATS, MaskedReducer, cpu, cpu_runs, cpu_scatter, cpu_vector

from .oracle import assert_matches

# -- the choice ----------------------------------------------------------------------------


def test_choose_picks_the_fastest_after_an_untimed_warm_up() -> None:
    """A fake clock: 'slow' costs 5 ticks a call, 'fast' 2 except on its first (untimed)
    call, which costs 100 (compilation); both run interleaved, rounds times each."""
    now = [0.0]
    calls: list[str] = []

    def make(name: str, costs: list[float]):
        def run() -> None:
            calls.append(name)
            now[0] += costs.pop(0) if costs else costs_default[name]

        return run

    costs_default = {"slow": 5.0, "fast": 2.0}
    candidates = {"slow": make("slow", []), "fast": make("fast", [100.0])}
    assert cpu.choose(candidates, clock=lambda: now[0], rounds=3) == "fast"
    assert calls == ["slow", "fast"] + ["slow", "fast"] * 3


def test_the_choice_is_measured_once_per_mask_and_dtype(monkeypatch) -> None:
    """Measured on a reducer's first block of each dtype, kept for later blocks and for
    later reducers of the same mask and kind of statistics in the process."""
    monkeypatch.setattr(cpu, "_MEASURED", {})
    mask = np.random.default_rng(0).integers(0, 50, (32, 48))
    frames = np.random.default_rng(1).integers(0, 9, (20, 32, 48)).astype(np.uint16)
    with mock.patch.object(cpu, "choose", wraps=cpu.choose) as choose:
        reducer = MaskedReducer(mask, ("sum", "mean"), "cpu")
        for _ in range(3):
            assert_matches(reducer.reduce(frames), frames, mask, ("sum", "mean"))
        as_float = frames.astype(np.float32)
        assert_matches(reducer.reduce(as_float), as_float, mask, ("sum", "mean"))
        assert choose.call_count == 2
        again = MaskedReducer(mask, ("sum",), "cpu")  # same mask: no new measurement
        assert_matches(again.reduce(frames), frames, mask, ("sum",))
        assert choose.call_count == 2
        every = MaskedReducer(mask, STATS, "cpu")  # min/max/std: other loops, measured
        assert_matches(every.reduce(frames), frames, mask)
        assert choose.call_count == 3
    impl = reducer._impl
    assert isinstance(impl, cpu.CpuReducer)
    assert set(impl.chosen) == {np.dtype(np.uint16), np.dtype(np.float32)}
    assert set(impl.chosen.values()) <= set(cpu.STRATEGIES)


#: strategy -> the entry points it must call for (sums, all statistics) of uint16 frames.
_ENTRY_POINTS = {
    "runs": ((cpu_runs, "run_sums"), (cpu_runs, "run_moments")),
    "scatter": ((cpu_scatter, "scatter_sums"), (cpu_scatter, "scatter_moments")),
    "scatter-branchless": ((cpu_scatter, "scatter_sums"), (cpu_scatter, "scatter_moments")),
    "scatter-vector": ((cpu_scatter, "scatter_sums"), (cpu_vector, "scatter_moments")),
}


@pytest.mark.parametrize("strategy", cpu.STRATEGIES)
def test_a_forced_strategy_is_the_one_that_runs(strategy: str) -> None:
    mask = np.random.default_rng(2).integers(0, 4, (16, 16))
    frames = np.arange(8 * 256, dtype=np.uint16).reshape(8, 16, 16)
    everything = {entry for pair in _ENTRY_POINTS.values() for entry in pair}
    for stats, (module, name) in zip(
        (("sum", "count"), STATS), _ENTRY_POINTS[strategy], strict=True
    ):
        reducer = MaskedReducer(mask, stats, "cpu", strategy=strategy)
        with contextlib.ExitStack() as patches:
            for other, other_name in everything - {(module, name)}:
                patches.enter_context(
                    mock.patch.object(other, other_name, side_effect=AssertionError(other_name))
                )
            patches.enter_context(
                mock.patch.object(cpu, "choose", side_effect=AssertionError("measured"))
            )
            wanted = patches.enter_context(
                mock.patch.object(module, name, wraps=getattr(module, name))
            )
            assert_matches(reducer.reduce(frames), frames, mask, stats)
        assert wanted.call_count == 1
        if (module, name) == (cpu_scatter, "scatter_moments"):
            assert wanted.call_args.args[-1] is (strategy == "scatter-branchless")


def test_16_bit_moments_are_measured_against_the_vector_loop_only() -> None:
    impl = MaskedReducer(np.ones((4, 4), dtype=bool), STATS, "cpu")._impl
    assert isinstance(impl, cpu.CpuReducer)
    assert impl._candidates(np.dtype(np.uint16)) == ("runs", "scatter-vector")
    assert impl._candidates(np.dtype(np.int16)) == ("runs", "scatter-vector")
    assert "scatter-vector" not in impl._candidates(np.dtype(np.uint32))


# -- runs ----------------------------------------------------------------------------------


def test_plan_runs_splits_long_runs() -> None:
    labels = np.zeros((3, cpu_runs.CHUNK), dtype=np.int32)
    labels[0, 5:] = 2
    labels[1, :] = 2  # continues the run of row 0 across the row end
    labels[2, :7] = 1
    starts, lengths, region = cpu_runs.plan_runs(labels)
    assert lengths.max() <= cpu_runs.CHUNK
    assert lengths.sum() == np.count_nonzero(labels)
    np.testing.assert_array_equal(starts[:3], [5, 5 + cpu_runs.CHUNK, 2 * cpu_runs.CHUNK])
    np.testing.assert_array_equal(region, [1, 1, 0])


@pytest.mark.parametrize("dtype", ["u1", "u2", "u4", "i1", "i2", "i4", "f4", "f8"])
def test_runs_beyond_chunk_are_exact(dtype: str) -> None:
    """Runs longer than CHUNK are split, so the per-run accumulators cannot overflow."""
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
    for stats in (("sum", "mean", "count"), STATS):
        got = MaskedReducer(mask, stats, "cpu", strategy="runs").reduce(frames)
        assert_matches(got, frames, mask, stats)


# -- both: frame groups and padding ------------------------------------------------------------


@pytest.mark.parametrize("strategy", cpu.STRATEGIES)
@pytest.mark.parametrize("dtype", ["float32", "float64", "uint16", "int16", "uint32"])
@pytest.mark.parametrize("n_frames", [1, 3, 4, 7, 9, 13, 17])
def test_frame_groups(strategy: str, dtype: str, n_frames: int) -> None:
    """Frames go through the loops in groups (runs: 4, scatter: 8, the rest one by one or
    padded with zero frames): every frame, whatever its place in a group, gets its own
    sums, NaN counts, inf, min and max."""
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
        frames[n_frames - 1] = info.max  # the last (ungrouped or padded) frame
    for stats in (("sum", "mean", "count"), STATS):
        reducer = MaskedReducer(mask, stats, "cpu", strategy=strategy)
        got = reducer.reduce(frames)
        assert_matches(got, frames, mask, stats)
        for f in range(n_frames):  # each frame alone agrees
            alone = reducer.reduce(frames[f : f + 1])
            np.testing.assert_array_equal(alone["count"][0], got["count"][f])


def test_scatter_labels_are_uint16_below_65535_regions_else_uint32() -> None:
    assert cpu_scatter.label_table(np.array([0, 65534]), 65534).dtype == np.uint16
    assert cpu_scatter.label_table(np.array([0, 65535]), 65535).dtype == np.uint32
    labels = np.zeros((8, 8), dtype=np.int64)
    labels[1, 1], labels[2, 2], labels[3, 3] = 1, 70000, 65535
    frames = np.arange(3 * 64, dtype=np.uint16).reshape(3, 8, 8)
    for stats in (("sum",), STATS):
        got = MaskedReducer(labels, stats, "cpu", strategy="scatter").reduce(frames)
        assert_matches(got, frames, labels, stats)


@pytest.mark.parametrize("strategy", cpu.STRATEGIES)
def test_other_layouts_are_read_through_one_reused_native_copy(strategy: str) -> None:
    """Big-endian and strided frames are copied (byte-swapped) into one reused native
    buffer and take the same loops, so they give the very same results."""
    mask = np.arange(64).reshape(8, 8) % 3
    frames = np.arange(3 * 64, dtype=np.uint16).reshape(3, 8, 8)
    cases = [
        (("sum", "max"), frames.astype(">u2")),
        (("sum",), frames.astype(">f8")),
        (("mean", "std"), frames[:, ::-1]),
    ]
    for stats, data in cases:
        reducer = MaskedReducer(mask, stats, "cpu", strategy=strategy)
        impl = reducer._impl
        assert isinstance(impl, cpu.CpuReducer)
        got = reducer.reduce(data)
        buffer = impl._copy
        again = reducer.reduce(data)
        assert buffer is not None and impl._copy is buffer
        assert_matches(got, data, mask, stats)
        native = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("="))
        expected = reducer.reduce(native)
        for s in stats:
            np.testing.assert_array_equal(got[s], expected[s])
            np.testing.assert_array_equal(again[s], expected[s])


# -- scatter-vector ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["u2", "i2"])
@pytest.mark.parametrize("shape", [(61, 101), (64, 64), (1, 3)])
def test_vector_loop_over_tiles_tails_and_many_regions(dtype: str, shape: tuple[int, int]) -> None:
    """Frames of several transposed tiles and a tail of 1-3 pixels (61 x 101 = 6161
    pixels), of whole words (64 x 64), of fewer pixels than one word (1 x 3); regions
    empty, of one pixel, and beyond 65535 (uint32 labels); full-range values, extremes in
    every lane of the 8-frame vectors."""
    rng = np.random.default_rng(sum(shape))
    info = np.iinfo(dtype)
    for n_regions in (3, 70_000):
        mask = rng.integers(0, n_regions + 1, shape)
        mask.ravel()[0] = n_regions  # the largest label is used
        frames = rng.integers(info.min, info.max, (11, *shape), endpoint=True).astype(dtype)
        frames[2] = info.max
        frames[5] = info.min
        frames[7, ::2] = info.max
        frames[7, 1::2] = info.min
        for stats in (STATS, ("min", "max")):
            got = MaskedReducer(mask, stats, "cpu", strategy="scatter-vector").reduce(frames)
            assert_matches(got, frames, mask, stats)


def test_vector_strategy_forced_on_other_inputs_runs_the_scatter_loop() -> None:
    mask = np.arange(36).reshape(6, 6) % 4
    frames = np.arange(3 * 36, dtype=np.int32).reshape(3, 6, 6) - 50
    reducer = MaskedReducer(mask, STATS, "cpu", strategy="scatter-vector")
    with mock.patch.object(cpu_vector, "scatter_moments", side_effect=AssertionError):
        assert_matches(reducer.reduce(frames), frames, mask, STATS)


def test_vector_strategy_is_not_offered_on_a_big_endian_host(monkeypatch) -> None:
    """Its transpose reads 4 pixels per 64-bit word, pixel 0 in the low bits."""
    monkeypatch.setattr(sys, "byteorder", "big")
    impl = MaskedReducer(np.ones((4, 4), dtype=bool), STATS, "cpu")._impl
    assert isinstance(impl, cpu.CpuReducer)
    assert not cpu_vector.supports(np.dtype(np.uint16))
    assert "scatter-vector" not in impl._candidates(np.dtype(np.uint16))
