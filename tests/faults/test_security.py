"""Security: JSON only, DATA_ROOT for every path a message names, passwords never shown.

Real worker processes against private redis-servers (one with a password, one with TLS).
Paths outside DATA_ROOT are named-pipe traps: opening one would block the worker, so a
job that fails promptly with "outside DATA_ROOT", and a pipe that still has no reader
afterwards, show that the worker refused the path without opening it.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import replace

import h5py
import numpy as np
import pytest

from framestats.constants import TASK_FINALIZE, TASK_REDUCE
from framestats.messages import JobSpec
from framestats.settings import Settings
from producer.samples import detector_frames, write_stack
from tests.faults.private_redis import PrivateRedis, make_tls
from tests.faults.util import (
    FAULT_ENV,
    Job,
    full_log,
    submit,
)
from tests.support.jobfiles import forge_job_folder, load_manifest
from tests.support.wait import wait_until
from tests.support.workers import WorkerProcess, run_producer, start_worker, stored_keys
from worker.broker import make_app

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def small(fault_root: str) -> tuple[str, str]:
    """A small gzip stack and mask under DATA_ROOT."""
    folder = os.path.join(fault_root, "small")
    os.makedirs(folder, exist_ok=True)
    data = write_stack(
        os.path.join(folder, "small.h5"), detector_frames(16, 16, 16, seed=9), form="gzip",
        chunk_frames=4,
    )  # fmt: skip
    mask = os.path.join(folder, "small_mask.npy")
    np.save(mask, np.ones((16, 16), bool))
    return data, mask


@pytest.fixture(scope="module")
def guarded_worker(
    fault_redis: PrivateRedis, fault_root: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """A worker confined to DATA_ROOT (the fault tests' folder)."""
    logs = str(tmp_path_factory.mktemp("security-logs"))
    worker = start_worker(
        fault_redis.url(), logs, concurrency=1, env={**FAULT_ENV, "DATA_ROOT": fault_root}
    )
    client = fault_redis.client()
    try:
        worker.wait_ready(client, processes=1)
        yield worker
    finally:
        worker.stop()
        client.close()


@pytest.fixture
def outside(tmp_path_factory: pytest.TempPathFactory, fault_root: str) -> str:
    """A folder beside DATA_ROOT, not under it."""
    path = str(tmp_path_factory.mktemp("outside"))
    assert not path.startswith(fault_root.rstrip("/") + "/")
    return path


def assert_never_opened(fifo: str) -> None:
    """A named pipe nobody holds open refuses a non-blocking writer with ENXIO."""
    with pytest.raises(OSError) as caught:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert caught.value.errno == errno.ENXIO


# -- JSON only -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "command"),
    [
        ('accept_content = ["pickle", "json"]', "worker"),
        ('result_accept_content = ["pickle"]', "worker"),
        ('task_serializer = "pickle"', "worker"),
        ('accept_content = ["pickle"]', "celery"),
    ],
)
def test_worker_refuses_to_start_when_pickle_is_accepted(fault_redis, tmp_path, setting, command):
    """CELERY_CONFIG_MODULE (Celery's own variable) is the one way to add Celery settings
    without changing code; a module that would accept pickle stops the worker at start,
    with one line and exit code 2, whether started as `worker` or `celery -A worker.app`."""
    (tmp_path / "unsafe_celeryconfig.py").write_text(setting + "\n")
    env = {
        **os.environ,
        "REDIS_URL": fault_redis.url(),
        "CELERY_CONFIG_MODULE": "unsafe_celeryconfig",
        "PYTHONPATH": f"{tmp_path}:{os.getcwd()}",
    }
    if command == "worker":
        argv = [sys.executable, "-m", "worker", "--device", "cpu", "-c", "1", "-Q", "q-none"]
    else:
        celery = os.path.join(os.path.dirname(sys.executable), "celery")
        argv = [celery, "-A", "worker.app:app", "worker", "-c", "1", "-Q", "q-none"]
    res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stdout + res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "only JSON is allowed" in errors[0], res.stderr
    assert "pickle" in errors[0]
    assert "Traceback" not in res.stderr


