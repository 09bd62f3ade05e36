"""The Python API end to end: real Redis, real worker processes, numpy as the referee.

``framestats.submit`` validates as ``producer submit`` does: every bad input of the
command's table (``test_submit_validation.CASES``) raises the project's exception with
the line the command prints, and leaves nothing written or queued.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import uuid

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import framestats
from framestats import connection, jobs
from framestats import constants as C
from framestats.errors import (
    BrokerUnavailable,
    InputError,
    JobCancelled,
    JobFailed,
    JobNotFound,
    MaskError,
    OptionError,
    OutputError,
    StatisticNotFound,
    UserError,
    WaitTimeout,
)
from producer.cli import cli
from producer.samples import detector_frames, write_stack
from tests.integration import test_submit_validation as validation
from tests.support.reference import reference
from tests.support.workers import WorkerProcess, stored_keys

pytestmark = pytest.mark.integration

ALL = ("sum", "mean", "count", "min", "max", "std")


def check(res: framestats.Result, frames: np.ndarray, labels: np.ndarray, stats) -> None:
    """The result equals the numpy reference (integer data: sums, counts, min, max exact)."""
    ref = reference(frames, labels, tuple(stats))
    assert res.stats == tuple(s for s in ALL if s in stats)
    for s in stats:
        if frames.dtype.kind in "ui" and s in ("sum", "count", "min", "max"):
            np.testing.assert_array_equal(res[s], ref[s], err_msg=s)
        else:
            np.testing.assert_allclose(res[s], ref[s], rtol=1e-12, equal_nan=True, err_msg=s)
    k = int(labels.max())
    np.testing.assert_array_equal(res.pixel_count, np.bincount(labels.ravel(), minlength=k + 1)[1:])


def idle_queue() -> str:
    """A queue no worker takes from: its jobs stay queued."""
    return f"q-idle-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def stack(tmp_path):
    """40 uint16 frames of 16 x 12 (gzip, HDF5 chunks of 4 frames) and label regions 1..3."""
    frames = detector_frames(40, 16, 12, seed=7)
    data = write_stack(str(tmp_path / "scan.h5"), frames, form="gzip", chunk_frames=4)
    labels = (np.arange(16 * 12).reshape(16, 12) % 4).astype(np.int32)  # 0 = no region
    np.save(tmp_path / "labels.npy", labels)
    return data, frames, labels


def test_submit_wait_result_matches_numpy(
    tmp_path, redis_url, module_worker: WorkerProcess, stack, capsys
):
    data, frames, labels = stack
    out = tmp_path / "out.h5"
    job = framestats.submit(
        data,
        mask=str(tmp_path / "labels.npy"),
        stats=ALL,
        output=out,
        frames=slice(2, 38, 2),
        chunk_frames=8,
        queue=module_worker.queue,
        redis_url=redis_url,
    )
    assert len(job.id) == 16 and job.output == str(out)
    assert job.spec is not None and job.chunks_queued == job.spec.n_chunks == 3
    assert job.state in ("queued", "running", "finalizing", "done")

    assert job.wait(progress=True, timeout=120) == "done"
    lines = capsys.readouterr().err.splitlines()
    assert lines, "progress is shown on stderr"
    assert all(line.startswith("[") and "frames/s" in line for line in lines), lines
    assert "100.0% 18/18 frames, 3/3 chunks" in lines[-1] and "(done)" in lines[-1], lines
    assert "\r" not in "".join(lines), "stderr is no terminal: whole lines, no redraws"

    assert job.state == "done"
    progress = job.progress
    assert (progress.frames_done, progress.frames_total, progress.fraction) == (18, 18, 1.0)
    assert (progress.chunks_done, progress.chunks_total) == (3, 3)
    assert progress.eta_s is None and "3/3 chunks" in str(progress)

    res = job.result()
    selected = frames[2:38:2]
    check(res, selected, labels, ALL)
    np.testing.assert_array_equal(res.frame_index, np.arange(2, 38, 2))
    assert res.job_id == job.id and res.n_frames == 18 and list(res.regions) == [1, 2, 3]
    assert res.attrs["chunk_frames"] == 8  # the frames per task actually used
    assert res.provenance["options"]["frames"] == "2:38:2"

    again = framestats.open(out)
    np.testing.assert_array_equal(again["mean"], res["mean"])

    table = res.to_pandas("mean")
    assert table.shape == (18, 3) and table.index.name == "frame"
    assert list(table.index) == list(range(2, 38, 2)) and list(table.columns) == [1, 2, 3]
    np.testing.assert_array_equal(table.to_numpy(), res["mean"])
    both = res.to_pandas(["sum", "max"])
    np.testing.assert_array_equal(both["max"].to_numpy(), res["max"])

    ds = res.to_xarray()
    assert dict(ds.sizes) == {"frame": 18, "region": 3}
    assert set(ds.data_vars) == set(ALL)
    np.testing.assert_array_equal(ds["std"].sel(frame=10).values, res["std"][4])
    np.testing.assert_array_equal(ds["pixel_count"].values, res.pixel_count)
    assert ds.attrs["job_id"] == job.id

    with pytest.raises(StatisticNotFound, match="statistic median is not in") as caught:
        res["median"]
    assert isinstance(caught.value, KeyError)


@pytest.mark.parametrize("kind", ["bool", "labels"])
def test_numpy_array_mask(tmp_path, redis_url, module_worker: WorkerProcess, stack, kind):
    """A mask drawn in a notebook goes straight in; it is kept in the job folder with its
    sha256 while the job runs, and recorded in the output."""
    data, frames, labels = stack
    mask = labels > 1 if kind == "bool" else labels
    job = framestats.submit(
        data, mask, stats=("sum", "mean"), output=tmp_path / "out.h5",
        queue=module_worker.queue, redis_url=redis_url,
    )  # fmt: skip
    res = job.result(timeout=120)
    check(res, frames, mask.astype(np.int32), ("sum", "mean"))
    regions = json.loads(res.attrs["masks"])[0]
    assert regions["given_as"] == "array" and regions["role"] == "regions"
    assert regions["path"] == str(tmp_path / "out.h5.parts" / "mask-regions.npy")
    assert regions["dtype"] == mask.dtype.str and regions["shape"] == list(mask.shape)
    buffer = io.BytesIO()
    np.save(buffer, mask)
    assert regions["sha256"] == hashlib.sha256(buffer.getvalue()).hexdigest()
    assert res.attrs["mask_sha256"] == regions["sha256"]


def test_array_masks_are_kept_in_the_job_folder(tmp_path, redis_url, stack):
    data, _, labels = stack
    bad = np.zeros(labels.shape, bool)
    bad[0, :3] = True
    job = framestats.submit(
        data, labels, exclude=bad, output=tmp_path / "out.h5", queue=idle_queue(),
        redis_url=redis_url,
    )  # fmt: skip
    try:
        folder = tmp_path / "out.h5.parts"
        kept = {p.name for p in folder.iterdir()}
        assert {"mask-regions.npy", "mask-exclude-1.npy", C.MASK_NAME, C.MANIFEST_NAME} <= kept
        np.testing.assert_array_equal(np.load(folder / "mask-regions.npy"), labels)
        np.testing.assert_array_equal(np.load(folder / "mask-exclude-1.npy"), bad)
        manifest = json.loads((folder / C.MANIFEST_NAME).read_text())
        records = {r["role"]: r for r in manifest["masks"]}
        for role, name in (("regions", "mask-regions.npy"), ("exclude", "mask-exclude-1.npy")):
            digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
            assert records[role]["sha256"] == digest and records[role]["given_as"] == "array"
        combined = np.load(folder / C.MASK_NAME)
        assert (combined[0, :3] == 0).all() and (combined[1:] == labels[1:]).all()
        assert manifest["mask_path"] == str(folder / "mask-regions.npy")
    finally:
        framestats.cancel(job.id, redis_url=redis_url)


# --- every bad input the command refuses ------------------------------------------------

#: The exception each case of the command's table raises (exit code 2: a UserError).
TYPES = {
    "missing file": InputError,
    "not hdf5": InputError,
    "truncated": InputError,
    "missing dataset": InputError,
    "2-D dataset": InputError,
    "4-D dataset": InputError,
    "zero frames": InputError,
    "mask wrong shape": MaskError,
    "mask not 2-D": MaskError,
    "float mask": MaskError,
    "empty mask": MaskError,
    "mask not npy": MaskError,
    "mask corrupt": MaskError,
    "mask missing": MaskError,
    "unknown stat": OptionError,
    "chunk zero": OptionError,
    "chunk negative": OptionError,
    "output exists": OutputError,
    "output folder missing": OutputError,
}

#: Command-line options as the API's keyword arguments.
OPTIONS = {
    "--mask": ("mask", str),
    "--dataset": ("dataset", str),
    "--output": ("output", str),
    "--stats": ("stats", str),
    "--chunk-frames": ("chunk_frames", int),
    "--queue": ("queue", str),
    "--frames": ("frames", str),
    "--valid-range": ("valid_range", str),
    "--mask-convention": ("mask_convention", str),
}


def as_call(args: list[str]) -> tuple[list[str], dict]:
    """``producer submit`` argv as ``framestats.submit``'s inputs and keywords."""
    assert args[0] == "submit"
    inputs, kwargs, rest = [], {}, list(args[1:])
    while rest:
        item = rest.pop(0)
        if item in OPTIONS:
            name, kind = OPTIONS[item]
            kwargs[name] = kind(rest.pop(0))
        else:
            assert not item.startswith("--"), item
            inputs.append(item)
    return inputs, kwargs


