"""The Celery application of the workers (``celery -A worker.app:app``).

Importing it is cheap (no torch): tasks live in ``worker.tasks`` and are loaded by
the worker at start.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from celery.signals import worker_init

from framestats import redaction
from framestats.errors import ConfigError
from framestats.settings import Settings

from .broker import check_safe, make_app

# The worker parallelises on its own: a process per core, or decode threads on every
# core in a GPU worker. An hdf5plugin built with OpenMP (the Docker image's) would also
# start a team of all cores inside each Bitshuffle decode call of each of those: N x N
# threads. Set before the filters and torch load OpenMP (no import above does); an
# explicit value is kept.
os.environ.setdefault("OMP_NUM_THREADS", "1")

settings = Settings.from_env()
# `celery -A worker.app worker|flower` starts here: its banner, logs and tracebacks are
# written through streams that hide the broker's password in every spelling.
redaction.install(settings.redis_url)
app = make_app(settings, include=["worker.tasks"])


@worker_init.connect
def _refuse_unsafe_configuration(**_: Any) -> None:
    """``celery -A worker.app worker`` started without our CLI refuses pickle as well."""
    try:
        check_safe(app)
    except ConfigError as exc:  # Celery logs and ignores exceptions of signal handlers
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from exc


__all__ = ["app", "settings"]