def test_pickle_message_is_never_decoded(
    fault_redis, fault_client, guarded_worker, small, fault_data, tmp_path
):
    """A pickle message pushed to the queue is refused; its payload never runs."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):  # what an attacker's pickle would run on load
            return (os.system, (f"touch {marker}",))

    app = make_app(Settings.from_env({"REDIS_URL": fault_redis.url()}))
    app.send_task(TASK_REDUCE, args=[Payload()], serializer="pickle", queue=guarded_worker.queue)
    wait_until(
        lambda: "Refusing to deserialize untrusted content" in full_log(guarded_worker),
        30,
        "the worker refusing the pickle message",
    )
    assert not marker.exists()
    assert fault_client.llen(guarded_worker.queue) == 0
    # The worker goes on working.
    data, mask = small
    res = run_producer(
        fault_redis.url(), "submit", data, "--mask", mask, "--output",
        fault_data.output("after-pickle.h5"), "--queue", guarded_worker.queue, "--wait",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert not marker.exists()


# -- DATA_ROOT -------------------------------------------------------------------------


def test_forged_messages_outside_data_root_are_refused(
    fault_redis, fault_client, fault_root, fault_data, guarded_worker, small, outside
):
    """Messages written straight into Redis that name paths outside DATA_ROOT ('..', a
    symbolic link out of it, an output or an input outside it) fail their job with the
    reason, and the worker never opens the path."""
    data, mask = small
    idle = "q-idle-" + uuid.uuid4().hex[:8]  # no worker: the jobs' own tasks stay queued

    def idle_job() -> tuple[Job, JobSpec]:
        job = submit(
            fault_redis.url(), fault_client, data, mask, fault_data.output("j.h5"), idle,
            env={"DATA_ROOT": fault_root},
        )  # fmt: skip
        return job, load_manifest(os.path.join(job.workdir, "manifest.json"))

    trap = os.path.join(outside, "manifest.json")
    input_trap = os.path.join(outside, "frames.h5")
    os.mkfifo(trap)
    os.mkfifo(input_trap)
    link = os.path.join(fault_root, "link-" + uuid.uuid4().hex[:8])
    os.symlink(outside, link)
    app = make_app(Settings.from_env({"REDIS_URL": fault_redis.url()}))

    def send(spec: JobSpec, manifest: str) -> None:
        payload = {**spec.chunk(0).to_json(), "manifest": manifest}
        app.send_task(TASK_REDUCE, args=[payload], queue=guarded_worker.queue)

    expected: list[tuple[Job, str]] = []
    # 1. '..': one of the job's own messages, taken from Redis and edited by hand.
    job, spec = idle_job()
    envelope = json.loads(fault_client.rpop(idle))
    body = json.loads(base64.b64decode(envelope["body"]))
    dotdot = os.path.join(fault_root, "..", os.path.basename(outside), "manifest.json")
    body[0][0]["manifest"] = dotdot
    envelope["body"] = base64.b64encode(json.dumps(body).encode()).decode()
    envelope["properties"]["delivery_info"]["routing_key"] = guarded_worker.queue
    fault_client.lpush(guarded_worker.queue, json.dumps(envelope))
    expected.append((job, os.path.dirname(dotdot)))  # the job folder it names is refused
    # 2. A symbolic link inside DATA_ROOT that points out of it.
    job, spec = idle_job()
    send(spec, os.path.join(link, "manifest.json"))
    expected.append((job, link))
    # 3. A job folder inside DATA_ROOT whose manifest's output lies outside.
    job, spec = idle_job()
    stolen = os.path.join(outside, "stolen.h5")
    place = os.path.join(os.path.dirname(spec.output), "forged-output.h5.parts")
    send(spec, forge_job_folder(spec, place, output=stolen))
    expected.append((job, stolen))
    # 4. A job folder inside DATA_ROOT whose manifest's input lies outside.
    job, spec = idle_job()
    place = os.path.join(os.path.dirname(spec.output), "forged-input.h5.parts")
    segments = (replace(spec.segments[0], path=input_trap),)
    send(spec, forge_job_folder(spec, place, segments=segments))
    expected.append((job, input_trap))

    for job, path in expected:
        state = job.wait(("failed", "done"), timeout=30)
        assert state["state"] == "failed", state
        assert f"{path} is outside DATA_ROOT" in state["reason"], state["reason"]
        assert "chunk 0 (frames 0-16)" in state["reason"]

    # A forged finalize is refused too, and a forged chunk of an unknown job is dropped.
    job, spec = idle_job()
    app.send_task(
        TASK_FINALIZE, args=[{"job_id": job.job_id, "manifest": trap}], queue=guarded_worker.queue
    )
    unknown = {**spec.chunk(0).to_json(), "job_id": "0" * 16, "manifest": trap}
    app.send_task(TASK_REDUCE, args=[unknown], queue=guarded_worker.queue)
    wait_until(
        lambda: (
            f"finalize of job {job.job_id} refused" in full_log(guarded_worker)
            and f"job {'0' * 16} is unknown to Redis" in full_log(guarded_worker)
        ),
        30,
        "the forged finalize refused and the unknown job's chunk dropped",
    )
    assert job.state() == "queued"
    assert_never_opened(trap)
    assert_never_opened(input_trap)
    assert not os.path.exists(stolen)
    assert sorted(os.listdir(outside)) == ["frames.h5", "manifest.json"]


@pytest.mark.parametrize("case", ["output", "output-dotdot", "output-symlink", "input"])
def test_submit_refuses_paths_outside_data_root(
    fault_redis, fault_client, fault_root, small, outside, case
):
    """With DATA_ROOT set, submit refuses an input or output outside it: one line, exit
    code 2, nothing queued, nothing written."""
    data, mask = small
    link = os.path.join(fault_root, "link-" + uuid.uuid4().hex[:8])
    os.symlink(outside, link)
    output = os.path.join(fault_root, "small", f"ok-{case}.h5")
    if case == "output":
        output = os.path.join(outside, "o.h5")
    elif case == "output-dotdot":
        output = os.path.join(fault_root, "..", os.path.basename(outside), "o.h5")
    elif case == "output-symlink":
        output = os.path.join(link, "o.h5")
    else:
        data = os.path.join(outside, "in.h5")
        write_stack(data, detector_frames(4, 16, 16), form="gzip", chunk_frames=2)
    before = sorted(os.listdir(outside)), stored_keys(fault_client)
    res = run_producer(
        fault_redis.url(), "submit", data, "--mask", mask, "--output", output,
        "--queue", "q-refused", env={"DATA_ROOT": fault_root},
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    lines = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "is outside DATA_ROOT" in lines[0], lines
    assert (sorted(os.listdir(outside)), stored_keys(fault_client)) == before
    assert not os.path.exists(output + ".parts")


# -- Passwords -------------------------------------------------------------------------


def test_password_never_in_logs_status_or_provenance(small, fault_root, tmp_path):
    """A password-protected Redis: the password reaches no log line, no status output,
    no byte of the output file, no value stored in Redis; a worker without DATA_ROOT
    warns at start."""
    password = "pw-" + secrets.token_hex(12)
    server = PrivateRedis(str(tmp_path / "redis"), password=password)
    server.start()
    data, mask = small
    output = str(tmp_path / "out.h5")
    env = {**FAULT_ENV, "DATA_ROOT": ""}
    worker = start_worker(server.url(), str(tmp_path), concurrency=1, env=env)
    client = server.client()
    texts: list[str] = []
    try:
        worker.wait_ready(client, processes=1)
        res = run_producer(
            server.url(), "submit", data, "--mask", mask, "--output", output,
            "--queue", worker.queue, "--wait", env=env,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        job_id = res.stdout.split()[0]
        texts += [res.stdout, res.stderr]
        for args in (["status"], ["status", "--json"], ["status", job_id, "--json"]):
            res = run_producer(server.url(), *args, env=env)
            assert res.returncode == 0, res.stderr
            texts += [res.stdout, res.stderr]
        assert job_id in texts[-2]
        wrong = "wrong-" + secrets.token_hex(8)
        res = run_producer(server.url().replace(password, wrong), "status", env=env)
        assert res.returncode == 3 and ":***@" in res.stderr, res.stderr
        assert wrong not in res.stdout + res.stderr
        texts += [res.stdout, res.stderr]
        for key in client.scan_iter("*"):
            kind = client.type(key)
            if kind == "hash":
                texts.append(json.dumps(client.hgetall(key)))
            elif kind == "list":
                texts.append(json.dumps(client.lrange(key, 0, -1)))
            elif kind == "string":
                texts.append(str(client.get(key)))
        # Redis goes away and comes back: the worker logs its reconnection attempts.
        before = full_log(worker).count("Connected to redis")
        server.restart_empty()
        wait_until(lambda: full_log(worker).count("Connected to redis") > before, 60,
                   "the worker reconnecting")  # fmt: skip
    finally:
        worker.stop()
        client.close()
        server.stop()
    log = full_log(worker)
    assert "DATA_ROOT is unset" in log
    assert ":**@127.0.0.1" in log  # the broker URL is shown, masked
    for text in [log, *texts]:
        assert password not in text
    with open(output, "rb") as fh:
        assert password.encode() not in fh.read()
    with h5py.File(output, "r") as f:
        assert all(password not in str(v) for v in f.attrs.values())


def test_rediss_verifies_the_server_and_redacts(small, fault_root, tmp_path):
    """rediss:// end to end against a TLS redis-server with a password: a job completes
    when the URL names the CA; with an untrusted certificate the producer and the
    worker's broker connection both refuse, and the password shows nowhere."""
    try:
        tls = make_tls(str(tmp_path / "tls"))
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot make a test certificate: {exc}")
    password = "pw-" + secrets.token_hex(12)
    server = PrivateRedis(str(tmp_path / "redis"), password=password, tls=tls)
    try:
        server.start()
    except RuntimeError:
        pytest.skip("this redis-server has no TLS support")
    data, mask = small
    output = str(tmp_path / "out.h5")
    env = {**FAULT_ENV, "DATA_ROOT": fault_root + ":" + str(tmp_path)}
    url = server.url()
    assert url.startswith("rediss://") and "ssl_ca_certs=" in url
    good = start_worker(url, str(tmp_path), concurrency=1, env=env)
    untrusted = server.url(ca="")  # no CA named: the system store, which lacks the test CA
    bad = start_worker(untrusted, str(tmp_path), concurrency=1, env=env)
    client = server.client()
    try:
        good.wait_ready(client, processes=1)
        res = run_producer(
            url, "submit", data, "--mask", mask, "--output", output,
            "--queue", good.queue, "--wait", env=env,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr + good.log()
        texts = [res.stdout, res.stderr]
        res = run_producer(untrusted, "status", env=env)
        assert res.returncode == 3, res.stderr
        assert "certificate verify failed" in res.stderr and "rediss://:***@" in res.stderr
        texts += [res.stdout, res.stderr]
        wait_until(lambda: "certificate verify failed" in full_log(bad), 30, "the broker refusing")
    finally:
        good.stop()
        bad.stop()
        client.close()
        server.stop()
    bad_log, good_log = full_log(bad), full_log(good)
    assert "Connected to rediss://" in good_log
    assert "Connected to rediss://" not in bad_log, "the broker connection skipped verification"
    assert "defaulting to insecure SSL" not in good_log + bad_log
    for text in [good_log, bad_log, *texts]:
        assert password not in text
    with h5py.File(output, "r") as f:
        assert f["results"]["sum"].shape == (16, 1)


@pytest.mark.parametrize("kind", ["external-dataset", "external-group", "virtual"])
def test_hdf5_links_out_of_data_root_are_refused(
    fault_redis, fault_client, fault_root, fault_data, guarded_worker, small, outside, kind
):
    """A file inside DATA_ROOT whose frames HDF5 would fetch from a file outside it (an
    external link, at the dataset or at a group above it, or a virtual dataset's source):
    the worker refuses it before HDF5 follows the link, naming the outside file."""
    data, mask = small
    job = submit(
        fault_redis.url(), fault_client, data, mask, fault_data.output("j.h5"),
        "q-idle-" + uuid.uuid4().hex[:8], env={"DATA_ROOT": fault_root},
    )  # fmt: skip
    spec = load_manifest(os.path.join(job.workdir, "manifest.json"))
    target = os.path.join(outside, "secret.h5")
    frames = detector_frames(16, 16, 16, seed=9)
    with h5py.File(target, "w") as f:
        f.create_dataset("/entry/data/data", data=frames)
    linked = os.path.join(os.path.dirname(spec.output), f"linked-{kind}.h5")
    with h5py.File(linked, "w") as f:
        if kind == "external-dataset":
            f["/entry/data/data"] = h5py.ExternalLink(target, "/entry/data/data")
        elif kind == "external-group":
            f["/entry"] = h5py.ExternalLink(
                os.path.relpath(target, os.path.dirname(linked)), "/entry"
            )
        else:
            layout = h5py.VirtualLayout(shape=frames.shape, dtype=frames.dtype)
            layout[:] = h5py.VirtualSource(target, "/entry/data/data", shape=frames.shape)
            f.create_virtual_dataset("/entry/data/data", layout)
    place = os.path.join(os.path.dirname(spec.output), f"forged-{kind}.h5.parts")
    forged = forge_job_folder(spec, place, segments=(replace(spec.segments[0], path=linked),))
    app = make_app(Settings.from_env({"REDIS_URL": fault_redis.url()}))
    payload = {**spec.chunk(0).to_json(), "manifest": forged}
    app.send_task(TASK_REDUCE, args=[payload], queue=guarded_worker.queue)
    state = job.wait(("failed", "done"), timeout=30)
    assert state["state"] == "failed", state
    assert "secret.h5 is outside DATA_ROOT" in state["reason"], state["reason"]
