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
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest
import redis

from framestats import constants as C
from producer.samples import detector_frames, ring_labels, write_stack
from tests.support.jobfiles import chunk_file, chunk_meta
from tests.support.reference import reference
from tests.support.workers import FAST_ENV

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
SBATCH_SCRIPT = ROOT / "deploy" / "slurm" / "framestats-workers.sbatch"
REDIS_HELPER = ROOT / "deploy" / "slurm" / "framestats-redis"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"

#: Programs the cluster needs: munge and slurm-wlm's daemons and clients, and Redis.
PROGRAMS = (
    "munged",
    "slurmctld",
    "slurmd",
    "sbatch",
    "srun",
    "scancel",
    "scontrol",
    "sinfo",
    "squeue",
    "redis-server",
    "redis-cli",
)
#: Slurm job states after which a job runs no more.
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL"}
#: What a node's log says when its worker got the stop signal and shut down warmly.
WARM = "worker: Warm shutdown (MainProcess)"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def poll(predicate: Callable[[], object], timeout: float) -> bool:
    """Whether ``predicate`` came true within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    if not poll(predicate, timeout):
        raise TimeoutError(f"not seen within {timeout} s: {what}")


def tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, its parent not yet told) is not."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except OSError:
        return False


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL: for the daemons this module started."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# --------------------------------------------------------------------------- the cluster


@dataclass
class Cluster:
    """A running one-node Slurm cluster: its folder, config and daemons."""

    folder: Path
    conf: Path
    node: str
    cpus: int
    daemons: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        """This process's environment pointed at this cluster and this checkout.

        Slurm variables of an enclosing job and worker settings of the caller's shell are
        dropped, so the job sees what the sbatch script decides.
        """
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "WORKER_"))
            and k not in ("REDIS_URL", "DATA_ROOT", "FRAMESTATS_DEVICE")
        }
        python_path = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        env.update(
            FAST_ENV,
            SLURM_CONF=str(self.conf),
            # `worker` and `producer` of this test's Python, importing this checkout.
            PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            PYTHONPATH=":".join(python_path),
        )
        env.update(extra)
        return env

    def run(
        self, *argv: str, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            argv, env=env or self.env(), cwd=cwd, capture_output=True, text=True, timeout=60
        )
        assert res.returncode == 0, f"{' '.join(argv)}: {res.stdout}{res.stderr}"
        return res

    def sbatch(self, *options: str, env: dict[str, str], cwd: Path) -> str:
        """Submit the framestats sbatch script as a user would; returns the job id."""
        res = self.run("sbatch", "--parsable", *options, str(SBATCH_SCRIPT), env=env, cwd=cwd)
        return res.stdout.strip().split(";")[0]

    def job_state(self, job_id: str) -> str:
        out = self.run("scontrol", "show", "job", "-o", job_id).stdout
        match = re.search(r"\bJobState=(\S+)", out)
        assert match, out
        return match[1]

    def wait_ended(self, job_id: str, timeout: float) -> str:
        """Wait until the job has ended by itself; returns its final state."""
        wait_until(lambda: self.job_state(job_id) in ENDED, timeout, f"end of job {job_id}")
        return self.job_state(job_id)

    def owns(self, pid: int) -> bool:
        """True when ``pid`` is a process of this cluster (its environment names our config)."""
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                return f"SLURM_CONF={self.conf}".encode() in fh.read().split(b"\0")
        except OSError:
            return False


class Unavailable(Exception):
    """Raised when the cluster cannot start here; carries the reason."""


def cluster_unavailable(reason: str) -> None:
    """Skip; in CI fail, since the programs are installed and this is root (checked first)."""
    if os.environ.get("CI"):
        pytest.fail(f"Slurm cluster did not start: {reason}")
    pytest.skip(f"no Slurm cluster: {reason}")


def node_definition() -> tuple[str, str, int]:
    """This host as slurmd sees it: (NodeName, slurm.conf node line, CPUs)."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30)
    line = out.stdout.splitlines()[0] if out.returncode == 0 and out.stdout else ""
    fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
    if "NodeName" not in fields or "CPUs" not in fields:
        raise Unavailable(f"slurmd -C printed no node line: {out.stdout}{out.stderr}")
    return fields["NodeName"], line, int(fields["CPUs"])