def refused(folder, redis_client, call) -> Exception:
    """What ``call`` raised; nothing was written or queued."""
    before_files, before_keys = validation.snapshot(folder), stored_keys(redis_client)
    with pytest.raises(UserError) as caught:
        call()
    assert validation.snapshot(folder) == before_files, "nothing written"
    assert stored_keys(redis_client) == before_keys, "nothing queued"
    return caught.value


@pytest.mark.parametrize("case", sorted(validation.CASES))
def test_bad_input_raises_what_the_command_prints(case, tmp_path, redis_url, redis_client):
    data = write_stack(
        str(tmp_path / "in.h5"), detector_frames(10, 6, 5, seed=2), form="gzip", chunk_frames=2
    )
    np.save(tmp_path / "m.npy", np.ones((6, 5), bool))
    build, expect = validation.CASES[case]
    args = build(tmp_path, data, str(tmp_path / "m.npy"))
    inputs, kwargs = as_call(args)
    exc = refused(
        tmp_path, redis_client, lambda: framestats.submit(inputs, redis_url=redis_url, **kwargs)
    )
    assert type(exc) is TYPES.get(case, type(exc)) and exc.exit_code == 2
    assert expect in str(exc)
    # The command prints the same line (and exits 2).
    result = CliRunner().invoke(cli, args, env={"REDIS_URL": redis_url})
    assert result.exit_code == 2 and result.output.strip() == f"error: {exc}"


