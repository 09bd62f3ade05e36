"""The Triton kernels, run by Triton's interpreter on the CPU (skipped without triton)."""

from __future__ import annotations

import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings

from tests.support.triton_lowering import lower
from worker.reduce import STATS, triton_regions
from worker.reduce.cuda import DeviceReducer

from .oracle import (
    FRAME_DTYPES,
    assert_matches,
    device_path_reducer,
    has_triton,
    needs_triton_interpreter,
    problems,
)


def test_nothing_imports_triton_at_import_time() -> None:
    pytest.importorskip("celery")  # worker.tasks needs it; GPU test machines may lack it
    code = (
        "import sys, worker.reduce, worker.reduce.cuda, worker.reduce.triton_sums, "
        "worker.reduce.triton_regions, worker.context, worker.tasks; "
        "assert 'triton' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("block", [4, 8, 512])
@pytest.mark.parametrize("bins", [2, 16])
def test_plan_tiles(block: int, bins: int) -> None:
    """Tiles of the region-sorted masked pixels: at most ``block`` entries and ``bins``
    regions each, covering every masked pixel once, with each bin's region."""
    rng = np.random.default_rng(block + bins)
    flat = rng.integers(0, 40, 2000)
    flat[100:700] = 7  # a region larger than a tile
    order, local, start, length, regions = triton_regions.plan_tiles(flat, block, bins)
    masked = np.flatnonzero(flat)
    np.testing.assert_array_equal(np.sort(order), masked)
    assert (length <= block).all() and length.sum() == masked.size
    np.testing.assert_array_equal(start, np.concatenate(([0], np.cumsum(length)[:-1])))
    tile = np.repeat(np.arange(start.size), length)
    assert local.min() >= 0 and local.max() < bins
    np.testing.assert_array_equal(regions[tile, local], flat[order] - 1)
    assert (np.diff(flat[order]) >= 0).all()


def interpreted(monkeypatch, mask: np.ndarray, stats=STATS):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    reducer = device_path_reducer(mask, stats)
    impl = reducer._impl
    assert isinstance(impl, DeviceReducer)
    impl.triton = True  # as on CUDA once Triton is found
    return reducer, impl


@needs_triton_interpreter
@pytest.mark.parametrize("dtype", ["u1", "i1", "u2", "i2", "u4", "i4"])
@pytest.mark.parametrize("n_regions", [1, 3, 16])
def test_sums_kernel_matches_numpy(monkeypatch, dtype: str, n_regions: int) -> None:
    rng = np.random.default_rng(n_regions)
    mask = rng.integers(0, n_regions + 1, size=(33, 150))  # 4950 px: two pixel blocks
    if n_regions == 1:
        mask = mask.astype(bool)
    stats = ("sum", "mean", "count")
    reducer, impl = interpreted(monkeypatch, mask, stats)
    info = np.iinfo(np.dtype(dtype))
    frames = rng.integers(info.min, info.max, (11, 33, 150), endpoint=True).astype(dtype)
    frames[0] = info.max  # beyond 2**24 per region: exact only in integers
    frames[1] = info.min
    from worker.reduce import triton_sums

    with mock.patch.object(triton_sums, "region_sums", wraps=triton_sums.region_sums) as calls:
        assert_matches(reducer.reduce(frames), frames, mask, stats)
    assert calls.call_count == 2  # self-check, then the block
    assert impl.checked == {("sums", torch.from_numpy(frames[:0]).dtype)}


@needs_triton_interpreter
@pytest.mark.parametrize("dtype", FRAME_DTYPES)
def test_regions_kernel_matches_numpy(monkeypatch, dtype: str) -> None:
    """All statistics, many regions (tiles shared by small regions, large regions over
    several tiles), NaN/inf, full-range integers, in one kernel."""
    rng = np.random.default_rng(2)
    mask = rng.integers(0, 60, size=(24, 60))
    mask[2:12] = 61  # 600 px: more than one tile
    mask[20] = 0
    if np.dtype(dtype).kind == "f":
        frames = (rng.normal(1e3, 5.0, (6, 24, 60))).astype(dtype)
        frames[0, 3, :9] = np.nan
        frames[1, mask == 5] = np.nan
        frames[2, 4, 4] = np.inf
        frames[3, 4, 4], frames[3, 5, 5] = np.inf, -np.inf
        frames[4, 20] = np.nan  # unmasked NaN is ignored
    else:
        info = np.iinfo(dtype)
        frames = rng.integers(info.min, info.max, (6, 24, 60), endpoint=True).astype(dtype)
        frames[0] = info.max
    for stats in (("sum", "mean", "count"), STATS):
        reducer, impl = interpreted(monkeypatch, mask, stats)
        got = reducer.reduce(frames)
        assert_matches(got, frames, mask, stats)
        assert ("regions", torch.from_numpy(frames[:0]).dtype) in impl.checked


@needs_triton_interpreter
@settings(deadline=None, max_examples=40, suppress_health_check=list(HealthCheck))
@given(problem=problems())
def test_regions_kernel_property(monkeypatch, problem) -> None:
    frames, mask = problem
    reducer, _ = interpreted(monkeypatch, mask)
    assert_matches(reducer.reduce(frames), frames, mask)


@needs_triton_interpreter
def test_self_check_failure_falls_back(monkeypatch) -> None:
    mask = np.ones((16, 16), dtype=bool)
    reducer, impl = interpreted(monkeypatch, mask, ("sum",))
    frames = np.full((4, 16, 16), 3, dtype=np.uint16)
    from worker.reduce import triton_sums

    wrong = mock.patch.object(
        triton_sums, "region_sums", side_effect=lambda r, lab, k: r[:, :k].long()
    )
    with wrong:
        assert_matches(reducer.reduce(frames), frames, mask, ("sum",))
        assert_matches(reducer.reduce(frames), frames, mask, ("sum",))
    assert ("sums", torch.uint16) in impl.failed


@needs_triton_interpreter
def test_sums_kernel_leaves_other_frames_to_the_regions_kernel(monkeypatch) -> None:
    """Float frames and more regions than the sums kernel handles take triton_regions."""
    from worker.reduce import triton_sums

    rng = np.random.default_rng(3)
    for mask, dtype in (
        (rng.integers(0, triton_sums.MAX_REGIONS + 2, (20, 20)), np.uint16),
        (np.ones((20, 20), dtype=bool), np.float32),
    ):
        reducer, impl = interpreted(monkeypatch, mask, ("sum",))
        frames = (rng.random((3, 20, 20)) * 100).astype(dtype)
        with mock.patch.object(triton_sums, "region_sums", side_effect=AssertionError("sums")):
            assert_matches(reducer.reduce(frames), frames, mask, ("sum",))
        assert impl.checked == {("regions", torch.from_numpy(frames[:0]).dtype)}


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or not has_triton(), reason="needs CUDA and triton"
)
@pytest.mark.parametrize("dtype", ["u1", "i1", "u2", "i2", "u4", "i4"])
def test_sums_kernel_on_cuda_is_used_and_exact(dtype: str) -> None:
    from worker.reduce import MaskedReducer

    rng = np.random.default_rng(7)
    mask = rng.integers(0, 17, size=(96, 130))  # 16 regions, several pixel blocks
    info = np.iinfo(np.dtype(dtype))
    frames = rng.integers(info.min, info.max, (37, 96, 130), endpoint=True).astype(dtype)
    frames[0] = info.max  # region sums far beyond 2**24: exact only in integers
    frames[1] = info.min
    reducer = MaskedReducer(mask, ("sum", "mean", "count"), device="cuda")
    assert_matches(reducer.reduce(frames), frames, mask, ("sum", "mean", "count"))
    impl = reducer._impl
    assert isinstance(impl, DeviceReducer)
    assert ("sums", torch.from_numpy(frames[:0]).dtype) in impl.checked


