"""Shared fixtures: a real Redis database of the tests' own, real worker processes.

The tests use database TEST_REDIS_DB (default 9) of the Redis at TEST_REDIS_URL or
REDIS_URL, flushed before and after the session. Without a Redis, integration tests
skip locally and fail in CI (CI=true).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from tests.support.workers import WorkerProcess, start_worker


def _test_url() -> str:
    base = (
        os.environ.get("TEST_REDIS_URL")
        or os.environ.get("REDIS_URL")
        or "redis://127.0.0.1:6379/0"
    )
    db = os.environ.get("TEST_REDIS_DB", "9")
    parts = urlsplit(base)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = _test_url()
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"Redis not reachable at {url}: {exc}")
        pytest.skip(f"Redis not reachable at {url}: {exc}")
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="module")
def module_worker(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """One CPU worker with two processes, on a queue of its own, shared by a test module."""
    log_dir = str(tmp_path_factory.mktemp("workerlogs"))
    worker = start_worker(redis_url, log_dir, concurrency=2)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        worker.wait_ready(client, processes=2)
        yield worker
    finally:
        worker.stop()
        client.close()
