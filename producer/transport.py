"""kombu's Redis transport, with one fix that keeps a worker alive when Redis goes away.

When the broker connection drops, Celery 5.7 collects the connection (which detaches
the transport from it) and then closes it. Closing the consumer's channel tries to
give its unacknowledged messages back to Redis, and building a client for that reads
the detached transport's connection settings: ``AttributeError: 'NoneType' object has
no attribute 'hostname'``. That is not a connection error, so nothing ignores it: the
worker logs "Unrecoverable error" and exits instead of reconnecting (seen in the fault
test that restarts Redis mid-job, with kombu 5.7.0 / celery 5.7.0).

Here the same moment raises a connection error, which the close path ignores as it
ignores every other error of a broker that is gone. The messages stay in kombu's
``unacked`` hash and come back after the visibility timeout, as they would after a
worker crash; Redis was unreachable anyway. ``use()`` (called by
``producer.broker.make_app``) makes kombu load this class for ``redis://`` and
``rediss://`` URLs, so URLs, logs and banners read as before.
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise redis.ConnectionError("the broker connection is closed")
        return super()._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):
    Channel = Channel


def use() -> None:
    """Load this transport for redis:// and rediss:// URLs (kombu's alias table)."""
    from kombu import transport

    for scheme in ("redis", "rediss"):
        transport.TRANSPORT_ALIASES[scheme] = f"{__name__}:Transport"
        getattr(transport, "_transport_cache", {}).pop(scheme, None)  # resolved before
