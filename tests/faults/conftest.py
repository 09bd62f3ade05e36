"""Fault-injection fixtures: a private redis-server on a free port, one job's input, and the
fault-free output of that job, computed once per session and compared bit for bit.

The private server runs with ``--save '' --appendonly no``, so a restart is a Redis that
lost everything. DATA_ROOT of every worker these tests start is the session's temporary
folder, as docker-compose confines workers to /data.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import h5py
import numpy as np
import pytest
import redis

from tests.faults.private_redis import PrivateRedis
from tests.faults.util import (
    FAULT_ENV,
    FILE_CHUNK,
    HEIGHT,
    N_FRAMES,
    N_REGIONS,
    WIDTH,
    Job,
    Output,
    job_args,
    read_output,
    submit,
)
from tests.support.workers import run_producer, start_worker


@dataclass(frozen=True)
class FaultData:
    root: str
    data: str
    mask: str

    def output(self, name: str) -> str:
        folder = os.path.join(self.root, "out-" + uuid.uuid4().hex[:8])
        os.makedirs(folder)
        return os.path.join(folder, name)


def write_frames(path: str, n: int, h: int, w: int, seed: int = 7) -> None:
    """Detector-like uint16 frames (low counts, a few bright pixels), gzip in 8-frame chunks."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        dset = f.create_dataset(
            "/entry/data/data",
            shape=(n, h, w),
            dtype="uint16",
            chunks=(FILE_CHUNK, h, w),
            compression="gzip",
            compression_opts=1,
            shuffle=True,
        )
        step = 256
        for i in range(0, n, step):
            m = min(step, n - i)
            block = rng.integers(0, 6, size=(m, h, w), dtype=np.uint16)
            hot = rng.integers(0, h * w, size=(m, 16))
            block.reshape(m, -1)[np.arange(m)[:, None], hot] = rng.integers(
                100, 60000, size=(m, 16), dtype=np.uint16
            )
            dset[i : i + m] = block


@pytest.fixture(scope="session")
def fault_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("faults"))


@pytest.fixture(scope="session")
def fault_redis(fault_root: str) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed")
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(os.path.join(fault_root, "redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fault_client(fault_redis: PrivateRedis) -> Iterator[redis.Redis]:
    if fault_redis.proc is None:  # a test left it stopped
        fault_redis.start()
    client = fault_redis.client()
    yield client
    client.close()


@pytest.fixture(scope="session")
def fault_data(fault_root: str) -> FaultData:
    folder = os.path.join(fault_root, "data")
    os.makedirs(folder)
    data = os.path.join(folder, "frames.h5")
    write_frames(data, N_FRAMES, HEIGHT, WIDTH)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    labels = ((yy // 32) * 4 + xx // 64 + 1).astype(np.int32)  # 32 blocks of 32x64
    labels[:, :8] = 0  # a margin in no region
    mask = os.path.join(folder, "mask.npy")
    np.save(mask, labels)
    return FaultData(root=fault_root, data=data, mask=mask)


@pytest.fixture
def queue() -> str:
    return "q-" + uuid.uuid4().hex[:10]


@pytest.fixture
def worker_env(fault_root: str) -> dict[str, str]:
    """Environment of the workers (and producer runs) of one fault test."""
    return {**FAULT_ENV, "DATA_ROOT": fault_root}


@pytest.fixture(scope="session")
def reference(
    fault_redis: PrivateRedis, fault_data: FaultData, tmp_path_factory: pytest.TempPathFactory
) -> Output:
    """The fault-free output of the fault tests' job, computed once."""
    logs = str(tmp_path_factory.mktemp("reference-logs"))
    queue = "q-reference"
    output = fault_data.output("reference.h5")
    env = {**FAULT_ENV, "DATA_ROOT": fault_data.root}
    worker = start_worker(fault_redis.url(), logs, queue, concurrency=2, env=env)
    client = fault_redis.client()
    try:
        worker.wait_ready(client, processes=2)
        res = run_producer(
            fault_redis.url(),
            "submit",
            fault_data.data,
            "--mask",
            fault_data.mask,
            "--output",
            output,
            *job_args(),
            "--queue",
            queue,
            "--wait",
            env=env,
        )
        assert res.returncode == 0, res.stderr + worker.log()
    finally:
        worker.stop()
        client.close()
    out = read_output(output)
    assert out.datasets["results/sum"].shape == (N_FRAMES, N_REGIONS)
    return out


@pytest.fixture
def submit_job(
    fault_redis: PrivateRedis,
    fault_client: redis.Redis,
    fault_data: FaultData,
    queue: str,
    worker_env: dict[str, str],
) -> Callable[..., Job]:
    """Submit the fault tests' job (no --wait) to this test's queue; returns a Job."""

    def run(output: str | None = None, *extra: str, **env: str) -> Job:
        return submit(
            fault_redis.url(),
            fault_client,
            fault_data.data,
            fault_data.mask,
            output or fault_data.output("out.h5"),
            queue,
            *job_args(*extra),
            env={**worker_env, **env},
        )

    return run
