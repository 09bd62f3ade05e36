"""Passwords are hidden in every form a Redis URL takes, and such URLs reach Redis intact."""

from __future__ import annotations

import io
from urllib.parse import quote

import pytest

from framestats.connection import canonical_url, sentinel_parts
from framestats.redaction import RedactingStream, redact_text, redact_url, url_secrets
from framestats.settings import Settings, parse_duration

#: A password with every character that ends a part of a URL: '@', '/', '%', ':'.
HARD = "zAa1@zBb2/zCc3%zDd4:zEe5"
HARD_TOKENS = ("zAa1", "zBb2", "zCc3", "zDd4", "zEe5")

CASES = {
    "plain": ("redis://:s3cret-pw@redis:6379/0", "redis://:***@redis:6379/0"),
    "user": ("redis://user:s3cret-pw@redis:6379/0", "redis://user:***@redis:6379/0"),
    "upper-case scheme": ("REDIS://:s3cret-pw@redis:6379/0", "REDIS://:***@redis:6379/0"),
    "rediss": (
        "rediss://:s3cret-pw@redis.example:6380/0?ssl_ca_certs=/ca.pem",
        "rediss://:***@redis.example:6380/0?ssl_ca_certs=/ca.pem",
    ),
    "query": (
        "redis://redis:6379/0?password=s3cret-pw&health_check_interval=2",
        "redis://redis:6379/0?password=***&health_check_interval=2",
    ),
    "query, upper-case name": (
        "redis://redis/0?PASSWORD=s3cret-pw",
        "redis://redis/0?PASSWORD=***",
    ),
    "raw @ / % :": (f"redis://user:{HARD}@redis:6379/0", "redis://user:***@redis:6379/0"),
    "encoded @ / % :": (
        f"redis://user:{quote(HARD, safe='')}@redis:6379/0",
        "redis://user:***@redis:6379/0",
    ),
    "raw, no user": (f"rediss://:{HARD}@redis:6380/0", "rediss://:***@redis:6380/0"),
    "no colon": ("redis://s3cret-pw@redis:6379/0", "redis://***@redis:6379/0"),
    "@ in the query": (
        "rediss://:s3cret-pw@redis/0?ssl_ca_certs=/etc/a@b.pem",
        "rediss://:***@redis/0?ssl_ca_certs=/etc/a@b.pem",
    ),
    "sentinel": (
        "sentinel://:s3cret-pw@h1:26379;sentinel://:s3cret-pw@h2:26379/0?master_name=m",
        "sentinel://:***@h1:26379;sentinel://:***@h2:26379/0?master_name=m",
    ),
    "unix socket": ("unix://:s3cret-pw@/run/redis.sock?db=1", "unix://:***@/run/redis.sock?db=1"),
    "no password": ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    "masked already": ("redis://:**@127.0.0.1:6379/0", "redis://:**@127.0.0.1:6379/0"),
    "no password, @ in the query": (
        "rediss://redis/0?ssl_ca_certs=/etc/a@b.pem",
        "rediss://redis/0?ssl_ca_certs=/etc/a@b.pem",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_redis_url_is_redacted(case):
    url, shown = CASES[case]
    assert redact_url(url) == shown
    assert Settings.from_env({"REDIS_URL": url}).redis_url_redacted == shown
    for secret in ("s3cret-pw", *HARD_TOKENS):
        assert secret not in redact_url(url)


@pytest.mark.parametrize("case", [c for c in CASES if CASES[c][0] != CASES[c][1]])
def test_free_text_loses_the_password_in_every_spelling(case):
    url, _ = CASES[case]
    secrets = url_secrets(url)
    password = "s3cret-pw" if "s3cret-pw" in url else HARD
    text = f"connecting to {url} failed; password {password!r}, encoded {quote(password, safe='')}"
    clean = redact_text(text, secrets)
    for secret in ("s3cret-pw", HARD, quote(HARD, safe=""), *HARD_TOKENS):
        assert secret not in clean, clean
    out = io.StringIO()
    RedactingStream(out, secrets).write(text)
    assert out.getvalue() == clean


@pytest.mark.parametrize(
    ("url", "canonical"),
    [
        ("REDIS://:pw@h:6379/0", "redis://:pw@h:6379/0"),
        (f"redis://u:{HARD}@h:6379/0", "redis://u:zAa1%40zBb2%2FzCc3%zDd4%3AzEe5@h:6379/0"),
        (f"redis://u:{quote(HARD, safe='')}@h/0", f"redis://u:{quote(HARD, safe='')}@h/0"),
        ("redis://h:6379/0?password=pw&socket_timeout=2", "redis://:pw@h:6379/0?socket_timeout=2"),
        ("redis://h:6379/0?password=pw", "redis://:pw@h:6379/0"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("rediss://:pw@h/0?ssl_ca_certs=/a@b.pem", "rediss://:pw@h/0?ssl_ca_certs=/a@b.pem"),
    ],
)
def test_canonical_url_keeps_the_password_meant(url, canonical):
    """A raw '/' in a password would make the host a piece of the password."""
    import redis

    assert canonical_url(url) == canonical
    kwargs = redis.connection.parse_url(canonical_url(url))
    assert kwargs["host"] == "h"
    assert kwargs.get("password") in ("pw", HARD, None)


def test_canonical_sentinel_url_keeps_every_sentinel():
    url = f"sentinel://:{HARD}@h1:26379;sentinel://:{HARD}@h2:26380/2?master_name=m"
    parts = sentinel_parts(canonical_url(url))
    assert parts.sentinels == (("h1", 26379), ("h2", 26380))
    assert parts.password == HARD and parts.db == 2 and parts.master_name == "m"


def test_kombu_reads_the_canonical_url():
    from kombu import Connection

    conn = Connection(canonical_url(f"REDIS://u:{HARD}@h:6379/3"))
    assert (conn.hostname, conn.port, conn.userid, conn.password) == ("h", 6379, "u", HARD)
    conn = Connection(canonical_url("redis://h:6379/0?password=pw"))
    assert conn.password == "pw"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("30m", 1800), ("12h", 43200), ("7d", 604800), ("2w", 1209600)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_job_ttl_setting():
    assert Settings.from_env({}).job_ttl == 7 * 86400
    assert Settings.from_env({"FRAMESTATS_JOB_TTL": "3600"}).job_ttl == 3600
    assert Settings.from_env({"FRAMESTATS_JOB_TTL": "2d"}).job_ttl == 2 * 86400
    with pytest.raises(ValueError, match="FRAMESTATS_JOB_TTL"):
        Settings.from_env({"FRAMESTATS_JOB_TTL": "soon"})
