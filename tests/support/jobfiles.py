"""Reading a job folder as the workers wrote it (test helpers)."""

from __future__ import annotations

import os
from typing import Any

from framestats import constants as C
from framestats.chunkfile import chunk_name, read_chunk
from framestats.jobdir import load_job
from framestats.messages import JobSpec


def chunk_file(workdir: str, index: int) -> str:
    """Where chunk ``index`` of the job in ``workdir`` is committed."""
    return os.path.join(workdir, C.CHUNKS_DIR, chunk_name(index))


def load_manifest(path: str) -> JobSpec:
    with open(path, encoding="utf-8") as fh:
        return JobSpec.loads(fh.read())


def chunk_meta(workdir: str, index: int) -> dict[str, Any]:
    """Who committed chunk ``index`` (its file's header), read as finalize reads it."""
    spec, folder = load_job(os.path.join(workdir, C.MANIFEST_NAME), None)
    with folder:
        return dict(read_chunk(folder, spec, index).meta)
