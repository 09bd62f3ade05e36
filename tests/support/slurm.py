"""A one-node Slurm cluster for tests: munged, slurmctld and slurmd started as root from a
temporary folder with their own ports, munge key and socket, and stopped by pid."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.wait import wait_until
from tests.support.workers import FAST_ENV, free_port

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
    with contextlib.suppress(TimeoutError):
        wait_until(lambda: munge_socket.exists() or munged.poll() is not None, 10, "")
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

    with contextlib.suppress(TimeoutError):
        wait_until(lambda: died() or node_idle(), 30, "")
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
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: not queued(), 20, "")
    for daemon in reversed(cluster.daemons):  # slurmd, slurmctld (and its helper), munged
        stop_process(daemon)
    # What a job left behind (slurmstepd runs apart from slurmd) still names our config.
    for entry in os.listdir("/proc"):
        if entry.isdigit() and cluster.owns(int(entry)):
            try:
                os.kill(int(entry), signal.SIGKILL)
            except ProcessLookupError:
                pass
