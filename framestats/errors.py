"""The project's exceptions: one base class, a shallow hierarchy.

User errors end the CLI with one line and exit code 2; infrastructure errors with
exit code 3. Chunk errors split into transient (retried) and permanent (fail the job).
"""

from __future__ import annotations


class FramestatsError(Exception):
    """Raised for any failure this project anticipates; the base of all others.

    Keyword arguments become attributes (the details a caller may act on), declared on
    each subclass for type checkers."""

    exit_code = 1

    def __init__(self, *args: object, **details: object) -> None:
        super().__init__(*args)
        self.__dict__.update(details)


class UserError(FramestatsError):
    """Raised when the user's input or options are wrong; nothing was queued or written."""

    exit_code = 2


class InputError(UserError):
    """Raised when an input file or dataset cannot be used."""


class MaskError(UserError):
    """Raised when a mask cannot be loaded or does not fit the data."""


class OptionError(UserError):
    """Raised when a command-line option has an invalid value."""


class OutputError(UserError):
    """Raised when the output path cannot be written (exists, folder missing, not writable)."""


class LimitExceeded(UserError):
    """Raised when a job would exceed a configured limit; names the setting that sets it."""

    setting: str
    limit: float

    def __init__(self, message: str, setting: str, limit: float) -> None:
        super().__init__(message, setting=setting, limit=limit)


class PathNotAllowed(UserError):
    """Raised when a path lies outside DATA_ROOT (after resolving '..' and symbolic links)."""

    path: str
    roots: tuple[str, ...]

    def __init__(self, path: str, roots: tuple[str, ...]) -> None:
        super().__init__(f"{path} is outside DATA_ROOT ({':'.join(roots)})", path=path, roots=roots)


class JobNotFound(UserError):
    """Raised when a job id or output path names no known job."""


class JobStateError(UserError):
    """Raised when a job's state forbids the request (resuming a job that still runs)."""


class JobFolderError(FramestatsError):
    """Raised when a job folder or a file in it is not what it must be (a link, a FIFO,
    missing, outside DATA_ROOT); fails the job in a worker, exit code 2 in the CLI."""

    exit_code = 2


class StatisticNotFound(UserError, KeyError):
    """Raised when an output file holds no such statistic (a KeyError too, as a mapping's is)."""

    # KeyError's str() quotes its argument; this is a one-line message like the others.
    __str__ = Exception.__str__


class JobFailed(FramestatsError):
    """Raised by ``Job.wait`` and ``Job.result`` when the job failed; ``reason`` says why."""

    job_id: str
    state: str
    reason: str | None

    def __init__(self, job_id: str, state: str, reason: str | None) -> None:
        message = f"job {job_id} {state}: {reason or 'no reason recorded'}"
        super().__init__(message, job_id=job_id, state=state, reason=reason)


class JobCancelled(JobFailed):
    """Raised by ``Job.wait`` and ``Job.result`` when the job was cancelled."""


class JobLost(FramestatsError):
    """Raised when a followed job's state vanished from Redis (``resume`` completes it)."""


class WaitTimeout(FramestatsError, TimeoutError):
    """Raised when ``Job.wait``'s timeout passes before the job ends; the job keeps running."""

    job_id: str
    timeout: float

    def __init__(self, job_id: str, timeout: float) -> None:
        message = f"job {job_id} has not finished after {timeout:g} s; it keeps running"
        super().__init__(message, job_id=job_id, timeout=timeout)


class BrokerUnavailable(FramestatsError):
    """Raised when Redis does not answer at the configured URL."""

    exit_code = 3
    url: str
    reason: str

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"Redis is not reachable at {url}: {reason}", url=url, reason=reason)


class ConfigError(FramestatsError):
    """Raised when the configuration is unsafe or inconsistent (e.g. pickle accepted)."""

    exit_code = 2


class ChunkError(FramestatsError):
    """Raised when a chunk cannot be computed; ``frames`` names its frame range."""

    frames: tuple[int, int] | None

    def __init__(self, message: str, frames: tuple[int, int] | None = None) -> None:
        super().__init__(message, frames=frames)


class TransientChunkError(ChunkError):
    """Raised for failures worth retrying (I/O hiccup, broker blip)."""


class PermanentChunkError(ChunkError):
    """Raised for failures that retrying cannot fix (corrupt data, missing filter); fails the job."""
