"""`producer plot`: per-frame traces of one statistic, one line per region, as a PNG.

matplotlib (Agg backend, no display needed) is imported only here; the output is read
with ``framestats.result.Result``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from framestats.errors import OptionError

#: Regions named in the legend; more are drawn but not labelled.
MAX_LEGEND = 12


def default_png(output: str, stat: str) -> str:
    root, _ext = os.path.splitext(output)
    return f"{root}.{stat}.png"


def plot(
    output: str,
    stat: str | None = None,
    png: str | None = None,
    regions: Sequence[int] | None = None,
    dpi: int = 120,
) -> str:
    """Draw ``/results/<stat>`` of a job's output against the frame index; returns the PNG
    path. No ``stat``: ``mean``, or the first statistic the file has."""
    from framestats.result import Result

    res = Result(output)
    stat = stat or res.default_stat()
    values = res[stat]  # StatisticNotFound names the statistics the file has
    frames = res.frame_index
    counts = res.pixel_count
    job_id = res.job_id or ""
    source = res.attrs.get("input_file", "")
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
            if counts.size:
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
