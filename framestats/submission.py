"""Submitting a job: validate everything, then write the job folder, Redis state, first tasks.

Nothing is written or queued until every check has passed, so a bad input leaves no
trace. The job folder (manifest + mask copy) is written before Redis state, and Redis
state before any task, so every task refers to a manifest that exists.
"""

from __future__ import annotations

import io
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from . import __version__, connection, jobs, limits
from .constants import DEFAULT_QUEUE, DEFAULT_STATS, MANIFEST_NAME, MASK_NAME, STATS
from .errors import OptionError, OutputError
from .inputs import masks
from .inputs.reach import check_environment
from .inputs.selection import effective_range, parse_frames, parse_valid_range
from .inputs.sources import Source, resolve_inputs, select
from .jobdir import JobFolder
from .messages import JobSpec
from .paths import check_allowed, workdir_for
from .plan import Plan, plan
from .settings import Settings


@dataclass(frozen=True)
class SubmitRequest:
    """What the user asked for, as parsed by the CLI."""

    inputs: tuple[str, ...]
    #: A mask spec (``FILE``, ``FILE.h5:/path``) or an array (the Python API).
    mask: str | np.ndarray
    dataset: str | None = None
    output: str | None = None
    stats: tuple[str, ...] = DEFAULT_STATS
    chunk_frames: int | None = None
    queue: str = DEFAULT_QUEUE
    overwrite: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    #: ``--frames START:STOP[:STEP]`` over the concatenated inputs (docs/inputs.md).
    frames: str | None = None
    mask_convention: str = "labels"
    invert: bool = False
    exclude: tuple[str | np.ndarray, ...] = ()
    #: Apply an Eiger master's pixel_mask and saturation value (``--no-detector-mask``).
    detector_mask: bool = True
    valid_range: str | None = None


@dataclass(frozen=True)
class Prepared:
    """A validated job, ready to be written and queued."""

    spec: JobSpec
    labels: np.ndarray
    plan: Plan
    sources: list[Source]
    #: Live worker processes taking from the job's queue when it was queued (None: not counted).
    live_processes: int | None = None
    #: Masks passed as arrays, written into the job folder with the manifest.
    mask_arrays: tuple[masks.ArrayMask, ...] = ()


def parse_stats(text: str | Sequence[str]) -> tuple[str, ...]:
    items = text.split(",") if isinstance(text, str) else list(text)
    stats = tuple(dict.fromkeys(s.strip().lower() for s in items if s.strip()))
    if not stats:
        raise OptionError("no statistic given; choose from " + ",".join(STATS))
    unknown = [s for s in stats if s not in STATS]
    if unknown:
        raise OptionError(f"unknown statistic {', '.join(unknown)}; choose from {','.join(STATS)}")
    return tuple(s for s in STATS if s in stats)


def default_output(first_input: str) -> str:
    root, ext = os.path.splitext(first_input)
    if ext.lower() not in (".h5", ".hdf5", ".hdf", ".nxs"):
        root = first_input
    if root.endswith("_master"):
        root = root[: -len("_master")]
    return root + ".reduced.h5"


