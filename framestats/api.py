"""The Python API: submit a job, follow it, read its result; what ``import framestats`` gives.

Every function takes the options of the ``producer`` command of the same name, by the
same names, validates them the same way and raises the same exceptions (``errors``:
one class per kind of problem, with the one-line message the command prints). Settings
come from the environment as for the commands (``REDIS_URL``, ``FRAMESTATS_*``), or
from ``settings=`` / ``redis_url=``.

Nothing heavy is imported here: h5py, numpy and redis-py are imported by the functions
that need them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .constants import DEFAULT_QUEUE, DEFAULT_STATS
from .errors import (
    BrokerUnavailable,
    ConfigError,
    JobCancelled,
    JobFailed,
    JobNotFound,
    OptionError,
)
from .messages import JobSpec, JobState
from .settings import Settings

if TYPE_CHECKING:
    import redis

    from .result import Result

#: What a path argument may be.
PathArg = str | os.PathLike[str]

__all__ = ["Job", "Progress", "cancel", "job", "resume", "status", "submit", "workers"]


# --- settings and Redis --------------------------------------------------------------


def _settings(settings: Settings | None, redis_url: str | None) -> Settings:
    """``settings`` (default: from the environment) with ``redis_url`` if given."""
    if settings is None:
        try:
            settings = Settings.from_env()
        except ValueError as exc:  # a malformed FRAMESTATS_* variable
            raise ConfigError(str(exc)) from exc
    if redis_url is not None:
        settings = dataclasses.replace(settings, redis_url=redis_url)
    return settings


@contextlib.contextmanager
def _talking_to(settings: Settings) -> Iterator[None]:
    """Redis failing mid-way (it went away, refused a command) as BrokerUnavailable."""
    import redis

    try:
        yield
    except redis.RedisError as exc:
        reason = str(exc) or type(exc).__name__
        raise BrokerUnavailable(settings.redis_url_redacted, reason) from exc


def _connect(settings: Settings) -> redis.Redis:
    """A client of the configured Redis that answered a PING (else BrokerUnavailable)."""
    from . import connection

    client = connection.connect(settings.redis_url)
    connection.ping(client, settings.redis_url_redacted)
    return client


# --- a job ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """A job's progress as Redis has it now."""

    state: str
    frames_done: int
    frames_total: int
    chunks_done: int
    chunks_total: int
    #: Frames per second since the job (re)started; 0 before the first chunk ends.
    frames_per_s: float
    #: Seconds left at that rate; None when unknown or finished.
    eta_s: float | None
    #: Why the job failed or was cancelled.
    reason: str | None = None

    @property
    def fraction(self) -> float:
        """Frames done / frames in the job, 0..1."""
        return self.frames_done / self.frames_total if self.frames_total else 0.0

    def __str__(self) -> str:
        from .units import fmt_seconds

        return (
            f"{self.chunks_done}/{self.chunks_total} chunks, {self.frames_done}/"
            f"{self.frames_total} frames ({self.fraction:.1%}), {self.frames_per_s:,.0f} "
            f"frames/s, ETA {fmt_seconds(self.eta_s)} ({self.state})"
        )


