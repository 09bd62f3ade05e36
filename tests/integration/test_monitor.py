"""See the queue: status, watch, workers, inspect, plot, metrics (cancel and resume:
tests/integration/test_control.py).

Real Redis, real worker subprocesses, the real ``producer`` CLI; every value shown is
checked against the job's true state (plan, committed chunk files, worker processes).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import h5py
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from framestats import connection, jobs, monitor
from framestats import constants as C
from producer.metrics import FramestatsCollector
from producer.samples import detector_frames, write_stack
from tests.support.cli import (
    as_json,
    new_queue,
    ok,
    submit,
    worker_rows,
)
from tests.support.wait import wait_until
from tests.support.workers import FAST_ENV, run_producer, start_worker

pytestmark = pytest.mark.integration

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --- one job followed from queued to done ------------------------------------------------

N_FRAMES, H, W, TASK_FRAMES = 40, 16, 16, 4


@pytest.fixture(scope="module")
def flow(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Inspect, submit with no worker (queued), start a worker, watch to done; snapshots."""
    tmp = tmp_path_factory.mktemp("flow")
    frames = detector_frames(N_FRAMES, H, W, seed=7)
    data = write_stack(str(tmp / "in.h5"), frames, form="bslz4", chunk_frames=2)
    labels = (np.arange(H * W).reshape(H, W) % 4).astype(np.int32)  # regions 1..3
    np.save(tmp / "m.npy", labels)
    out = str(tmp / "out.h5")
    queue = new_queue()
    snap: dict[str, Any] = {"tmp": tmp, "data": data, "mask": str(tmp / "m.npy"), "out": out}
    snap["frames"], snap["labels"], snap["queue"] = frames, labels, queue
    snap["inspect"] = as_json(redis_url, "inspect", data, "--chunk-frames", str(TASK_FRAMES))
    res = run_producer(
        redis_url,
        "submit",
        data,
        "--mask",
        snap["mask"],
        "--output",
        out,
        "--queue",
        queue,
        "--chunk-frames",
        str(TASK_FRAMES),
        "--stats",
        "sum,mean,max",
        env={"FRAMESTATS_WINDOW": 5},
    )
    job_id = ok(res).strip().splitlines()[0]
    snap["job_id"], snap["submit_stderr"] = job_id, res.stderr
    snap["queued_job"] = as_json(redis_url, "status", job_id)
    snap["queued_all"] = as_json(redis_url, "status")
    snap["queued_text"] = ok(run_producer(redis_url, "status"))
    worker = start_worker(redis_url, str(tmp), queue=queue, concurrency=2)
    client = connection.connect(redis_url)
    try:
        worker.wait_ready(client, processes=2)
        res = run_producer(redis_url, "watch", job_id)
        snap["watch"] = res
        ok(res, worker)
        snap["done_job"] = as_json(redis_url, "status", job_id)
        # The finalize task is acknowledged just after it marks the job done.
        snap["done_all"] = wait_until(
            lambda: (v := as_json(redis_url, "status"))["queues"][queue]["reserved"] == 0 and v,
            10,
            "the finalize task's acknowledgement",
        )
        snap["done_text"] = ok(run_producer(redis_url, "status", job_id))
        snap["worker"] = worker
        yield snap
    finally:
        worker.stop()
        client.close()


def test_inspect_shows_datasets_and_the_submit_plan(flow):
    report = flow["inspect"]
    (dset,) = report["datasets"]
    assert dset["name"] == "/entry/data/data"
    assert dset["shape"] == [N_FRAMES, H, W]
    assert dset["dtype"] == "<u2"
    assert dset["chunks"] == [2, H, W]
    assert dset["filters"] == ["bitshuffle"]
    plan = report["plan"]
    assert plan["chunks"] == flow["queued_job"]["chunks_total"] == N_FRAMES // TASK_FRAMES
    assert plan["frames_per_task"] == TASK_FRAMES
    assert plan["bytes_per_task"] == TASK_FRAMES * H * W * 2


