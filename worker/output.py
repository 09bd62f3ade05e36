"""The layout of a job's output file."""

from __future__ import annotations

from typing import Any

import h5py
import numpy as np

from framestats.messages import JobSpec


def create(
    f: h5py.File,
    spec: JobSpec,
    attrs: dict[str, Any],
    counts: np.ndarray,
    frame_index: np.ndarray,
) -> dict[str, h5py.Dataset]:
    """Lay out a job's output in an empty open file: root attributes, pixel counts, frame
    index; returns each statistic's empty (N, K) float64 dataset for the caller to fill."""
    grp = f.create_group("results")
    out = {
        s: grp.create_dataset(s, shape=(spec.n_frames, spec.n_regions), dtype=np.float64)
        for s in spec.stats
    }
    grp.create_dataset("pixel_count", data=counts)
    grp.create_dataset("frame_index", data=frame_index)
    grp.attrs["statistics"] = ",".join(spec.stats)
    for k, v in attrs.items():
        f.attrs[k] = v
    return out