@dataclass(eq=False)
class Job:
    """A handle on a queued job: its state and progress, waiting for it, its result.

    Returned by ``submit``, ``resume`` and ``job``. Every property reads Redis afresh.
    """

    #: The job's id (what ``producer status`` lists).
    id: str
    #: Where the output file is written.
    output: str
    settings: Settings = field(repr=False)
    #: The job as queued (``submit`` and ``resume`` only).
    spec: JobSpec | None = field(default=None, repr=False)
    #: Chunk tasks queued by the call that returned this handle.
    chunks_queued: int | None = field(default=None, repr=False)
    #: Live worker processes taking from the job's queue when it was queued (None:
    #: not counted); 0 means the chunks wait until a worker starts.
    live_processes: int | None = field(default=None, repr=False)
    #: What planning adjusted (``--chunk-frames`` rounded to the HDF5 chunking).
    note: str | None = field(default=None, repr=False)
    #: The Redis connection, opened on first use.
    connection: redis.Redis | None = field(default=None, repr=False)

    @property
    def client(self) -> redis.Redis:
        if self.connection is None:
            self.connection = _connect(self.settings)
        return self.connection

    def _hash(self) -> tuple[dict[str, str] | None, int]:
        pipe = self.client.pipeline(transaction=False)
        from . import constants as C

        pipe.hgetall(C.job_key(self.id))
        pipe.scard(C.job_key(self.id, C.JobPart.DONE))
        data, done = pipe.execute()
        return (data or None), int(done)

    def _output_complete(self) -> bool:
        from .output import output_job_id

        return output_job_id(self.output) == self.id

    @property
    def state(self) -> str:
        """``queued``, ``running``, ``finalizing``, ``done``, ``failed``, ``cancelled`` (a
        JobState), or ``unknown`` when Redis no longer knows the job and its output is
        not in place."""
        with _talking_to(self.settings):
            data, _ = self._hash()
        if data is not None:
            return JobState(data["state"])
        return JobState.DONE if self._output_complete() else "unknown"

    @property
    def progress(self) -> Progress:
        """Frames and chunks done of the total, the rate and the ETA."""
        import time

        from .monitor import summarize_job

        with _talking_to(self.settings):
            data, done = self._hash()
        if data is None:
            raise JobNotFound(f"job {self.id} is not known to Redis; see 'producer resume'")
        row = summarize_job(data, done, time.time())
        return Progress(
            state=row["state"],
            frames_done=row["frames_done"],
            frames_total=row["frames_total"],
            chunks_done=row["chunks_done"],
            chunks_total=row["chunks_total"],
            frames_per_s=row["frames_per_s"],
            eta_s=row["eta_s"],
            reason=row["reason"],
        )

    def status(self) -> dict[str, Any]:
        """Everything ``producer status JOB --json`` shows (parameters, workers, errors)."""
        from . import monitor

        with _talking_to(self.settings):
            detail = monitor.job_detail(self.client, self.id, self.settings.worker_timeout)
        if detail is None:
            raise JobNotFound(f"job {self.id} is not known to Redis")
        return detail

    def wait(
        self, progress: bool | Any = False, timeout: float | None = None, interval: float = 0.25
    ) -> JobState:
        """Block until the job ends; returns ``JobState.DONE`` once its output is in place.

        ``progress=True`` shows a progress bar: a widget in a Jupyter notebook, the
        ``producer --wait`` line on stderr elsewhere (redrawn in place on a terminal,
        a line every 5 s when stderr is a file or pipe); a writable text stream shows
        that line there. Raises JobFailed / JobCancelled (with the reason), WaitTimeout
        after ``timeout`` seconds (the job keeps running), JobLost when Redis forgot
        the job, BrokerUnavailable when Redis stays away.
        """
        from . import progress as bars

        view: Any = None
        if progress is True:
            view = bars.NotebookBar(self.id) if bars.in_notebook() else bars.TextBar(sys.stderr)
        elif progress:
            view = bars.TextBar(progress)
        else:
            view = bars.Silent()
        with _talking_to(self.settings):
            data, _ = self._hash()
            if data is None and self._output_complete():
                return JobState.DONE  # finished, and Redis has since forgotten it
            try:
                final = bars.follow(self.client, self.id, interval, view=view, timeout=timeout)
            finally:
                close = getattr(view, "close", None)
                if close is not None:
                    close()
        state = JobState(final["state"])
        if state is JobState.CANCELLED:
            raise JobCancelled(self.id, state.value, final.get("reason"))
        if state is not JobState.DONE:
            raise JobFailed(self.id, state.value, final.get("reason"))
        return state

    def result(self, timeout: float | None = None) -> Result:
        """The job's output (``Result``), once it is in place: waits for the job as
        ``wait`` does (no progress bar) and raises as it does."""
        from .result import Result

        self.wait(timeout=timeout)
        return Result(self.output)

    def cancel(self) -> bool:
        """``cancel(job.id)``: True when cancelled, False when it had already finished."""
        return cancel(self.id, settings=self.settings)