def check_output(output: str, overwrite: bool) -> None:
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise OutputError(f"output folder does not exist: {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"output folder is not writable: {folder}")
    if os.path.isdir(output):
        raise OutputError(f"output path is a folder: {output}")
    if os.path.exists(output) and not overwrite:
        raise OutputError(f"output exists: {output} (pass --overwrite to replace it)")
    workdir = workdir_for(output)
    if os.path.lexists(workdir) and not overwrite:
        raise OutputError(_taken(output, workdir))


def _taken(output: str, workdir: str) -> str:
    """The one line for an output whose job folder exists: which job, what to do."""
    from .control import owner_of

    owner = owner_of(workdir)
    job = f"job {owner}" if owner else "an unfinished job"
    return (
        f"{job} is writing {output} ({workdir}); follow it with 'producer watch {output}', "
        f"continue it with 'producer resume {output}', or pass --overwrite to replace it"
    )


def prepare(request: SubmitRequest, settings: Settings) -> Prepared:
    """Every check that needs no broker; raises a UserError subclass on the first problem."""
    stats = parse_stats(request.stats)
    if request.chunk_frames is not None and request.chunk_frames < 1:
        raise OptionError(
            f"--chunk-frames must be a positive number of frames, got {request.chunk_frames}"
        )
    if not request.queue or any(c.isspace() for c in request.queue):
        raise OptionError(f"invalid queue name {request.queue!r}")
    frames = parse_frames(request.frames) if request.frames is not None else None
    valid = parse_valid_range(request.valid_range) if request.valid_range is not None else None
    if settings.data_root:
        check_environment(settings.data_root)
    resolved = resolve_inputs(request.inputs, request.dataset, settings.data_root)
    if frames is not None:
        resolved = select(resolved, frames.indices(resolved.total_frames), frames.text)
    sources = list(resolved.sources)
    frame_shape = (int(sources[0].info.shape[1]), int(sources[0].info.shape[2]))
    detectors = resolved.detectors if request.detector_mask else ()
    output = os.path.abspath(request.output or default_output(resolved.paths[0]))
    mask, exclude = masks.keep_arrays(workdir_for(output), request.mask, tuple(request.exclude))
    built = masks.build(
        mask,
        frame_shape,
        request.mask_convention,
        request.invert,
        exclude,
        tuple((d.master, d.pixel_mask) for d in detectors if d.pixel_mask),
        max_regions=settings.max_regions,
    )
    labels, n_regions = built.labels, built.n_regions
    saturated = [d for d in detectors if d.saturation is not None]
    saturation = min(saturated, key=lambda d: d.saturation or 0) if saturated else None
    valid_range = effective_range(valid, saturation.saturation if saturation else None)
    check_output(output, request.overwrite)
    if settings.data_root:
        check_allowed(output, settings.data_root)
    segments = [s.segment for s in sources]
    the_plan = plan(
        segments,
        [s.info.frames_per_chunk for s in sources],
        sources[0].info.frame_bytes,
        settings.task_bytes,
        request.chunk_frames,
    )
    limits.check_output_size(  # FRAMESTATS_MAX_OUTPUT_GIB
        sum(s.count for s in segments),
        n_regions,
        len(stats),
        the_plan.boundaries,
        settings.max_output_bytes,
    )
    job_id = uuid.uuid4().hex[:16]
    spec = JobSpec(
        job_id=job_id,
        segments=tuple(
            type(seg)(**{**seg.to_json(), "path": os.path.abspath(seg.path)}) for seg in segments
        ),
        frame_shape=frame_shape,
        dtype=sources[0].info.dtype,
        n_frames=sum(s.count for s in segments),
        n_regions=n_regions,
        stats=stats,
        boundaries=the_plan.boundaries,
        output=output,
        workdir=workdir_for(output),
        mask_path=built.main.path,
        mask_sha256=built.main.sha256,
        queue=request.queue,
        chunk_frames=the_plan.frames_per_task,
        created=time.time(),
        version=__version__,
        inputs=resolved.records(),
        masks=built.records,
        options={
            **request.options,
            "frames": frames.normalized() if frames else None,
            "mask_convention": request.mask_convention,
            "invert": request.invert,
            "detector_mask": request.detector_mask,
            "valid_range": list(valid_range) if valid_range else None,
            "saturation": (
                {
                    "value": saturation.saturation,
                    "file": saturation.master,
                    "dataset": saturation.saturation_from,
                }
                if saturation
                else None
            ),
        },
    )
    arrays = tuple(m for m in (mask, *exclude) if isinstance(m, masks.ArrayMask))
    return Prepared(spec=spec, labels=labels, plan=the_plan, sources=sources, mask_arrays=arrays)


def write_workdir(
    spec: JobSpec, labels: np.ndarray, arrays: Sequence[masks.ArrayMask] = ()
) -> None:
    """Create the job folder with the mask copy, masks given as ``arrays`` and the manifest
    (written last); one line (OutputError) when another submit took the folder first."""
    try:
        folder = JobFolder.create(spec.workdir)
    except FileExistsError as exc:
        raise OutputError(_taken(spec.output, spec.workdir)) from exc
    with folder:
        buf = io.BytesIO()
        np.save(buf, labels.astype(np.int32))
        folder.write_bytes(MASK_NAME, buf.getvalue())
        for array in arrays:
            folder.write_bytes(os.path.basename(array.file), array.npy)
        folder.write_bytes(MANIFEST_NAME, spec.dumps().encode())


def replace_workdir(client: Any, settings: Settings, spec: JobSpec) -> None:
    """``--overwrite``: stop the job that owns the folder if it still runs, then remove
    the folder (moved aside first, so the new one is a new folder whatever lingers)."""
    from .control import owner_of, stop

    if not os.path.lexists(spec.workdir):
        return
    owner = owner_of(spec.workdir)
    if owner is not None and owner != spec.job_id:
        stop(
            client,
            owner,
            f"replaced by job {spec.job_id} (--overwrite)",
            settings.visibility_timeout,
        )
    aside = f"{spec.workdir}.old-{uuid.uuid4().hex[:8]}"
    os.rename(spec.workdir, aside)
    if os.path.isdir(aside) and not os.path.islink(aside):
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.unlink(aside)


def enqueue(
    spec: JobSpec, settings: Settings, client: Any, pending: Sequence[int], done: Sequence[int] = ()
) -> int:
    """Write the job's Redis state and publish the first window of tasks; returns tasks sent."""
    from .wire import publish_chunks  # Celery's message, without importing Celery

    jobs.create(client, spec, pending, done, ttl=settings.job_ttl)
    window = jobs.pop_pending(client, spec.job_id, settings.window)
    return publish_chunks(client, spec, window)


def fit_to_workers(
    prepared: Prepared, settings: Settings, processes: int, chunk_frames: int | None = None
) -> Prepared:
    """The same job with its tasks sized for ``processes`` live worker processes.

    ``prepare`` plans with FRAMESTATS_TASK_MIB; a job too small to give every live
    process two such tasks gets smaller ones (``plan.task_bytes_for``). An explicit
    ``--chunk-frames`` stays as asked.
    """
    if chunk_frames is not None:
        return prepared
    spec = prepared.spec
    the_plan = plan(
        spec.segments,
        [s.info.frames_per_chunk for s in prepared.sources],
        spec.frame_bytes,
        settings.task_bytes,
        processes=processes,
    )
    if the_plan.boundaries == spec.boundaries:
        return prepared
    spec = replace(spec, boundaries=the_plan.boundaries, chunk_frames=the_plan.frames_per_task)
    return replace(prepared, spec=spec, plan=the_plan)


def submit(request: SubmitRequest, settings: Settings) -> Prepared:
    """Validate, check the broker, size the tasks, write the job folder, queue the first window."""
    prepared = prepare(request, settings)
    client = connection.connect(settings.redis_url)
    connection.ping(client, settings.redis_url_redacted)
    live = jobs.live_processes(client, settings.worker_timeout, queue=prepared.spec.queue)
    prepared = replace(
        fit_to_workers(prepared, settings, live, request.chunk_frames), live_processes=live
    )
    spec = prepared.spec
    if request.overwrite:
        replace_workdir(client, settings, spec)
    write_workdir(spec, prepared.labels, arrays=prepared.mask_arrays)
    enqueue(spec, settings, client, range(spec.n_chunks))
    return prepared