API_CASES = {
    # name: (keywords, exception, message)
    "frames step zero": ({"frames": slice(0, 8, 0)}, OptionError, "STEP must be a positive"),
    "frames not integers": ({"frames": slice(0.5, 3)}, OptionError, "must be integers"),
    "frames not a slice": ({"frames": [1, 2]}, OptionError, "must be a slice"),
    "valid range reversed": ({"valid_range": (9, 1)}, OptionError, "LO is above HI"),
    "valid range not finite": ({"valid_range": (0, np.inf)}, OptionError, "finite"),
    "chunk frames not int": ({"chunk_frames": 2.5}, OptionError, "--chunk-frames"),
    "no statistic": ({"stats": ()}, OptionError, "no statistic given"),
    "bad queue": ({"queue": "a b"}, OptionError, "invalid queue name"),
    "bad convention": ({"mask_convention": "x"}, OptionError, "--mask-convention 'x'"),
    "mask array 3-D": ({"mask": np.ones((2, 6, 5), bool)}, MaskError, "mask array is 3-D"),
    "mask array shape": (
        {"mask": np.ones((5, 6), bool)},
        MaskError,
        "mask array has shape (5, 6) but frames are (6, 5)",
    ),
    "mask array empty": ({"mask": np.zeros((6, 5), bool)}, MaskError, "array selects no pixel"),
    "mask array float": ({"mask": np.full((6, 5), 0.5)}, MaskError, "non-integer"),
    "mask array text": ({"mask": np.full((6, 5), "x")}, MaskError, "has dtype <U1"),
    "mask array negative": ({"mask": -np.ones((6, 5), int)}, MaskError, "negative labels"),
    "invert labels": (
        {"mask": np.arange(30).reshape(6, 5) % 3, "invert": True},
        MaskError,
        "--invert needs a boolean mask",
    ),
    "exclude array shape": (
        {"exclude": [np.zeros((5, 6), bool)]},
        MaskError,
        "mask exclude array 1 has shape (5, 6)",
    ),
    "no input": ({"inputs": []}, OptionError, "no input given"),
}


