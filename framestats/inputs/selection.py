"""Parsing ``--frames START:STOP[:STEP]`` and ``--valid-range LO:HI`` (pure Python).

Both raise OptionError with one line naming the option and the expected form.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..errors import OptionError

_INT = r"\s*([+-]?\d+)?\s*"
_FRAMES = re.compile(rf"^{_INT}:{_INT}(?::{_INT})?$")


@dataclass(frozen=True)
class FrameSelection:
    """A Python-style slice over the concatenated frames of all inputs."""

    start: int | None
    stop: int | None
    step: int
    text: str

    def indices(self, total: int) -> range:
        """The selected global frame numbers out of ``total`` (negative = from the end)."""
        return range(*slice(self.start, self.stop, self.step).indices(total))

    def normalized(self) -> str:
        a = "" if self.start is None else str(self.start)
        b = "" if self.stop is None else str(self.stop)
        return f"{a}:{b}" + (f":{self.step}" if self.step != 1 else "")


def parse_frames(text: str) -> FrameSelection:
    """``START:STOP[:STEP]``; each part may be left out (``:100``, ``10:``, ``::2``)."""
    match = _FRAMES.match(text)
    if not match:
        raise OptionError(
            f"--frames {text!r}: expected START:STOP[:STEP] with integers, e.g. 0:1000 or ::2"
        )
    start, stop, step = (int(g) if g is not None else None for g in match.groups())
    if step is not None and step < 1:
        raise OptionError(f"--frames {text!r}: STEP must be a positive integer, got {step}")
    return FrameSelection(start=start, stop=stop, step=step or 1, text=text)


def _number(part: str, text: str) -> float | None:
    part = part.strip()
    if not part:
        return None
    try:
        value = float(part)
    except ValueError:
        raise OptionError(
            f"--valid-range {text!r}: {part!r} is not a number; expected LO:HI, e.g. 0:65534"
        ) from None
    if not math.isfinite(value):
        raise OptionError(f"--valid-range {text!r}: bounds must be finite numbers")
    return int(value) if value.is_integer() else value


def parse_valid_range(text: str) -> tuple[float | None, float | None]:
    """``LO:HI`` (inclusive; either side may be left out, not both)."""
    parts = text.split(":")
    if len(parts) != 2:
        raise OptionError(f"--valid-range {text!r}: expected LO:HI, e.g. 0:65534 or :1e6")
    lo, hi = _number(parts[0], text), _number(parts[1], text)
    if lo is None and hi is None:
        raise OptionError(f"--valid-range {text!r}: give LO, HI or both")
    if lo is not None and hi is not None and lo > hi:
        raise OptionError(f"--valid-range {text!r}: LO is above HI")
    return lo, hi


def effective_range(
    valid: tuple[float | None, float | None] | None, saturation: float | None
) -> tuple[float | None, float | None] | None:
    """The user's range narrowed by the detector's saturation (largest valid count)."""
    if saturation is None:
        return valid
    lo, hi = valid if valid is not None else (None, None)
    hi = saturation if hi is None else min(hi, saturation)
    if lo is not None and lo > hi:
        raise OptionError(
            f"--valid-range low bound {lo} is above the detector's saturation value {saturation}"
        )
    return lo, hi
