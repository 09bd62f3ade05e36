"""Chunk tasks written without Celery are the messages Celery itself writes."""

from __future__ import annotations

import base64
import json

from framestats.constants import TASK_FINALIZE, TASK_REDUCE
from framestats.messages import Segment
from framestats.settings import Settings
from framestats.wire import publish_chunks, publish_finalize, read_task
from tests.unit.read.support import spec_for
from worker.broker import make_app

#: Fields that differ between any two messages (fresh ids, the sending process).
VOLATILE = {"id", "root_id", "origin", "correlation_id", "reply_to", "delivery_tag"}


def _shape(message: dict) -> dict:
    """The message with volatile values blanked and the body decoded."""
    out = json.loads(json.dumps(message))
    out["body"] = json.loads(base64.b64decode(out["body"]))
    for part in ("headers", "properties"):
        for key in VOLATILE & set(out[part]):
            out[part][key] = type(out[part][key]).__name__
    return out


def test_message_matches_celery_send_task(redis_url, redis_client):
    spec = spec_for([Segment("/data/in.h5", "/entry/data/data", 0, 10)], (4, 4), "uint16")
    spec = type(spec)(**{**spec.__dict__, "queue": "wire-test", "boundaries": (0, 4, 10)})
    redis_client.delete("wire-test")
    app = make_app(Settings.from_env({"REDIS_URL": redis_url}))
    try:
        app.send_task(TASK_REDUCE, args=[spec.chunk(1).to_json()], queue=spec.queue)
        theirs = json.loads(redis_client.rpop("wire-test"))
        assert publish_chunks(redis_client, spec, [1]) == 1
        ours = json.loads(redis_client.rpop("wire-test"))
        assert _shape(ours) == _shape(theirs)
        assert ours["headers"]["id"] == ours["properties"]["correlation_id"]
    finally:
        redis_client.delete("wire-test", "_kombu.binding.wire-test")
        app.close()


def test_order_is_first_in_first_out(redis_client):
    spec = spec_for([Segment("/data/in.h5", "/entry/data/data", 0, 9)], (4, 4), "uint16")
    spec = type(spec)(**{**spec.__dict__, "queue": "wire-order", "boundaries": (0, 3, 6, 9)})
    redis_client.delete("wire-order")
    assert publish_chunks(redis_client, spec, [0, 1, 2]) == 3
    assert publish_chunks(redis_client, spec, []) == 0
    got = []
    while (raw := redis_client.rpop("wire-order")) is not None:  # what BRPOP takes first
        body = json.loads(base64.b64decode(json.loads(raw)["body"]))
        got.append(body[0][0]["index"])
    assert got == [0, 1, 2]


def test_finalize_message_matches_celery_send_task(redis_url, redis_client):
    payload = {"job_id": "j1", "manifest": "/data/out.h5.parts/manifest.json"}
    redis_client.delete("wire-fin")
    app = make_app(Settings.from_env({"REDIS_URL": redis_url}))
    try:
        app.send_task(TASK_FINALIZE, args=[payload], queue="wire-fin")
        theirs = redis_client.rpop("wire-fin")
        publish_finalize(redis_client, "j1", payload["manifest"], "wire-fin")
        ours = redis_client.rpop("wire-fin")
        assert _shape(json.loads(ours)) == _shape(json.loads(theirs))
        # read back from a queue's list and from kombu's unacked hash alike
        assert read_task(ours) == read_task(theirs) == (TASK_FINALIZE, payload)
        assert read_task(json.dumps([json.loads(ours), "", "wire-fin"])) == (TASK_FINALIZE, payload)
    finally:
        redis_client.delete("wire-fin", "_kombu.binding.wire-fin")
        app.close()


def test_read_task_ignores_what_is_not_a_task():
    spec = spec_for([Segment("/data/in.h5", "/entry/data/data", 0, 4)], (4, 4), "uint16")
    good = json.dumps(
        {
            "body": base64.b64encode(
                json.dumps([[spec.chunk(0).to_json()], {}, {}]).encode()
            ).decode(),
            "headers": {"task": TASK_REDUCE},
            "properties": {"body_encoding": "base64"},
        }
    )
    assert read_task(good) == (TASK_REDUCE, spec.chunk(0).to_json())
    for raw in ("", "not json", "[]", "{}", json.dumps({"body": "!!", "headers": {}}), "[1, 2]"):
        assert read_task(raw) is None, raw
