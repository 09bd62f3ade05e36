"""The one Redis client: redis-py, for every command and every worker.

Imported only by what talks to Redis (redis-py's import is a noticeable part of a
command's start). ``connect`` takes
every URL form the workers' broker (kombu) takes, so one ``REDIS_URL`` serves both:
``redis://``, ``rediss://`` (TLS, ``?ssl_cert_reqs=`` and friends), ``unix://`` and
``redis+socket://`` (a unix socket), and ``sentinel://`` (a Redis that Sentinel fails
over, see ``sentinel_parts``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from .errors import BrokerUnavailable, ConfigError
from .redaction import split_urls, userinfo

if TYPE_CHECKING:
    import redis


@dataclass(frozen=True)
class SentinelURL:
    """``sentinel://[:PASSWORD@]HOST:PORT[;sentinel://HOST:PORT...][/DB]?master_name=NAME``.

    kombu's form (sentinels separated by ';'), with the master's name in the query, as
    the workers' broker reads it too (``worker.broker``). PASSWORD is the master's;
    ``&sentinel_password=`` the sentinels' own, when they require one.
    """

    sentinels: tuple[tuple[str, int], ...]
    master_name: str
    db: int
    password: str | None
    sentinel_password: str | None
    options: dict[str, str]


#: ``password=`` in a URL's query (redis-py reads it; kombu fails on it).
_QUERY_PASSWORD = re.compile(r"(?P<sep>[?&])password=(?P<value>[^&#]*)&?", re.I)


def canonical_url(url: str) -> str:
    """``url`` as redis-py and kombu both read it, with the password the user meant.

    The scheme in lower case (``REDIS://``); the user name and password percent-encoded,
    so that a raw '@', '/', ':' or '?' in a password is not taken for the host, path or
    query (which would connect elsewhere and print a piece of the password in the
    error); ``?password=`` moved into the user info (kombu refuses it in the query).
    Escapes already in the password are kept, so an encoded password is unchanged.
    """
    return ";".join(_canonical_one(one) for one in split_urls(url.strip()))


def _canonical_one(one: str) -> str:
    scheme, sep, rest = one.partition("://")
    if not sep:
        return one
    scheme = scheme.lower()
    parts = userinfo(one)
    if parts is not None:
        user, colon, password = parts[1].partition(":")
        auth = _quote(user) + (":" + _quote(password) if colon else "")
        rest = parts[2][1:]  # after the '@'
        if colon:  # a password in the user info wins over one in the query
            rest = _QUERY_PASSWORD.sub(lambda m: m["sep"], rest).rstrip("?&")
    else:
        auth = ""
        found = _QUERY_PASSWORD.search(rest)
        if found is not None:
            auth = ":" + _quote(found["value"])
            rest = (rest[: found.start()] + found["sep"] + rest[found.end() :]).rstrip("?&")
    return f"{scheme}://{auth}@{rest}" if auth else f"{scheme}://{rest}"


def _quote(text: str) -> str:
    """Percent-encode what would end the user info; keep escapes already there."""
    return quote(text, safe="%!$&'()*+,;=-._~")


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
    own = query.pop("sentinel_password", None)
    return SentinelURL(tuple(sentinels), name, db, password, own, query)


def unix_url(url: str, scheme: str, db_key: str) -> str:
    """A unix-socket URL in the other library's spelling: redis-py's ``unix:///path?db=N``
    and kombu's ``redis+socket:///path?virtual_host=N``."""
    parts = urlsplit(url)
    query = [(db_key if k in ("db", "virtual_host") else k, v) for k, v in parse_qsl(parts.query)]
    tail = f"?{urlencode(query)}" if query else ""
    return f"{scheme}://{parts.netloc}{parts.path}{tail}"


def connect(url: str, timeout: float = 5.0, retry: Any = None) -> redis.Redis:
    """A redis-py client (str replies) that gives up within ``timeout`` s instead of hanging.

    ``retry``: a redis-py retry policy in place of its default (the workers' waits out a
    Redis refusing writes, ``worker.refusals``).
    """
    import redis

    options: dict[str, Any] = {
        "socket_connect_timeout": timeout,
        "socket_timeout": max(timeout, 10.0),
        "decode_responses": True,
        "health_check_interval": 30,
        # Sent with CLIENT SETINFO; given, redis-py does not look it up in the installed
        # packages' metadata on the first connection (~4 ms of every command).
        "lib_version": redis.__version__,
    }
    if retry is not None:
        options["retry"] = retry
    url = canonical_url(url)
    if is_sentinel(url):
        from redis.sentinel import Sentinel

        parts = sentinel_parts(url)
        sentinel = Sentinel(
            list(parts.sentinels),
            socket_timeout=timeout,
            sentinel_kwargs={"password": parts.sentinel_password, "socket_timeout": timeout},
        )
        return sentinel.master_for(
            parts.master_name, db=parts.db, password=parts.password, **options
        )
    if url.lower().startswith("redis+socket://"):
        url = unix_url(url, "unix", "db")
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
