"""Finalize under failure: fenced by its lock, cancellable, counted, bounded in memory.

A finalizer is paused (SIGSTOP) while it holds the finalize lock, and the world moves on
without it: the lock expires and another finalizer takes over, or the job is cancelled.
When it resumes it must publish nothing. A finalize that fails every time fails the job
after FRAMESTATS_MAX_DELIVERIES, naming the reason.
"""

from __future__ import annotations

import io
import os
import signal
import time
import tracemalloc
import uuid
from dataclasses import replace

import numpy as np
import pytest

from framestats import chunkfile
from framestats import constants as C
from framestats.constants import MASK_NAME
from framestats.jobdir import JobFolder
from framestats.messages import JobSpec
from framestats.wire import publish_finalize
from producer.samples import detector_frames, write_stack
from tests.faults.util import FAULT_ENV, Job, submit, workers
from tests.support.reference import check_against_reference, read_output
from tests.support.wait import wait_until
from tests.support.workers import run_producer
from tests.unit.test_chunkfile import result_of, spec_of

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(300)]

N, H, W = 4000, 32, 32  # one region per pixel: a large output, a finalize of ~1 s


@pytest.fixture(scope="module")
def wide(fault_root: str) -> tuple[np.ndarray, str, str, np.ndarray]:
    folder = os.path.join(fault_root, "wide")
    os.makedirs(folder, exist_ok=True)
    frames = detector_frames(N, H, W, seed=13)
    data = write_stack(os.path.join(folder, "wide.h5"), frames, form="none", chunk_frames=1)
    labels = np.arange(1, H * W + 1, dtype=np.int32).reshape(H, W)
    mask = os.path.join(folder, "pixels.npy")
    np.save(mask, labels)
    return frames, data, mask, labels


def holder_pid(client, job_id: str) -> int | None:
    """The pid of the process holding the job's finalize lock (its token names it)."""
    token = client.get(C.job_key(job_id, C.JobPart.FINALIZE_LOCK))
    return int(token.split(":")[-2]) if token else None


def stop_the_finalizer(client, job: Job, timeout: float = 120) -> int:
    """SIGSTOP the process that takes the finalize lock, as soon as it has it."""
    deadline = time.monotonic() + timeout
    while (pid := holder_pid(client, job.job_id)) is None:
        assert time.monotonic() < deadline, job.data()
        assert not os.path.exists(job.output), "finalize finished before it could be paused"
        time.sleep(0.001)
    os.kill(pid, signal.SIGSTOP)
    return pid


def submit_wide(fault_redis, fault_client, fault_root, wide, queue: str) -> Job:
    _, data, mask, _ = wide
    output = os.path.join(fault_root, "wide", f"out-{uuid.uuid4().hex[:6]}.h5")
    return submit(
        fault_redis.url(), fault_client, data, mask, output, queue, "--stats", "sum,max",
        "--chunk-frames", "500", env={"DATA_ROOT": fault_root},
    )  # fmt: skip


def test_a_finalizer_paused_past_its_lock_never_publishes(
    fault_redis, fault_client, fault_root, wide, tmp_path
):
    """Finalizer X is paused holding the lock; the lock expires; finalizer Y takes it (and
    is paused in turn). X resumes: it must not rename its output into place, since the
    lock is Y's. Y resumes and publishes; the output is whole and right."""
    queue = "q-fence-" + uuid.uuid4().hex[:8]
    env = {**FAULT_ENV, "DATA_ROOT": fault_root}
    with workers(fault_redis.url(), str(tmp_path), queue, n=2, concurrency=1, **env) as pair:
        job = submit_wide(fault_redis, fault_client, fault_root, wide, queue)
        x = stop_the_finalizer(fault_client, job)
        try:
            wait_until(lambda: holder_pid(fault_client, job.job_id) is None, 30, "lock expiry")
            publish_finalize(
                fault_client, job.job_id, os.path.join(job.workdir, "manifest.json"), queue
            )
            y = stop_the_finalizer(fault_client, job)
            assert y != x
            os.kill(x, signal.SIGCONT)
            x_log = next(w for w in pair if str(x) in "".join(map(str, w.pids(fault_client))))
            wait_until(lambda: "output not published" in x_log.log(), 60, "X gives up")
            assert not os.path.exists(job.output), "X published without the lock"
            assert job.state() == "finalizing"
        finally:
            os.kill(x, signal.SIGCONT)
        os.kill(y, signal.SIGCONT)
        data = job.wait(timeout=120)
    assert data["state"] == "done", data
    frames, _, _, labels = wide
    check_against_reference(read_output(job.output), frames, labels, ("sum", "max"))
    assert not [n for n in os.listdir(os.path.dirname(job.output)) if ".tmp-" in n]


