"""What the benchmarks share: timing a step, and writing their section of a results file."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any


def median_seconds(
    fn: Callable[[], Any], reps: int, sync: Callable[[], None] = lambda: None
) -> float:
    """Median seconds of ``fn`` over ``reps`` runs after one warm-up, each synchronised
    (``sync``: e.g. ``torch.cuda.synchronize``) before the clock stops."""
    fn()
    sync()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def replace_section(path: str, name: str, text: str, title: str = "# Benchmark results") -> None:
    """Put ``text`` between benchmark ``name``'s markers in ``path``, keeping the rest (a new
    file starts with ``title``)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    old = ""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            old = fh.read()
    block = f"{begin}\n{text}{end}\n"
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end) + 1 :]
    else:
        new = (old.rstrip("\n") + "\n\n" if old else f"{title}\n\n") + block
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        fh.write(new)
    os.replace(path + ".tmp", path)
