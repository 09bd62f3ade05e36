"""The project's exceptions: one base class, a shallow hierarchy.

User errors end the CLI with one line and exit code 2; infrastructure errors with
exit code 3. Chunk errors split into transient (retried) and permanent (fail the job).
"""

from __future__ import annotations


class FramestatsError(Exception):
    """Raised for any failure this project anticipates; the base of all others."""

    exit_code = 1


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

    def __init__(self, message: str, setting: str, limit: float) -> None:
        super().__init__(message)
        self.setting = setting
        self.limit = limit


class PathNotAllowed(UserError):
    """Raised when a path lies outside DATA_ROOT (after resolving '..' and symbolic links)."""

    def __init__(self, path: str, roots: tuple[str, ...]) -> None:
        super().__init__(f"{path} is outside DATA_ROOT ({':'.join(roots)})")
        self.path = path
        self.roots = roots


class JobNotFound(UserError):
    """Raised when a job id or output path names no known job."""


class BrokerUnavailable(FramestatsError):
    """Raised when Redis does not answer at the configured URL."""

    exit_code = 3

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"Redis is not reachable at {url}: {reason}")
        self.url = url
        self.reason = reason


class ConfigError(FramestatsError):
    """Raised when the configuration is unsafe or inconsistent (e.g. pickle accepted)."""

    exit_code = 2


class ChunkError(FramestatsError):
    """Raised when a chunk cannot be computed; ``frames`` names its frame range."""

    def __init__(self, message: str, frames: tuple[int, int] | None = None) -> None:
        super().__init__(message)
        self.frames = frames


class TransientChunkError(ChunkError):
    """Raised for failures worth retrying (I/O hiccup, broker blip)."""


class PermanentChunkError(ChunkError):
    """Raised for failures that retrying cannot fix (corrupt data, missing filter); fails the job."""
