"""The job folder is reached through descriptors: links, FIFOs and swapped folders lead
nowhere, and temporary names never collide, whichever host or PID namespace writes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading

import pytest

from framestats.errors import JobFolderError, PathNotAllowed
from framestats.jobdir import JobFolder, load_job
from tests.unit.test_chunkfile import result_of, spec_of


@pytest.fixture
def folder(tmp_path):
    with JobFolder.create(str(tmp_path / "out.h5.parts")) as f:
        yield f


def test_a_chunks_folder_swapped_for_a_link_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = str(tmp_path / "job.parts")
    with JobFolder.create(path):
        pass
    os.rmdir(os.path.join(path, "chunks"))
    os.symlink(elsewhere, os.path.join(path, "chunks"))
    with pytest.raises(JobFolderError, match="symbolic link"):
        JobFolder.open(path).write_bytes("00000000.chunk", b"x", in_chunks=True)
    assert os.listdir(elsewhere) == []


def test_a_fifo_named_like_the_mask_is_refused_without_waiting(folder):
    os.mkfifo(os.path.join(folder.path, "mask.npy"))
    done = threading.Event()

    def read() -> None:
        with pytest.raises(JobFolderError, match="not a regular file"):
            folder.read("mask.npy")
        done.set()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(10)
    assert done.is_set(), "reading a FIFO blocked"


def test_a_manifest_swapped_for_a_link_out_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "manifest.json").write_text(spec_of().dumps())
    path = str(tmp_path / "root" / "job.parts")
    os.makedirs(os.path.dirname(path))
    with JobFolder.create(path):
        pass
    os.symlink(outside / "manifest.json", os.path.join(path, "manifest.json"))
    with pytest.raises(JobFolderError, match="symbolic link"):
        load_job(os.path.join(path, "manifest.json"), None, (str(tmp_path / "root"),))


def test_a_job_folder_that_is_a_link_out_is_refused(tmp_path):
    outside = tmp_path / "outside"
    with JobFolder.create(str(outside)):
        pass
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "job.parts")
    with pytest.raises(PathNotAllowed):
        JobFolder.open(str(root / "job.parts"), (str(root),))


def test_load_job_checks_whose_manifest_and_folder_it_is(tmp_path):
    path = str(tmp_path / "out.h5.parts")
    spec = spec_of()
    with JobFolder.create(path) as folder:
        folder.write_bytes("manifest.json", spec.dumps().encode())  # names /o.h5.parts
    with pytest.raises(JobFolderError, match="names another folder"):
        load_job(os.path.join(path, "manifest.json"), spec.job_id)
    from dataclasses import replace

    mine = replace(spec, workdir=path, output=str(tmp_path / "out.h5"))
    with JobFolder.open(path) as folder:
        folder.write_bytes("manifest.json", mine.dumps().encode())
    with pytest.raises(JobFolderError, match="belongs to job"):
        load_job(os.path.join(path, "manifest.json"), "b" * 16)
    got, opened = load_job(os.path.join(path, "manifest.json"), spec.job_id)
    opened.close()
    assert got == mine
    with pytest.raises(JobFolderError, match="not a job manifest"):
        load_job(os.path.join(path, "forged.json"), spec.job_id)


def test_a_writer_keeps_its_folder_when_it_is_replaced(tmp_path):
    """A process that opened a job folder commits into that folder, even after a new
    submit put a new folder at the same path: nothing reaches the new job."""
    path = str(tmp_path / "out.h5.parts")
    spec = spec_of()
    from framestats import chunkfile

    old = JobFolder.create(path)
    shutil.rmtree(path)
    with JobFolder.create(path) as new:
        with pytest.raises(OSError):  # the old folder is gone: its commit fails there
            chunkfile.write_chunk(old, spec, result_of(spec, 0))
        assert chunkfile.committed(new) == set()
        assert os.listdir(new.path) == ["chunks"]
    old.close()


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_temporary_names_differ_in_two_pid_namespaces(tmp_path):
    """Two writers that are both PID 1 (two containers) commit the same chunk at once, many
    times: every commit is whole and no temporary file is left (names were per PID)."""
    path = str(tmp_path / "out.h5.parts")
    with JobFolder.create(path):
        pass
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {os.getcwd()!r})
        assert os.getpid() == 1, os.getpid()
        from framestats import chunkfile
        from framestats.jobdir import JobFolder
        from tests.unit.test_chunkfile import result_of, spec_of
        spec = spec_of()
        with JobFolder.open({path!r}) as folder:
            for _ in range(300):
                chunkfile.write_chunk(folder, spec, result_of(spec, 1))
        """
    )
    cmd = ["unshare", "--pid", "--fork", sys.executable, "-c", script]
    probe = subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a PID namespace here: {probe.stderr.decode().strip()}")
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    from framestats import chunkfile

    spec = spec_of()
    with JobFolder.open(path) as folder:
        assert os.listdir(os.path.join(path, "chunks")) == [chunkfile.chunk_name(1)]
        back = chunkfile.read_chunk(folder, spec, 1)
    assert back.stats["std"].tobytes() == result_of(spec, 1).stats["std"].tobytes()