def test_status_of_a_queued_job(flow):
    job = flow["queued_job"]
    assert job["id"] == flow["job_id"]
    assert job["state"] == "queued"
    assert (job["chunks_total"], job["chunks_done"], job["chunks_failed"]) == (10, 0, 0)
    assert (job["frames_total"], job["frames_done"]) == (N_FRAMES, 0)
    assert job["output"] == flow["out"]
    assert job["chunks_pending"] == 10 - 5  # window of 5 published, the rest held back
    assert job["eta_s"] is None and job["frames_per_s"] == 0
    assert job["parameters"]["chunk_frames"] == TASK_FRAMES
    assert job["parameters"]["stats"] == "sum,mean,max"
    overview = flow["queued_all"]
    assert overview["queues"][flow["queue"]] == {"waiting": 5, "reserved": 0, "workers": 0}
    row = next(r for r in overview["jobs"] if r["id"] == flow["job_id"])
    assert row["state"] == "queued" and row["chunks_done"] == 0
    assert overview["jobs_by_state"]["queued"] >= 1
    assert flow["job_id"] in flow["queued_text"]
    assert f"{flow['queue']}: 5 waiting, 0 reserved, NO worker takes from it" in flow["queued_text"]
    # The submit itself said so: a mistyped queue is not a silent wait.
    assert f"note: no live worker takes from queue {flow['queue']};" in flow["submit_stderr"]


def test_watch_shows_progress_to_the_end(flow):
    res = flow["watch"]
    assert res.returncode == 0
    assert "100.0%" in res.stderr and f"{N_FRAMES}/{N_FRAMES} frames" in res.stderr
    assert f"done: {flow['out']}" in res.stderr


def test_status_of_a_done_job_matches_its_true_state(flow, redis_url):
    job = flow["done_job"]
    assert job["state"] == "done" and job["reason"] is None
    assert (job["chunks_total"], job["chunks_done"], job["chunks_failed"]) == (10, 10, 0)
    assert (job["frames_total"], job["frames_done"]) == (N_FRAMES, N_FRAMES)
    assert job["bytes_done"] == N_FRAMES * H * W * 2
    assert job["duration_s"] > 0 and job["frames_per_s"] > 0 and job["eta_s"] is None
    with h5py.File(flow["out"], "r") as f:
        assert f.attrs["job_id"] == flow["job_id"]
        assert f["results"]["sum"].shape == (N_FRAMES, 3)
    # Per-worker share: frames add up, and every worker named is one of our pool processes.
    pids = set(flow["worker"].pids(connection.connect(redis_url)))
    assert sum(w["frames"] for w in job["workers"]) == N_FRAMES
    assert abs(sum(w["share"] for w in job["workers"]) - 1) < 1e-9
    assert {int(w["worker"].rsplit(":", 1)[1]) for w in job["workers"]} <= pids
    assert job["errors_total"] == 0 and job["running_on"] == []
    overview = flow["done_all"]
    assert overview["queues"][flow["queue"]] == {"waiting": 0, "reserved": 0, "workers": 2}
    row = next(r for r in overview["jobs"] if r["id"] == flow["job_id"])
    assert row["state"] == "done" and row["chunks_done"] == row["chunks_total"] == 10
    assert "done" in flow["done_text"] and f"{N_FRAMES}/{N_FRAMES} frames" in flow["done_text"]
    # The same job named by its output path.
    by_path = as_json(redis_url, "status", flow["out"])
    assert by_path["id"] == flow["job_id"] and by_path["state"] == "done"


def test_workers_show_heartbeats_counters_and_throughput(flow, redis_url):
    worker = flow["worker"]
    client = connection.connect(redis_url)
    pids = set(worker.pids(client))
    rows = wait_until(
        lambda: (
            (r := worker_rows(redis_url, worker)) and sum(w["chunks_done"] for w in r) == 10 and r
        ),
        10,
        "worker counters to reach 10 chunks",
    )
    assert {w["pid"] for w in rows} == pids and len(rows) == 2
    for w in rows:
        assert w["host"] == socket.gethostname()
        assert w["device"] == "cpu"
        assert w["queues"] == [worker.queue]  # what submit sizes a job's tasks by
        assert w["heartbeat_age_s"] < float(FAST_ENV["FRAMESTATS_WORKER_TIMEOUT"])
        if w["chunks_done"]:
            assert w["frames_per_s"] > 0 and w["bytes_per_s"] == pytest.approx(
                w["frames_per_s"] * H * W * 2
            )
    assert sum(w["frames_done"] for w in rows) == N_FRAMES
    text = ok(run_producer(redis_url, "workers"))
    assert all(str(p) in text for p in pids)
    assert flow["done_all"]["workers_online"] >= 2


def test_plot_writes_a_png(flow, tmp_path, redis_url):
    png = str(tmp_path / "trace.png")
    out = ok(run_producer(redis_url, "plot", flow["out"], "--stat", "max", "-o", png))
    assert out.strip() == png
    with open(png, "rb") as fh:
        head = fh.read(8)
    assert head == PNG_SIGNATURE and os.path.getsize(png) > 1000
    default = ok(run_producer(redis_url, "plot", flow["out"])).strip()
    assert default == flow["out"][:-3] + ".mean.png" and os.path.getsize(default) > 0
    bad = run_producer(redis_url, "plot", flow["out"], "--stat", "std")
    assert bad.returncode == 2 and "std is not in" in bad.stderr


