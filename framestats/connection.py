"""The one Redis client: redis-py, for every command and every worker.

Imported only by what talks to Redis (redis-py's import is ~0.1 s). ``connect`` takes
every URL form the workers' broker (kombu) takes, so one ``REDIS_URL`` serves both:
``redis://``, ``rediss://`` (TLS, ``?ssl_cert_reqs=`` and friends), ``unix://`` and
``redis+socket://`` (a unix socket), and ``sentinel://`` (a Redis that Sentinel fails
over, see ``sentinel_parts``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .errors import BrokerUnavailable, ConfigError

if TYPE_CHECKING:
    import redis


@dataclass(frozen=True)
class SentinelURL:
    """``sentinel://[:PASSWORD@]HOST:PORT[;sentinel://HOST:PORT...][/DB]?master_name=NAME``.

    kombu's form (sentinels separated by ';'), with the master's name in the query, as
    the workers' broker reads it too (``worker.broker``).
    """

    sentinels: tuple[tuple[str, int], ...]
    master_name: str
    db: int
    password: str | None
    options: dict[str, str]


def is_sentinel(url: str) -> bool:
    return url.lower().startswith("sentinel://")


def sentinel_parts(url: str) -> SentinelURL:
    """The parts of a ``sentinel://`` URL; ConfigError when it names no master."""
    sentinels: list[tuple[str, int]] = []
    password: str | None = None
    db = 0
    query: dict[str, str] = {}
    for part in url.split(";"):
        parts = urlsplit(part.strip())
        if parts.scheme.lower() != "sentinel":
            raise ConfigError(f"REDIS_URL: every part of a sentinel URL starts sentinel://: {part}")
        sentinels.append((parts.hostname or "localhost", parts.port or 26379))
        if parts.password is not None:
            password = unquote(parts.password)
        if parts.path.strip("/"):
            db = int(parts.path.strip("/"))
        query.update(parse_qsl(parts.query))
    name = query.pop("master_name", "")
    if not name:
        raise ConfigError("REDIS_URL: a sentinel:// URL needs ?master_name=NAME")
    return SentinelURL(tuple(sentinels), name, db, password, query)


def _unix_url(url: str) -> str:
    """kombu's ``redis+socket:///path`` as redis-py's ``unix:///path``."""
    return "unix://" + url.split("://", 1)[1]


def connect(url: str, timeout: float = 5.0) -> redis.Redis:
    """A redis-py client (str replies) that gives up within ``timeout`` s instead of hanging."""
    import redis

    options: dict[str, Any] = {
        "socket_connect_timeout": timeout,
        "socket_timeout": max(timeout, 10.0),
        "decode_responses": True,
        "health_check_interval": 30,
    }
    if is_sentinel(url):
        from redis.sentinel import Sentinel

        parts = sentinel_parts(url)
        sentinel = Sentinel(
            list(parts.sentinels),
            socket_timeout=timeout,
            sentinel_kwargs={"password": parts.password, "socket_timeout": timeout},
        )
        return sentinel.master_for(
            parts.master_name, db=parts.db, password=parts.password, **options
        )
    if url.lower().startswith("redis+socket://"):
        url = _unix_url(url)
    return redis.Redis.from_url(url, **options)


def redis_error() -> type[Exception]:
    """redis-py's base error class (what a command raises when Redis fails it)."""
    import redis

    return redis.RedisError


def ping(client: redis.Redis, url_redacted: str) -> None:
    """Raise BrokerUnavailable (naming the URL) unless Redis answers."""
    import redis

    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise BrokerUnavailable(url_redacted, "authentication failed") from exc
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise BrokerUnavailable(url_redacted, str(exc) or type(exc).__name__) from exc
    except redis.ResponseError as exc:
        raise BrokerUnavailable(url_redacted, str(exc)) from exc
