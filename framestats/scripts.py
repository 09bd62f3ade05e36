"""The Lua scripts of the job-state machine, loaded from ``lua/`` and registered once.

Each script runs atomically in Redis; redis-py runs it by its hash (EVALSHA) and loads
it on a server that does not know it yet. A script that uses the shared ``successor``
function is prefixed with ``successor.lua``.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

#: Scripts that call the ``successor`` function of ``successor.lua``.
_USES_SUCCESSOR = ("take_successor", "finish_chunk")


@functools.cache
def source(name: str) -> str:
    """The text of script ``name`` (``lua/<name>.lua``), with what it uses prepended."""
    text = resources.files(__package__).joinpath("lua", f"{name}.lua").read_text("utf-8")
    if name in _USES_SUCCESSOR:
        text = source("successor") + "\n" + text
    return text


def run(client: Any, name: str, keys: list[str], args: list[Any]) -> Any:
    """Run script ``name`` on ``client`` (a client or a pipeline: then its result comes
    with the pipeline's). redis-py sends the script's hash, and the script only when the
    server does not know it."""
    return client.register_script(source(name))(keys=keys, args=args)
