"""`producer plot`: per-frame traces of one statistic, one line per region, as a PNG.

matplotlib (Agg backend, no display needed) and h5py are imported only here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from framestats.errors import InputError, OptionError

#: Regions named in the legend; more are drawn but not labelled.
MAX_LEGEND = 12


def default_png(output: str, stat: str) -> str:
    root, _ext = os.path.splitext(output)
    return f"{root}.{stat}.png"


def plot(
    output: str,
    stat: str = "mean",
    png: str | None = None,
    regions: Sequence[int] | None = None,
    dpi: int = 120,
) -> str:
    """Draw ``/results/<stat>`` of a job's output against the frame index; returns the PNG path."""
    import h5py
    import numpy as np

    if not os.path.exists(output):
        raise InputError(f"output file not found: {output}")
    try:
        with h5py.File(output, "r") as f:
            results = f.get("results")
            if results is None:
                raise InputError(f"{output} has no /results group (not a framestats output)")
            if stat not in results:
                have = ",".join(k for k in results if k not in ("pixel_count", "frame_index"))
                raise OptionError(f"statistic {stat} is not in {output}; it has {have}")
            values = np.asarray(results[stat][()], dtype=np.float64)
            frames = (
                np.asarray(results["frame_index"][()])
                if "frame_index" in results
                else np.arange(values.shape[0])
            )
            counts = np.asarray(results["pixel_count"][()]) if "pixel_count" in results else None
            job_id = f.attrs.get("job_id", "")
            source = f.attrs.get("input_file", "")
    except OSError as exc:
        raise InputError(f"cannot read {output}: {exc}") from exc
    if values.ndim == 1:
        values = values[:, None]
    k = values.shape[1]
    chosen = list(regions) if regions else list(range(1, k + 1))
    bad = [r for r in chosen if not 1 <= r <= k]
    if bad:
        raise OptionError(f"region {bad[0]} does not exist; the output has regions 1..{k}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5), layout="constrained")
    try:
        for r in chosen:
            label = f"region {r}"
            if counts is not None:
                label += f" ({int(counts[r - 1])} px)"
            ax.plot(
                frames, values[:, r - 1], lw=0.8, label=label if len(chosen) <= MAX_LEGEND else None
            )
        ax.set_xlabel("frame")
        ax.set_ylabel(stat)
        title = os.path.basename(str(source) or output)
        ax.set_title(f"{stat} per frame: {title}" + (f" (job {job_id})" if job_id else ""))
        ax.grid(True, alpha=0.3)
        if len(chosen) <= MAX_LEGEND:
            ax.legend(loc="best", fontsize="small")
        png = png or default_png(output, stat)
        fig.savefig(png, dpi=dpi)
    finally:
        plt.close(fig)
    return png
