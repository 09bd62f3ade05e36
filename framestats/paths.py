"""Where files live: the job folder beside the output, and the DATA_ROOT rule."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable

from .constants import WORKDIR_SUFFIX
from .errors import PathNotAllowed


def workdir_for(output: str) -> str:
    """The job folder for an output path: manifest, mask copy and committed chunks."""
    return os.path.abspath(output) + WORKDIR_SUFFIX


def check_allowed(path: str, roots: tuple[str, ...]) -> str:
    """The real path of ``path`` if it lies under one of ``roots``; else PathNotAllowed.

    Symbolic links and '..' are resolved first, so a link inside a root that points
    outside it is refused. A path that does not exist yet (an output) is judged by
    its real parent folder. Empty ``roots`` allows everything.
    """
    real = os.path.realpath(path)
    if not roots:
        return real
    for root in roots:
        real_root = os.path.realpath(root)
        if real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep):
            return real
    raise PathNotAllowed(path, roots)


def write_atomic(path: str, write: Callable[[str], None]) -> None:
    """``write(tmp)`` to a temporary file beside ``path`` (a name no other writer picks),
    fsync it and rename it to ``path``: a reader sees no file or a whole one."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