def parse(text: str) -> dict[str, list[Any]]:
    families: dict[str, list[Any]] = {}
    for fam in text_string_to_metric_families(text):
        families.setdefault(fam.name, []).extend(fam.samples)
    return families


def value(families: dict[str, list[Any]], name: str, **labels: str) -> float:
    for samples in families.values():
        for s in samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    raise KeyError(f"{name} {labels}")


def check_metrics(families: dict[str, list[Any]], flow: dict[str, Any], client: Any) -> None:
    queue = flow["queue"]
    assert value(families, "framestats_up") == 1
    assert value(families, "framestats_queue_messages", queue=queue, state="waiting") == 0
    assert value(families, "framestats_queue_messages", queue=queue, state="reserved") == 0
    assert value(families, "framestats_queue_workers", queue=queue) == 2
    states = [client.hget(C.job_key(i), "state") for i in client.zrange(C.JOBS_INDEX, 0, -1)]
    assert value(families, "framestats_jobs", state="done") == states.count("done")
    totals = client.hgetall(C.METRICS_KEY)
    assert value(families, "framestats_frames_processed_total") == int(totals["frames"]) >= N_FRAMES
    assert value(families, "framestats_bytes_processed_total") == int(totals["bytes"])
    assert value(families, "framestats_chunk_seconds_count") >= 10
    assert value(families, "framestats_chunk_seconds_bucket", le="+Inf") == value(
        families, "framestats_chunk_seconds_count"
    )
    worker_frames = sum(
        s.value
        for s in families["framestats_worker_frames"]
        if s.name == "framestats_worker_frames_total"
        and s.labels["node"].startswith(flow["worker"].name + "@")
    )
    assert worker_frames == N_FRAMES


