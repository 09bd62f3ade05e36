"""The internals of Celery, kombu and redis-py the code relies on, checked against the
installed versions: an upgrade that changes one fails here, not in production.

- ``framestats/monitor.py`` and ``worker/recovery.py`` read kombu's Redis layout
  directly: the ``unacked`` hash of ``[message, exchange, routing_key]``, one list per
  priority step named ``QUEUE\\x06\\x16STEP``.
- ``worker/transport.py`` overrides private methods of kombu's Redis ``Channel`` and
  ``QoS``; ``worker/refusals.py`` subclasses redis-py's ``Retry`` and relies on its
  error classes.
- ``framestats/wire.py`` writes Celery's task message itself (``tests/unit/test_wire.py``
  compares it with one Celery makes).
- ``worker/reduce/cpu_vector.py`` writes LLVM IR through numba's extension API
  (``intrinsic``, ``cgutils.get_item_pointer``, ``context.make_array``); its strategy
  tests compile and run it against the numpy reference.
- ``pyproject.toml`` pins each to the range these tests passed with.
"""

from __future__ import annotations

import inspect
import json
import tomllib
import uuid
from importlib import metadata
from pathlib import Path

import pytest
from kombu import Connection, Consumer, Queue
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from packaging.requirements import Requirement
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError
from redis.retry import Retry

from framestats import monitor, wire
from framestats.constants import TASK_REDUCE
from framestats.settings import Settings
from worker import refusals, transport
from worker.broker import make_app

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
#: Packages whose internals the code relies on.
PINNED = ("celery", "kombu", "redis", "numba")

#: (class, method) -> the parameters the override in worker/transport.py was written for.
OVERRIDDEN = {
    (kombu_redis.Channel, "conn_or_acquire"): ["self", "client"],
    (kombu_redis.Channel, "_connparams"): ["self", "asynchronous"],
    (kombu_redis.Channel, "_create_client"): ["self", "asynchronous"],
    (kombu_redis.Channel, "_brpop_read"): ["self", "options"],
    (kombu_redis.Channel, "_queue_bind"): ["self", "exchange", "routing_key", "pattern", "queue"],
    (kombu_redis.Channel, "maybe_refresh_binding_expiry"): ["self"],
    (kombu_redis.QoS, "append"): ["self", "message", "delivery_tag"],
    (kombu_redis.QoS, "ack"): ["self", "delivery_tag"],
    (kombu_redis.QoS, "reject"): ["self", "delivery_tag", "requeue"],
    (kombu_redis.QoS, "restore_visible"): ["self", "start", "num", "interval"],
    (kombu_redis.QoS, "restore_unacked"): ["self", "client"],
    (kombu_redis.QoS, "pipe_or_acquire"): ["self", "pipe", "client"],
    (kombu_redis.QoS, "_remove_from_indices"): ["self", "delivery_tag", "pipe"],
    (virtual.QoS, "append"): ["self", "message", "delivery_tag"],
    (virtual.QoS, "ack"): ["self", "delivery_tag"],
    (Retry, "call_with_retry"): ["self", "do", "fail", "is_retryable", "with_failure_count"],
}
#: numba's code-generation helpers cpu_vector calls, and the parameters it passes.
NUMBA_HELPERS = {
    "get_item_pointer": ["context", "builder", "aryty", "ary", "inds", "wraparound"],
}


@pytest.mark.parametrize("name", PINNED)
def test_installed_versions_are_in_the_pinned_ranges(name):
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    (req,) = [Requirement(d) for d in deps if Requirement(d).name == name]
    assert any(s.operator == "<" for s in req.specifier), f"{name} has no upper bound: {req}"
    assert metadata.version(name) in req.specifier, (name, metadata.version(name), str(req))


def test_kombu_redis_names_are_those_monitor_reads():
    assert kombu_redis.Channel.unacked_key == wire.UNACKED_KEY
    assert kombu_redis.Channel.sep == wire.PRIORITY_SEP
    assert tuple(kombu_redis.Channel.priority_steps) == wire.PRIORITY_STEPS


