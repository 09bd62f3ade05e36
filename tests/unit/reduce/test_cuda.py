"""The CUDA engine: its torch path and host buffers on the CPU, the real thing on a GPU."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from unittest import mock

import numpy as np
import pytest
import torch

from worker.reduce import STATS, MaskedReducer, cuda_torch
from worker.reduce.cuda import DeviceReducer

from .oracle import FRAME_DTYPES, assert_matches, device_path_reducer, needs_cuda, quadrants

gpu = pytest.mark.gpu


def test_unsigned_conversion_fallback() -> None:
    """The route for devices without uint16/uint32 conversion kernels."""
    for dtype in (np.uint16, np.uint32):
        values = np.array([[0, 1, 2**15, np.iinfo(dtype).max]], dtype=dtype)
        got = cuda_torch.unsigned_via_signed(torch.from_numpy(values), torch.float64)
        np.testing.assert_array_equal(got.numpy(), values.astype(np.float64))


@pytest.mark.parametrize("dtype", FRAME_DTYPES)
def test_tensors_on_the_device_are_reduced_in_place(dtype: str) -> None:
    """Frames a caller already has on the reducer's device (device-side decompression)
    are taken as they are: no host buffer, no transfer; results as for numpy input."""
    rng = np.random.default_rng(3)
    mask = rng.integers(0, 5, (12, 20))
    frames = (rng.random((7, 12, 20)) * 200).astype(dtype)
    reducer = device_path_reducer(mask)
    impl = reducer._impl
    assert isinstance(impl, DeviceReducer)
    tensor = torch.from_numpy(frames)
    with (
        mock.patch.object(impl, "_upload", side_effect=AssertionError("staged")),
        mock.patch.object(impl, "_send", side_effect=AssertionError("sent")),
    ):
        got = reducer.reduce(tensor)
    assert_matches(got, frames, mask)
    expected = reducer.reduce(frames)
    for s in STATS:
        np.testing.assert_array_equal(got[s], expected[s])
    impl.group = 3  # a tensor of several device groups
    assert_matches(reducer.reduce(tensor), frames, mask)
    with pytest.raises(ValueError, match="shape"):
        reducer.reduce(tensor[:, :, :5])
    for bad in (torch.bfloat16, torch.float16, torch.int64, torch.bool):
        with pytest.raises(ValueError, match="dtype"):
            reducer.reduce(torch.zeros((2, 12, 20), dtype=bad))


# -- host buffers (zero-copy host path) ----------------------------------------------------


def test_host_buffer_is_none_for_the_cpu_reducer() -> None:
    reducer = MaskedReducer(np.ones((8, 8), dtype=bool), ("sum",), device="cpu")
    assert reducer.host_buffer(4, np.uint16) is None


@pytest.mark.parametrize("dtype", FRAME_DTYPES)
def test_host_buffer_views_are_sent_without_staging(dtype: str) -> None:
    rng = np.random.default_rng(5)
    mask = rng.integers(0, 4, size=(12, 20))
    reducer = device_path_reducer(mask)
    impl = reducer._impl
    assert isinstance(impl, DeviceReducer)
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
    with mock.patch.object(impl, "_upload", wraps=impl._upload) as upload:
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
    assert isinstance(impl, DeviceReducer)
    impl.group = 3  # a block of several device groups
    buf = reducer.host_buffer(10, np.uint16)
    assert buf is not None
    buf[...] = np.arange(buf.size, dtype=np.uint16).reshape(buf.shape)
    with mock.patch.object(impl, "_upload", side_effect=AssertionError("staged")):
        assert_matches(reducer.reduce(buf), buf.copy(), mask, ("sum", "max"))
    for dtype in (np.int64, np.float16, np.bool_):
        assert reducer.host_buffer(2, dtype) is None
    assert reducer.host_buffer(2, np.dtype(">u2")).dtype == np.dtype("=u2")


def test_triton_is_not_used_off_cuda() -> None:
    reducer = device_path_reducer(np.ones((8, 8), dtype=bool), ("sum",))
    impl = reducer._impl
    assert isinstance(impl, DeviceReducer)
    frames = np.arange(3 * 64, dtype=np.uint16).reshape(3, 8, 8)
    assert_matches(reducer.reduce(frames), frames, np.ones((8, 8), dtype=bool), ("sum",))
    assert impl.triton is False


# -- on a CUDA device ------------------------------------------------------------------------


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
    yield "float64 large mean", 1e6 + rng.normal(0, 1e-3, (3, size, size)), many
    yield "big-endian", high.astype(">u2"), rings
    yield "non-contiguous", high[:, ::-1], rings
    bins = (np.arange(size)[:, None] // 4) * (size // 4) + np.arange(size)[None, :] // 4 + 1
    yield "uint16 4x4 bins", rng.poisson(3.0, (9, size, size)).astype(np.uint16), bins


@gpu
@needs_cuda
@pytest.mark.parametrize("case", list(cuda_cases()), ids=lambda c: c[0])
def test_cuda_matches_reference(case) -> None:
    _, frames, mask = case
    for stats in (("sum", "mean", "count"), STATS):
        reducer = MaskedReducer(mask, stats, device="cuda")
        assert reducer.device.type == "cuda"
        assert not torch.backends.cuda.matmul.allow_tf32
        got = reducer.reduce(frames)
        assert_matches(got, frames, mask, stats)
        cpu = MaskedReducer(mask, stats, device="cpu").reduce(frames)
        for s in ("sum", "count", "min", "max"):
            if s in stats and (frames.dtype.kind in "iu" or s != "sum"):
                np.testing.assert_array_equal(got[s], cpu[s], err_msg=s)
        native = np.ascontiguousarray(frames, dtype=frames.dtype.newbyteorder("="))
        on_device = reducer.reduce(torch.from_numpy(native).to("cuda"))
        assert_matches(on_device, frames, mask, stats)


@gpu
@needs_cuda
def test_cuda_uses_the_triton_kernels() -> None:
    rng = np.random.default_rng(10)
    labels = rng.integers(0, 500, (128, 128))
    frames = rng.integers(0, 1000, (7, 128, 128)).astype(np.uint16)
    reducer = MaskedReducer(labels, STATS, device="cuda")
    assert_matches(reducer.reduce(frames), frames, labels)
    impl = reducer._impl
    assert isinstance(impl, DeviceReducer)
    assert ("regions", torch.uint16) in impl.checked


@gpu
@needs_cuda
def test_cuda_torch_path_and_reuse() -> None:
    rng = np.random.default_rng(10)
    labels = rng.integers(0, 500, (128, 128))
    reducer = MaskedReducer(labels, STATS, device="cuda")
    impl = reducer._impl
    assert isinstance(impl, DeviceReducer)
    impl.triton = False
    impl.group = 3
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
