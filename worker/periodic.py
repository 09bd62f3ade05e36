"""Work a worker process does on its own schedule, beside its chunks: heartbeats, the
lost-message sweep, renewing the finalize lock."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("framestats.worker")


class Periodic:
    """Calls ``step()`` every ``interval`` seconds from a daemon thread until it returns
    False or ``stop()``. An error is logged (once per kind) and the next round tries again:
    a broker blip or a bug here must not stop the process's chunks."""

    def __init__(self, name: str, interval: float, step: Callable[[], bool | None]) -> None:
        self.name = name
        self.interval = interval
        self.step = step
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        failing: type[BaseException] | None = None
        while not self._stop.wait(self.interval):
            try:
                if self.step() is False:
                    return
                failing = None
            except Exception as exc:  # said once until it works again or fails otherwise
                if type(exc) is not failing:
                    log.warning("%s failed (%s: %s); trying again every %.1f s", self.name,
                                type(exc).__name__, exc, self.interval)  # fmt: skip
                failing = type(exc)

    def start(self) -> Periodic:
        self._thread.start()
        return self

    def stop(self, wait: float = 0.0) -> None:
        self._stop.set()
        if wait and self._thread.is_alive():
            self._thread.join(timeout=wait)
