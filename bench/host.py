"""What machine a benchmark ran on (Linux /proc; "?" where it cannot tell)."""

from __future__ import annotations


def cpu_model(default: str = "?") -> str:
    """The CPU's model name from /proc/cpuinfo, or ``default``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            return next(
                line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")
            )
    except (OSError, StopIteration):
        return default
