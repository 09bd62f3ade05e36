"""The Celery application of the workers (``celery -A worker.app:app``).

Importing it is cheap (no torch): tasks live in ``worker.tasks`` and are loaded by
the worker at start.
"""

from __future__ import annotations

from producer.broker import make_app
from producer.config import Settings

settings = Settings.from_env()
app = make_app(settings, include=["worker.tasks"])

__all__ = ["app", "settings"]
