"""Following a job until it ends: a progress line with frames/s and ETA."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from . import jobs
from .messages import JobState


def _fmt_seconds(s: float) -> str:
    s = int(max(0, s))
    return (
        f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


def render(data: dict[str, Any], rate: float, width: int = 30) -> str:
    """One progress line for a job hash."""
    total = int(data.get("n_frames", 0)) or 1
    done = int(data.get("frames_done", 0))
    frac = min(1.0, done / total)
    bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
    eta = _fmt_seconds((total - done) / rate) if rate > 0 and done < total else "--:--"
    chunks = f"{data.get('chunks_done', '?')}/{data.get('n_chunks', '?')} chunks"
    return f"[{bar}] {frac:6.1%} {done}/{total} frames, {chunks}, {rate:,.0f} frames/s, ETA {eta} ({data.get('state')})"


#: Seconds ``follow`` keeps trying while Redis does not answer: a restart of a Redis that
#: keeps its data (the compose file's, with its append-only file) does not end the watch.
PATIENCE = 120.0


def follow(
    client: Any,
    job_id: str,
    interval: float = 0.25,
    out: TextIO = sys.stderr,
    patience: float = PATIENCE,
) -> dict[str, str]:
    """Poll the job until it finishes; returns its final hash.

    While Redis does not answer, retries with backoff (one line says so), and raises
    the client's error once it has not answered for ``patience`` seconds.
    """
    import redis

    unreachable = (redis.ConnectionError, redis.TimeoutError)
    tty = out.isatty()
    samples: list[tuple[float, int]] = []
    last_print = 0.0
    down_since: float | None = None
    tries = 0
    while True:
        try:
            data = jobs.get(client, job_id)
            if data is not None:
                data["chunks_done"] = str(jobs.chunks_done(client, job_id))
        except unreachable as exc:
            now = time.monotonic()
            if down_since is None:
                down_since = now
                line = f"Redis does not answer ({exc}); retrying for {patience:.0f} s\n"
                out.write(("\n" if tty else "") + line)
                out.flush()
            if now - down_since >= patience:
                raise
            tries += 1
            time.sleep(min(5.0, 0.25 * 2**tries, max(0.0, down_since + patience - now)))
            continue
        if down_since is not None:
            out.write(f"Redis answers again after {time.monotonic() - down_since:.1f} s\n")
            down_since, tries = None, 0
        if data is None:
            raise RuntimeError(f"job {job_id} disappeared from Redis (try 'producer resume')")
        now = time.monotonic()
        samples.append((now, int(data.get("frames_done", 0))))
        samples = [s for s in samples if now - s[0] <= 5.0] or samples[-1:]
        rate = (
            (samples[-1][1] - samples[0][1]) / (samples[-1][0] - samples[0][0])
            if len(samples) > 1
            else 0.0
        )
        finished = JobState(data["state"]).finished
        if tty:
            out.write("\r" + render(data, rate))
            out.flush()
        elif finished or now - last_print >= 5.0:
            out.write(render(data, rate) + "\n")
            last_print = now
        if finished:
            if tty:
                out.write("\n")
            return data
        try:
            jobs.wait_finished(client, job_id, interval)
        except unreachable:
            pass  # the next poll notices, and retries
