"""Celery's and kombu's formats, in the one module that knows them.

Messages: ``producer submit`` publishes the first window of reduce tasks without
importing Celery (its import and app would cost a short job a large share of its wall
time). The message Celery writes is Celery's task protocol 2 in kombu's Redis transport
envelope, JSON, pushed with LPUSH onto the list named after the queue (priority 0); this
module writes the same message with the producer's Redis client, in one round trip.
Workers consume through Celery and write the window's next chunk, finalize tasks and the
sweep's requeued chunks here too; ``read_task`` reads any of these back.

Layout: where kombu keeps a queue's messages (one list per priority step) and the
messages workers hold unacknowledged (the ``unacked`` hash), for status and the
lost-message sweep.

tests/unit/test_wire.py checks the message against one Celery makes and these names
against kombu's own, so an upgrade that changes them fails a test, not the pipeline
(pyproject.toml pins the versions known to work).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from collections import Counter
from collections.abc import Iterable
from typing import Any

from .constants import TASK_FINALIZE, TASK_REDUCE
from .messages import JobSpec

#: Celery's "embed" part of a protocol-2 body: no callbacks, chain or chord.
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def task_message(
    task: str, args: list[Any], queue: str, origin: str | None = None
) -> dict[str, Any]:
    """The kombu Redis envelope of a Celery protocol-2 task message (as ``send_task`` makes)."""
    task_id = str(uuid.uuid4())
    body = json.dumps([args, {}, _EMBED]).encode()
    return {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": task,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": repr(args),
            "kwargsrepr": "{}",
            "origin": origin or f"gen{os.getpid()}@{socket.gethostname()}",
            "ignore_result": None,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        },
        "properties": {
            "correlation_id": task_id,
            "reply_to": str(uuid.uuid4()),
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }


def publish_chunks(client: Any, spec: JobSpec, indices: Iterable[int]) -> int:
    """Queue one reduce task per chunk index on the job's queue; returns how many."""
    origin = f"gen{os.getpid()}@{socket.gethostname()}"
    messages = [
        json.dumps(task_message(TASK_REDUCE, [spec.chunk(i).to_json()], spec.queue, origin))
        for i in indices
    ]
    if messages:
        # LPUSH a b c leaves c at the head: consumers (BRPOP) still take a first.
        client.lpush(spec.queue, *messages)
    return len(messages)


def publish_finalize(client: Any, job_id: str, manifest: str, queue: str) -> None:
    """Queue the job's finalize task (idempotent on the worker's side)."""
    args = [{"job_id": job_id, "manifest": manifest}]
    client.lpush(queue, json.dumps(task_message(TASK_FINALIZE, args, queue)))


def read_task(raw: str) -> tuple[str, dict[str, Any]] | None:
    """(task name, its payload) of a message as queued; None for anything else.

    Reads both forms kombu keeps: the envelope alone (a queue's list) and
    ``[envelope, exchange, routing_key]`` (the ``unacked`` hash).
    """
    try:
        message = json.loads(raw)
        if isinstance(message, list):
            message = message[0]
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        payload = args[0]
        task = message["headers"]["task"]
    except (ValueError, TypeError, KeyError, IndexError):
        return None
    if not isinstance(task, str) or not isinstance(payload, dict):
        return None
    return task, payload


# --- kombu's Redis layout: where messages wait and where workers hold them ----------

#: Kombu Redis transport: hash and priority-list naming (kombu.transport.redis.Channel).
UNACKED_KEY = "unacked"
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)


def queue_keys(queue: str) -> list[str]:
    """The Redis lists holding a queue's messages, one per priority step."""
    return [queue if p == 0 else f"{queue}{PRIORITY_SEP}{p}" for p in PRIORITY_STEPS]


def reserved_by_queue(unacked: Iterable[str]) -> Counter[str]:
    """Messages taken by workers and not yet acknowledged, per queue."""
    counts: Counter[str] = Counter()
    for raw in unacked:
        try:
            message, _exchange, routing_key = json.loads(raw)
            queue = routing_key or message["properties"]["delivery_info"]["routing_key"]
        except (ValueError, TypeError, KeyError):
            queue = "?"
        counts[str(queue)] += 1
    return counts