def test_cancel_during_finalize_publishes_nothing(
    fault_redis, fault_client, fault_root, wide, tmp_path
):
    queue = "q-cancel-" + uuid.uuid4().hex[:8]
    env = {**FAULT_ENV, "DATA_ROOT": fault_root}
    with workers(fault_redis.url(), str(tmp_path), queue, concurrency=1, **env):
        job = submit_wide(fault_redis, fault_client, fault_root, wide, queue)
        pid = stop_the_finalizer(fault_client, job)
        try:
            res = run_producer(fault_redis.url(), "cancel", job.job_id)
            assert res.returncode == 0, res.stderr
        finally:
            os.kill(pid, signal.SIGCONT)
        # It resumes and ends its attempt (at the publish gate, or before writing at all).
        wait_until(lambda: holder_pid(fault_client, job.job_id) is None, 60, "lock released")
    assert job.state() == "cancelled"
    assert not os.path.exists(job.output)
    assert not [n for n in os.listdir(os.path.dirname(job.output)) if ".tmp-" in n]


def test_a_finalize_that_keeps_failing_fails_the_job_naming_why(
    fault_redis, fault_client, fault_root, tmp_path
):
    """The mask copy turns unreadable after the chunks were computed (they read it once,
    at their first chunk): every finalize attempt fails; after FRAMESTATS_MAX_DELIVERIES
    the job fails naming the error, and --wait returns."""
    folder = os.path.join(fault_root, "broken-" + uuid.uuid4().hex[:6])
    os.makedirs(folder)
    data = write_stack(os.path.join(folder, "in.h5"), detector_frames(64, 16, 16), form="none",
                       chunk_frames=1)  # fmt: skip
    np.save(os.path.join(folder, "m.npy"), np.ones((16, 16), bool))
    output = os.path.join(folder, "out.h5")
    queue = "q-broken-" + uuid.uuid4().hex[:8]
    env = {**FAULT_ENV, "DATA_ROOT": fault_root, "FRAMESTATS_MAX_DELIVERIES": "3"}
    job = submit(fault_redis.url(), fault_client, data, os.path.join(folder, "m.npy"), output,
                 queue, "--chunk-frames", "8", env=env)  # fmt: skip
    with workers(fault_redis.url(), str(tmp_path), queue, concurrency=1, **env) as [w]:
        wait_until(lambda: len(job.committed()) >= 1, 60, "a first chunk")
        with open(os.path.join(job.workdir, "mask.npy"), "r+b") as fh:
            fh.write(b"garbage!")  # the cached copy keeps the chunks going
        res = run_producer(fault_redis.url(), "watch", job.job_id, timeout=120)
        assert res.returncode == 1, res.stderr + w.log()
    data = job.data()
    assert data["state"] == "failed"
    assert data["reason"].startswith("finalize: delivered 3 times without finishing"), data
    assert "ValueError" in data["reason"] or "magic" in data["reason"], data["reason"]
    assert not os.path.exists(output)


def committed_folder(spec: JobSpec, labels: np.ndarray) -> JobFolder:
    """A new job folder at ``spec.workdir`` holding the mask and every chunk's file, as
    the finalize finds it once every chunk is committed."""
    folder = JobFolder.create(spec.workdir)
    buf = io.BytesIO()
    np.save(buf, labels)
    folder.write_bytes(MASK_NAME, buf.getvalue())
    for i in range(spec.n_chunks):
        chunkfile.write_chunk(folder, spec, result_of(spec, i))
    return folder


@pytest.mark.parametrize(("budget", "ahead", "held"), [(None, 2, 6), (0, 0, 2.5)])
def test_finalize_memory_is_one_chunk_not_the_whole_output(
    tmp_path, monkeypatch, budget, ahead, held
):
    """Results go to the output as chunks are read: finalize's peak memory is a few
    chunks' results, not frames x regions x statistics; with results too large to read
    ahead (a budget of 0 bytes here), about one chunk's."""
    from worker import finalize

    if budget is not None:
        monkeypatch.setattr(finalize, "READ_AHEAD_BYTES", budget)

    bounds = tuple(range(0, 20_001, 500))  # 40 chunks of 500 frames
    path = str(tmp_path / "out.h5.parts")
    spec = replace(
        spec_of(regions=512, bounds=bounds), workdir=path, output=str(tmp_path / "out.h5"),
        stats=("sum", "max"), frame_shape=(16, 32),
    )  # fmt: skip
    with committed_folder(spec, np.arange(1, 513, dtype=np.int32).reshape(16, 32)) as folder:
        whole = spec.n_frames * spec.n_regions * len(spec.stats) * 8  # 164 MB
        chunk = whole // spec.n_chunks
        assert finalize.read_ahead(spec) == ahead
        tracemalloc.start()
        try:
            written = finalize.write(spec, folder, lambda i: pytest.fail(f"recomputed {i}"))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        folder.unlink(written.tmp)
    assert peak < held * chunk < whole / 5, (peak, chunk, whole)


