"""Decode stages for ``python -m bench.gpu``: the device decoder alone, the reader, the host.

Each function takes one Bitshuffle-LZ4 file and returns GB/s of uncompressed frames:

- ``device_stage``: ``DeviceDecoder.decode`` of one staged batch (compressed bytes and
  block table already on the device: the batched LZ4 call, the unshuffle, the tails),
  beside a device-to-device copy of the same bytes; also nvCOMP's own bitshuffle mode
  where it runs, checked against the unshuffle kernel;
- ``device_reader``: ``FrameReader`` on the device path over the whole file (reads,
  checks, uploads, decode; no reduction), each block compared with the host decoder's;
- ``host_decode``: ``ChunkDecoder`` (the host path) over the file with 1 and N threads.

``dry`` runs the same code on the CPU with ``lz4_host.HostLZ4`` in nvCOMP's place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import h5py
import numpy as np

from bench.report import median_seconds
from framestats.inputs.reach import open_dataset

DSET = "/entry/data/data"


def _device(dry: bool) -> tuple[Any, Any, Callable[[], None]]:
    import torch

    if dry:
        from worker.read.lz4_host import HostLZ4

        return torch.device("cpu"), HostLZ4(), lambda: None
    from worker.read.device_decode import nvcomp_on

    lz4 = nvcomp_on("cuda")
    if lz4 is None:
        raise RuntimeError("nvCOMP 6 does not load here: install the gpu extra's wheels")
    return torch.device("cuda"), lz4, torch.cuda.synchronize


def device_stage(path: str, batch_bytes: int, reps: int, dry: bool) -> dict[str, Any]:
    """GB/s of the device decode of one batch, of a D2D copy, and of nvCOMP's bitshuffle."""
    import torch

    from worker.read.device_decode import DeviceDecoder
    from worker.read.unshuffle import default_strategy

    device, lz4, sync = _device(dry)
    strategy = "torch" if dry else default_strategy("cuda")
    out: dict[str, Any] = {"unshuffle": strategy}
    with h5py.File(path, "r") as f:
        dset = f[DSET]
        frames = max(1, min(int(dset.shape[0]), batch_bytes // dset[0].nbytes))
        dec = DeviceDecoder.for_dataset(dset, lz4, device, strategy, io_threads=4)
        assert dec is not None
        try:
            batch = dec.stage(0, frames, 0)
            sync()
            nbytes = frames * dset[0].nbytes
            out["decode_gbps"] = (
                nbytes / median_seconds(lambda: dec.decode(batch), reps, sync) / 1e9
            )
            dec.ready(0)
            want = dec.decode(batch).clone()
            dec.ready(0)
            src = torch.empty(nbytes, dtype=torch.uint8, device=device)
            dst = torch.empty_like(src)
            out["d2d_gbps"] = nbytes / median_seconds(lambda: dst.copy_(src), reps, sync) / 1e9
            host = np.empty((frames, *dset.shape[1:]), dtype=dset.dtype)
            dset.read_direct(host, source_sel=np.s_[0:frames])
            out["stage_identical"] = bool(np.array_equal(want.cpu().numpy(), host))
            out["blocks"] = batch.table.blocks
            out["batch_frames"] = frames
        finally:
            dec.close()
        if not dry:
            out.update(_nvcomp_bitshuffle(dset, frames, device, want, reps, sync))
    return out


def _nvcomp_bitshuffle(dset: h5py.Dataset, frames: int, device: Any, want: Any, reps: int, sync):  # type: ignore[no-untyped-def]
    """nvCOMP's own inverse bitshuffle (8 KiB sub-chunks) in place of the unshuffle kernel."""
    import torch

    from worker.read.device_decode import DeviceDecoder
    from worker.read.nvcomp import NvcompLZ4

    fused = NvcompLZ4.create(bitshuffle_itemsize=dset.dtype.itemsize)
    if fused is None:
        return {"nvcomp_bitshuffle": "not offered"}
    dec = DeviceDecoder.for_dataset(dset, fused, device, io_threads=4)
    assert dec is not None
    try:
        batch = dec.stage(0, frames, 0)
        sync()
        nbytes = frames * dset[0].nbytes
        seconds = median_seconds(lambda: dec.decode(batch), reps, sync)
        got = dec.decode(batch)
        try:
            dec.ready(0)
            same = bool(torch.equal(got.view(torch.uint8), want.view(torch.uint8)))
        except ValueError as exc:  # a block nvCOMP reported as not decoded
            return {"nvcomp_bitshuffle_gbps": nbytes / seconds / 1e9, "nvcomp_bitshuffle": str(exc)}
        return {
            "nvcomp_bitshuffle_gbps": nbytes / seconds / 1e9,
            "nvcomp_bitshuffle_identical": same,
        }
    except RuntimeError as exc:  # blocks over 8 KiB
        return {"nvcomp_bitshuffle": str(exc)}
    finally:
        dec.close()


def device_reader(path: str, spec: Any, threads: int, reps: int, dry: bool) -> dict[str, Any]:
    """GB/s of the reader's device path over the file, and whether every block matched."""
    from worker.read import FrameReader
    from worker.read.host_decode import ChunkDecoder
    from worker.read.unshuffle import default_strategy

    device, lz4, sync = _device(dry)
    strategy = "torch" if dry else default_strategy("cuda")
    reader = FrameReader(
        spec,
        decode_threads=threads,
        prefetch=True,
        device=str(device),
        gpu_decode="on",
        block_decoder=lz4,
        unshuffle=strategy,
    )
    n = spec.n_frames
    try:

        def once() -> None:
            for _pos, _block in reader.blocks(0, n):
                pass

        seconds = median_seconds(once, reps, sync)
        same = True
        with h5py.File(spec.segments[0].path, "r") as f:
            dset = open_dataset(f, DSET)  # opened as the reader opened it
            host = ChunkDecoder.for_dataset(dset, threads)
            assert host is not None
            try:
                for pos, block in reader.blocks(0, n):
                    want = np.empty(tuple(block.shape), dtype=dset.dtype)
                    host.read(pos, want)
                    same = same and bool(np.array_equal(block.cpu().numpy(), want))
            finally:
                host.close()
        assert reader.decode_path == "device"
    finally:
        reader.close()
    nbytes = n * int(np.prod(spec.frame_shape)) * np.dtype(spec.dtype).itemsize
    return {"reader_gbps": nbytes / seconds / 1e9, "bit_identical": same}


def host_decode(path: str, threads: int, reps: int, block_bytes: int = 32 << 20) -> float:
    """GB/s of the host decoder over the file in blocks of ``block_bytes`` (``threads``)."""
    from worker.read.host_decode import ChunkDecoder

    with h5py.File(path, "r") as f:
        dset = f[DSET]
        dec = ChunkDecoder.for_dataset(dset, threads)
        assert dec is not None
        per = int(dset.chunks[0])
        step = max(1, block_bytes // (dset[0].nbytes * per)) * per
        buf = np.empty((step, *dset.shape[1:]), dtype=dset.dtype)
        n = int(dset.shape[0])

        def once() -> None:
            for first in range(0, n, step):
                dec.read(first, buf[: min(step, n - first)])

        try:
            seconds = median_seconds(once, reps, lambda: None)
        finally:
            dec.close()
        return n * dset[0].nbytes / seconds / 1e9