#: Pointer and scalar arguments of the moments kernel (frames of ``x_ptr``'s type).
_MOMENTS_ARGS = {
    "pix_ptr": "*i32",
    "local_ptr": "*i32",
    "tiles_ptr": "*i32",
    "count_ptr": "*i64",
    "stats_ptr": "*fp64",
    "n_frames": "i32",
    "n_pixels": "i32",
    "n_slots": "i32",
}
#: Their tile shape.
_MOMENTS_TILES = {"BLOCK": 512, "BINS": 16, "FRAMES": 4}


@pytest.mark.skipif(not has_triton(), reason="needs triton")
@pytest.mark.parametrize(
    ("name", "args", "constants"),
    [
        (
            "region_sums",
            {
                "x_ptr": "*i16",
                "lab_ptr": "*i32",
                "out_ptr": "*i64",
                "n_frames": "i32",
                "n_pixels": "i32",
            },
            {"K": 16, "KEEP": 0xFFFF, "WIDE": False, "BLOCK": 4096, "FRAMES": 8},
        ),
        (
            "region_moments",
            {"x_ptr": "*i16", "sum_ptr": "*i64", **_MOMENTS_ARGS},
            {"KEEP": 0xFFFF, "IS_FLOAT": False, "MOMENTS": True, **_MOMENTS_TILES},
        ),
        (
            "region_moments",
            {"x_ptr": "*fp32", "sum_ptr": "*fp64", **_MOMENTS_ARGS},
            {"KEEP": 0, "IS_FLOAT": True, "MOMENTS": True, **_MOMENTS_TILES},
        ),
        (
            "region_moments",
            {"x_ptr": "*fp32", "sum_ptr": "*fp64", **_MOMENTS_ARGS},
            {"KEEP": 0, "IS_FLOAT": True, "MOMENTS": False, **_MOMENTS_TILES},
        ),
    ],
)
def test_kernels_build_for_a_cuda_device(name, args, constants) -> None:
    """The compiled path (not the interpreter) builds down to a CUDA binary."""
    assert "cubin" in lower("worker.reduce.triton_kernels", f"kernels().{name}", args, constants)