# --- the functions -------------------------------------------------------------------


def _paths(inputs: PathArg | Sequence[PathArg]) -> tuple[str, ...]:
    if isinstance(inputs, str | os.PathLike):
        return (os.fspath(inputs),)
    items = tuple(os.fspath(p) for p in inputs)
    if not items:
        raise OptionError("no input given; pass a file, a glob pattern or a list of them")
    return items


def _frames(frames: slice | str | None) -> str | None:
    """``--frames`` text of a slice (or the text itself)."""
    if frames is None or isinstance(frames, str):
        return frames
    if not isinstance(frames, slice):
        raise OptionError(
            f"frames must be a slice or 'START:STOP[:STEP]', got {type(frames).__name__}"
        )
    parts = (frames.start, frames.stop, frames.step)
    if any(p is not None and (isinstance(p, bool) or not isinstance(p, int)) for p in parts):
        raise OptionError(f"frames {frames!r}: START, STOP and STEP must be integers or None")
    text = f"{'' if frames.start is None else frames.start}:{'' if frames.stop is None else frames.stop}"
    return text + (f":{frames.step}" if frames.step is not None else "")


def _valid_range(value: str | Sequence[float | None] | None) -> str | None:
    """``--valid-range`` text of a (LO, HI) pair (or the text itself)."""
    if value is None or isinstance(value, str):
        return value
    bounds = tuple(value)
    if len(bounds) != 2:
        raise OptionError(f"valid_range {value!r}: expected (LO, HI) or 'LO:HI'")
    return ":".join("" if b is None else str(b) for b in bounds)


