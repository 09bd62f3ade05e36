"""Lower a Triton kernel to a CUDA binary without a GPU: Triton's wheel carries the
compiler (ptxas included), so a CPU machine with Triton installed checks that the
compiled path builds, which the interpreter tests do not.

Each lowering runs in a fresh interpreter: Triton's interpreter mode, which other tests
use in this process, leaves ``triton.language`` patched for compiled code generation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

#: The device the binaries are built for (an H100/H200: sm_90, warps of 32).
TARGET = ("cuda", 90, 32)

_SCRIPT = """
import importlib, json, sys
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

spec = json.loads(sys.argv[1])
module = importlib.import_module(spec["module"])
kernel = eval(spec["kernel"], vars(module))
constants = {
    name: getattr(tl, value[3:]) if isinstance(value, str) and value.startswith("tl.") else value
    for name, value in spec["constants"].items()
}
names = list(kernel.arg_names)
source = ASTSource(
    kernel,
    {**spec["signature"], **dict.fromkeys(constants, "constexpr")},
    constexprs={(names.index(n),): v for n, v in constants.items()},
)
# FP fusion as a launch gets it by default (said, so Triton 3.9 does not warn).
options = {"enable_fp_fusion": True}
compiled = triton.compile(source, target=GPUTarget(*spec["target"]), options=options)
print(json.dumps(sorted(compiled.asm)))
"""


def lower(
    module: str, kernel: str, signature: dict[str, str], constants: dict[str, Any]
) -> list[str]:
    """The stages (``ttir``, ``ptx``, ``cubin``, ...) Triton built for ``kernel``, an
    expression evaluated in ``module`` (``"kernels().region_sums"``); a constant written
    ``"tl.int32"`` is that Triton dtype."""
    pytest.importorskip("triton")
    spec: dict[str, Any] = {"module": module, "kernel": kernel, "signature": signature}
    spec |= {"constants": constants, "target": TARGET}
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return list(json.loads(out.stdout.strip().splitlines()[-1]))
