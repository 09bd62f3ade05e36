"""The Celery application's configuration, in one place.

Workers build their app here (the producer publishes with ``framestats.wire`` and
builds none). Importing this module does not import torch.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

from celery import Celery

from framestats.connection import canonical_url, is_sentinel, sentinel_parts, unix_url
from framestats.constants import DEFAULT_QUEUE
from framestats.errors import ConfigError
from framestats.settings import Settings


def broker_url(url: str) -> tuple[str, dict[str, Any]]:
    """The broker URL in kombu's spelling, and the transport options it implies.

    ``REDIS_URL`` takes the forms redis-py and kombu both take: ``unix:///path`` (redis-py)
    is kombu's ``redis+socket:///path``; a ``sentinel://`` URL's ``?master_name=`` is
    kombu's ``master_name`` transport option (``&sentinel_password=``: the sentinels').
    """
    lower = url.lower()
    if lower.startswith("unix://"):
        return unix_url(url, "redis+socket", "virtual_host"), {}
    if is_sentinel(url):
        parts = sentinel_parts(url)
        options: dict[str, Any] = {"master_name": parts.master_name}
        if parts.sentinel_password is not None:
            options["sentinel_kwargs"] = {"password": parts.sentinel_password}
        # kombu reads the database of the first sentinel's URL only: name it on each.
        auth = f":{quote(parts.password, safe='')}@" if parts.password is not None else ""
        hosts = [f"sentinel://{auth}{host}:{port}/{parts.db}" for host, port in parts.sentinels]
        return ";".join(hosts), options
    return url, {}


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings: JSON only, late acks, bounded prefetch, fast redelivery."""
    # Every form REDIS_URL takes (REDIS://, ?password=, a raw '/' in the password) as kombu
    # reads it: the password the user meant, not a piece of it as a host name.
    url, transport_options = broker_url(canonical_url(settings.redis_url))
    return {
        "broker_url": url,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 5,
        # visibility_timeout: a message taken by a worker that died is handed out again
        # after this long. The sweep that restores it runs on every worker at most every
        # unacked_restore_interval seconds (kombu's default scans every 10 x 10 s), so a lost chunk
        # comes back within about visibility_timeout + restore_interval.
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout,
            "unacked_restore_interval": settings.restore_interval,
            "unacked_restore_throttle": 1,
            "socket_connect_timeout": 5,
            **transport_options,
        },
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        "task_ignore_result": True,
        "result_backend": None,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": settings.prefetch_multiplier,
        "task_default_queue": DEFAULT_QUEUE,
        "task_create_missing_queues": True,
        "worker_send_task_events": True,
        "task_send_sent_event": False,
        "worker_hijack_root_logger": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # After a broker reconnect Celery would lower the prefetch count by the tasks still
        # running and raise it again as their acks arrive; that machinery has left workers
        # idle after Redis restarts (celery#8796, #9054, #10205). At full prefetch a worker
        # reserves at most one message per pool process too many meanwhile (the running
        # task's own slot): late acks keep those safe.
        "worker_enable_prefetch_count_reduction": False,
        **_tls(settings.redis_url),
    }


def _tls(url: str) -> dict[str, Any]:
    """For ``rediss://``: verify the server's certificate, as redis-py does for job state.

    kombu alone would default to ``ssl_cert_reqs=CERT_NONE`` (no verification, only a
    warning), handing the password to whoever answers. ``ssl_*`` parameters in the URL
    (``?ssl_ca_certs=/ca.pem``, ``?ssl_cert_reqs=none``) still take precedence.
    """
    if not url.lower().startswith("rediss://"):
        return {}
    return {"broker_use_ssl": {"ssl_cert_reqs": ssl.CERT_REQUIRED}}


def make_app(settings: Settings, include: Iterable[str] = ()) -> Celery:
    from . import transport

    transport.use()  # kombu's Redis transport with a fix for losing the broker
    app = Celery("framestats", include=list(include))
    app.conf.update(celery_config(settings))
    return app


#: Settings that name serializers a worker would decode; only JSON may appear in them.
_SERIALIZER_SETTINGS = (
    "accept_content",
    "result_accept_content",
    "task_serializer",
    "result_serializer",
    "event_serializer",
)


def check_safe(app: Celery) -> None:
    """Refuse a configuration that would accept pickle (code execution from the queue).

    Checks the settings in effect and those of a Celery config module named by
    ``CELERY_CONFIG_MODULE`` (Celery's own variable): our settings override its
    ``accept_content``, but a module asking for pickle is refused, not silently ignored.
    """
    sources: list[tuple[str, Any]] = [("in effect", app.conf)]
    module = os.environ.get("CELERY_CONFIG_MODULE")
    if module:
        sources.append((f"set by CELERY_CONFIG_MODULE={module}", app.loader.conf))
    for where, conf in sources:
        for key in _SERIALIZER_SETTINGS:
            value = conf.get(key) or conf.get("CELERY_" + key.upper())  # old-style names too
            values = [value] if isinstance(value, str) else list(value or [])
            bad = [str(v) for v in values if str(v).lower() not in ("json", "application/json")]
            if bad:
                raise ConfigError(
                    f"unsafe Celery configuration: {key}={values!r} {where}; "
                    "only JSON is allowed (pickle would run code sent through Redis)"
                )
