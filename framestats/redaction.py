"""Passwords out of everything shown: URLs, free text, and whole output streams.

``REDIS_URL`` may carry a password in many forms: ``redis://:PW@host``, ``REDIS://``,
``rediss://user:PW@host``, ``?password=PW``, a password holding ``@``, ``/``, ``%`` or ``:``
raw or percent-encoded, and ``sentinel://:PW@h1:26379;sentinel://:PW@h2:26379/0``.
``redact_url`` hides each of them; where a library prints the URL or a piece of it
itself (kombu's own sanitizer keeps what follows a raw ``/`` in a password; Celery's
banner; an exception's text), ``install`` wraps the process's output streams so that
the password, in every spelling, is replaced before a byte leaves the process.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from typing import Any, TextIO
from urllib.parse import quote, unquote

#: What replaces a secret.
MASK = "***"
#: Secrets shorter than this are redacted inside URLs but not searched for in free text
#: (replacing every "ab" in a log would make it unreadable and hides nothing worth it).
MIN_SECRET = 4

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
#: A query parameter whose name says it holds a password (password, sentinel_password...).
_QUERY_SECRET = re.compile(r"(?P<name>[?&;][^=&#?;]*pass[^=&#?;]*=)(?P<value>[^&#]*)", re.I)
#: Where one URL of kombu's ``;``-separated failover list (sentinel) starts.
_NEXT_URL = re.compile(r";(?=\s*[A-Za-z][A-Za-z0-9+.\-]*://)")
#: A URL inside free text (ends at whitespace or a quote).
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]+")


def _userinfo_end(rest: str) -> int:
    """Index of the '@' that ends the userinfo of ``rest`` (the URL after '://'), or -1.

    The last '@' wins (a raw password may hold '@', '/' or ':'), unless a '=' comes
    before it: then it is inside a query value (``?ssl_ca_certs=/a@b.pem``) and the
    last '@' before the query is taken instead.
    """
    for i in range(len(rest) - 1, -1, -1):
        if rest[i] == "@" and "=" not in rest[:i]:
            return i
    head = re.split(r"[?#]", rest, maxsplit=1)[0]
    return head.rfind("@")


def _split(url: str) -> list[str]:
    return _NEXT_URL.split(url)


def split_urls(url: str) -> list[str]:
    """The URLs of kombu's ``;``-separated list (``sentinel://...;sentinel://...``)."""
    return _split(url)


def userinfo(one: str) -> tuple[str, str, str] | None:
    """(``scheme://``, userinfo, the rest from its '@') of one URL; None without userinfo.

    The userinfo ends at the URL's last '@' (see ``_userinfo_end``), so a raw password
    holding '@', '/', ':' or '%' stays whole, where ``urllib`` would cut it at the '/'.
    """
    return _parts(one)


def _parts(one: str) -> tuple[str, str, str] | None:
    """(scheme://, userinfo, rest after the '@'), or None for a URL without userinfo."""
    m = _SCHEME.match(one.lstrip())
    if m is None:
        return None
    start = len(one) - len(one.lstrip()) + m.end()
    rest = one[start:]
    at = _userinfo_end(rest)
    if at < 0:
        return None
    return one[:start], rest[:at], rest[at:]


def _redact_one(one: str) -> str:
    parts = _parts(one)
    if parts is not None:
        scheme, userinfo, rest = parts
        user, sep, password = userinfo.partition(":")
        if not (sep and password.strip("*") == ""):  # not masked already (kombu: ':**@')
            # Without ':' the whole userinfo may be a password (kombu reads it either way).
            one = scheme + (f"{user}:{MASK}" if sep else MASK) + rest
    return _QUERY_SECRET.sub(lambda m: m["name"] + MASK, one)


def redact_url(url: str) -> str:
    """The URL with every password replaced by '***', for logs, status output and provenance."""
    return ";".join(_redact_one(one) for one in _split(url))


def url_secrets(url: str) -> list[str]:
    """Every password ``url`` carries, as written and percent-decoded and -encoded."""
    raw: list[str] = []
    for one in _split(url):
        parts = _parts(one)
        if parts is not None:
            user, sep, password = parts[1].partition(":")
            raw.append(password if sep else user)
            raw = [r for r in raw if r.strip("*")]
        raw += [m["value"] for m in _QUERY_SECRET.finditer(one)]
    found: set[str] = set()
    for secret in raw:
        found.update({secret, unquote(secret), quote(secret, safe=""), quote(unquote(secret))})
    return sorted((s for s in found if s), key=len, reverse=True)


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every URL redacted and every one of ``secrets`` replaced by '***'."""
    text = _URL_IN_TEXT.sub(lambda m: redact_url(m[0]), text)
    for secret in secrets:
        if len(secret) >= MIN_SECRET:
            text = text.replace(secret, MASK)
    return text


class RedactingStream:
    """A text stream that redacts what is written to it, then hands it on."""

    def __init__(self, stream: TextIO, secrets: Iterable[str]) -> None:
        self._stream = stream
        self._secrets = list(secrets)

    def write(self, text: str) -> int:
        self._stream.write(redact_text(text, self._secrets))
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty, encoding...
        return getattr(self._stream, name)


def install(url: str) -> None:
    """Redact ``url``'s passwords from everything this process writes to stdout and stderr.

    Covers ``sys.stdout``/``sys.stderr`` and ``sys.__stdout__``/``sys.__stderr__`` (Celery
    creates its log handlers on the latter); forked pool processes inherit it. A secret
    split between two ``write`` calls is not caught; loggers and print write whole lines.
    """
    secrets = url_secrets(url)
    for name in ("stdout", "stderr", "__stdout__", "__stderr__"):
        stream = getattr(sys, name)
        if stream is None:
            continue
        if isinstance(stream, RedactingStream):
            stream._secrets = list(secrets)
        else:
            setattr(sys, name, RedactingStream(stream, secrets))
