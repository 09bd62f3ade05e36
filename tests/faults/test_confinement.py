"""DATA_ROOT holds for everything HDF5 can reach and for every file in a job folder.

Real workers confined to the fault tests' folder, against the private redis-server.
Files outside DATA_ROOT hold a secret byte pattern: it must never reach an output or a
chunk file. Traps planted in a job folder (a link out, a FIFO) fail the job with one
line and nothing is written elsewhere.
"""

from __future__ import annotations

import os
import uuid

import h5py
import numpy as np
import pytest

from producer.samples import detector_frames, write_stack
from tests.faults.test_security import assert_never_opened
from tests.faults.util import FAULT_ENV, Job, submit
from tests.support.workers import run_producer, start_worker, stored_keys

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SHAPE = (8, 16, 16)
#: What the outside files hold: a pattern no detector frame of these tests has.
SECRET = (np.arange(np.prod(SHAPE)) % 251 + 3).astype(np.uint8).reshape(SHAPE)


@pytest.fixture
def place(fault_root: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A folder under DATA_ROOT, one outside it holding the secret (raw and as HDF5), and
    a mask for 16x16 frames with one region per pixel (a sum copies the frames)."""
    inside = os.path.join(fault_root, "conf-" + uuid.uuid4().hex[:8])
    os.makedirs(inside)
    outside = str(tmp_path_factory.mktemp("outside"))
    SECRET.tofile(os.path.join(outside, "secret.bin"))
    with h5py.File(os.path.join(outside, "secret.h5"), "w") as f:
        f["/entry/data/data"] = SECRET
    mask = os.path.join(inside, "pixels.npy")
    np.save(mask, np.arange(1, 16 * 16 + 1, dtype=np.int32).reshape(16, 16))
    return {"inside": inside, "outside": outside, "mask": mask}


def write_reaching_out(kind: str, path: str, outside: str) -> None:
    """An HDF5 file inside DATA_ROOT whose frames HDF5 would read from outside it."""
    secret_h5 = os.path.join(outside, "secret.h5")
    rel = os.path.relpath(secret_h5, os.path.dirname(path))
    with h5py.File(path, "w") as f:
        if kind == "external storage":
            raw = os.path.relpath(os.path.join(outside, "secret.bin"), os.path.dirname(path))
            f.create_dataset(
                "/entry/data/data", shape=SHAPE, dtype="u1", external=[(raw, 0, SECRET.size)]
            )
        elif kind == "external storage /proc":
            f.create_dataset(
                "/d", shape=SHAPE, dtype="u1", external=[("/proc/self/environ", 0, SECRET.size)]
            )
        elif kind == "soft link over an external link":
            f["/ext"] = h5py.ExternalLink(rel, "/entry")
            f["/entry/data/data"] = h5py.SoftLink("/ext/data/data")
        elif kind == "external link two groups up":
            f["/entry"] = h5py.ExternalLink(rel, "/entry")
        elif kind in ("virtual source behind an external link", "virtual in virtual"):
            inner = os.path.join(os.path.dirname(path), "inner-" + uuid.uuid4().hex[:6] + ".h5")
            with h5py.File(inner, "w") as g:
                if kind == "virtual in virtual":
                    layout = h5py.VirtualLayout(SHAPE, "u1")
                    layout[:] = h5py.VirtualSource(secret_h5, "/entry/data/data", SHAPE)
                    g.create_virtual_dataset("/d", layout)
                else:
                    g["/d"] = h5py.ExternalLink(secret_h5, "/entry/data/data")
            layout = h5py.VirtualLayout(SHAPE, "u1")
            layout[:] = h5py.VirtualSource(os.path.basename(inner), "/d", SHAPE)
            f.create_virtual_dataset("/entry/data/data", layout)
        else:
            raise ValueError(kind)
    # fmt: skip


KINDS = [
    "external storage",
    "external storage /proc",
    "soft link over an external link",
    "external link two groups up",
    "virtual source behind an external link",
    "virtual in virtual",
]


@pytest.mark.parametrize("kind", KINDS)
def test_submit_refuses_every_way_hdf5_reaches_out(fault_redis, fault_client, place, kind):
    """One line naming the outside file, exit code 2, nothing queued or written."""
    data = os.path.join(place["inside"], "reach.h5")
    write_reaching_out(kind, data, place["outside"])
    before = stored_keys(fault_client), sorted(os.listdir(place["inside"]))
    res = run_producer(
        fault_redis.url(), "submit", data, "--mask", place["mask"], "--stats", "sum",
        "--queue", "q-refused", env={"DATA_ROOT": os.path.dirname(place["inside"])},
    )  # fmt: skip
    lines = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1, lines
    assert "is outside DATA_ROOT" in lines[0], lines
    assert ("/proc/self/environ" if "proc" in kind else place["outside"]) in lines[0], lines
    assert (stored_keys(fault_client), sorted(os.listdir(place["inside"]))) == before


def chunk_and_output_bytes(output: str) -> bytes:
    found = b""
    for folder, _dirs, files in os.walk(os.path.dirname(output)):
        for name in files:
            with open(os.path.join(folder, name), "rb") as fh:
                found += fh.read()
    return found


def run_idle_then_worker(fault_redis, fault_root, tmp_path, job: Job) -> dict[str, str]:
    """Start a confined worker on the job's queue; returns the job's final hash."""
    worker = start_worker(
        fault_redis.url(), str(tmp_path), queue=job.queue, env={**FAULT_ENV, "DATA_ROOT": fault_root}
    )  # fmt: skip
    try:
        return job.wait(("failed", "done", "cancelled"), timeout=60)
    finally:
        worker.stop()


def test_a_file_swapped_after_submit_fails_its_job(
    fault_redis, fault_client, fault_root, place, tmp_path
):
    """The worker checks the file it actually opens: one swapped for one with external
    storage outside DATA_ROOT (same path) fails the job; no secret byte is written."""
    data = os.path.join(place["inside"], "swap.h5")
    write_stack(data, detector_frames(*SHAPE, dtype=np.uint8, seed=3), form="none", chunk_frames=1)
    output = os.path.join(place["inside"], "swap.reduced.h5")
    job = submit(
        fault_redis.url(), fault_client, data, place["mask"], output,
        "q-swap-" + uuid.uuid4().hex[:8], "--stats", "sum", env={"DATA_ROOT": fault_root},
    )  # fmt: skip
    write_reaching_out("external storage", data, place["outside"])  # the swap
    state = run_idle_then_worker(fault_redis, fault_root, tmp_path, job)
    assert state["state"] == "failed", state
    reason = state["reason"]
    assert "secret.bin is outside DATA_ROOT" in reason and "\n" not in reason, reason
    assert not os.path.exists(output)
    assert SECRET.tobytes()[:64] not in chunk_and_output_bytes(output)


def _plant(kind: str, workdir: str, outside: str) -> str:
    """Tamper with a queued job's folder; returns what must stay untouched outside."""
    if kind == "chunks folder is a link out":
        os.rmdir(os.path.join(workdir, "chunks"))
        os.symlink(outside, os.path.join(workdir, "chunks"))
    elif kind == "mask is a FIFO":
        os.unlink(os.path.join(workdir, "mask.npy"))
        os.mkfifo(os.path.join(workdir, "mask.npy"))
    elif kind == "manifest is a link out":
        forged = os.path.join(outside, "manifest.json")
        with open(os.path.join(workdir, "manifest.json"), encoding="utf-8") as fh:
            text = fh.read()
        with open(forged, "w", encoding="utf-8") as fh:
            fh.write(text.replace(os.path.dirname(workdir), outside))
        os.unlink(os.path.join(workdir, "manifest.json"))
        os.symlink(forged, os.path.join(workdir, "manifest.json"))
    return outside


@pytest.mark.parametrize(
    "kind", ["chunks folder is a link out", "mask is a FIFO", "manifest is a link out"]
)
def test_job_folder_traps_fail_the_job_and_write_nothing_elsewhere(
    fault_redis, fault_client, fault_root, place, tmp_path, kind
):
    data = os.path.join(place["inside"], "ok.h5")
    write_stack(data, detector_frames(*SHAPE, dtype=np.uint8, seed=4), form="none", chunk_frames=1)
    output = os.path.join(place["inside"], "ok.reduced.h5")
    job = submit(
        fault_redis.url(), fault_client, data, place["mask"], output,
        "q-trap-" + uuid.uuid4().hex[:8], "--stats", "sum", env={"DATA_ROOT": fault_root},
    )  # fmt: skip
    before = sorted(os.listdir(place["outside"]))
    _plant(kind, job.workdir, place["outside"])
    planted = sorted(os.listdir(place["outside"]))
    state = run_idle_then_worker(fault_redis, fault_root, tmp_path, job)
    assert state["state"] == "failed", state
    assert "\n" not in state["reason"]
    assert sorted(os.listdir(place["outside"])) == planted, "something was written outside"
    assert not os.path.exists(output)
    if kind == "mask is a FIFO":
        assert "not a regular file" in state["reason"], state["reason"]
        assert_never_opened(os.path.join(job.workdir, "mask.npy"))
    assert set(planted) - set(before) <= {"manifest.json"}


@pytest.mark.parametrize("command", ["worker", "submit"])
def test_hdf5_search_folders_from_the_environment_are_refused(fault_redis, place, command):
    """HDF5_EXT_PREFIX (and its kin) make HDF5 look for linked files where DATA_ROOT is
    not checked: with DATA_ROOT set, the worker does not start and submit refuses."""
    import subprocess
    import sys

    env = {
        **os.environ, "REDIS_URL": fault_redis.url(), "DATA_ROOT": place["inside"],
        "HDF5_EXT_PREFIX": place["outside"],
    }  # fmt: skip
    if command == "worker":
        argv = [sys.executable, "-m", "worker", "--device", "cpu", "--queues", "q-never"]
    else:
        data = os.path.join(place["inside"], "ok.h5")
        write_stack(data, detector_frames(*SHAPE, dtype=np.uint8), form="none", chunk_frames=1)
        argv = [sys.executable, "-m", "producer", "submit", data, "--mask", place["mask"]]
    res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stderr
    assert "HDF5_EXT_PREFIX set" in res.stderr.strip().splitlines()[-1], res.stderr