@pytest.mark.parametrize("case", sorted(API_CASES))
def test_bad_python_arguments(case, tmp_path, redis_url, redis_client):
    data = write_stack(
        str(tmp_path / "in.h5"), detector_frames(10, 6, 5, seed=2), form="gzip", chunk_frames=2
    )
    keywords, kind, message = API_CASES[case]
    call = {"inputs": data, "mask": np.ones((6, 5), bool), **keywords}
    exc = refused(tmp_path, redis_client, lambda: framestats.submit(**call, redis_url=redis_url))
    assert type(exc) is kind and message in str(exc), str(exc)


def test_unreachable_redis(tmp_path, stack):
    data, _, labels = stack
    before = validation.snapshot(tmp_path)
    with pytest.raises(BrokerUnavailable) as caught:
        framestats.submit(data, labels, redis_url="redis://:secret@127.0.0.1:1/0")
    assert "redis://:***@127.0.0.1:1/0" in str(caught.value) and "secret" not in str(caught.value)
    assert caught.value.exit_code == 3
    assert validation.snapshot(tmp_path) == before
    with pytest.raises(BrokerUnavailable):
        framestats.status(redis_url="redis://127.0.0.1:1/0")


# --- waiting: progress bars, failures, timeouts -------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_wait_draws_a_bar_in_a_terminal_and_in_a_notebook(
    tmp_path, redis_url, module_worker: WorkerProcess, stack, monkeypatch, capsys
):
    """A terminal gets the command's line redrawn in place; a notebook a tqdm bar (here
    tqdm's text form: a test has no Jupyter kernel to draw its widget)."""
    data, _, labels = stack
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    job = framestats.submit(
        data, labels, output=tmp_path / "a.h5", queue=module_worker.queue, redis_url=redis_url
    )
    job.wait(progress=True, timeout=120)
    monkeypatch.undo()
    text = terminal.getvalue()
    assert text.startswith("\r[") and text.endswith("\n") and text.count("\n") == 1, text
    assert text.rsplit("\r", 1)[1].startswith("[##############################] 100.0% 40/40")

    from framestats import progress

    monkeypatch.setattr(progress, "in_notebook", lambda: True)
    job = framestats.submit(
        data, labels, output=tmp_path / "b.h5", queue=module_worker.queue, redis_url=redis_url
    )
    capsys.readouterr()
    job.wait(progress=True, timeout=120)
    bar = capsys.readouterr().err
    assert f"job {job.id}" in bar and "100%" in bar and "40/40" in bar, bar
    assert "chunks, done" in bar, bar


def test_wait_raises_with_the_reason_of_a_failed_job(
    tmp_path, redis_url, module_worker: WorkerProcess
):
    frames = detector_frames(16, 8, 8, seed=5)
    data = write_stack(str(tmp_path / "bad.h5"), frames, form="gzip", chunk_frames=4)
    with h5py.File(data, "r") as f:
        info = f["/entry/data/data"].id.get_chunk_info(2)  # frames 8-11
    with open(data, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 3)
        fh.write(b"\xff" * 24)
    job = framestats.submit(
        data, np.ones((8, 8), bool), chunk_frames=4, queue=module_worker.queue,
        redis_url=redis_url,
    )  # fmt: skip
    with pytest.raises(JobFailed) as caught:
        job.result(timeout=120)
    assert caught.value.state == "failed" and job.state == "failed"
    assert "chunk 2 (frames 8-12)" in str(caught.value) and str(caught.value).startswith(
        f"job {job.id} failed: "
    )
    assert not os.path.exists(job.output)


def test_wait_timeout_and_cancel(tmp_path, redis_url, stack):
    data, _, labels = stack
    job = framestats.submit(data, labels, queue=idle_queue(), redis_url=redis_url)
    with pytest.raises(WaitTimeout) as caught:
        job.wait(timeout=0.5)
    assert isinstance(caught.value, TimeoutError)
    assert job.state == "queued" and job.progress.frames_done == 0
    assert job.cancel() is True
    with pytest.raises(JobCancelled, match="cancelled: cancelled by user"):
        job.wait()


