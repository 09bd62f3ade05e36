"""A job's output file as readers see it: where its results are and whose they are."""

from __future__ import annotations

import h5py


def output_job_id(path: str) -> str | None:
    """The job id recorded in a complete output file, or None."""
    try:
        with h5py.File(path, "r") as f:
            value = f.attrs.get("job_id")
    except (OSError, FileNotFoundError):
        return None
    return (
        value.decode() if isinstance(value, bytes) else (str(value) if value is not None else None)
    )
