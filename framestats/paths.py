"""Where files live: the job folder beside the output, and the DATA_ROOT rule."""

from __future__ import annotations

import os

from .constants import CHUNKS_DIR, WORKDIR_SUFFIX
from .errors import PathNotAllowed


def workdir_for(output: str) -> str:
    """The job folder for an output path: manifest, mask copy and committed chunks."""
    return os.path.abspath(output) + WORKDIR_SUFFIX


#: The committed result files' ending (``producer.results`` writes and reads them).
CHUNK_SUFFIX = ".chunk"
#: The ending before 2026-11-27 (``.npz``): still read, so that a job a worker of an
#: earlier version began finishes after an upgrade.
LEGACY_CHUNK_SUFFIX = ".npz"


def chunk_path(workdir: str, index: int, suffix: str = CHUNK_SUFFIX) -> str:
    """Where chunk ``index``'s committed result lives (``LEGACY_CHUNK_SUFFIX``: where an
    earlier version committed it)."""
    return os.path.join(workdir, CHUNKS_DIR, f"{index:08d}{suffix}")


def chunk_index(name: str) -> int | None:
    """The chunk index a file name in the chunks folder commits, or None (temporary files)."""
    for suffix in (CHUNK_SUFFIX, LEGACY_CHUNK_SUFFIX):
        stem = name[: -len(suffix)]
        if name.endswith(suffix) and stem.isdigit():
            return int(stem)
    return None


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
