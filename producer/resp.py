"""A small synchronous Redis client for the producer's own commands (RESP2, str replies).

Why: importing redis-py costs every ``producer`` command 60-100 ms (its package imports
asyncio, cluster and sentinel support), more than the Redis work of submitting a job.
This client speaks the protocol for the commands the producer sends, with the same
method names, arguments and reply types as ``redis.Redis(decode_responses=True)``, so
``producer.jobs`` and ``producer.monitor`` take either. ``jobs.connect`` returns it for
the URLs it understands (``redis://``, ``rediss://``, ``unix://`` with user, password,
database and the TLS options below) and redis-py for anything else. Workers keep
redis-py (Celery's transport imports it anyway); the test suite runs the producer's
commands against a real Redis through this client and checks replies against redis-py.

Connections are pooled per client (one per thread at a time); a pooled connection that
fails is replaced once, as a server restart leaves idle connections dead.
"""

from __future__ import annotations

import builtins
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_PORT = 6379


class RedisError(Exception):
    """Base of this client's errors (named as redis-py's, so callers read the same)."""


class ConnectionError(RedisError):  # noqa: A001 - redis-py's name, on purpose
    pass


class TimeoutError(RedisError):  # noqa: A001
    pass


class AuthenticationError(ConnectionError):
    pass


class ResponseError(RedisError):
    pass


class WatchError(RedisError):
    pass


#: Query parameters understood in a URL; any other sends the URL to redis-py.
_QUERY = {
    "db",
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_check_hostname",
}


