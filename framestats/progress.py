"""Following a job until it ends: a progress bar with frames/s and ETA.

``follow`` polls the job (waking at once on the event the finalizer pushes) and shows
its progress through a view: ``TextBar`` (the command line's line, redrawn in place
on a terminal, one line every few seconds otherwise) or ``NotebookBar`` (a tqdm bar:
a widget in Jupyter).
"""

from __future__ import annotations

import sys
import time
from typing import Any, Protocol, TextIO

from . import jobs
from .errors import JobLost, WaitTimeout
from .messages import JobState
from .units import fmt_seconds


def render(data: dict[str, Any], rate: float, width: int = 30) -> str:
    """One progress line for a job hash."""
    total = int(data.get("n_frames", 0)) or 1
    done = int(data.get("frames_done", 0))
    frac = min(1.0, done / total)
    bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
    eta = fmt_seconds((total - done) / rate) if rate > 0 and done < total else "--:--"
    chunks = f"{data.get('chunks_done', '?')}/{data.get('n_chunks', '?')} chunks"
    return f"[{bar}] {frac:6.1%} {done}/{total} frames, {chunks}, {rate:,.0f} frames/s, ETA {eta} ({data.get('state')})"


class View(Protocol):
    """Where ``follow`` shows a job's progress."""

    def update(self, data: dict[str, Any], rate: float) -> None:
        """The job's hash (with ``chunks_done``) and its rate in frames/s, while it runs."""

    def note(self, text: str) -> None:
        """A line of news (Redis stopped or started answering)."""

    def finish(self, data: dict[str, Any], rate: float) -> None:
        """The job's final hash, once; or the last one seen when following stops early."""


class Silent:
    """A view that shows nothing."""

    def update(self, data: dict[str, Any], rate: float) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def finish(self, data: dict[str, Any], rate: float) -> None:
        pass


class TextBar:
    """``render``'s line on ``out``: redrawn in place on a terminal (and in a notebook,
    which honours carriage returns), a new line every ``every`` seconds otherwise."""

    def __init__(self, out: TextIO = sys.stderr, every: float = 5.0, live: bool | None = None):
        self.out = out
        self.every = every
        self.live = out.isatty() if live is None else live
        self._last = 0.0
        self._open = False

    def update(self, data: dict[str, Any], rate: float) -> None:
        now = time.monotonic()
        if self.live:
            self.out.write("\r" + render(data, rate))
            self._open = True
        elif now - self._last >= self.every:
            self.out.write(render(data, rate) + "\n")
            self._last = now
        else:
            return
        self.out.flush()

    def note(self, text: str) -> None:
        self.out.write(("\n" if self._open else "") + text + "\n")
        self._open = False
        self.out.flush()

    def finish(self, data: dict[str, Any], rate: float) -> None:
        if self.live:
            self.out.write("\r" + render(data, rate) + "\n")
        else:
            self.out.write(render(data, rate) + "\n")
        self._open = False
        self.out.flush()


class NotebookBar:
    """A ``tqdm.auto`` bar of frames (a widget in Jupyter with ipywidgets, text otherwise),
    with chunks and state beside it."""

    def __init__(self, job_id: str, out: TextIO | None = None) -> None:
        self.job_id = job_id
        self.out = out
        self._bar: Any = None

    def _show(self, data: dict[str, Any], refresh: bool = True) -> None:
        total = int(data.get("n_frames", 0)) or None
        if self._bar is None:  # made once the total is known
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total,
                desc=f"job {self.job_id}",
                unit=" frames",
                unit_scale=bool(total and total >= 100_000),
                dynamic_ncols=True,
                file=self.out,
            )
        self._bar.n = int(data.get("frames_done", 0))
        chunks = f"{data.get('chunks_done', '?')}/{data.get('n_chunks', '?')}"
        self._bar.set_postfix_str(f"{chunks} chunks, {data.get('state')}", refresh=refresh)

    def update(self, data: dict[str, Any], rate: float) -> None:
        self._show(data)

    def note(self, text: str) -> None:
        if self._bar is None:
            from tqdm.auto import tqdm

            tqdm.write(text, file=self.out)
        else:
            self._bar.write(text)

    def finish(self, data: dict[str, Any], rate: float) -> None:
        self._show(data, refresh=False)
        self.close()

    def close(self) -> None:
        """Stop the bar where it is (also when following ends with an exception)."""
        if self._bar is not None:
            self._bar.close()


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where ``NotebookBar`` shows a widget)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:
        return False
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


#: Seconds ``follow`` keeps trying while Redis does not answer: a restart of a Redis that
#: keeps its data (the compose file's, with its append-only file) does not end the watch.
PATIENCE = 120.0


def follow(
    client: Any,
    job_id: str,
    interval: float = 0.25,
    out: TextIO = sys.stderr,
    patience: float = PATIENCE,
    view: View | None = None,
    timeout: float | None = None,
) -> dict[str, str]:
    """Poll the job until it finishes; returns its final hash.

    Progress goes to ``view`` (default: a ``TextBar`` on ``out``). While Redis does not
    answer, retries with backoff (one line says so), and raises the client's error once
    it has not answered for ``patience`` seconds. JobLost when the job's state vanished;
    WaitTimeout once ``timeout`` seconds passed (the job keeps running).
    """
    import redis

    unreachable = (redis.ConnectionError, redis.TimeoutError)
    view = TextBar(out) if view is None else view
    deadline = None if timeout is None else time.monotonic() + timeout
    samples: list[tuple[float, int]] = []
    down_since: float | None = None
    tries = 0
    data: dict[str, str] | None = None
    rate = 0.0
    while True:
        try:
            data = jobs.get(client, job_id)
            if data is not None:
                data["chunks_done"] = str(jobs.chunks_done(client, job_id))
        except unreachable as exc:
            now = time.monotonic()
            if down_since is None:
                down_since = now
                view.note(f"Redis does not answer ({exc}); retrying for {patience:.0f} s")
            if now - down_since >= patience:
                raise
            tries += 1
            time.sleep(min(5.0, 0.25 * 2**tries, max(0.0, down_since + patience - now)))
            continue
        if down_since is not None:
            view.note(f"Redis answers again after {time.monotonic() - down_since:.1f} s")
            down_since, tries = None, 0
        if data is None:
            raise JobLost(f"job {job_id} disappeared from Redis (try 'producer resume')")
        now = time.monotonic()
        samples.append((now, int(data.get("frames_done", 0))))
        samples = [s for s in samples if now - s[0] <= 5.0] or samples[-1:]
        rate = (
            (samples[-1][1] - samples[0][1]) / (samples[-1][0] - samples[0][0])
            if len(samples) > 1
            else 0.0
        )
        if JobState(data["state"]).finished:
            view.finish(data, rate)
            return data
        view.update(data, rate)
        if deadline is not None and now >= deadline:
            view.finish(data, rate)
            raise WaitTimeout(job_id, timeout or 0.0)
        wait = interval if deadline is None else min(interval, deadline - now)
        if wait <= 0:  # BLPOP's timeout 0 would block for ever
            continue
        try:
            jobs.wait_finished(client, job_id, wait)
        except unreachable:
            pass  # the next poll notices, and retries
