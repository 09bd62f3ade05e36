"""Bit-unshuffle on tensors undoes bitshuffle's own ``bshuf_trans_bit_elem``, bit for bit."""

from __future__ import annotations

import ctypes
import importlib.util
import os

import hdf5plugin
import numpy as np
import pytest
import torch

from tests.support.triton_lowering import lower
from worker.read import unshuffle

HAS_TRITON = importlib.util.find_spec("triton") is not None
CUDA = torch.cuda.is_available()


def bitshuffled(block: np.ndarray) -> np.ndarray:
    """``block`` bit-shuffled by hdf5plugin's bitshuffle library (the reference)."""
    lib = ctypes.CDLL(os.path.join(hdf5plugin.PLUGIN_PATH, "libh5bshuf.so"))
    fn = lib.bshuf_trans_bit_elem
    fn.restype = ctypes.c_int64
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    block = np.ascontiguousarray(block)
    out = np.empty(block.nbytes, dtype=np.uint8)
    assert fn(block.ctypes.data, out.ctypes.data, block.size, block.itemsize) == block.nbytes
    return out


def blocks_of(dtype: str, sizes: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray, list]:
    """Random blocks of ``sizes`` elements laid end to end: (shuffled bytes, offsets, blocks)."""
    rng = np.random.default_rng(seed)
    info = np.dtype(dtype)
    blocks = [
        rng.integers(0, 256, size=n * info.itemsize, dtype=np.uint8).view(info) for n in sizes
    ]
    offsets = np.cumsum([0] + [b.nbytes for b in blocks[:-1]])
    return np.concatenate([bitshuffled(b) for b in blocks]), offsets.astype(np.int64), blocks


def run(strategy: str, dtype: str, sizes: list[int], device: str = "cpu") -> None:
    shuffled, offsets, blocks = blocks_of(dtype, sizes)
    itemsize = np.dtype(dtype).itemsize
    src = torch.from_numpy(shuffled).to(device)
    dst = torch.zeros_like(src)
    nbytes = np.array([b.nbytes for b in blocks], dtype=np.int64)
    unshuffle.unshuffle(
        src,
        dst,
        torch.from_numpy(offsets).to(device),
        torch.from_numpy(nbytes).to(device),
        itemsize,
        strategy,
        host_sizes=nbytes,
    )
    want = np.concatenate([b.view(np.uint8) for b in blocks])
    np.testing.assert_array_equal(dst.cpu().numpy(), want)


#: Full default blocks, a short last block, single groups of 8, and blocks split over
#: several Triton programs.
CASES = [
    ("uint8", [8192, 8192, 1000 // 8 * 8]),
    ("uint16", [4096, 4096, 1512]),
    ("uint32", [2048, 8, 2040]),
    ("float32", [2048, 1024]),
    ("int16", [4096, 16]),
    ("float64", [1024, 1016]),
]


@pytest.mark.parametrize(("dtype", "sizes"), CASES)
def test_torch_strategy_inverts_bitshuffle(dtype, sizes):
    run("torch", dtype, sizes)


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
@pytest.mark.parametrize(("dtype", "sizes"), [("uint16", [4096, 520]), ("float32", [64, 8])])
def test_triton_kernel_in_the_interpreter(monkeypatch, dtype, sizes):
    """The kernel's indexing, run by Triton's interpreter on the CPU."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    unshuffle._kernel.cache_clear()
    try:
        assert unshuffle.triton_usable(torch.device("cpu"))
        run("triton", dtype, sizes)
    finally:
        unshuffle._kernel.cache_clear()


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="unknown unshuffle strategy"):
        run("fast", "uint16", [8])


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("strategy", ["triton", "torch"])
@pytest.mark.parametrize(("dtype", "sizes"), CASES)
def test_strategies_on_the_gpu(strategy, dtype, sizes):
    if strategy == "triton" and not HAS_TRITON:
        pytest.skip("Triton is not installed")
    run(strategy, dtype, sizes, device="cuda")


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
@pytest.mark.parametrize("itemsize", [1, 2, 4, 8])
def test_kernel_builds_for_a_cuda_device(itemsize: int) -> None:
    """The compiled path (not the interpreter) builds down to a CUDA binary."""
    signed = {1: "*i8", 2: "*i16", 4: "*i32", 8: "*i64"}[itemsize]
    args = {"src": "*u8", "dst": signed, "offsets": "*i64", "sizes": "*i64"}
    acc = "tl.int64" if itemsize == 8 else "tl.int32"  # as unshuffle._tl_int
    constants = {"ELEM": itemsize, "TILE": unshuffle.TILE, "ACC": acc}
    assert "cubin" in lower("worker.read.unshuffle", "_kernel()", args, constants)
