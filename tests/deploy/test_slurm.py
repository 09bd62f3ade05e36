"""Slurm for real: a one-node cluster runs deploy/slurm/framestats-workers.sbatch.

munged, slurmctld and slurmd (Debian's ``munge`` and ``slurm-wlm``) run as root from a
temporary folder with their own ports, munge key and socket, and are stopped by pid. The
Redis is started with deploy/slurm/framestats-redis. The commands docs/deploy.md ("Slurm")
gives users are the ones run here: framestats-redis, sbatch, producer submit --wait,
scancel --signal=URG.

The tests skip, saying why, where such a cluster cannot start: no Slurm or munge programs
(``./run test`` installs them with apt), not root, or a daemon that does not come up; in
CI (``CI`` set) with the programs installed, a daemon that does not come up fails instead.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np
import pytest
import redis

from framestats import constants as C
from framestats import jobs
from producer.samples import detector_frames, ring_labels, write_stack
from tests.support.jobfiles import chunk_file, chunk_meta
from tests.support.reference import reference
from tests.support.slurm import (
    DEPLOY_DOC,
    ENDED,
    PROGRAMS,
    REDIS_HELPER,
    WARM,
    Cluster,
    Unavailable,
    alive,
    cluster_unavailable,
    make_cluster,
    start_daemons,
    stop_cluster,
    tail,
)
from tests.support.wait import wait_until
from tests.support.workers import free_port

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if sys.platform != "linux":
        pytest.skip("no Slurm cluster: needs Linux")
    missing = [p for p in PROGRAMS if shutil.which(p) is None]
    if missing:
        pytest.skip(
            f"no Slurm cluster: {', '.join(missing)} not installed "
            "(./run test installs slurm-wlm, munge and redis-server with apt)"
        )
    if os.geteuid() != 0:
        pytest.skip("no Slurm cluster: slurmd must run as root to start job steps")
    if shutil.which("worker", path=str(Path(sys.executable).parent)) is None:
        pytest.skip(f"no `worker` command beside {sys.executable}: pip install -e . first")
    folder = Path(tempfile.mkdtemp(prefix="framestats-slurm-"))
    running: Cluster | None = None
    try:
        running = make_cluster(folder)
        start_daemons(running)
    except BaseException as exc:
        if running is not None:
            stop_cluster(running)
        shutil.rmtree(folder, ignore_errors=True)
        if isinstance(exc, Unavailable):
            cluster_unavailable(str(exc))
        raise
    try:
        yield running
    finally:
        stop_cluster(running)
        shutil.rmtree(folder, ignore_errors=True)


@dataclass(frozen=True)
class ServiceRedis:
    """The Redis that deploy/slurm/framestats-redis started."""

    url: str
    password: str
    folder: Path


@pytest.fixture(scope="module")
def service_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceRedis]:
    """Redis as the guide starts it on a service node: framestats-redis DIR ADDRESS PORT."""
    folder = tmp_path_factory.mktemp("service-node") / "framestats-redis"
    res = subprocess.run(
        [str(REDIS_HELPER), str(folder), "127.0.0.1", str(free_port())],
        capture_output=True,
        text=True,
        timeout=30,
    )
    pid_file = folder / "redis.pid"
    try:
        assert res.returncode == 0, res.stdout + res.stderr + tail(folder / "redis.log")
        assert "export REDIS_URL=$(cat" in res.stdout, res.stdout
        yield ServiceRedis(
            url=(folder / "redis-url").read_text().strip(),
            password=(folder / "password").read_text().strip(),
            folder=folder,
        )
    finally:
        # Stopped the way the guide says: SIGTERM to the pid in its pid file.
        if pid_file.exists():
            pid = int(pid_file.read_text())
            os.kill(pid, signal.SIGTERM)
            wait_until(lambda: not alive(pid), 10, "redis-server gone")


# --------------------------------------------------------------------------- data and jobs


class Stack(NamedTuple):
    """An input stack with its mask, and the numpy reference of its statistics."""

    data: Path
    mask: Path
    frames: int
    expected: dict[str, np.ndarray]


def make_stack(
    folder: Path, name: str, n: int, h: int, w: int, form: str, file_chunk: int, stats: str
) -> Stack:
    frames = detector_frames(n, h, w, seed=n)
    labels = ring_labels(h, w, 4)
    data = write_stack(str(folder / f"{name}.h5"), frames, form=form, chunk_frames=file_chunk)
    np.save(folder / f"{name}-mask.npy", labels)
    expected = reference(frames, labels, tuple(stats.split(",")))
    return Stack(Path(data), folder / f"{name}-mask.npy", n, expected)


def assert_matches(output: Path, stack: Stack) -> None:
    with h5py.File(output, "r") as f:
        for stat, want in stack.expected.items():
            got = f["results"][stat][()]
            if stat in ("sum", "count", "min", "max"):
                np.testing.assert_array_equal(got, want, err_msg=stat)
            else:
                np.testing.assert_allclose(got, want, rtol=1e-12, err_msg=stat)


def node_log(submit_dir: Path, job_id: str) -> Path:
    (path,) = glob.glob(str(submit_dir / f"framestats-workers-{job_id}-*.log"))
    return Path(path)


def worker_ids(client: redis.Redis, job_id: str) -> list[str]:
    """Heartbeating pool processes of the Slurm job's workers (node slurm-JOBID@HOST)."""
    return [w for w in client.zrange(C.WORKERS_INDEX, 0, -1) if w.startswith(f"slurm-{job_id}@")]