class Params:
    """Where and how to connect, parsed from a Redis URL."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"unsupported Redis URL scheme {scheme!r}")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - _QUERY
        if unknown:
            raise ValueError(f"URL parameters {sorted(unknown)} need redis-py")
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password is not None else None
        self.tls = scheme == "rediss"
        self.unix_path: str | None = None
        self.host = "localhost"
        self.port = DEFAULT_PORT
        db = query.get("db")
        if scheme == "unix":
            self.unix_path = unquote(parts.path)
        else:
            self.host = unquote(parts.hostname) if parts.hostname else "localhost"
            self.port = parts.port or DEFAULT_PORT
            path = parts.path.lstrip("/")
            if path:
                db = path
        self.db = int(db) if db else 0
        self.ssl = {k: v for k, v in query.items() if k.startswith("ssl_")}

    def tls_context(self) -> Any:
        import ssl  # only for rediss://

        reqs = self.ssl.get("ssl_cert_reqs", "required").lower()
        modes = {
            "none": ssl.CERT_NONE,
            "optional": ssl.CERT_OPTIONAL,
            "required": ssl.CERT_REQUIRED,
        }
        if reqs not in modes:
            raise ValueError(f"ssl_cert_reqs={reqs!r}: use none, optional or required")
        ctx = ssl.create_default_context(cafile=self.ssl.get("ssl_ca_certs"))
        check = self.ssl.get("ssl_check_hostname", "true").lower() in ("1", "true", "yes")
        ctx.check_hostname = check and reqs != "none"
        ctx.verify_mode = modes[reqs]
        if "ssl_certfile" in self.ssl:
            ctx.load_cert_chain(self.ssl["ssl_certfile"], self.ssl.get("ssl_keyfile"))
        return ctx


def _encode(arg: Any) -> bytes:
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, str):
        return arg.encode()
    if isinstance(arg, bool):  # as redis-py: a bool is almost always a mistake
        raise RedisError(f"invalid argument {arg!r}: convert booleans to int or str")
    if isinstance(arg, int):
        return str(arg).encode()
    if isinstance(arg, float):
        return repr(arg).encode()
    raise RedisError(f"invalid argument of type {type(arg).__name__}")


def pack(commands: Iterable[tuple[Any, ...]]) -> bytes:
    """The RESP encoding of ``commands`` (each a tuple of arguments), back to back."""
    out: list[bytes] = []
    for args in commands:
        out.append(b"*%d\r\n" % len(args))
        for a in args:
            b = _encode(a)
            out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def _error(message: str) -> RedisError:
    code = message.split(" ", 1)[0]
    if code in ("NOAUTH", "WRONGPASS") or "invalid password" in message:
        return AuthenticationError(message)
    if code == "LOADING":
        return ConnectionError(message)
    return ResponseError(message)


class Connection:
    """One socket to Redis, authenticated and on the right database."""

    def __init__(self, params: Params, connect_timeout: float, timeout: float) -> None:
        self.timeout = timeout
        try:
            if params.unix_path is not None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(connect_timeout)
                sock.connect(params.unix_path)
            else:
                sock = socket.create_connection((params.host, params.port), connect_timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if params.tls:
                sock = params.tls_context().wrap_socket(sock, server_hostname=params.host)
        except builtins.TimeoutError as exc:
            raise TimeoutError(f"timed out connecting: {exc}") from exc
        except OSError as exc:
            raise ConnectionError(str(exc) or type(exc).__name__) from exc
        sock.settimeout(timeout)
        self.sock = sock
        self.file = sock.makefile("rb")
        hello: list[tuple[Any, ...]] = []
        if params.password is not None:
            user = (params.username,) if params.username else ()
            hello.append(("AUTH", *user, params.password))
        if params.db:
            hello.append(("SELECT", params.db))
        if hello:
            try:
                replies = self.call(hello)
            except RedisError:
                self.close()
                raise
            for reply in replies:
                if isinstance(reply, RedisError):
                    self.close()
                    raise reply

    def call(self, commands: list[tuple[Any, ...]], timeout: float | None = None) -> list[Any]:
        """Send ``commands`` in one write and read one reply each (errors as values)."""
        try:
            if timeout is not None:
                self.sock.settimeout(timeout)
            self.sock.sendall(pack(commands))
            return [self.read() for _ in commands]
        except builtins.TimeoutError as exc:
            raise TimeoutError("timed out waiting for Redis") from exc
        except OSError as exc:
            raise ConnectionError(str(exc) or type(exc).__name__) from exc
        finally:
            if timeout is not None:
                self.sock.settimeout(self.timeout)

    def read(self) -> Any:
        line = self.file.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("connection closed by Redis")
        kind, rest = line[:1], line[1:-2]
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.file.read(n + 2)
            if len(data) != n + 2:
                raise ConnectionError("connection closed by Redis")
            return data[:-2].decode()
        if kind == b":":
            return int(rest)
        if kind == b"+":
            return rest.decode()
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        if kind == b"-":
            return _error(rest.decode(errors="replace"))
        raise ConnectionError(f"unexpected reply from Redis: {line[:40]!r}")

    def close(self) -> None:
        for thing in (self.file, self.sock):
            try:
                thing.close()
            except OSError:
                pass


# --- reply conversions (as redis-py's with decode_responses=True) ------------------------


def _pairs(reply: list[str] | None) -> dict[str, str]:
    it = iter(reply or [])
    return dict(zip(it, it, strict=True))


def _ok(reply: Any) -> bool:
    return reply == "OK"


def _true_or_none(reply: Any) -> bool | None:
    return True if reply == "OK" else None


def _tuple_or_none(reply: Any) -> tuple[Any, ...] | None:
    return tuple(reply) if reply else None


Parse = Callable[[Any], Any] | None


def _result(reply: Any, parse: Parse) -> Any:
    """A command's value: its error raised, or its reply converted by ``parse``."""
    if isinstance(reply, RedisError):
        raise reply
    return parse(reply) if parse is not None else reply


