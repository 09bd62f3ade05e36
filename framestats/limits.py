"""Limits a submit checks so that a job's outputs stay sane (regions, output size).

The region count is checked where the mask is read (``inputs.masks.to_labels``); the
output size here, once the job is planned. Both refuse with one line naming the
setting that sets the limit.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import LimitExceeded

#: Bytes of one value of one statistic (float64).
VALUE_BYTES = 8


def output_bytes(
    n_frames: int, n_regions: int, n_stats: int, boundaries: Sequence[int]
) -> tuple[int, int]:
    """(bytes of the output's results, bytes of the largest task's result).

    The output holds ``n_frames x n_regions`` float64 values per statistic, the frame
    index and the pixel counts; a task's result is the same for its frames (what a
    worker holds and commits, and what finalize reads back).
    """
    row = n_regions * n_stats * VALUE_BYTES
    largest = max((b - a for a, b in zip(boundaries, boundaries[1:], strict=False)), default=0)
    whole = n_frames * (row + VALUE_BYTES) + n_regions * VALUE_BYTES
    return whole, largest * row


def check_output_size(
    n_frames: int, n_regions: int, n_stats: int, boundaries: Sequence[int], limit: int
) -> int:
    """The estimated bytes; LimitExceeded naming FRAMESTATS_MAX_OUTPUT_GIB when over ``limit``."""
    whole, task = output_bytes(n_frames, n_regions, n_stats, boundaries)
    if whole + task > limit:
        raise LimitExceeded(
            f"the output would take about {_gib(whole + task)} ({n_frames} frames x "
            f"{n_regions} regions x {n_stats} statistics x {VALUE_BYTES} bytes, plus "
            f"{_gib(task)} for the largest task), over the {_gib(limit)} allowed by "
            "FRAMESTATS_MAX_OUTPUT_GIB; select fewer frames, regions or statistics, "
            "or raise the limit",
            "FRAMESTATS_MAX_OUTPUT_GIB",
            limit / 2**30,
        )
    return whole + task


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 / 10 else f"{n / 2**20:,.1f} MiB"