def stop_mid_chunk(
    client: redis.Redis, cluster: Cluster, slurm_job: str, job_id: str, workdir: str
) -> tuple[int, int]:
    """SIGSTOP a pool process of the Slurm job while it computes a chunk of ``job_id``.

    "Mid-chunk" is checked after the stop: the chunk has begun (the heartbeat names it)
    and its result is not committed, so it cannot finish before SIGCONT. Returns
    (pid, chunk index).
    """
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for wid in worker_ids(client, slurm_job):
            current = client.hget(C.worker_key(wid), "current") or ""
            if not current.startswith(job_id + "#"):
                continue
            pid, index = int(wid.rsplit(":", 1)[1]), int(current.split("#", 1)[1])
            if not cluster.owns(pid):
                continue
            os.kill(pid, signal.SIGSTOP)
            if not os.path.exists(chunk_file(workdir, index)):
                return pid, index
            os.kill(pid, signal.SIGCONT)  # it had just finished: let it go, catch another
    raise TimeoutError(f"no chunk of job {job_id} seen running")


def job_hash(client: redis.Redis, job_id: str) -> dict[str, str]:
    return client.hgetall(C.job_key(job_id))


def committed(client: redis.Redis, job_id: str) -> set[int]:
    return {int(i) for i in client.smembers(C.job_key(job_id, C.JobPart.DONE))}


def deliveries(client: redis.Redis, job_id: str) -> dict[int, int]:
    return {
        int(k): int(v) for k, v in client.hgetall(C.job_key(job_id, C.JobPart.ATTEMPTS)).items()
    }


# --------------------------------------------------------------------------- tests


def test_guide_gives_the_commands_this_test_runs() -> None:
    """The Slurm guide's commands are the ones the tests below run."""
    text = DEPLOY_DOC.read_text()
    assert "### Slurm" in text
    section = text.split("### Slurm", 1)[1].split("\n### ", 1)[0]
    for command in (
        "deploy/slurm/framestats-redis ~/framestats-redis",
        "export REDIS_URL=$(cat ~/framestats-redis/redis-url)",
        "export DATA_ROOT=",
        "sbatch ",
        "deploy/slurm/framestats-workers.sbatch",
        "producer submit ",
        "--wait",
        "scancel --signal=URG ",
        "kill $(cat ~/framestats-redis/redis.pid)",
    ):
        assert command in section, command


def test_time_limit_stops_workers_warmly(
    cluster: Cluster, service_redis: ServiceRedis, tmp_path: Path
) -> None:
    # Given: workers submitted with a time limit of 2 minutes, so the script's
    # --signal=URG@120 is due from the start (this test runs first: slurmctld checks
    # time limits 30 s after it starts, then every 30 s, which gives the worker time)
    env = cluster.env(REDIS_URL=service_redis.url, DATA_ROOT=str(tmp_path))
    client = redis.Redis.from_url(service_redis.url, decode_responses=True)
    job = cluster.sbatch("--time=2", env=env, cwd=tmp_path)
    wait_until(
        lambda: worker_ids(client, job) or cluster.job_state(job) in ENDED, 60, "worker ready"
    )
    log = node_log(tmp_path, job)
    ready_first = "SIGURG" not in log.read_text() and bool(worker_ids(client, job))
    client.close()
    # When: slurmctld sends the signal at its next time-limit check
    state = cluster.wait_ended(job, 90)
    # Then: the job ends by itself, long before its limit, after a warm shutdown
    text = log.read_text()
    assert state == "COMPLETED", text[-3000:]
    assert f"SIGURG on {cluster.node}: warm shutdown" in text, text[-3000:]
    assert f"worker on {cluster.node} exited with 0" in text, text[-3000:]
    if ready_first:  # else the signal came while the worker was starting: it just exits
        assert WARM in text, text[-3000:]


def test_refuses_to_start_without_redis_url(cluster: Cluster, tmp_path: Path) -> None:
    # Given: a user who forgot to export REDIS_URL
    env = cluster.env()
    # When: they submit the workers
    job = cluster.sbatch(env=env, cwd=tmp_path)
    # Then: the job ends at once, failed, with one line saying what to do
    assert cluster.wait_ended(job, 60) == "FAILED"
    out = (tmp_path / f"framestats-workers-{job}.out").read_text()
    assert out.strip() == (
        "framestats-workers: REDIS_URL is not set; "
        "export REDIS_URL=redis://:PASSWORD@HOST:6379/0 before sbatch"
    )