class Commands:
    """The commands the producer uses, with redis-py's signatures."""

    def _call(self, args: tuple[Any, ...], parse: Parse = None) -> Any:
        raise NotImplementedError

    def ping(self) -> Any:
        return self._call(("PING",), lambda r: r == "PONG")

    def delete(self, *names: str) -> Any:
        return self._call(("DEL", *names))

    def expire(self, name: str, seconds: int) -> Any:
        return self._call(("EXPIRE", name, seconds), bool)

    def set(self, name: str, value: Any, ex: int | None = None, nx: bool = False) -> Any:
        args: tuple[Any, ...] = ("SET", name, value)
        if ex is not None:
            args += ("EX", ex)
        if nx:
            args += ("NX",)
        return self._call(args, _true_or_none)

    def eval(self, script: str, numkeys: int, *keys_and_args: Any) -> Any:
        return self._call(("EVAL", script, numkeys, *keys_and_args))

    # hashes
    def hset(
        self,
        name: str,
        key: str | None = None,
        value: Any = None,
        mapping: Mapping[str, Any] | None = None,
    ) -> Any:
        items: list[Any] = [] if key is None else [key, value]
        for k, v in (mapping or {}).items():
            items += [k, v]
        if not items:
            raise RedisError("'hset' with no key value pairs")
        return self._call(("HSET", name, *items))

    def hget(self, name: str, key: str) -> Any:
        return self._call(("HGET", name, key))

    def hgetall(self, name: str) -> Any:
        return self._call(("HGETALL", name), _pairs)

    def hmget(self, name: str, keys: Any, *args: str) -> Any:
        fields = [keys] if isinstance(keys, str) else list(keys)
        return self._call(("HMGET", name, *fields, *args))

    def hvals(self, name: str) -> Any:
        return self._call(("HVALS", name))

    def hlen(self, name: str) -> Any:
        return self._call(("HLEN", name))

    def hincrby(self, name: str, key: str, amount: int = 1) -> Any:
        return self._call(("HINCRBY", name, key, amount))

    def hincrbyfloat(self, name: str, key: str, amount: float = 1.0) -> Any:
        return self._call(("HINCRBYFLOAT", name, key, amount), float)

    # sets and sorted sets
    def sadd(self, name: str, *values: Any) -> Any:
        return self._call(("SADD", name, *values))

    def scard(self, name: str) -> Any:
        return self._call(("SCARD", name))

    def srem(self, name: str, *values: Any) -> Any:
        return self._call(("SREM", name, *values))

    def zadd(self, name: str, mapping: Mapping[str, float]) -> Any:
        items: list[Any] = []
        for member, score in mapping.items():
            items += [score, member]
        return self._call(("ZADD", name, *items))

    def zrem(self, name: str, *values: str) -> Any:
        return self._call(("ZREM", name, *values))

    def zrange(self, name: str, start: int, end: int) -> Any:
        return self._call(("ZRANGE", name, start, end))

    def zrevrange(self, name: str, start: int, end: int) -> Any:
        return self._call(("ZREVRANGE", name, start, end))

    def zrangebyscore(self, name: str, min: Any, max: Any) -> Any:  # noqa: A002
        return self._call(("ZRANGEBYSCORE", name, min, max))

    def zremrangebyscore(self, name: str, min: Any, max: Any) -> Any:  # noqa: A002
        return self._call(("ZREMRANGEBYSCORE", name, min, max))

    def zcount(self, name: str, min: Any, max: Any) -> Any:  # noqa: A002
        return self._call(("ZCOUNT", name, min, max))

    # lists
    def lpush(self, name: str, *values: Any) -> Any:
        return self._call(("LPUSH", name, *values))

    def rpush(self, name: str, *values: Any) -> Any:
        return self._call(("RPUSH", name, *values))

    def lpop(self, name: str, count: int | None = None) -> Any:
        return self._call(("LPOP", name) if count is None else ("LPOP", name, count))

    def lrange(self, name: str, start: int, end: int) -> Any:
        return self._call(("LRANGE", name, start, end))

    def ltrim(self, name: str, start: int, end: int) -> Any:
        return self._call(("LTRIM", name, start, end), _ok)

    def llen(self, name: str) -> Any:
        return self._call(("LLEN", name))


