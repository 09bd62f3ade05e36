"""kombu's Redis transport, with one fix that keeps a worker alive when Redis goes away,
and one that spares a worker node's parent much of its work per task.

When the broker connection drops, Celery 5.7 collects the connection (which detaches
the transport from it) and then closes it. Closing the consumer's channel tries to
give its unacknowledged messages back to Redis, and building a client for that reads
the detached transport's connection settings: ``AttributeError: 'NoneType' object has
no attribute 'hostname'``. That is not a connection error, so nothing ignores it: the
worker logs "Unrecoverable error" and exits instead of reconnecting (the fault test
that restarts Redis mid-job shows it).

Here the same moment raises a connection error, which the close path ignores as it
ignores every other error of a broker that is gone. The messages stay in kombu's
``unacked`` hash and come back after the visibility timeout, as they would after a
worker crash; Redis was unreachable anyway. ``use()`` (called by
``worker.broker.make_app``) makes kombu load these classes for ``redis://``,
``rediss://`` and ``sentinel://`` URLs, so URLs, logs and banners read as before.

kombu also builds a new redis-py client object (a thin wrapper around the channel's
connection pool) for every acknowledgement and every event it publishes, a large part
of a worker node's parent's work per task (``python -m bench.overhead``). Here the
channel keeps one client per pool and builds a new one only when the pool is replaced
(after a reconnection). A client holds no connection itself (each command takes one
from the pool and gives it back), so sharing it is what redis-py does with any client.

And kombu's own writes (recording a message it hands to a task, acknowledging,
rejecting and restoring messages, BRPOP, queue bindings) survive a Redis that refuses
writes (OOM, MISCONF, READONLY; see ``worker.refusals``); kombu would let the error out
of the consumer's event loop and the whole worker would stop. Here the bookkeeping goes
on in memory, one line says why, and Redis catches up: a message not recorded as taken
is found by the lost-message sweep; an acknowledgement refused is sent again with the
next one that Redis takes (until then the message waits in ``unacked``: kombu would hand
it out again after the visibility timeout, and a chunk computed twice is committed once).

This is the one module that depends on kombu's private methods; pyproject.toml pins
the versions it was tested with, and tests/integration/test_transport.py fails when the
methods change.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from queue import Empty
from typing import TYPE_CHECKING, Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

from .refusals import describe, log, refused


class QoS(kombu_redis.QoS):
    """kombu's Redis QoS, which a Redis refusing writes does not stop."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Delivery tags whose acknowledgement Redis refused: sent with the next one.
        self._ack_later: set[str] = set()
        #: The kind of refusal last logged (one line per episode and kind).
        self._refusing: str | None = None

    def _refused(self, exc: redis.ResponseError, what: str) -> None:
        kind = refused(exc)
        if kind is None:
            raise exc
        if kind != self._refusing:
            self._refusing = kind
            log.warning("Redis refused a write (%s): %s", describe(exc), what)

    def _took(self) -> None:
        """Redis took a write: send the acknowledgements it refused before."""
        self._refusing = None
        if self._ack_later:
            tags, self._ack_later = self._ack_later, set()
            try:
                with self.pipe_or_acquire() as pipe:
                    for tag in tags:
                        self._remove_from_indices(tag, pipe)
                    pipe.execute()
            except redis.ResponseError as exc:
                self._ack_later |= tags
                self._refused(exc, "acknowledgements wait for the next write")

    def append(self, message: Any, delivery_tag: str) -> None:
        try:
            super().append(message, delivery_tag)
        except redis.ResponseError as exc:
            self._refused(exc, "a message handed to a task is held in memory only")
            virtual.QoS.append(self, message, delivery_tag)
            return
        self._took()

    def ack(self, delivery_tag: str) -> None:
        try:
            super().ack(delivery_tag)
        except redis.ResponseError as exc:
            self._refused(exc, "acknowledgements are sent when Redis takes writes again")
            self._ack_later.add(delivery_tag)
            virtual.QoS.ack(self, delivery_tag)
            return
        self._took()

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        try:
            super().reject(delivery_tag, requeue=requeue)
        except redis.ResponseError as exc:
            # Left in the unacked hash: handed out again after the visibility timeout.
            self._refused(exc, "a rejected message waits for the visibility timeout")
            if not requeue:
                self._ack_later.add(delivery_tag)
            virtual.QoS.ack(self, delivery_tag)

    def restore_visible(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().restore_visible(*args, **kwargs)
        except redis.ResponseError as exc:
            self._refused(exc, "overdue messages are restored once Redis takes writes")
            return None

    def restore_unacked(self, client: Any = None) -> None:
        try:
            super().restore_unacked(client)
        except redis.ResponseError as exc:  # at shutdown: the visibility timeout restores them
            self._refused(exc, "unacknowledged messages wait for the visibility timeout")


if TYPE_CHECKING:  # what the changes are mixed into: kombu's plain or Sentinel channel
    _Channel = kombu_redis.Channel
else:
    _Channel = object


class _Fixes(_Channel):
    """The changes, for kombu's plain and Sentinel channels alike."""

    QoS = QoS
    _shared_client: Any = None
    #: Seconds the consumer pauses after Redis refused a BRPOP (a write: it pops), so
    #: that an idle worker does not spin while Redis refuses writes.
    refused_pause = 0.5

    def _queue_bind(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super()._queue_bind(*args, **kwargs)
        except redis.ResponseError as exc:
            # A worker (re)connecting while Redis refuses writes: kombu would stop it. The
            # binding exists since the queue was first declared, and chunk messages are
            # pushed to the queue's list by name (framestats.wire) anyway.
            self.qos._refused(exc, "the queue binding is declared at the next connection")
            return None

    def maybe_refresh_binding_expiry(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().maybe_refresh_binding_expiry(*args, **kwargs)
        except redis.ResponseError as exc:  # kombu logs a traceback each second instead
            self.qos._refused(exc, "queue bindings are refreshed when Redis takes writes")
            return None

    def _brpop_read(self, **options: Any) -> Any:
        try:
            return super()._brpop_read(**options)  # a message: QoS.append notes the write
        except Empty:
            self.qos._took()  # the BRPOP (a write) went through: Redis takes writes
            raise
        except redis.ResponseError as exc:
            # kombu would let these out of the event loop and stop the worker.
            if str(exc).startswith("UNBLOCKED"):  # Redis became a replica mid-BRPOP
                raise Empty() from exc
            self.qos._refused(exc, "no message is taken until Redis takes writes again")
            time.sleep(self.refused_pause)
            raise Empty() from exc

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        pool = self.pool
        shared = self._shared_client
        if shared is None or shared.connection_pool is not pool:
            shared = self._shared_client = self._create_client()
        yield shared

    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise redis.ConnectionError("the broker connection is closed")
        return super()._connparams(asynchronous=asynchronous)


class Channel(_Fixes, kombu_redis.Channel):
    pass


class SentinelChannel(_Fixes, kombu_redis.SentinelChannel):
    pass


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


#: URL scheme -> the transport class kombu loads for it.
_TRANSPORTS = {"redis": "Transport", "rediss": "Transport", "sentinel": "SentinelTransport"}


def use() -> None:
    """Load these transports for redis://, rediss:// and sentinel:// URLs (kombu's alias
    table; ``redis+socket://`` is the redis transport too)."""
    from kombu import transport

    for scheme, name in _TRANSPORTS.items():
        transport.TRANSPORT_ALIASES[scheme] = f"{__name__}:{name}"
        getattr(transport, "_transport_cache", {}).pop(scheme, None)  # resolved before