def test_workers_compute_jobs_and_stop_warmly(
    cluster: Cluster, service_redis: ServiceRedis, tmp_path: Path
) -> None:
    # Given: shared storage with two stacks (the second in a dozen gzip chunks, one of
    # which will be held in the middle), a Redis started by framestats-redis, and the
    # folder the user submits from
    share, submit_dir = tmp_path / "share", tmp_path / "submit"
    share.mkdir()
    submit_dir.mkdir()
    small = make_stack(share, "small", 64, 48, 40, "bslz4", 4, "sum,mean,max")
    big = make_stack(share, "big", 384, 256, 256, "gzip", 8, "sum,mean,std")
    env = cluster.env(REDIS_URL=service_redis.url, DATA_ROOT=str(share))
    client = redis.Redis.from_url(service_redis.url, decode_responses=True)

    # When: the workers are submitted as the guide says
    first = cluster.sbatch(env=env, cwd=submit_dir)
    # Then: one worker on the node, one process per CPU Slurm allocated, beats in Redis
    wait_until(lambda: len(worker_ids(client, first)) == cluster.cpus, 60, "heartbeats")

    # When: a job is submitted and followed to the end
    res = subprocess.run(
        ["producer", "submit", str(small.data), "--mask", str(small.mask),
         "--stats", "sum,mean,max", "--chunk-frames", "8", "--wait"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    # Then: it succeeds, with the numpy reference's numbers
    assert res.returncode == 0, res.stdout + res.stderr + tail(node_log(submit_dir, first))
    assert_matches(share / "small.reduced.h5", small)

    # When: the workers are stopped with scancel while a pool process is in the middle of
    # a chunk (held there by SIGSTOP, the other pool processes too, until the worker's
    # main process has begun its shutdown)
    res = subprocess.run(
        ["producer", "submit", str(big.data), "--mask", str(big.mask),
         "--stats", "sum,mean,std", "--chunk-frames", "32"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    job_id = res.stdout.split()[0]
    workdir = str(share / "big.reduced.h5") + C.WORKDIR_SUFFIX
    held_pid, held_chunk = stop_mid_chunk(client, cluster, first, job_id, workdir)
    held = [held_pid]
    for wid in worker_ids(client, first):
        pid = int(wid.rsplit(":", 1)[1])
        if pid != held_pid and cluster.owns(pid):
            os.kill(pid, signal.SIGSTOP)
            held.append(pid)
    cluster.run("scancel", "--signal=URG", first, env=env)
    log = node_log(submit_dir, first)
    wait_until(lambda: WARM in log.read_text(), 30, "warm shutdown begun")
    for pid in held:
        os.kill(pid, signal.SIGCONT)

    # Then: the job ends by itself once the running chunks are committed
    assert cluster.wait_ended(first, 60) == "COMPLETED", tail(log)
    text = log.read_text()
    assert f"SIGURG on {cluster.node}: warm shutdown" in text, text[-3000:]
    assert f"worker on {cluster.node} exited with 0" in text, text[-3000:]
    assert "WorkerLostError" not in text and "signal 15" not in text, text[-3000:]
    # the held chunk was finished by that worker, and every chunk begun was committed once
    assert held_chunk in committed(client, job_id)
    meta = chunk_meta(workdir, held_chunk)
    assert meta["worker"].startswith(f"slurm-{first}@"), meta
    begun = deliveries(client, job_id)
    assert set(begun) == committed(client, job_id), begun
    assert set(begun.values()) == {1}, begun
    # and the chunks not begun (if the other processes had not done them all) wait in
    # Redis for the next workers
    assert job_hash(client, job_id)["state"] in ("running", "finalizing")

    # When: workers are submitted again (a later allocation)
    second = cluster.sbatch(env=env, cwd=submit_dir)
    wait_until(lambda: job_hash(client, job_id).get("state") in ("done", "failed"), 90, "job done")
    # Then: the job completes: no chunk lost, none counted twice, the reference's numbers
    data = job_hash(client, job_id)
    assert data["state"] == "done", data
    assert int(data["frames_done"]) == big.frames
    # (the attempts hash is dropped when a job ends; chunks delivered twice would be noted)
    assert jobs.redelivered(data) == {} and "chunks_redelivered" not in data, data
    shares = client.hgetall(C.job_key(job_id, C.JobPart.WORKERS))
    assert sum(int(v) for v in shares.values()) == big.frames, shares
    assert_matches(share / "big.reduced.h5", big)
    cluster.run("scancel", "--signal=URG", second, env=env)
    assert cluster.wait_ended(second, 60) == "COMPLETED", tail(node_log(submit_dir, second))

    # The password never reaches a log: the job's own output shows the URL masked.
    for path in submit_dir.iterdir():
        assert service_redis.password not in path.read_text(errors="replace"), path
    out = (submit_dir / f"framestats-workers-{first}.out").read_text()
    assert "Redis redis://:***@127.0.0.1:" in out, out
    client.close()
