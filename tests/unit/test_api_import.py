"""``import framestats`` stays light, and its API names resolve."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "celery", "kombu", "h5py", "redis", "numpy", "pandas", "xarray", "tqdm")


def fresh(code: str) -> str:
    """What ``code`` prints in a new interpreter."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_import_loads_nothing_heavy():
    code = (
        "import sys, framestats\n"
        "framestats.submit, framestats.Job, framestats.status, framestats.errors\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    assert fresh(code) == "[]"


def test_all_names_resolve():
    import framestats

    assert "open" not in framestats.__all__  # ``import *`` must not shadow the built-in
    for name in [*framestats.__all__, "open"]:
        assert getattr(framestats, name) is not None, name
    assert set(framestats.__all__) <= set(dir(framestats))
    try:
        framestats.nothing_here  # noqa: B018
    except AttributeError as exc:
        assert "nothing_here" in str(exc)
    else:
        raise AssertionError("unknown names raise AttributeError")
