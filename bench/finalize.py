"""The finalize step alone: committed chunk files of a job in, its output file out.

Run as ``python -m bench.finalize [--ks 1000,10000] [--reps 5] [--data FOLDER]``.

For each K, a job folder as the finalize finds it once every chunk is committed: the
mask (one pixel per region) and manifest as ``producer submit`` writes them, and
``--chunks`` chunk files of ``--frames`` frames each with all six statistics of random
float64 values, written and fsynced by ``chunkfile.write_chunk`` as a worker writes them. Then ``worker.finalize.write``
(read and check every chunk file, write the output under its temporary name, fsync) is
timed ``--reps`` times; each output is checked against the chunks' values before it is
removed. No Redis, no worker: what a finalize costs on this disk, apart from the lock,
the publish and the folder's removal.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import h5py
import numpy as np

from framestats.chunkfile import ChunkResult, write_chunk
from framestats.jobdir import JobFolder
from framestats.messages import JobSpec, Segment
from framestats.submission import write_workdir

STATS = ("sum", "mean", "count", "min", "max", "std")


def job(folder: str, k: int, chunks: int, frames: int) -> JobSpec:
    """A job of ``chunks`` x ``frames`` frames and ``k`` regions, its folder in ``folder``."""
    n = chunks * frames
    return JobSpec(
        job_id="f" * 16, segments=(Segment("/input.h5", "/data", 0, n),), frame_shape=(k, 1),
        dtype="<u2", n_frames=n, n_regions=k, stats=STATS,
        boundaries=tuple(range(0, n + 1, frames)), output=os.path.join(folder, "out.h5"),
        workdir=os.path.join(folder, "out.h5.parts"), mask_path="/mask.npy", mask_sha256="0",
        queue="bench", chunk_frames=frames, created=time.time(), version="bench",
    )  # fmt: skip


def committed(spec: JobSpec) -> tuple[JobFolder, list[ChunkResult]]:
    """The job's folder as ``producer submit`` makes it, and every chunk's file; the
    chunks written."""
    write_workdir(spec, np.arange(1, spec.n_regions + 1).reshape(spec.frame_shape))
    folder = JobFolder.open(spec.workdir)
    results = []
    for i in range(spec.n_chunks):
        start, stop = spec.boundaries[i], spec.boundaries[i + 1]
        rng = np.random.default_rng(i)
        values = {s: rng.random((stop - start, spec.n_regions)) for s in STATS}
        results.append(ChunkResult(i, start, stop, values, {"worker": "bench", "device": "cpu"}))
        write_chunk(folder, spec, results[-1])
    return folder, results


def check(path: str, results: list[ChunkResult]) -> None:
    """Every row of the output holds its chunk's values, bit for bit."""
    with h5py.File(path, "r") as f:
        for r in results:
            for s in STATS:
                got = f["results"][s][r.start : r.stop]
                if got.tobytes() != r.stats[s].tobytes():
                    raise AssertionError(f"chunk {r.index}, {s}: the output differs")


def main(argv: list[str] | None = None) -> int:
    from worker import finalize

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ks", default="1000,10000", help="region counts, comma-separated")
    ap.add_argument("--chunks", type=int, default=4, help="chunk files per job")
    ap.add_argument("--frames", type=int, default=512, help="frames per chunk")
    ap.add_argument("--reps", type=int, default=5, help="repetitions (median reported)")
    ap.add_argument("--data", help="folder for the job folders (default: a temporary one)")
    args = ap.parse_args(argv)

    print(f"# python -m bench.finalize --ks {args.ks} --chunks {args.chunks} "
          f"--frames {args.frames} --reps {args.reps}")  # fmt: skip
    print("\n| K | results (MB) | finalize.write, median (s) | GB/s of results | each run (s) |")
    print("|---|---|---|---|---|")
    for k in (int(x) for x in args.ks.split(",")):
        root = tempfile.mkdtemp(prefix="bench-finalize-", dir=args.data)
        try:
            spec = job(root, k, args.chunks, args.frames)
            folder, results = committed(spec)
            seconds = []
            with folder:
                for _ in range(args.reps):
                    t = time.perf_counter()
                    written = finalize.write(spec, folder, results.__getitem__)
                    seconds.append(time.perf_counter() - t)
                    check(os.path.join(spec.workdir, written.tmp), results)
                    if written.recomputed:
                        raise AssertionError(f"chunks computed again: {written.recomputed}")
                    folder.unlink(written.tmp)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        size = spec.n_frames * k * len(STATS) * 8
        median = statistics.median(seconds)
        runs = ", ".join(f"{s:.3f}" for s in seconds)
        print(f"| {k:,} | {size / 1e6:.0f} | {median:.3f} | {size / median / 1e9:.2f} | {runs} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