# --- status, workers, cancel, resume, job ---------------------------------------------------


def test_status_workers_resume_and_job_handles(
    tmp_path, redis_url, module_worker: WorkerProcess, stack
):
    data, frames, labels = stack
    done = framestats.submit(
        data, labels, output=tmp_path / "done.h5", queue=module_worker.queue, redis_url=redis_url
    )
    done.wait(timeout=120)
    assert done.cancel() is False  # it had finished

    overview = framestats.status(redis_url=redis_url)
    assert done.id in [row["id"] for row in overview["jobs"]]
    assert framestats.status(done.id, redis_url=redis_url)["state"] == "done"
    assert framestats.status(done.output, redis_url=redis_url)["id"] == done.id

    rows = framestats.workers(redis_url=redis_url)
    mine = [w for w in rows if w["id"].startswith(module_worker.name + "@")]
    assert len(mine) == 2 and all(module_worker.queue in w["queues"] for w in mine)

    handle = framestats.job(done.output, redis_url=redis_url)
    assert (handle.id, handle.output, handle.state) == (done.id, done.output, "done")
    assert handle.wait() == "done"
    np.testing.assert_array_equal(handle.result()["sum"], done.result()["sum"])

    with pytest.raises(JobNotFound, match="is already complete"):
        framestats.resume(done.output, redis_url=redis_url)
    with pytest.raises(JobNotFound, match="not known to Redis"):
        framestats.cancel("0" * 16, redis_url=redis_url)
    with pytest.raises(JobNotFound):
        framestats.job("0" * 16, redis_url=redis_url)

    # Redis forgets a finished job: its handle still says done, from the output file.
    jobs.delete(connection.connect(redis_url), done.id)
    assert done.state == "done" and done.wait() == "done"

    # A cancelled job resumed: all its chunks queued again.
    idle = framestats.submit(data, labels, output=tmp_path / "idle.h5", queue=idle_queue(),
                             chunk_frames=8, redis_url=redis_url)  # fmt: skip
    framestats.cancel(idle.id, redis_url=redis_url)
    again = framestats.resume(idle.output, redis_url=redis_url)
    assert again.id == idle.id and again.chunks_queued == 5 and again.state == "queued"
    framestats.cancel(idle.id, redis_url=redis_url)


def test_settings_from_the_environment(tmp_path, redis_url, stack, monkeypatch):
    data, _, labels = stack
    monkeypatch.setenv("REDIS_URL", redis_url)
    job = framestats.submit(data, labels, queue=idle_queue())
    assert job.settings.redis_url == redis_url and job.state == "queued"
    framestats.cancel(job.id)
    monkeypatch.setenv("FRAMESTATS_WINDOW", "many")
    with pytest.raises(framestats.errors.ConfigError, match="FRAMESTATS_WINDOW must be"):
        framestats.status()
    explicit = framestats.Settings.from_env({"REDIS_URL": redis_url})
    assert framestats.status(settings=explicit)["jobs_total"] >= 1


def test_command_says_what_it_queued(tmp_path, redis_url, module_worker: WorkerProcess, stack):
    """'queued 1 chunk of 40 frames', and the output records the frames per task used."""
    data, _, _ = stack
    np.save(tmp_path / "one.npy", np.ones((16, 12), bool))
    out = str(tmp_path / "one.h5")
    args = ["submit", data, "--mask", str(tmp_path / "one.npy"), "-o", out,
            "--queue", module_worker.queue, "--wait"]  # fmt: skip
    result = CliRunner().invoke(cli, args, env={"REDIS_URL": redis_url})
    assert result.exit_code == 0, result.output
    assert f"queued 1 chunk of 40 frames (1 region) -> {out}" in result.output
    with h5py.File(out, "r") as f:
        assert f.attrs["chunk_frames"] == 40 and f.attrs["n_chunks"] == 1
    args = ["submit", data, "--mask", str(tmp_path / "labels.npy"), "-o", str(tmp_path / "x.h5"),
            "--queue", module_worker.queue, "--chunk-frames", "12", "--wait"]  # fmt: skip
    result = CliRunner().invoke(cli, args, env={"REDIS_URL": redis_url})
    assert result.exit_code == 0, result.output
    assert "queued 4 chunks of 12 frames (40 frames, 3 regions)" in result.output