def write_slurm_conf(folder: Path, node_line: str, node: str, munge_socket: Path) -> Path:
    """A one-node cluster: this host is controller and node, everything in ``folder``.

    Daemons run as root (no `slurm` user needed); processes are tracked through /proc
    and tasks are not bound (containers offer no cgroups to Slurm); no accounting.
    """
    (folder / "spool" / node).mkdir(parents=True)  # slurmd does not create its spool dir
    (folder / "state").mkdir()
    conf = folder / "slurm.conf"
    conf.write_text(
        f"""\
ClusterName=framestats-test
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool/%n
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
KillWait=5
MailProg=/bin/true
{node_line} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
    )
    return conf


def start_daemon(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def make_cluster(folder: Path) -> Cluster:
    """Write a one-node cluster's munge key and slurm.conf into ``folder``."""
    # munged wants its key private, and its socket's folder and every folder above it
    # searchable by all (mkdtemp makes 0700 folders).
    folder.chmod(0o755)
    (folder / "munge").mkdir(mode=0o755)
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    node, node_line, cpus = node_definition()
    conf = write_slurm_conf(folder, node_line, node, folder / "munge" / "munge.socket")
    return Cluster(folder=folder, conf=conf, node=node, cpus=cpus)


def start_daemons(cluster: Cluster) -> None:
    """Start munged, slurmctld and slurmd; raise Unavailable, with their logs, unless
    the node comes up idle. Each daemon is in ``cluster.daemons`` once started."""
    folder, env = cluster.folder, cluster.env()
    munge_socket = folder / "munge" / "munge.socket"
    munged = start_daemon(
        ["munged", "--foreground", f"--key-file={folder}/munge.key", f"--socket={munge_socket}",
         f"--pid-file={folder}/munged.pid", f"--log-file={folder}/munged.log",
         f"--seed-file={folder}/munged.seed"],
        folder / "munged.out", env,
    )  # fmt: skip
    cluster.daemons.append(munged)
    poll(lambda: munge_socket.exists() or munged.poll() is not None, 10)
    if not munge_socket.exists():
        raise Unavailable(f"munged did not start: {tail(folder / 'munged.out')}")

    # -i: go on although the (new, empty) state folder holds no state files.
    cluster.daemons.append(start_daemon(["slurmctld", "-D", "-i"], folder / "slurmctld.out", env))
    cluster.daemons.append(start_daemon(["slurmd", "-D"], folder / "slurmd.out", env))

    def died() -> bool:
        return any(d.poll() is not None for d in cluster.daemons)

    def node_idle() -> bool:
        res = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%T"], env=env, capture_output=True, text=True
        )
        return res.stdout.strip() == "idle"

    poll(lambda: died() or node_idle(), 30)
    if died() or not node_idle():
        logs = "".join(
            f"\n--- {name}\n{tail(folder / name, 800)}"
            for name in ("slurmctld.out", "slurmctld.log", "slurmd.out", "slurmd.log")
        )
        raise Unavailable(f"slurmctld/slurmd did not bring node {cluster.node} up:{logs}")


def stop_cluster(cluster: Cluster) -> None:
    """Cancel every job, stop the daemons, kill what is left of the jobs (all by pid)."""
    env = cluster.env()

    def queued() -> list[str]:
        res = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True)
        return res.stdout.split()

    if cluster.daemons and (ids := queued()):
        subprocess.run(["scancel", "--signal=KILL", "--full", *ids], env=env, capture_output=True)
        subprocess.run(["scancel", *ids], env=env, capture_output=True)
        poll(lambda: not queued(), 20)
    for daemon in reversed(cluster.daemons):  # slurmd, slurmctld (and its helper), munged
        stop_process(daemon)
    # What a job left behind (slurmstepd runs apart from slurmd) still names our config.
    for entry in os.listdir("/proc"):
        if entry.isdigit() and cluster.owns(int(entry)):
            try:
                os.kill(int(entry), signal.SIGKILL)
            except ProcessLookupError:
                pass


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


@dataclass(frozen=True)
class Stack:
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
    return {int(i) for i in client.smembers(C.job_done_key(job_id))}


def deliveries(client: redis.Redis, job_id: str) -> dict[int, int]:
    return {int(k): int(v) for k, v in client.hgetall(C.job_attempts_key(job_id)).items()}


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
    # and the chunks not begun wait in Redis for the next workers
    assert job_hash(client, job_id)["state"] == "running"
    n_chunks = int(job_hash(client, job_id)["n_chunks"])
    assert len(committed(client, job_id)) < n_chunks

    # When: workers are submitted again (a later allocation)
    second = cluster.sbatch(env=env, cwd=submit_dir)
    wait_until(lambda: job_hash(client, job_id).get("state") in ("done", "failed"), 90, "job done")
    # Then: the job completes: no chunk lost, none counted twice, the reference's numbers
    data = job_hash(client, job_id)
    assert data["state"] == "done", data
    assert int(data["frames_done"]) == big.frames
    assert set(deliveries(client, job_id).values()) == {1}
    shares = client.hgetall(C.job_workers_key(job_id))
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
