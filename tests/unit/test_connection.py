"""REDIS_URL in every form: what redis-py and kombu each get from it."""

from __future__ import annotations

import pytest

from framestats.connection import sentinel_parts, unix_url
from framestats.errors import ConfigError
from framestats.settings import Settings
from worker.broker import broker_url, celery_config


def test_unix_socket_urls_translate_both_ways():
    assert unix_url("unix://:p%40w@/run/r.sock?db=3", "redis+socket", "virtual_host") == (
        "redis+socket://:p%40w@/run/r.sock?virtual_host=3"
    )
    assert unix_url("redis+socket:///run/r.sock?virtual_host=2", "unix", "db") == (
        "unix:///run/r.sock?db=2"
    )
    assert broker_url("unix:///run/r.sock?db=1") == (
        "redis+socket:///run/r.sock?virtual_host=1",
        {},
    )
    assert broker_url("redis+socket:///run/r.sock") == ("redis+socket:///run/r.sock", {})


def test_sentinel_url_parts_and_the_brokers_spelling():
    url = "sentinel://:pw@a:26379;sentinel://:pw@b:26380/4?master_name=m&sentinel_password=s"
    parts = sentinel_parts(url)
    assert parts.sentinels == (("a", 26379), ("b", 26380))
    assert (parts.master_name, parts.db, parts.password, parts.sentinel_password) == (
        "m", 4, "pw", "s",
    )  # fmt: skip
    broker, options = broker_url(url)
    assert broker == "sentinel://:pw@a:26379/4;sentinel://:pw@b:26380/4"
    assert options == {"master_name": "m", "sentinel_kwargs": {"password": "s"}}
    config = celery_config(Settings(redis_url=url))
    assert config["broker_transport_options"]["master_name"] == "m"


@pytest.mark.parametrize(
    "url", ["sentinel://a:26379", "sentinel://a:26379;redis://b:6379?master_name=m"]
)
def test_a_sentinel_url_without_a_master_or_with_other_parts_is_refused(url):
    with pytest.raises(ConfigError):
        sentinel_parts(url)
