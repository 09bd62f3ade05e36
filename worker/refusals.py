"""Riding out a Redis that refuses writes, without losing a chunk or the worker.

Redis answers a write with an error, not a broken connection, when it cannot take one:
``OOM`` (``maxmemory`` reached under ``noeviction``, as the compose file configures),
``MISCONF`` (a failed RDB save with ``stop-writes-on-bgsave-error``) or ``READONLY``
(a replica, e.g. during a fail-over). Reads still work. Three places meet it:

- The worker's own client (tasks, heartbeat, sweep): ``retry()`` makes each refused
  command, script or transaction wait and try again in place, for up to ``WAIT_S``
  (``FRAMESTATS_REFUSED_WRITES_WAIT``), as redis-py already does for a lost connection.
  Each Redis step of a task is one script or one MULTI, so a refused step did nothing
  and doing it again is exact (what rides along a chunk's commit, its heartbeat and
  latency metric, is harmless to repeat); a WATCHed transaction gets a WatchError
  instead, so its caller reads again.
  One log line names the reason when the wait begins, one when writes resume.
- A task whose wait runs out: ``ends_delivery`` ends that delivery with one log line
  instead of a traceback. Its message is acknowledged (when Redis takes writes again,
  ``worker.transport``), and the lost-message sweep (``worker.recovery``) finds its
  chunk nowhere and queues it again. Nothing is lost; a chunk computed twice is
  committed once.
- kombu's own writes (recording, acknowledging and restoring messages): see
  ``worker.transport``, which uses ``refused`` to tell these errors apart.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from redis.backoff import ExponentialBackoff, ExponentialWithJitterBackoff
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError
from redis.retry import Retry

log = logging.getLogger("framestats.worker")

#: Seconds a worker waits for Redis to take writes again before it gives up a delivery
#: (``FRAMESTATS_REFUSED_WRITES_WAIT``).
WAIT_S = 60.0
#: Error codes by which Redis refuses a write it cannot take now.
KINDS = ("OOM", "MISCONF", "READONLY")

#: This process's calls waiting for Redis to take writes, since when, and for what
#: (state outside the Retry object: redis-py deep-copies that for every connection).
_lock = threading.Lock()
_waiting = 0
_since: float | None = None
_kind: str | None = None


def refused(exc: BaseException) -> str | None:
    """The kind of refusal (OOM, MISCONF, READONLY) when ``exc`` is Redis refusing a write."""
    if isinstance(exc, OutOfMemoryError):
        return "OOM"
    if isinstance(exc, ReadOnlyError):
        return "READONLY"
    if isinstance(exc, ResponseError):
        text = str(exc).split("caused error: ", 1)[-1]  # a pipeline's annotation
        for kind in KINDS:
            if text.startswith(kind + " "):
                return kind
    return None


def describe(exc: BaseException) -> str:
    """``OOM: command not allowed when used memory > 'maxmemory'.`` (one line)."""
    text = str(exc).split("caused error: ", 1)[-1].splitlines()[0]
    kind = refused(exc) or type(exc).__name__
    return text if text.startswith(kind) else f"{kind}: {text}"


class WaitOutRefusals(Retry):
    """redis-py's retry policy, plus: a write Redis refuses is tried again for up to
    ``seconds`` (backoff 50 ms doubling to 2 s) instead of raising at once."""

    def __init__(self, seconds: float = WAIT_S) -> None:
        # Connection errors: redis-py's default policy (3 retries, jittered backoff).
        super().__init__(ExponentialWithJitterBackoff(base=1, cap=10), 3)
        self.seconds = seconds
        self.pause = ExponentialBackoff(cap=2.0, base=0.05)

    def call_with_retry(self, do: Callable[[], Any], fail: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:  # fmt: skip
        with_count = bool(kwargs.get("with_failure_count", args[1] if len(args) > 1 else False))
        tries, began = 0, 0.0
        try:
            while True:
                try:
                    return super().call_with_retry(do, fail, *args, **kwargs)
                except ResponseError as exc:
                    if refused(exc) is None:
                        raise
                    tries += 1
                    if tries == 1:
                        began = time.monotonic()
                        _began()
                    elif time.monotonic() - began > self.seconds:
                        raise
                    _note(exc, self.seconds)
                    time.sleep(self.pause.compute(tries))
                    # A WATCHed transaction raises WatchError here: its caller reads again.
                    fail(exc, tries) if with_count else fail(exc)
        finally:
            if tries:
                _ended()


def _began() -> None:
    global _waiting
    with _lock:
        _waiting += 1


def _note(exc: BaseException, seconds: float) -> None:
    """One line when this process first meets a refusal, or a refusal of another kind."""
    global _since, _kind
    kind = refused(exc)
    with _lock:
        if _since is not None and kind == _kind:
            return
        if _since is None:
            _since = time.monotonic()
        _kind = kind
    log.warning(
        "Redis refused a write (%s); waiting up to %.0f s for it to take writes again",
        describe(exc),
        seconds,
    )


def _ended() -> None:
    """One line when the last waiting call is through."""
    global _waiting, _since, _kind
    with _lock:
        _waiting -= 1
        if _waiting > 0 or _since is None:
            return
        waited, _since, _kind = time.monotonic() - _since, None, None
    log.warning("Redis takes writes again (after %.1f s)", waited)


def retry(seconds: float = WAIT_S) -> WaitOutRefusals:
    """The retry policy of the worker's Redis client (``connection.connect(retry=...)``)."""
    return WaitOutRefusals(seconds)


def ends_delivery(task: Callable[..., Any]) -> Callable[..., Any]:
    """A task whose Redis refused writes for longer than ``WAIT_S`` ends this delivery
    with one log line; its chunk runs again (see the module's docstring)."""

    @functools.wraps(task)
    def run(self: Any, payload: dict[str, Any]) -> Any:
        try:
            return task(self, payload)
        except ResponseError as exc:
            if refused(exc) is None:
                raise
            what = f"{payload.get('job_id', '?')}#{payload.get('index', 'finalize')}"
            log.error(
                "%s: Redis still refused writes after FRAMESTATS_REFUSED_WRITES_WAIT (%s); "
                "this delivery ends, the chunk runs again once Redis takes writes",
                what,
                describe(exc),
            )
            return "redis-refused"

    return run
