"""Configuration-level security checks (no Redis needed): JSON only, rediss://, redaction."""

from __future__ import annotations

import ssl

import pytest

from framestats.errors import ConfigError
from framestats.settings import Settings, redact_url
from worker.broker import check_safe, make_app


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@redis:6379/0", "redis://:***@redis:6379/0"),
        ("redis://user:s3cret@redis:6379/0", "redis://user:***@redis:6379/0"),
        (
            "rediss://:s3cret@redis.example:6380/0?ssl_ca_certs=/ca.pem",
            "rediss://:***@redis.example:6380/0?ssl_ca_certs=/ca.pem",
        ),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ],
)
def test_redis_url_is_redacted(url, shown):
    assert redact_url(url) == shown
    assert Settings.from_env({"REDIS_URL": url}).redis_url_redacted == shown


def test_rediss_broker_verifies_certificates():
    """kombu alone would use ssl_cert_reqs=CERT_NONE for rediss:// without parameters."""
    app = make_app(Settings.from_env({"REDIS_URL": "rediss://:s3cret@redis.example:6380/0"}))
    assert app.conf.broker_use_ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    conn = app.connection()
    assert conn.ssl["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    assert "s3cret" not in conn.as_uri()
    check_safe(app)


def test_rediss_url_parameters_take_precedence():
    url = "rediss://:s3cret@redis.example:6380/0?ssl_cert_reqs=optional&ssl_ca_certs=/ca.pem"
    conn = make_app(Settings.from_env({"REDIS_URL": url})).connection()
    assert conn.ssl == {"ssl_cert_reqs": ssl.CERT_OPTIONAL, "ssl_ca_certs": "/ca.pem"}


def test_plain_redis_has_no_tls_settings():
    app = make_app(Settings.from_env({"REDIS_URL": "redis://127.0.0.1:6379/0"}))
    assert not app.conf.broker_use_ssl


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("accept_content", ["json", "pickle"]),
        ("accept_content", ["application/x-python-serialize"]),
        ("accept_content", ["yaml"]),
        ("result_accept_content", ["pickle"]),
        ("task_serializer", "pickle"),
        ("event_serializer", "msgpack"),
    ],
)
def test_check_safe_refuses_anything_but_json(key, value):
    app = make_app(Settings.from_env({}))
    app.conf.update({key: value})
    with pytest.raises(ConfigError, match="only JSON is allowed"):
        check_safe(app)


def test_default_configuration_is_json_only():
    check_safe(make_app(Settings.from_env({})))


def test_prefetch_multiplier_reaches_celery_and_zero_is_refused():
    """Each pool process holds its next message (2 by default); Celery reads 0 as
    "reserve without limit", so 0 is refused, naming the variable."""
    assert make_app(Settings.from_env({})).conf.worker_prefetch_multiplier == 1
    two = Settings.from_env({"FRAMESTATS_PREFETCH_MULTIPLIER": "2"})
    assert make_app(two).conf.worker_prefetch_multiplier == 2
    with pytest.raises(ValueError, match="FRAMESTATS_PREFETCH_MULTIPLIER must be at least 1"):
        Settings.from_env({"FRAMESTATS_PREFETCH_MULTIPLIER": "0"})