@pytest.mark.parametrize("budget", [None, 0])
def test_chunk_files_damaged_after_commit_are_computed_again_in_place(
    tmp_path, monkeypatch, budget
):
    """Files read ahead of the one being written (or, over the budget, one at a time): a
    truncated file, a missing one and another job's are each computed again, in order,
    and every row of the output holds its own chunk's values bit for bit (none left
    unwritten)."""
    import h5py

    from worker import finalize

    if budget is not None:
        monkeypatch.setattr(finalize, "READ_AHEAD_BYTES", budget)

    bounds = (0, 9, 18, 20, 31, 40, 49, 60)
    path = str(tmp_path / "out.h5.parts")
    spec = replace(
        spec_of(regions=5, bounds=bounds), workdir=path, output=str(tmp_path / "out.h5"),
        frame_shape=(4, 5),
    )  # fmt: skip
    calls: list[int] = []

    def recompute(i: int) -> chunkfile.ChunkResult:
        calls.append(i)
        return result_of(spec, i)

    with committed_folder(spec, (np.arange(20, dtype=np.int32) % 6).reshape(4, 5)) as folder:
        chunks = os.path.join(path, "chunks")
        with open(os.path.join(chunks, chunkfile.chunk_name(1)), "r+b") as fh:
            fh.truncate(os.path.getsize(fh.name) - 8)
        os.unlink(os.path.join(chunks, chunkfile.chunk_name(2)))
        chunkfile.write_chunk(folder, replace(spec, job_id="b" * 16), result_of(spec, 5))
        assert finalize.read_ahead(spec) == (2 if budget is None else 0)
        written = finalize.write(spec, folder, recompute)
        with h5py.File(os.path.join(path, written.tmp), "r") as f:
            out = {s: f["results"][s][()] for s in spec.stats}
    assert calls == [1, 2, 5] and written.recomputed == (1, 2, 5)
    for i in range(spec.n_chunks):
        want = result_of(spec, i)
        for s in spec.stats:
            got = out[s][want.start : want.stop]
            assert got.tobytes() == want.stats[s].tobytes(), (i, s)


def test_a_failed_background_flush_fails_the_finalize_and_leaves_no_file(tmp_path, monkeypatch):
    """The output is flushed to disk in the background while it is written; a disk error
    there (EIO) fails the finalize, as the final fsync's would, and removes the partial
    file: the next delivery writes it again."""
    import errno

    from worker import finalize

    def broken_disk(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    path = str(tmp_path / "out.h5.parts")
    spec = replace(
        spec_of(regions=5), workdir=path, output=str(tmp_path / "out.h5"), frame_shape=(4, 5)
    )
    with committed_folder(spec, (np.arange(20, dtype=np.int32) % 6).reshape(4, 5)) as folder:
        monkeypatch.setattr(finalize.os, "fdatasync", broken_disk)
        with pytest.raises(OSError, match="Input/output error"):
            finalize.write(spec, folder, lambda i: pytest.fail(f"recomputed {i}"))
        monkeypatch.undo()
        assert sorted(os.listdir(path)) == ["chunks", MASK_NAME]


def test_writeback_runs_one_flush_at_a_time_and_never_holds_up_the_writer(tmp_path, monkeypatch):
    """kick() while a flush runs starts none (the running one is not waited for); the next
    kick after it ended starts the next; finish() waits for the last."""
    import threading

    from worker import finalize

    release, started = threading.Event(), []

    def slow_flush(fd: int) -> None:
        started.append(fd)
        assert release.wait(60)

    monkeypatch.setattr(finalize.os, "fdatasync", slow_flush)
    with open(tmp_path / "f", "wb") as fh, finalize.Writeback(fd := fh.fileno()) as writeback:
        try:
            for _ in range(5):  # each would wait 60 s if kick() waited for the flush
                writeback.kick()
            assert writeback.flushing and started == [fd]
        finally:
            release.set()
        wait_until(lambda: not writeback.flushing, 10, "the first flush's end")
        writeback.kick()
        writeback.finish()
        assert not writeback.flushing
    assert started == [fd, fd]
