"""framestats: per-frame statistics of HDF5 image stacks inside masks and regions.

The shared core of the ``producer`` command line and the ``worker`` processes, and the
Python API::

    import framestats
    job = framestats.submit("scan_*.h5", mask="mask.npy", stats=("sum", "mean"))
    job.wait(progress=True)
    res = job.result()                  # or framestats.open("scan.reduced.h5")
    res["mean"], res.to_pandas("mean"), res.to_xarray()

Importing it is light: no torch, Celery, h5py, redis-py or numpy is imported until a
function needs them; the API's names are loaded on first use (PEP 562).

``framestats.submit`` and ``framestats.resume`` are the API's functions, although
modules of those names exist: import from the modules (``from framestats.submission import
prepare``), not through the package's attribute.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: The API's names and the modules that define them.
_API = {
    "submit": "api",
    "resume": "api",
    "cancel": "api",
    "status": "api",
    "workers": "api",
    "job": "api",
    "Job": "api",
    "Progress": "api",
    "open": "result",
    "Result": "result",
    "Settings": "settings",
    "errors": "",
}

# ``open`` is left out: ``from framestats import *`` would shadow the built-in.
__all__ = ["__version__", *sorted(n for n in _API if n != "open")]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if not module:
        return importlib.import_module(f"{__name__}.{name}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
