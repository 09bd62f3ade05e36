"""`producer inspect`: an input file's datasets and the plan a submit would make.

(Named ``inspection`` so that it never shadows the standard library's ``inspect``.)
"""

from __future__ import annotations

from typing import Any

from .constants import DEFAULT_QUEUE
from .errors import UserError
from .inputs.hdf5 import describe, list_datasets, open_h5
from .inputs.sources import resolve_inputs
from .plan import plan
from .settings import Settings


def inspect_file(
    path: str,
    dataset: str | None,
    chunk_frames: int | None,
    settings: Settings,
    processes: int | None = None,
    queue: str = DEFAULT_QUEUE,
) -> dict[str, Any]:
    """Datasets (shape, dtype, chunking, filters, stored size) and the submit plan, or why not.

    ``processes``: live worker processes taking from ``queue`` (None: Redis did not
    answer); ``submit`` sizes the tasks of a small job for them (``plan.task_bytes_for``),
    and so does this plan.
    """
    datasets = []
    with open_h5(path) as f:
        for dset in list_datasets(f):
            info = describe(dset, path).to_json()
            try:
                info["stored_bytes"] = int(dset.id.get_storage_size())
            except Exception:  # external or virtual storage has no size of its own
                info["stored_bytes"] = None
            info["bytes"] = int(dset.size * dset.dtype.itemsize)
            datasets.append(info)
    out: dict[str, Any] = {"file": path, "datasets": datasets}
    try:
        sources = resolve_inputs([path], dataset).sources
    except UserError as exc:
        out["plan"] = None
        out["plan_error"] = str(exc)
        return out
    src = sources[0]
    # A master file resolves to one segment per linked data file: plan them all, as submit does.
    the_plan = plan(
        [s.segment for s in sources],
        [s.info.frames_per_chunk for s in sources],
        src.info.frame_bytes,
        settings.task_bytes,
        chunk_frames,
        processes or 1,
    )
    sizes = [b - a for a, b in zip(the_plan.boundaries, the_plan.boundaries[1:], strict=False)]
    out["plan"] = {
        "dataset": src.info.name,
        "frames": sum(s.segment.count for s in sources),
        "files": len({s.segment.path for s in sources}),
        "frame_shape": list(src.info.shape[1:]),
        "dtype": src.info.dtype,
        "hdf5_chunk_frames": src.info.frames_per_chunk,
        "chunks": the_plan.n_chunks,
        "frames_per_task": max(sizes),
        "bytes_per_task": max(sizes) * src.info.frame_bytes,
        "smallest_task_frames": min(sizes),
        "note": the_plan.note,
        "live_processes": processes,
        "queue": queue,
    }
    return out


def render(report: dict[str, Any]) -> list[str]:
    from .units import fmt_bytes

    lines = [report["file"]]
    for d in report["datasets"]:
        chunks = "x".join(str(c) for c in d["chunks"]) if d["chunks"] else "contiguous"
        filters = ",".join(d["filters"]) or "none"
        stored = d.get("stored_bytes")
        ratio = f", stored {fmt_bytes(stored)}" if stored else ""
        if stored and d["bytes"]:
            ratio += f" (ratio {d['bytes'] / stored:.1f})"
        shape = "x".join(str(n) for n in d["shape"]) or "scalar"
        lines.append(
            f"  {d['name']}: {shape} {d['dtype']}, chunks {chunks}, filters {filters}{ratio}"
        )
    p = report.get("plan")
    if p is None:
        lines.append(f"plan: none ({report.get('plan_error')})")
        return lines
    lines.append(
        f"plan: {p['dataset']}, {p['frames']} frames of {p['frame_shape'][0]}x"
        f"{p['frame_shape'][1]} {p['dtype']} -> {p['chunks']} chunks of {p['frames_per_task']} "
        f"frames ({fmt_bytes(p['bytes_per_task'])} uncompressed per task; HDF5 chunk "
        f"{p['hdf5_chunk_frames']} frames)"
    )
    if p.get("note"):
        lines.append(f"note: {p['note']}")
    live = p.get("live_processes")
    on = f" on queue {p.get('queue', DEFAULT_QUEUE)}"
    if live is None:
        lines.append("(Redis did not answer: tasks sized for one worker process)")
    elif live == 0:
        lines.append(
            f"(no worker is running{on}: tasks sized for one process, as a submit now would)"
        )
    else:
        plural = "es" if live > 1 else ""
        lines.append(
            f"(tasks sized for {live} live worker process{plural}{on}, as a submit now would)"
        )
    return lines
