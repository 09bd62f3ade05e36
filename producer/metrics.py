"""A Prometheus endpoint for what Flower does not show: queues, jobs, throughput, latency.

``producer metrics --port 9108`` serves ``/metrics``; every scrape reads Redis afresh
(a few pipelined round trips, see ``framestats.monitor``), so the endpoint holds no state
and any number of them may run. Counters that must survive restarts (frames, bytes and
chunks committed, chunk errors, the chunk latency histogram) are kept in Redis by the
workers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from framestats import connection, monitor
from framestats import constants as C
from framestats.errors import OptionError
from framestats.settings import Settings

log = logging.getLogger("framestats.metrics")

WORKER_LABELS = ["worker", "node", "host", "device"]


class FramestatsCollector(Collector):
    """Reads Redis on each scrape; reports ``framestats_up 0`` when Redis does not answer."""

    def __init__(self, client: Any, worker_timeout: float) -> None:
        self.client = client
        self.worker_timeout = worker_timeout

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("framestats_up", "1 when Redis answered this scrape, else 0")
        try:
            view = monitor.overview(self.client, self.worker_timeout, limit=0, all_queues=True)
            pipe = self.client.pipeline(transaction=False)
            pipe.hgetall(C.METRICS_KEY)
            pipe.hgetall(C.LATENCY_KEY)
            totals, latency = pipe.execute()
        except Exception as exc:  # a scrape must answer even when Redis is down
            log.warning("metrics scrape failed: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from self._queues(view)
        yield from self._jobs(view)
        yield from self._totals(totals)
        buckets, total, count = monitor.latency_histogram(latency)
        hist = HistogramMetricFamily(
            "framestats_chunk_seconds", "Wall time of one chunk task: read, reduce, commit"
        )
        hist.add_metric([], buckets, sum_value=total)
        yield hist
        yield from self._workers(view)

    @staticmethod
    def _queues(view: dict[str, Any]) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "framestats_queue_messages",
            "Messages per queue: waiting in the queue, or reserved (taken by a worker, not acked)",
            labels=["queue", "state"],
        )
        takers = GaugeMetricFamily(
            "framestats_queue_workers",
            "Live worker processes taking chunks from each queue",
            labels=["queue"],
        )
        for queue, d in view["queues"].items():
            depth.add_metric([queue, "waiting"], d["waiting"])
            depth.add_metric([queue, "reserved"], d["reserved"])
            takers.add_metric([queue], d.get("workers", 0))
        yield depth
        yield takers

    @staticmethod
    def _jobs(view: dict[str, Any]) -> Iterator[Metric]:
        by_state = GaugeMetricFamily(
            "framestats_jobs", "Jobs known to Redis, by state", labels=["state"]
        )
        for state, n in view["jobs_by_state"].items():
            by_state.add_metric([state], n)
        yield by_state

    @staticmethod
    def _totals(totals: dict[str, str]) -> Iterator[Metric]:
        for field, name, doc in (
            ("frames", "framestats_frames_processed", "Frames whose chunk result was committed"),
            ("bytes", "framestats_bytes_processed", "Uncompressed bytes of those frames"),
            ("chunks", "framestats_chunks_processed", "Chunk results committed"),
            ("chunk_errors", "framestats_chunk_errors", "Chunk errors recorded (retried or fatal)"),
        ):
            metric = CounterMetricFamily(name, doc)
            metric.add_metric([], float(totals.get(field, 0) or 0))
            yield metric

    @staticmethod
    def _workers(view: dict[str, Any]) -> Iterator[Metric]:
        online = GaugeMetricFamily(
            "framestats_workers_online", "Worker processes with a fresh heartbeat"
        )
        online.add_metric([], view["workers_online"])
        yield online
        rate = GaugeMetricFamily(
            "framestats_worker_frames_per_second",
            "Frames per busy second of one worker process since it started",
            labels=WORKER_LABELS,
        )
        byte_rate = GaugeMetricFamily(
            "framestats_worker_bytes_per_second",
            "Uncompressed bytes per busy second of one worker process since it started",
            labels=WORKER_LABELS,
        )
        frames = CounterMetricFamily(
            "framestats_worker_frames",
            "Frames computed by one worker process",
            labels=WORKER_LABELS,
        )
        chunks = CounterMetricFamily(
            "framestats_worker_chunks",
            "Chunks computed by one worker process",
            labels=WORKER_LABELS,
        )
        busy = CounterMetricFamily(
            "framestats_worker_busy_seconds",
            "Seconds one worker process spent computing chunks",
            labels=WORKER_LABELS,
        )
        age = GaugeMetricFamily(
            "framestats_worker_heartbeat_age_seconds",
            "Seconds since the worker process's last heartbeat",
            labels=WORKER_LABELS,
        )
        for w in view["workers"]:
            labels = [w["id"], w["name"], w["host"], w["device"]]
            rate.add_metric(labels, w["frames_per_s"])
            byte_rate.add_metric(labels, w["bytes_per_s"])
            frames.add_metric(labels, w["frames_done"])
            chunks.add_metric(labels, w["chunks_done"])
            busy.add_metric(labels, w["busy_seconds"])
            age.add_metric(labels, w["heartbeat_age_s"] or 0.0)
        yield from (rate, byte_rate, frames, chunks, busy, age)


def registry(settings: Settings) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    client = connection.connect(settings.redis_url, timeout=3.0)
    reg.register(FramestatsCollector(client, settings.worker_timeout))
    return reg


def serve(settings: Settings, port: int, host: str = "127.0.0.1") -> None:
    """Serve /metrics until interrupted."""
    from prometheus_client import start_http_server

    client = connection.connect(settings.redis_url, timeout=3.0)
    connection.ping(
        client, settings.redis_url_redacted
    )  # a wrong URL fails at start, not per scrape
    client.close()
    try:
        start_http_server(port, addr=host, registry=registry(settings))
    except OSError as exc:
        raise OptionError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from exc
    threading.Event().wait()
