"""`producer export`: a job's output as a CSV or Parquet table (pandas; pyarrow for Parquet).

One row per frame (the ``frame`` column holds the source frame number), one column per
statistic and region, named ``<stat>_<region>`` (``mean_1``, ``mean_2``, ...).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from framestats.errors import OptionError, OutputError

#: File name endings of the formats.
SUFFIXES = {"csv": ".csv", "parquet": ".parquet"}


def default_target(output: str, fmt: str) -> str:
    root, _ext = os.path.splitext(output)
    return root + SUFFIXES[fmt]


def export(
    output: str, fmt: str = "csv", stats: Sequence[str] = (), target: str | None = None
) -> str:
    """Write the table of ``stats`` (default: all the file has); returns the path written."""
    from framestats.paths import write_atomic
    from framestats.result import Result

    if fmt not in SUFFIXES:
        raise OptionError(f"--format {fmt!r} is unknown; choose from {', '.join(SUFFIXES)}")
    res = Result(output)
    chosen = list(dict.fromkeys(stats)) or list(res.stats)
    for stat in chosen:
        res[stat]  # StatisticNotFound names the statistics the file has
    try:
        table = res.to_pandas(chosen)
        if fmt == "parquet":
            import pyarrow  # noqa: F401  (pandas' Parquet engine)
    except ImportError as exc:
        needs = "pandas pyarrow" if fmt == "parquet" else "pandas"
        raise OptionError(f"--format {fmt} needs {needs} (pip install {needs})") from exc
    table.columns = [f"{stat}_{region}" for stat, region in table.columns]
    target = target or default_target(output, fmt)
    folder = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(folder):
        raise OutputError(f"output folder does not exist: {folder}")

    def write(tmp: str) -> None:
        if fmt == "csv":
            table.to_csv(tmp, index=True)
        else:
            table.to_parquet(tmp, index=True)

    write_atomic(target, write)
    return target
