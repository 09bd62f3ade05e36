"""Waiting for something to happen, with a deadline (never sleep-then-assert)."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(
    predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.02
) -> None:
    """Return once ``predicate()`` is true; TimeoutError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not seen within {timeout} s: {what}")
        time.sleep(interval)
