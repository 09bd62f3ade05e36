"""What `producer status`, `producer workers` and `producer watch` print: the views of
``framestats.monitor`` as text."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from framestats.monitor import FINISHED
from framestats.units import fmt_bytes, fmt_seconds


def fmt_age(t: float | None, now: float) -> str:
    return "-" if t is None else f"{max(0.0, now - t):.1f}s ago"


def overview(view: dict[str, Any]) -> list[str]:
    lines = [
        f"{'JOB':<16}  {'STATE':<10} {'CHUNKS':>13} {'FAILED':>6} {'FRAMES/S':>10} "
        f"{'ETA/TIME':>9}  INPUT"
    ]
    for r in view["jobs"]:
        when = r["eta_s"] if r["state"] in ("queued", "running") else r["duration_s"]
        lines.append(
            f"{r['id']:<16}  {r['state']:<10} {str(r['chunks_done']) + '/' + str(r['chunks_total']):>13} "
            f"{r['chunks_failed']:>6} {r['frames_per_s']:>10,.0f} {fmt_seconds(when):>9}  "
            f"{r['input']}"
        )
    if not view["jobs"]:
        lines.append("(no jobs)")
    counts = ", ".join(f"{n} {s}" for s, n in view["jobs_by_state"].items() if n)
    lines.append(f"jobs: {view['jobs_total']} ({counts or 'none'})")
    queues = "; ".join(
        f"{q}: {d['waiting']} waiting, {d['reserved']} reserved, {_takers(d)}"
        for q, d in view["queues"].items()
    )
    lines.append(f"queues: {queues or 'none'}")
    nodes = Counter(w["name"] for w in view["workers"])
    node_text = ", ".join(f"{n} ({k} processes)" for n, k in sorted(nodes.items()))
    lines.append(f"workers: {view['workers_online']} online" + (f": {node_text}" if nodes else ""))
    return lines


def _takers(depth: dict[str, int]) -> str:
    """A queue's live worker processes, flagged when messages wait and none takes them."""
    n = depth.get("workers", 0)
    if n:
        return f"{n} worker process{'es' if n > 1 else ''}"
    return "NO worker takes from it" if depth["waiting"] or depth["reserved"] else "no worker"


def job(d: dict[str, Any]) -> list[str]:
    now = time.time()
    frac = d["frames_done"] / d["frames_total"] if d["frames_total"] else 0.0
    rows: list[tuple[str, Any]] = [
        ("job", d["id"]),
        ("state", d["state"] + (f": {d['reason']}" if d.get("reason") else "")),
        (
            "progress",
            f"{d['chunks_done']}/{d['chunks_total']} chunks, {d['frames_done']}/"
            f"{d['frames_total']} frames ({frac:.1%}), {d['chunks_failed']} failed"
            + (
                f", {d['chunks_requeued']} queued again (lost with a worker)"
                if d.get("chunks_requeued")
                else ""
            )
            + (
                f", {d['chunks_redelivered']} delivered more than once"
                if d.get("chunks_redelivered")
                else ""
            ),
        ),
    ]
    if "frames_per_s" in d:
        rows.append(
            ("rate", f"{d['frames_per_s']:,.1f} frames/s ({fmt_bytes(d['bytes_per_s'])}/s)")
        )
        if d["state"] in FINISHED:
            rows.append(("duration", fmt_seconds(d["duration_s"])))
        else:
            rows.append(
                ("elapsed", f"{fmt_seconds(d['elapsed_s'])}, ETA {fmt_seconds(d['eta_s'])}")
            )
        rows.append(
            (
                "times",
                f"submitted {fmt_age(d['submitted'], now)}, started "
                f"{fmt_age(d['started'], now)}, finished {fmt_age(d['finished'], now)}",
            )
        )
    rows += [
        (k, v)
        for k, v in d.get("parameters", {}).items()
        if k not in ("inputs", "output") and v not in (None, "")
    ]
    if "chunks_pending" in d:
        rows.append(
            ("chunks", f"{d['chunks_pending']} not yet queued, {d['chunks_started']} started")
        )
    rows += [
        ("worker", f"{w['worker']}: {w['frames']} frames ({w['share']:.0%})")
        for w in d.get("workers", [])
    ]
    rows += [("running", f"{r['chunk']} on {r['worker']}") for r in d.get("running_on", [])]
    if d.get("errors_total"):
        rows.append(("errors", f"{d['errors_total']} (newest first)"))
        rows += [
            ("", f"chunk {e.get('chunk')} frames {e.get('frames')}: {e.get('reason')}")
            for e in d["errors"]
        ]
    if d.get("output"):
        rows.append(("output", d["output"]))
    return [f"{k:<13}{v}" for k, v in rows]


def workers(rows: list[dict[str, Any]], now: float) -> list[str]:
    lines = [
        f"{'WORKER':<28} {'HOST':<14} {'PID':>7} {'DEVICE':<22} {'QUEUES':<14} {'CHUNKS':>7} "
        f"{'FRAMES/S':>10} {'MB/S':>8} {'BEAT':>6}  CURRENT"
    ]
    for w in rows:
        age = "-" if w["heartbeat_age_s"] is None else f"{w['heartbeat_age_s']:.0f}s"
        queues = ",".join(w.get("queues") or []) or "-"
        lines.append(
            f"{w['name']:<28} {w['host']:<14} {w['pid']:>7} {w['device']:<22} {queues:<14} "
            f"{w['chunks_done']:>7} {w['frames_per_s']:>10,.0f} {w['bytes_per_s'] / 1e6:>8,.1f} "
            f"{age:>6}  {w['current'] or '-'}"
        )
    if not rows:
        lines.append("(no worker heartbeat)")
    return lines