@pytest.mark.parametrize(("cls", "method"), OVERRIDDEN, ids=lambda v: getattr(v, "__name__", v))
def test_overridden_internals_keep_their_signatures(cls, method):
    fn = getattr(cls, method, None)
    assert fn is not None, f"{cls.__module__}.{cls.__name__}.{method} is gone"
    fn = inspect.unwrap(fn)
    assert list(inspect.signature(fn).parameters) == OVERRIDDEN[(cls, method)]


def test_transport_overrides_are_the_ones_checked():
    """Every kombu method worker/transport.py overrides is in OVERRIDDEN."""
    checked = {(c.__name__, m) for c, m in OVERRIDDEN}
    for ours, theirs in ((transport.Channel, "Channel"), (transport.QoS, "QoS")):
        for name, value in vars(ours).items():
            if (
                inspect.isfunction(value)
                and not name.startswith("__")
                and hasattr(getattr(kombu_redis, theirs), name)
            ):
                assert (theirs, name) in checked, f"{theirs}.{name} is overridden, not checked"


def test_redis_error_classes_refusals_relies_on():
    from redis._parsers.base import BaseParser

    oom = BaseParser.parse_error("OOM command not allowed when used memory > 'maxmemory'.")
    readonly = BaseParser.parse_error("READONLY You can't write against a read only replica.")
    misconf = BaseParser.parse_error("MISCONF Redis is configured to save RDB snapshots")
    assert isinstance(oom, OutOfMemoryError) and refusals.refused(oom) == "OOM"
    assert isinstance(readonly, ReadOnlyError) and refusals.refused(readonly) == "READONLY"
    assert type(misconf) is ResponseError and refusals.refused(misconf) == "MISCONF"
    assert refusals.refused(ResponseError("WRONGTYPE Operation against a key")) is None


def test_queue_lists_and_unacked_hash_are_laid_out_as_read(redis_url, redis_client):
    """A message Celery sends, taken by a kombu consumer (our transport) and not yet
    acknowledged, sits where monitor and the lost-message sweep look for it."""
    queue = "layout-" + uuid.uuid4().hex[:8]
    app = make_app(Settings.from_env({"REDIS_URL": redis_url}))
    payload = {"job_id": "j-layout", "index": 3}
    try:
        with Connection(redis_url, transport=transport.Transport) as conn:
            channel = conn.default_channel
            assert [channel._q_for_pri(queue, p) for p in wire.PRIORITY_STEPS] == (
                wire.queue_keys(queue)
            )
            for step in wire.PRIORITY_STEPS:  # one list per priority step
                app.send_task(TASK_REDUCE, args=[payload], queue=queue, priority=step)
            depths = monitor.queue_depths(redis_client, [queue])[queue]
            assert depths == {"waiting": len(wire.PRIORITY_STEPS), "reserved": 0}
            got = []
            with Consumer(channel, [Queue(queue)], callbacks=[lambda _b, m: got.append(m)]):
                while not got:
                    conn.drain_events(timeout=5)
            raw = list(redis_client.hgetall(wire.UNACKED_KEY).values())
            mine = [r for r in raw if json.loads(r)[2] == queue]
            assert len(mine) == 1
            message, exchange, routing_key = json.loads(mine[0])
            assert routing_key == queue and isinstance(message, dict)
            assert wire.reserved_by_queue(mine) == {queue: 1}
            assert wire.read_task(mine[0]) == (TASK_REDUCE, payload)
            got[0].ack()
            assert not [r for r in redis_client.hvals(wire.UNACKED_KEY) if queue in r]
    finally:
        redis_client.delete(*wire.queue_keys(queue), f"_kombu.binding.{queue}")
        app.close()


@pytest.mark.parametrize("name", list(NUMBA_HELPERS))
def test_numba_codegen_helpers_keep_their_signatures(name):
    from numba.core import cgutils

    params = list(inspect.signature(getattr(cgutils, name)).parameters)
    assert params[: len(NUMBA_HELPERS[name])] == NUMBA_HELPERS[name]