def _chunk_frames(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionError(f"--chunk-frames must be a positive number of frames, got {value!r}")
    return value


def _exclude(exclude: Any) -> tuple[Any, ...]:
    """One bad-pixel mask or a sequence of them (paths or arrays)."""
    if exclude is None:
        return ()
    if isinstance(exclude, str | os.PathLike) or hasattr(exclude, "__array__"):
        return (exclude,)
    return tuple(exclude)


def _mask(mask: Any) -> Any:
    return os.fspath(mask) if isinstance(mask, os.PathLike) else mask


def submit(
    inputs: PathArg | Sequence[PathArg],
    mask: Any,
    *,
    dataset: str | None = None,
    output: PathArg | None = None,
    stats: str | Sequence[str] = DEFAULT_STATS,
    chunk_frames: int | None = None,
    queue: str | None = None,
    overwrite: bool = False,
    frames: slice | str | None = None,
    mask_convention: str = "labels",
    invert: bool = False,
    exclude: Any = (),
    detector_mask: bool = True,
    valid_range: str | Sequence[float | None] | None = None,
    redis_url: str | None = None,
    settings: Settings | None = None,
) -> Job:
    """Queue a job computing per-frame statistics of ``inputs`` inside ``mask``; ``producer submit``.

    ``inputs``: an HDF5 file, a glob pattern (``"scan_*.h5"``), an Eiger master file, or
    a list of them, read in sorted order as one sequence of frames. ``mask``: a ``.npy``,
    ``.tif``/``.png`` or ``FILE.h5:/dataset`` path, or an array: boolean (one region) or
    integer labels 1..K (an array is kept in the job folder, recorded with its sha256).
    ``frames``: a ``slice`` or ``"START:STOP[:STEP]"``; ``valid_range``: ``(LO, HI)`` or
    ``"LO:HI"``; ``exclude``: bad-pixel masks (paths or arrays); ``stats``: a sequence
    or ``"sum,mean"``; ``queue``: None for the default queue. The rest as the command's
    options of the same names.

    Every check runs before anything is written or queued; a bad input raises a
    ``UserError`` subclass (InputError, MaskError, OptionError, OutputError,
    PathNotAllowed) and an unreachable Redis BrokerUnavailable.
    """
    from .submission import SubmitRequest
    from .submission import submit as submit_job

    cfg = _settings(settings, redis_url)
    request = SubmitRequest(
        inputs=_paths(inputs),
        mask=_mask(mask),
        dataset=dataset,
        output=None if output is None else os.fspath(output),
        stats=stats,  # type: ignore[arg-type]  # parse_stats takes text or a sequence
        chunk_frames=_chunk_frames(chunk_frames),
        queue=DEFAULT_QUEUE if queue is None else queue,
        overwrite=bool(overwrite),
        frames=_frames(frames),
        mask_convention=mask_convention,
        invert=bool(invert),
        exclude=_exclude(exclude),
        detector_mask=bool(detector_mask),
        valid_range=_valid_range(valid_range),
    )
    with _talking_to(cfg):
        prepared = submit_job(request, cfg)
    spec = prepared.spec
    return Job(
        spec.job_id,
        spec.output,
        cfg,
        spec=spec,
        chunks_queued=spec.n_chunks,
        live_processes=prepared.live_processes,
        note=prepared.plan.note,
    )


def resume(
    target: PathArg, *, redis_url: str | None = None, settings: Settings | None = None
) -> Job:
    """Queue again the chunks of a job (id or output path) that have no committed result;
    ``producer resume``. ``chunks_queued`` on the returned Job says how many."""
    from .control import resume as resume_job

    cfg = _settings(settings, redis_url)
    with _talking_to(cfg):
        spec, queued = resume_job(os.fspath(target), cfg)
    return Job(spec.job_id, spec.output, cfg, spec=spec, chunks_queued=queued)


def cancel(job_id: str, *, redis_url: str | None = None, settings: Settings | None = None) -> bool:
    """Cancel a job (queued chunks are skipped, running ones finish, no output is written);
    ``producer cancel``. False when it had already finished; JobNotFound when unknown."""
    from .control import cancel as cancel_job

    cfg = _settings(settings, redis_url)
    with _talking_to(cfg):
        return cancel_job(job_id, cfg)


def job(target: PathArg, *, redis_url: str | None = None, settings: Settings | None = None) -> Job:
    """A handle on a job Redis knows, named by id or by its output path (``producer watch``)."""
    from . import monitor

    cfg = _settings(settings, redis_url)
    client = _connect(cfg)
    with _talking_to(cfg):
        view = monitor.job_status(client, os.fspath(target), cfg.worker_timeout)
    if view["state"] == "unknown":
        raise JobNotFound(f"job {view['id']} is not known to Redis; see 'producer resume'")
    return Job(view["id"], view["output"], cfg, connection=client)


def status(
    job: PathArg | None = None,
    *,
    limit: int | None = 25,
    redis_url: str | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """``producer status [JOB] --json``: recent jobs (``limit``; None: all), queue depths and
    live workers; or one job (id or output path) in detail."""
    from . import monitor

    cfg = _settings(settings, redis_url)
    client = _connect(cfg)
    with _talking_to(cfg):
        if job is not None:
            return monitor.job_status(client, os.fspath(job), cfg.worker_timeout)
        return monitor.overview(client, cfg.worker_timeout, limit)


def workers(
    *, redis_url: str | None = None, settings: Settings | None = None
) -> list[dict[str, Any]]:
    """``producer workers --json``: live worker processes (device, queues, chunks, rates)."""
    from . import monitor

    cfg = _settings(settings, redis_url)
    client = _connect(cfg)
    with _talking_to(cfg):
        return monitor.workers(client, cfg.worker_timeout)
