"""producer.resp, the CLI's small Redis client, against a real Redis and against redis-py.

Every command the producer sends is run through both clients on the same keys and must
give the same replies; then what redis-py gives the producer for free: pipelines and
transactions, WATCH, reconnecting after the server dropped a connection, BLPOP longer
than the socket timeout, the URL forms, and falling back to redis-py for the rest.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import pytest
import redis

from producer import constants as C
from producer import jobs, resp
from producer.messages import JobState


@pytest.fixture
def lite(redis_url: str) -> Any:
    client = jobs.connect(redis_url)
    assert isinstance(client, resp.Client)
    yield client
    client.close()


def _script(c: Any, p: str) -> list[Any]:
    """Every command the producer uses, with the reply shapes it relies on."""
    h, z, lst, s, k = (f"{p}:{n}" for n in "hzlsk")
    out = [
        c.hset(h, mapping={"a": 1, "b": "x y", "u": "é"}),
        c.hset(h, "c", 2.5),
        c.hget(h, "a"),
        c.hget(h, "nope"),
        c.hgetall(h),
        c.hgetall(f"{p}:missing"),
        c.hmget(h, "a", "zz"),
        c.hmget(h, ["a", "b"]),
        sorted(c.hvals(h)),
        c.hlen(h),
        c.hincrby(h, "a", 3),
        c.hincrbyfloat(h, "f", 0.25),
        c.zadd(z, {"m1": 1.5, "m2": 3}),
        c.zrange(z, 0, -1),
        c.zrevrange(z, 0, -1),
        c.zrangebyscore(z, 2, "+inf"),
        c.zcount(z, "-inf", "+inf"),
        c.zrem(z, "m1"),
        c.zremrangebyscore(z, "-inf", 10),
        c.rpush(lst, 1, 2, 3),
        c.lpush(lst, "é"),
        c.lpop(lst),
        c.lpop(lst, 2),
        c.lpop(f"{p}:missing", 2),
        c.lpop(f"{p}:missing"),
        c.lrange(lst, 0, -1),
        c.ltrim(lst, 0, 0),
        c.llen(lst),
        c.sadd(s, 1, 2, 2),
        c.scard(s),
        c.srem(s, 2, 3),
        c.srem(f"{p}:missing", 1),
        c.scard(s),
        c.set(k, "v", nx=True, ex=10),
        c.set(k, "v", nx=True, ex=10),
        c.expire(k, 5),
        c.expire(f"{p}:missing", 5),
        c.blpop([f"{p}:missing"], timeout=0.1),
        c.blpop([lst], timeout=1),
        c.eval("return {1, 'a', false, {2, 'b'}}", 0),
        c.eval("return redis.call('hget', KEYS[1], ARGV[1])", 1, h, "b"),
        c.ping(),
    ]
    pipe = c.pipeline(transaction=True)
    pipe.hset(h, "t", 1)
    pipe.hgetall(h)
    pipe.hincrbyfloat(h, "f", 1)
    out.append(pipe.execute())
    pipe = c.pipeline(transaction=False)
    pipe.llen(f"{p}:missing")
    pipe.scard(s)
    out.append(pipe.execute())
    out.append(c.delete(h, z, lst, s, k))
    return out


def test_replies_match_redis_py(lite: Any, redis_client: Any) -> None:
    p = f"t:{uuid.uuid4().hex[:8]}"
    assert _script(lite, p) == _script(redis_client, p)


def test_errors_are_raised_by_kind(lite: Any) -> None:
    with pytest.raises(resp.ResponseError, match="Unknown Redis command"):
        lite.eval("return redis.call('bogus')", 0)
    pipe = lite.pipeline(transaction=False)
    pipe.llen("t:none")
    pipe.eval("return redis.call('bogus')", 0)
    got = pipe.execute(raise_on_error=False)
    assert got[0] == 0 and isinstance(got[1], resp.ResponseError)
    pipe = lite.pipeline(transaction=True)
    pipe.set("t:s", "x")
    pipe.hget("t:s", "a")  # wrong type: fails inside EXEC
    with pytest.raises(resp.ResponseError, match="WRONGTYPE"):
        pipe.execute()
    lite.delete("t:s")
    assert lite.ping()  # the connection is still good after errors


def test_watch_sees_a_concurrent_change(lite: Any, redis_client: Any) -> None:
    key = f"t:{uuid.uuid4().hex[:8]}"
    lite.hset(key, "state", "running")
    with lite.pipeline(transaction=True) as pipe:
        pipe.watch(key)
        assert pipe.hget(key, "state") == "running"  # runs at once while watching
        redis_client.hset(key, "state", "cancelled")  # someone else, meanwhile
        pipe.multi()
        pipe.hset(key, "state", "done")
        with pytest.raises(resp.WatchError):
            pipe.execute()
    assert lite.hget(key, "state") == "cancelled"
    # jobs.finish through this client keeps another writer's final state.
    job_id = key.split(":", 1)[1]
    lite.delete(key)
    lite.hset(C.job_key(job_id), "state", "cancelled")
    assert jobs.finish(lite, job_id, JobState.DONE) is False
    assert lite.hget(C.job_key(job_id), "state") == "cancelled"
    lite.hset(C.job_key(job_id), "state", "running")
    assert jobs.finish(lite, job_id, JobState.DONE) is True
    assert lite.hget(C.job_key(job_id), "state") == "done"
    lite.delete(C.job_key(job_id), C.job_events_key(job_id))


def test_reconnects_after_the_server_drops_the_connection(lite: Any, redis_client: Any) -> None:
    assert lite.ping()
    (conn_id,) = lite._idle[0].call([("CLIENT", "ID")])  # the pooled connection's id
    assert redis_client.execute_command("CLIENT", "KILL", "ID", conn_id) == 1
    assert lite.hset("t:re", "a", 1) == 1  # the dead pooled connection is replaced once
    assert lite.hgetall("t:re") == {"a": "1"}
    lite.delete("t:re")


def test_blpop_outwaits_the_socket_timeout(redis_url: str) -> None:
    client = resp.Client(redis_url, connect_timeout=2, timeout=0.3)
    key = f"t:{uuid.uuid4().hex[:8]}"
    try:
        t = time.monotonic()
        assert client.blpop([key], timeout=1) is None
        assert 0.9 < time.monotonic() - t < 3
        threading.Timer(0.5, lambda: resp.Client(redis_url).rpush(key, "x")).start()
        assert client.blpop([key], timeout=5) == (key, "x")
    finally:
        client.close()


def test_threads_share_a_client(lite: Any) -> None:
    key = f"t:{uuid.uuid4().hex[:8]}"

    def work() -> None:
        for _ in range(200):
            lite.hincrby(key, "n", 1)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert lite.hget(key, "n") == "800"
    assert len(lite._idle) <= 4
    lite.delete(key)


def test_url_forms() -> None:
    p = resp.Params("redis://us%40er:p%40ss@example.org:1234/3")
    assert (p.username, p.password, p.host, p.port, p.db, p.tls) == (
        "us@er",
        "p@ss",
        "example.org",
        1234,
        3,
        False,
    )
    p = resp.Params("redis://:secret@localhost")
    assert (p.username, p.password, p.port, p.db) == (None, "secret", 6379, 0)
    p = resp.Params("unix:///run/redis.sock?db=2")
    assert (p.unix_path, p.db) == ("/run/redis.sock", 2)
    p = resp.Params("rediss://h:6380/1?ssl_ca_certs=/ca.pem&ssl_cert_reqs=required")
    assert p.tls and p.ssl == {"ssl_ca_certs": "/ca.pem", "ssl_cert_reqs": "required"}
    for url in ("redis://h/0?socket_keepalive=true", "redis+sentinel://h/0", "http://h"):
        with pytest.raises(ValueError):
            resp.Params(url)
    # What this client does not understand goes to redis-py, unchanged.
    assert isinstance(jobs.connect("redis://127.0.0.1:6379/0?health_check_interval=5"), redis.Redis)
    assert isinstance(jobs.connect("redis://127.0.0.1:6379/0", light=False), redis.Redis)


def test_unreachable_and_wrong_database_are_one_line_errors(redis_url: str) -> None:
    from producer.errors import BrokerUnavailable

    with pytest.raises(BrokerUnavailable, match="Redis is not reachable"):
        jobs.ping(jobs.connect("redis://127.0.0.1:1/0", timeout=1), "redis://127.0.0.1:1/0")
    bad_db = redis_url.rsplit("/", 1)[0] + "/99999"
    with pytest.raises(BrokerUnavailable, match="DB index is out of range"):
        jobs.ping(jobs.connect(bad_db), bad_db)


def test_producer_does_not_import_redis_py(redis_url: str) -> None:
    """The point of the client: ``producer status`` runs without loading redis-py."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "producer", "status"],
        env={**os.environ, "REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines()]
    assert "producer.resp" in imported
    assert not [m for m in imported if m == "redis" or m.startswith("redis.")]


def test_unix_socket_and_password(tmp_path: Any) -> None:
    """``unix://`` URLs with a password and a database, against a private redis-server."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed")
    sock, password = str(tmp_path / "redis.sock"), "pw-" + uuid.uuid4().hex[:12]
    argv = [exe, "--port", "0", "--unixsocket", sock, "--requirepass", password]
    argv += ["--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(sock) and time.monotonic() < deadline:
            time.sleep(0.05)
        client = jobs.connect(f"unix://:{password}@{sock}?db=3")
        assert isinstance(client, resp.Client)
        assert client.hset("k", "a", "1") == 1
        assert redis.Redis(unix_socket_path=sock, password=password, db=3).hget("k", "a") == b"1"
        from producer.errors import BrokerUnavailable

        wrong = f"unix://:nope@{sock}"
        with pytest.raises(BrokerUnavailable, match="authentication failed"):
            jobs.ping(jobs.connect(wrong), wrong)
        client.close()
    finally:
        server.terminate()
        server.wait(10)
