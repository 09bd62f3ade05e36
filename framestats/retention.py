"""Nothing grows forever: finished jobs leave Redis, failed and cancelled jobs' folders go.

When a job ends (done, failed, cancelled) ``jobs.finish`` drops its per-chunk hashes at
once and sets its other keys to expire after ``FRAMESTATS_JOB_TTL`` (7 days by default).
The job index (``fs:jobs``) is a sorted set no expiry reaches: ``trim_index`` removes the
ids whose job hash is gone; ``producer status``, ``prune`` and the workers' sweep
(``worker.recovery``, each process at most every ``TRIM_INTERVAL``) call it.

``prune`` forgets finished jobs now (all, or those finished longer ago than a given
age) and removes the job folders (``OUTPUT.parts/``) of failed and cancelled ones: a
folder is removed only when it is a real folder (not a symbolic link), named after the
job's output, and its manifest names this job; it is renamed away first and checked
again, so a job started meanwhile for the same output keeps its folder. ``shutil.rmtree``
unlinks symbolic links inside without following them. The output of a done job is
never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from . import constants as C
from .errors import PathNotAllowed
from .paths import check_allowed, workdir_for

#: Seconds between one worker process's trims of the job index.
TRIM_INTERVAL = 300
#: States whose jobs prune forgets.
FINISHED = ("done", "failed", "cancelled")
#: States whose job folders prune removes (a done job's folder is gone with finalize).
FOLDER_STATES = ("failed", "cancelled")
#: A manifest larger than this is not one of ours.
_MANIFEST_MAX = 64 * 2**20


@dataclass
class Pruned:
    """What one ``prune`` did (or, dry, would do)."""

    #: Job ids whose keys were deleted, by state.
    jobs: dict[str, list[str]] = field(default_factory=dict)
    #: Job folders removed.
    folders: list[str] = field(default_factory=list)
    #: (folder, why it was left in place).
    kept: list[tuple[str, str]] = field(default_factory=list)
    #: Ids dropped from the job index because their job hash had expired.
    trimmed: int = 0

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.jobs.values())


def trim_index(client: Any, ids: list[str] | None = None) -> int:
    """Drop from the job index the ids whose job hash is gone; returns how many.

    ``ids``: the ids to check (default: all in the index).
    """
    if ids is None:
        ids = client.zrange(C.JOBS_INDEX, 0, -1)
    if not ids:
        return 0
    pipe = client.pipeline(transaction=False)
    for job_id in ids:
        pipe.exists(C.job_key(job_id))
    gone = [job_id for job_id, n in zip(ids, pipe.execute(), strict=True) if not n]
    return forget_ids(client, gone)


#: Lua: drop ids whose job hash does not exist (checked here: a job resumed since the
#: caller looked keeps its place). KEYS: index, active set; ARGV: prefix, ids.
_FORGET = """
local n = 0
for i = 2, #ARGV do
  if redis.call('exists', ARGV[1] .. ARGV[i]) == 0 then
    n = n + redis.call('zrem', KEYS[1], ARGV[i])
    redis.call('srem', KEYS[2], ARGV[i])
  end
