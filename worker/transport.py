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

This is the one module that depends on kombu's private methods; pyproject.toml pins
the versions it was tested with, and tests/integration/test_transport.py fails when the
methods change.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from kombu.transport import redis as kombu_redis


class _Fixes:
    """The two changes, for kombu's plain and Sentinel channels alike."""

    _shared_client: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        pool = self.pool  # type: ignore[attr-defined]
        shared = self._shared_client
        if shared is None or shared.connection_pool is not pool:
            shared = self._shared_client = self._create_client()  # type: ignore[attr-defined]
        yield shared

    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:  # type: ignore[attr-defined]
            raise redis.ConnectionError("the broker connection is closed")
        return super()._connparams(asynchronous=asynchronous)  # type: ignore[misc]


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