def ctrl_c_as_from_a_terminal() -> None:
    """In the child before it runs: SIGINT's default action, as under a terminal. A shell
    starts a background job (``./run test &``) with SIGINT ignored, every child inherits
    that, and Python then leaves it ignored: the Ctrl-C these tests send would do nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_metrics_collector_and_endpoint(flow, redis_url):
    from prometheus_client import CollectorRegistry, generate_latest

    client = connection.connect(redis_url)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FramestatsCollector(client, float(FAST_ENV["FRAMESTATS_WORKER_TIMEOUT"])))
    check_metrics(parse(generate_latest(registry).decode()), flow, client)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, **FAST_ENV, "REDIS_URL": redis_url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "producer", "metrics", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=ctrl_c_as_from_a_terminal,
    )
    try:

        def scrape() -> str | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    return r.read().decode()
            except OSError:
                return None

        text = wait_until(scrape, 20, "the metrics endpoint", interval=0.2)
        check_metrics(parse(text), flow, client)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        finally:
            if proc.poll() is None:  # it outlived Ctrl-C: the test fails, no server stays
                proc.kill()
                proc.wait()


def test_failed_job_shows_state_reason_and_errors(flow, redis_url, tmp_path):
    """A chunk whose compressed bytes are corrupt fails the job naming the chunk."""
    frames = detector_frames(12, 8, 8, seed=11)
    data = write_stack(str(tmp_path / "bad.h5"), frames, form="gzip", chunk_frames=1)
    with h5py.File(data, "r") as f:
        info = f["/entry/data/data"].id.get_chunk_info(7)  # frame 7 -> chunk task 3 of 4
    with open(data, "r+b") as fh:
        fh.seek(info.byte_offset)
        fh.write(b"\xff" * info.size)
    np.save(tmp_path / "m.npy", np.ones((8, 8), bool))
    out = str(tmp_path / "bad.reduced.h5")
    job_id = submit(
        redis_url, data, str(tmp_path / "m.npy"), out, flow["queue"], "--chunk-frames", "2"
    )
    res = run_producer(redis_url, "watch", job_id, env={"FRAMESTATS_MAX_RETRIES": "1"})
    assert res.returncode == 1, res.stderr
    job = as_json(redis_url, "status", job_id)
    assert job["state"] == "failed"
    assert job["chunks_failed"] == 1
    assert "chunk 3 (frames 6-8)" in job["reason"]
    assert job["errors_total"] >= 1 and job["errors"][0]["chunk"] == 3
    assert job["chunks_done"] < job["chunks_total"] == 6
    assert not os.path.exists(out)
    text = ok(run_producer(redis_url, "status", job_id))
    assert "failed: chunk 3" in text and "errors" in text


def test_watch_ctrl_c_leaves_the_job_running(flow, redis_url, tmp_path):
    frames = detector_frames(400, 32, 32, seed=3)
    data = write_stack(str(tmp_path / "in.h5"), frames, form="gzip", chunk_frames=1)
    np.save(tmp_path / "m.npy", np.ones((32, 32), bool))
    out = str(tmp_path / "out.h5")
    job_id = submit(
        redis_url, data, str(tmp_path / "m.npy"), out, flow["queue"], "--chunk-frames", "1"
    )
    env = {**os.environ, **FAST_ENV, "REDIS_URL": redis_url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "producer", "watch", job_id],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=ctrl_c_as_from_a_terminal,
    )
    assert proc.stderr is not None
    first = proc.stderr.readline()  # the first progress line: watch is following the job
    assert "frames" in first, first
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, first + err
    assert jobs.state(connection.connect(redis_url), job_id) in ("queued", "running")
    assert "keeps running" in err and "Traceback" not in err
    client = connection.connect(redis_url)
    wait_until(lambda: jobs.state(client, job_id) == "done", 60, "the job to finish unwatched")
    assert os.path.exists(out)


# --- workers leave the list --------------------------------------------------------------


def test_killed_worker_leaves_the_list_after_the_timeout(redis_url, tmp_path):
    worker = start_worker(redis_url, str(tmp_path), queue=new_queue(), concurrency=1)
    client = connection.connect(redis_url)
    try:
        worker.wait_ready(client)
        (pid,) = worker.pids(client)
        rows = worker_rows(redis_url, worker)
        assert [w["pid"] for w in rows] == [pid] and rows[0]["current"] == ""
        worker.kill()  # SIGKILL: no chance to deregister
        killed = time.monotonic()
        wait_until(lambda: not worker_rows(redis_url, worker), 20, "the killed worker to leave")
        gone_after = time.monotonic() - killed
        assert gone_after <= float(FAST_ENV["FRAMESTATS_WORKER_TIMEOUT"]) + 3
    finally:
        worker.stop()


# --- many jobs -------------------------------------------------------------------


def test_status_of_300_jobs_lists_them_all_newest_first(redis_url, redis_client):
    prefix = f"perf{uuid.uuid4().hex[:6]}"
    now = time.time()
    pipe = redis_client.pipeline(transaction=False)
    ids = [f"{prefix}{i:04d}" for i in range(300)]
    for i, job_id in enumerate(ids):
        state = monitor.STATES[i % len(monitor.STATES)]
        pipe.hset(
            C.job_key(job_id),
            mapping={
                "id": job_id,
                "state": state,
                "input": f"/data/scan{i}.h5",
                "output": f"/data/scan{i}.reduced.h5",
                "queue": f"perfq{i % 7}",
                "n_chunks": 100,
                "n_frames": 1000,
                "frame_bytes": 8 * 1024 * 1024,
                "frames_done": i,
                "submitted": now - 100,
                "started": now - 50,
                "chunks_failed": 0,
            },
        )
        pipe.sadd(C.job_key(job_id, C.JobPart.DONE), *range(i % 50 + 1))
        pipe.zadd(C.JOBS_INDEX, {job_id: now - 300 + i})
    pipe.execute()
    try:
        view = monitor.overview(connection.connect(redis_url), 30.0, limit=None)
        assert view["jobs_total"] >= 300 and len(view["jobs"]) >= 300
        doc = json.loads(ok(run_producer(redis_url, "status", "--json", "--limit", "1000")))
        rows = [r for r in doc["jobs"] if r["id"].startswith(prefix)]
        assert [r["id"] for r in rows] == ids[::-1]  # newest first
        assert [r["chunks_done"] for r in rows] == [i % 50 + 1 for i in range(300)][::-1]
        assert [r["frames_done"] for r in rows] == list(range(300))[::-1]
        assert {f"perfq{i}" for i in range(7)} <= set(doc["queues"])  # unfinished jobs' queues
    finally:
        for job_id in ids:
            jobs.delete(redis_client, job_id)


def test_monitoring_commands_stay_import_light():
    code = (
        "import sys, producer.cli, framestats.monitor, framestats.jobs, producer.metrics; "
        "print(sorted(m for m in ('numpy', 'h5py', 'celery', 'torch', 'matplotlib') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
