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


def forge_job_folder(spec: JobSpec, folder: str, **changes: Any) -> str:
    """A job folder at ``folder`` whose manifest is ``spec`` with ``changes`` (as a hostile
    user inside DATA_ROOT could write one); returns its manifest's path."""
    import shutil
    from dataclasses import replace

    os.makedirs(os.path.join(folder, C.CHUNKS_DIR))
    shutil.copy(os.path.join(spec.workdir, C.MASK_NAME), os.path.join(folder, C.MASK_NAME))
    manifest = os.path.join(folder, C.MANIFEST_NAME)
    with open(manifest, "w", encoding="utf-8") as fh:
        fh.write(replace(spec, workdir=folder, **changes).dumps())
    return manifest