class Client(Commands):
    """Commands run one at a time; ``pipeline()`` sends many in one round trip."""

    def __init__(self, url: str, connect_timeout: float = 5.0, timeout: float = 10.0) -> None:
        self.params = Params(url)
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self._idle: list[Connection] = []
        self._lock = threading.Lock()

    def _connect(self) -> Connection:
        return Connection(self.params, self.connect_timeout, self.timeout)

    def _take(self) -> tuple[Connection, bool]:
        """A connection and whether it was idle in the pool (then it may be stale)."""
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self._connect(), False

    def _give(self, conn: Connection) -> None:
        with self._lock:
            self._idle.append(conn)

    def _exchange(
        self, commands: list[tuple[Any, ...]], timeout: float | None = None
    ) -> tuple[Connection, list[Any]]:
        """Replies to ``commands`` sent in one round trip, and the open connection used.

        A pooled connection that fails is dropped and the commands are sent once more on
        a fresh one: after a Redis restart every idle connection is dead.
        """
        conn, pooled = self._take()
        try:
            return conn, conn.call(commands, timeout)
        except ConnectionError:
            conn.close()
            if not pooled:
                raise
        except RedisError:
            conn.close()
            raise
        conn = self._connect()
        try:
            return conn, conn.call(commands, timeout)
        except RedisError:
            conn.close()
            raise

    def run(self, commands: list[tuple[Any, ...]], timeout: float | None = None) -> list[Any]:
        """Replies to ``commands`` sent in one round trip (errors as values, not raised)."""
        conn, replies = self._exchange(commands, timeout)
        self._give(conn)
        return replies

    def _call(self, args: tuple[Any, ...], parse: Parse = None) -> Any:
        return _result(self.run([args])[0], parse)

    def blpop(self, keys: Any, timeout: float = 0) -> Any:
        names = [keys] if isinstance(keys, str) else list(keys)
        wait = None if not timeout else timeout + self.timeout  # the socket outwaits Redis
        return _result(self.run([("BLPOP", *names, timeout)], timeout=wait)[0], _tuple_or_none)

    def pipeline(self, transaction: bool = True) -> Pipeline:
        return Pipeline(self, transaction)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Pipeline(Commands):
    """Buffered commands, sent in one round trip by ``execute`` (in MULTI/EXEC when
    ``transaction``). After ``watch``, commands run at once on the pipeline's own
    connection until ``multi``, as in redis-py."""

    def __init__(self, client: Client, transaction: bool) -> None:
        self.client = client
        self.transaction = transaction
        self._queued: list[tuple[tuple[Any, ...], Parse]] = []
        self._conn: Connection | None = None  # held from ``watch`` to ``execute``/``reset``
        self._watching = False
        self._immediate = False

    def _call(self, args: tuple[Any, ...], parse: Parse = None) -> Any:
        if self._immediate:
            return _result(self._send([args])[0], parse)
        self._queued.append((args, parse))
        return self

    def _send(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        assert self._conn is not None
        try:
            return self._conn.call(commands)
        except RedisError:
            self._conn.close()
            self._conn = None
            self._watching = self._immediate = False
            raise

    def watch(self, *names: str) -> None:
        if self._conn is None:
            self._conn, replies = self.client._exchange([("WATCH", *names)])
        else:
            replies = self._send([("WATCH", *names)])
        self._watching = self._immediate = True
        _result(replies[0], None)

    def unwatch(self) -> None:
        if self._conn is not None and self._watching:
            self._send([("UNWATCH",)])
        self._watching = self._immediate = False

    def multi(self) -> None:
        self._immediate = False

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        queued, self._queued = self._queued, []
        commands = [args for args, _ in queued]
        try:
            if self.transaction:
                commands = [("MULTI",), *commands, ("EXEC",)]
            if self._conn is not None:
                replies = self._send(commands)
                self._watching = False  # EXEC (or the error path) ends the watch
            else:
                replies = self.client.run(commands)
        finally:
            self.reset()
        if self.transaction:
            for reply in replies[:-1]:  # OK / QUEUED, or why the command was refused
                if isinstance(reply, RedisError):
                    raise reply
            replies = replies[-1]
            if replies is None:
                raise WatchError("watched variable changed")
            if isinstance(replies, RedisError):
                raise replies
        return [
            reply if isinstance(reply, RedisError) and not raise_on_error else _result(reply, parse)
            for (_, parse), reply in zip(queued, replies, strict=True)
        ]

    def reset(self) -> None:
        self._queued = []
        conn, self._conn = self._conn, None
        watching, self._watching, self._immediate = self._watching, False, False
        if conn is None:
            return
        if watching:
            try:
                conn.call([("UNWATCH",)])
            except RedisError:
                conn.close()
                return
        self.client._give(conn)

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.reset()
