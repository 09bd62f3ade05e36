"""The workers' kombu transport survives closing a channel whose connection is gone."""

from __future__ import annotations

import uuid

import pytest
from kombu import Connection, Consumer, Queue

from framestats.settings import Settings
from worker.broker import make_app
from worker.transport import Channel, Transport

pytestmark = pytest.mark.integration


def _close_after_collect(url: str, transport: str | None) -> tuple[Exception | None, int]:
    """Take one message without acking it, detach the transport as ``Connection.collect``
    does after a lost broker, then close the channel as Celery's reconnect path does.
    Returns what the close raised and the messages left in kombu's unacked hash."""
    name = f"t-close-{uuid.uuid4().hex[:8]}"
    conn = Connection(url, transport=transport)
    queue = Queue(name)
    with conn.Producer() as producer:
        producer.publish({"n": 1}, routing_key=name, declare=[queue])
    got: list[object] = []
    channel = conn.default_channel
    consumer = Consumer(channel, [queue], callbacks=[lambda _b, m: got.append(m)])
    consumer.qos(prefetch_count=1)
    consumer.consume()
    conn.drain_events(timeout=5)
    assert len(got) == 1
    conn._do_close_transport()
    raised = None
    try:
        conn.maybe_close_channel(channel)
    except Exception as exc:  # kombu's own transport raises here
        raised = exc
    with Connection(url).channel() as fresh:
        client = fresh.client
        ours = [tag for tag, raw in client.hgetall("unacked").items() if name.encode() in raw]
        left = len(ours)
        if ours:
            client.hdel("unacked", *ours)
            client.zrem("unacked_index", *ours)
        client.delete(name, f"_kombu.binding.{name}")
    return raised, left


def test_close_after_a_lost_broker_raises_nothing(redis_url):
    raised, left = _close_after_collect(redis_url, "worker.transport:Transport")
    assert raised is None
    # Not given back at close (the broker was gone): kombu's visibility sweep does it.
    assert left == 1


def test_kombus_own_transport_crashes_there(redis_url):
    """The defect the transport works around; when kombu fixes it, this test says so."""
    raised, _ = _close_after_collect(redis_url, "kombu.transport.redis:Transport")
    assert isinstance(raised, AttributeError), raised


def test_celery_uses_it_and_urls_read_as_before():
    for url in ("redis://127.0.0.1:6379/0", "rediss://:pw@redis.example:6380/0"):
        conn = make_app(Settings.from_env({"REDIS_URL": url})).connection_for_write()
        assert isinstance(conn.transport, Transport)
        assert conn.transport.Channel is Channel
        assert conn.as_uri().startswith(url.split("://")[0] + "://")
        assert "pw" not in conn.as_uri()


def test_one_client_per_pool_and_messages_still_flow(redis_url):
    """Acks and publishes share one client until the pool is replaced (a reconnection);
    messages sent and acknowledged through it arrive and leave kombu's unacked hash."""
    name = f"t-shared-{uuid.uuid4().hex[:8]}"
    conn = Connection(redis_url, transport="worker.transport:Transport")
    channel = conn.default_channel
    try:
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
        given = object()
        with channel.conn_or_acquire(given) as passed:
            assert passed is given  # a caller's own client (a pipeline) is used as is
        queue = Queue(name)
        with conn.Producer() as producer:
            for n in range(3):
                producer.publish({"n": n}, routing_key=name, declare=[queue])
        got: list[object] = []
        consumer = Consumer(
            channel, [queue], callbacks=[lambda body, m: (got.append(body), m.ack())]
        )
        consumer.qos(prefetch_count=1)
        consumer.consume()
        while len(got) < 3:
            conn.drain_events(timeout=5)
        assert got == [{"n": 0}, {"n": 1}, {"n": 2}]
        with channel.conn_or_acquire() as client:
            assert not [raw for raw in client.hvals("unacked") if name.encode() in raw]
        channel._disconnect_pools()
        with channel.conn_or_acquire() as after:
            assert after is not first and after.connection_pool is channel.pool
            assert after.ping()
    finally:
        with Connection(redis_url).channel() as fresh:
            fresh.client.delete(name, f"_kombu.binding.{name}")
        conn.release()