end
return n
"""


def forget_ids(client: Any, gone: list[str]) -> int:
    """Remove ``gone`` from the index and the active set, those whose job hash is still
    missing; returns how many left the index."""
    removed = 0
    for i in range(0, len(gone), 1000):  # keeps each script short
        removed += int(
            client.eval(_FORGET, 2, C.JOBS_INDEX, C.ACTIVE_JOBS, C.job_key(""), *gone[i : i + 1000])
        )
    return removed


def prune(
    client: Any,
    older_than: float | None = None,
    data_root: tuple[str, ...] = (),
    dry_run: bool = False,
    now: float | None = None,
) -> Pruned:
    """Forget finished jobs (those finished ``older_than`` s ago or more; None: all) and
    remove the folders of the failed and cancelled ones among them."""
    now = time.time() if now is None else now
    report = Pruned()
    ids = client.zrange(C.JOBS_INDEX, 0, -1)
    pipe = client.pipeline(transaction=False)
    for job_id in ids:
        pipe.hmget(C.job_key(job_id), "state", "finished", "output", "workdir")
    rows = pipe.execute()
    gone = []
    for job_id, (state, finished, output, workdir) in zip(ids, rows, strict=True):
        if state is None:
            gone.append(job_id)
            continue
        if state not in FINISHED:
            continue
        if older_than is not None and now - _float(finished) < older_than:
            continue
        if state in FOLDER_STATES and output:
            folder = workdir or workdir_for(output)
            if dry_run:
                if os.path.lexists(folder):
                    report.folders.append(folder)
            else:
                why = remove_workdir(folder, output, job_id, data_root)
                if why is None:
                    report.folders.append(folder)
                elif why.startswith("cannot remove"):
                    report.kept.append((folder, why))
                    continue  # keep the job's record: prune again once the folder can go
                elif why != "gone":
                    report.kept.append((folder, why))
        if dry_run or _delete_if_finished(client, job_id):
            report.jobs.setdefault(state, []).append(job_id)
    report.trimmed = len(gone) if dry_run else forget_ids(client, gone)
    return report


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _delete_if_finished(client: Any, job_id: str) -> bool:
    """Delete every key of the job, unless it was resumed (no longer finished) meanwhile."""
    from redis import WatchError

    key = C.job_key(job_id)
    with client.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(key)
            if pipe.hget(key, "state") not in FINISHED:
                pipe.unwatch()
                return False
            pipe.multi()
            pipe.delete(*C.job_keys(job_id))
            pipe.zrem(C.JOBS_INDEX, job_id)
            pipe.srem(C.ACTIVE_JOBS, job_id)
            pipe.execute()
            return True
        except WatchError:
            return False


def manifest_job_id(folder: str) -> str | None:
    """The job id in ``folder``'s manifest, read without following a symbolic link;
    None when the folder or its manifest is not a plain folder or file of ours."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fd = os.open(C.MANIFEST_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError:
        return None
    finally:
        os.close(dir_fd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > _MANIFEST_MAX:
            return None
        with os.fdopen(fd, "rb") as fh:
            fd = -1
            job_id = json.loads(fh.read()).get("job_id")
    except (OSError, ValueError, AttributeError):
        return None
    finally:
        if fd >= 0:
            os.close(fd)
    return job_id if isinstance(job_id, str) else None


def remove_workdir(
    folder: str, output: str, job_id: str, data_root: tuple[str, ...] = ()
) -> str | None:
    """Remove job ``job_id``'s folder; None when removed, else why it was left.

    "gone" when there is nothing to remove; a reason starting "cannot remove" when
    removing it failed (worth trying again).
    """
    if os.path.abspath(folder) != workdir_for(output):
        return f"not the job folder of {output}; left alone"
    try:
        info = os.lstat(folder)
    except FileNotFoundError:
        return "gone"
    except OSError as exc:
        return f"cannot remove {folder}: {exc.strerror or exc}"
    if stat.S_ISLNK(info.st_mode):
        return "a symbolic link; not followed, left alone"
    if not stat.S_ISDIR(info.st_mode):
        return "not a folder; left alone"
    if data_root:
        try:
            check_allowed(folder, data_root)
        except PathNotAllowed as exc:
            return f"{exc}; left alone"
    if manifest_job_id(folder) != job_id:
        return "holds no manifest of this job (another job's folder?); left alone"
    doomed = f"{folder}.pruning-{uuid.uuid4().hex[:12]}"
    try:
        os.rename(folder, doomed)  # one step: a resume or submit sees it or nothing
    except OSError as exc:
        return f"cannot remove {folder}: {exc.strerror or exc}"
    if manifest_job_id(doomed) != job_id:  # replaced between the check and the rename
        try:
            os.rename(doomed, folder)
        except OSError:
            return f"another job's folder was moved to {doomed} (its place was taken); left"
        return "holds no manifest of this job (another job's folder?); left alone"
    try:
        shutil.rmtree(doomed)
    except OSError as exc:
        return f"cannot remove {doomed}: {exc.strerror or exc}"
    return None
