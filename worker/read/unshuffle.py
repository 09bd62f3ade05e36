"""Bit-unshuffling decoded Bitshuffle blocks on the device, into the frame buffer.

Bitshuffle stores a block of n elements (n a multiple of 8) of ``itemsize`` bytes as
``8 * itemsize`` rows of n bits: bit b of element i (b = 8 * byte + bit, little-endian
bytes, least significant bit first) is bit ``b * n + i`` of the block, bits numbered
least significant first within each byte (``bshuf_trans_bit_elem``: byte transpose,
then ``TRANS_BIT_8X8`` on 8-byte words). So row b is ``n / 8`` bytes long and byte
``m`` of it holds bit b of elements ``8m .. 8m + 7``.

Two implementations of that one indexing, chosen by name:

- ``"triton"``: one kernel launch for a whole batch; a program takes up to ``TILE``
  8-element groups of one block, reads its ``8 * itemsize`` rows (coalesced across the
  program's lanes) and writes whole elements;
- ``"torch"``: the same in torch tensor operations, block sizes one at a time (any
  device; the fallback where Triton is missing, and the CPU reference in tests).

Both read blocks from ``src`` and write the elements at the same byte offsets of
``dst``: the LZ4 stage lays its output out exactly as the frames are laid out.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch

#: Unshuffle strategies by name.
STRATEGIES = ("triton", "torch")
#: 8-element groups per Triton program (a 4096-element uint16 block is 512 groups).
TILE = 256
#: Bytes of blocks gathered per step of the torch path (bounds its index tensors).
TORCH_STEP_BYTES = 8 << 20

_SIGNED = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@functools.cache
def _kernel() -> Any:
    """The Triton kernel, or None where Triton cannot be imported."""
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None

    @triton.jit
    def unshuffle_blocks(
        src, dst, offsets, sizes, ELEM: tl.constexpr, TILE: tl.constexpr, ACC: tl.constexpr
    ):  # type: ignore[no-untyped-def]  # noqa: E501, N803
        block = tl.program_id(0)
        tile = tl.program_id(1)
        offset = tl.load(offsets + block)
        groups = tl.load(sizes + block) // (8 * ELEM)
        if tile * TILE < groups:
            g = tile * TILE + tl.arange(0, TILE)
            valid = g < groups
            e = tl.arange(0, 8)
            acc = tl.zeros((TILE, 8), dtype=ACC)
            for j in tl.static_range(ELEM):
                for k in tl.static_range(8):
                    row = tl.load(src + offset + (8 * j + k) * groups + g, mask=valid, other=0)
                    bits = (row.to(tl.int32)[:, None] >> e[None, :]) & 1
                    acc = acc | (bits.to(ACC) << (8 * j + k))
            out = dst + offset // ELEM + 8 * g[:, None] + e[None, :]
            tl.store(out, acc.to(dst.dtype.element_ty), mask=valid[:, None])

    return unshuffle_blocks


def triton_usable(device: torch.device) -> bool:
    """Whether the Triton kernel can run for tensors on ``device`` (CUDA, or Triton's
    interpreter with TRITON_INTERPRET=1)."""
    if _kernel() is None:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def default_strategy(device: str) -> str:
    """Triton's kernel where it runs on ``device``, else the torch indexing."""
    return "triton" if triton_usable(torch.device(device)) else "torch"


def unshuffle(
    src: torch.Tensor,
    dst: torch.Tensor,
    offsets: torch.Tensor,
    sizes: torch.Tensor,
    itemsize: int,
    strategy: str = "triton",
    host_sizes: Any = None,
) -> None:
    """Unshuffle the blocks at byte ``offsets`` (``sizes`` bytes each) of ``src`` into ``dst``.

    ``src`` and ``dst`` are flat uint8 tensors on one device; ``offsets`` and ``sizes``
    are int64 tensors on it too. ``host_sizes`` (a numpy copy of ``sizes``) spares
    the torch path a device-to-host copy.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown unshuffle strategy {strategy!r}; one of {STRATEGIES}")
    if offsets.numel() == 0:
        return
    if strategy == "triton":
        kernel = _kernel()
        if kernel is None:
            raise RuntimeError("Triton is not installed")
        largest = int(host_sizes.max()) if host_sizes is not None else int(sizes.max())
        groups = largest // (8 * itemsize)
        grid = (offsets.numel(), max(1, -(-groups // TILE)))
        acc = _tl_int(itemsize)
        whole = dst[: dst.numel() // itemsize * itemsize]  # a view needs whole elements
        kernel[grid](src, whole.view(_SIGNED[itemsize]), offsets, sizes, itemsize, TILE, acc)
        return
    _unshuffle_torch(src, dst, offsets, sizes, itemsize, host_sizes)


def _tl_int(itemsize: int) -> Any:
    import triton.language as tl

    return tl.int64 if itemsize == 8 else tl.int32


def _unshuffle_torch(
    src: torch.Tensor,
    dst: torch.Tensor,
    offsets: torch.Tensor,
    sizes: torch.Tensor,
    itemsize: int,
    host_sizes: Any,
) -> None:
    host = host_sizes if host_sizes is not None else sizes.cpu().numpy()
    device = src.device
    shifts = torch.arange(8, device=device, dtype=torch.uint8)
    weights = torch.arange(8, device=device, dtype=torch.int64)
    for nbytes in sorted({int(s) for s in host}):
        chosen = offsets[torch.as_tensor(host == nbytes, device=device)]
        groups = nbytes // (8 * itemsize)
        span = torch.arange(nbytes, device=device)
        step = max(1, TORCH_STEP_BYTES // nbytes)
        for lo in range(0, chosen.numel(), step):
            index = (chosen[lo : lo + step, None] + span[None, :]).reshape(-1)
            m = index.numel() // nbytes
            rows = src[index].view(m, 8 * itemsize, groups)
            # bits[m, row, group, e]: bit ``row`` of element 8 * group + e
            bits = (rows[..., None] >> shifts) & 1
            bits = bits.permute(0, 2, 3, 1).reshape(m, groups, 8, itemsize, 8)
            elements = (bits.to(torch.int64) << weights).sum(-1).to(torch.uint8)
            dst[index] = elements.reshape(-1)
