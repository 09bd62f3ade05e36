"""Durations and sizes as people read them."""

from __future__ import annotations


def fmt_seconds(s: float | None) -> str:
    """A duration as M:SS, H:MM:SS or DdHHh; ``--:--`` when unknown."""
    if s is None:
        return "--:--"
    s = int(max(0, s))
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600:02d}h"
    if s >= 3600:
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
