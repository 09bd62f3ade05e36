"""The ``producer`` command line: parse, validate, delegate. Never imports torch.

Heavy modules (h5py, numpy, celery, redis) are imported inside the commands so that
``producer --help`` answers at once.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from framestats import __version__
from framestats.errors import BrokerUnavailable, FramestatsError
from framestats.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(fn: F) -> F:
    """Turn project errors into one line on stderr and the error's exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FramestatsError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except ValueError as exc:  # configuration values from the environment
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except Exception as exc:
            redis = sys.modules.get("redis")  # loaded by every command that talks to Redis
            if redis is None or not isinstance(exc, redis.RedisError):
                raise
            # Redis went away or refused a command mid-way
            lost = BrokerUnavailable(settings().redis_url_redacted, str(exc) or type(exc).__name__)
            click.echo(f"error: {lost}", err=True)
            sys.exit(lost.exit_code)

    return wrapper  # type: ignore[return-value]


def settings() -> Settings:
    return Settings.from_env()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="producer")
def cli() -> None:
    """Plan, submit and watch framestats jobs (per-frame statistics of HDF5 image stacks)."""


def input_options(fn: F) -> F:
    """Frame selection, mask conventions and value range of ``submit`` (docs/inputs.md)."""
    options = [
        click.option(
            "--frames",
            default=None,
            help="START:STOP[:STEP] of the concatenated input frames (Python slice).",
        ),
        click.option(
            "--mask-convention",
            default="labels",
            show_default=True,
            help="labels: True / 1..K are regions; nexus: MASK is a NeXus pixel mask, "
            "the region is where MASK & 0xFFFF == 0.",
        ),
        click.option("--invert", is_flag=True, help="Flip a boolean MASK."),
        click.option(
            "--exclude",
            multiple=True,
            help="Bad-pixel mask removed from every region (True, or value & 0xFFFF != 0); "
            "repeatable.",
        ),
        click.option(
            "--detector-mask/--no-detector-mask",
            default=True,
            help="Apply an Eiger master's pixel_mask and saturation value [default: on].",
        ),
        click.option(
            "--valid-range",
            default=None,
            help="LO:HI: pixel values outside are excluded per frame, like NaN.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@cli.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option(
    "--mask",
    "mask",
    required=True,
    help="Region mask: .npy, .tif/.png or FILE.h5:/dataset; boolean (one region) or labels 1..K.",
)
@click.option(
    "--dataset",
    default=None,
    help="Dataset path (default /entry/data/data, else the only 3-D dataset).",
)
@click.option("--output", "-o", default=None, help="Output HDF5 (default INPUT.reduced.h5).")
@click.option(
    "--stats",
    default="sum,mean",
    show_default=True,
    help="Comma-separated: sum,mean,count,min,max,std.",
)
@click.option(
    "--chunk-frames", type=int, default=None, help="Frames per task (rounded to the HDF5 chunking)."
)
@click.option(
    "--queue", default="framestats", show_default=True, help="Celery queue for the tasks."
)
@click.option(
    "--wait", is_flag=True, help="Show progress and exit 0 only once the output is complete."
)
@click.option(
    "--overwrite", is_flag=True, help="Replace an existing output (and any unfinished job for it)."
)
@input_options
@handle_errors
def submit(
    inputs: tuple[str, ...],
    mask: str,
    dataset: str | None,
    output: str | None,
    stats: str,
    chunk_frames: int | None,
    queue: str,
    wait: bool,
    overwrite: bool,
    **selection: Any,
) -> None:
    """Queue a job computing per-frame statistics of INPUTS inside MASK.

    INPUTS: HDF5 files, glob patterns ('scan_*.h5') or Eiger *_master.h5 files, read in
    sorted order as one sequence of frames.
    """
    from framestats import api

    options: dict[str, Any] = dict(
        dataset=dataset, output=output, stats=stats, chunk_frames=chunk_frames
    )
    job = api.submit(
        inputs, mask, queue=queue, overwrite=overwrite, settings=settings(), **options, **selection
    )
    spec = job.spec
    assert spec is not None
    if job.note:
        click.echo(f"note: {job.note}", err=True)
    click.echo(job.id)
    click.echo(f"queued {_queued(spec)} -> {spec.output}", err=True)
    if job.live_processes == 0:
        click.echo(
            f"note: no live worker takes from queue {spec.queue}; "
            "the chunks wait until one does (start one with: worker --queues "
            f"{spec.queue})",
            err=True,
        )
    if wait:
        sys.exit(_wait(job))


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _queued(spec: Any) -> str:
    """'1 chunk of 64 frames (1 region)', '7 chunks of 8 frames (53 frames, 4 regions)'."""
    regions = _plural(spec.n_regions, "region")
    if spec.n_chunks == 1:
        return f"1 chunk of {_plural(spec.n_frames, 'frame')} ({regions})"
    return (
        f"{spec.n_chunks} chunks of {_plural(spec.chunk_frames, 'frame')} "
        f"({spec.n_frames} frames, {regions})"
    )


def _wait(job: Any) -> int:
    """Follow a job with the progress line on stderr; the command's exit code."""
    from framestats.errors import JobFailed, JobLost

    try:
        job.wait(progress=sys.stderr)
    except KeyboardInterrupt:
        click.echo(f"\nstopped watching; job {job.id} keeps running", err=True)
        return 130
    except JobFailed as exc:
        click.echo(f"error: {exc}", err=True)
        return 1
    except JobLost as exc:  # the job's keys vanished while watching
        click.echo(f"\nerror: {exc}", err=True)
        return 1
    click.echo(f"done: {job.output}", err=True)
    return 0


@cli.command()
@click.argument("target")
@click.option("--wait", is_flag=True, help="Follow the job until it ends.")
@handle_errors
def resume(target: str, wait: bool) -> None:
    """Queue again the chunks of JOB (id or OUTPUT.h5) that have no committed result."""
    from framestats import api

    job = api.resume(target, settings=settings())
    assert job.spec is not None
    click.echo(job.id)
    click.echo(f"resumed: {job.chunks_queued} of {job.spec.n_chunks} chunks queued again", err=True)
    if wait:
        sys.exit(_wait(job))


@cli.command()
@click.argument("job_id")
@handle_errors
def cancel(job_id: str) -> None:
    """Cancel JOB: queued chunks are skipped, running ones finish, no output is written."""
    from framestats import api

    if api.cancel(job_id, settings=settings()):
        click.echo(f"cancelled {job_id}")
    else:
        click.echo(f"job {job_id} had already finished; nothing to cancel", err=True)


@cli.command()
@click.argument("job", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option("--limit", default=25, show_default=True, help="How many recent jobs to list.")
@handle_errors
def status(job: str | None, as_json: bool, limit: int) -> None:
    """Recent jobs, queue depths and workers online; or one JOB (id or OUTPUT.h5) in detail."""
    from framestats import api

    from . import render

    view = api.status(job or None, limit=limit, settings=settings())
    lines = render.job(view) if job else render.overview(view)
    click.echo(json.dumps(view, indent=1) if as_json else "\n".join(lines))


@cli.command()
@click.option(
    "--older-than",
    default=None,
    help="Only jobs that finished at least this long ago (90s, 30m, 12h, 7d).",
)
@click.option("--dry-run", is_flag=True, help="Say what would go; change nothing.")
@handle_errors
def prune(older_than: str | None, dry_run: bool) -> None:
    """Forget finished jobs now; remove the job folders of failed and cancelled ones."""
    from framestats import connection, retention
    from framestats.settings import parse_duration

    try:
        age = None if older_than is None else parse_duration(older_than)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from exc
    cfg = settings()
    client = connection.connect(cfg.redis_url)
    connection.ping(client, cfg.redis_url_redacted)
    done = retention.prune(client, age, cfg.data_root, dry_run)
    states = ", ".join(f"{len(ids)} {state}" for state, ids in sorted(done.jobs.items()))
    click.echo(
        f"{'would forget' if dry_run else 'forgot'} {done.count} finished jobs"
        + (f" ({states})" if states else "")
        + f"; {'would remove' if dry_run else 'removed'} {len(done.folders)} job folders"
    )
    for folder in done.folders:
        click.echo(f"  {folder}")
    for folder, why in done.kept:
        click.echo(f"kept {folder}: {why}", err=True)


@cli.command()
@click.argument("job")
@handle_errors
def watch(job: str) -> None:
    """A live progress bar until JOB (id or OUTPUT.h5) ends; Ctrl-C leaves the job running."""
    from framestats import api

    sys.exit(_wait(api.job(job, settings=settings())))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@handle_errors
def workers(as_json: bool) -> None:
    """Live worker processes (from their Redis heartbeats): device, chunks, throughput."""
    import time

    from framestats import api

    from . import render

    rows = api.workers(settings=settings())
    if as_json:
        click.echo(json.dumps({"workers": rows}, indent=1))
    else:
        click.echo("\n".join(render.workers(rows, time.time())))


@cli.command(name="inspect")
@click.argument("input_file")
@click.option("--dataset", default=None, help="Dataset a submit would read (default as submit).")
@click.option("--chunk-frames", type=int, default=None, help="Frames per task, as for submit.")
@click.option(
    "--queue",
    default="framestats",
    show_default=True,
    help="Queue a submit would use (tasks are sized for the workers taking from it).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@handle_errors
def inspect_cmd(
    input_file: str, dataset: str | None, chunk_frames: int | None, queue: str, as_json: bool
) -> None:
    """Datasets of INPUT_FILE (shape, dtype, chunking, filters) and the plan a submit would make."""
    from framestats import connection, jobs
    from framestats.inspection import inspect_file, render

    conf = settings()
    client = connection.connect(conf.redis_url, timeout=1.0)
    try:  # submit sizes a small job's tasks for the live workers; show the same plan
        processes: int | None = jobs.live_processes(client, conf.worker_timeout, queue=queue)
    except (connection.redis_error(), OSError):
        processes = None
    report = inspect_file(input_file, dataset, chunk_frames, conf, processes, queue)
    click.echo(json.dumps(report, indent=1) if as_json else "\n".join(render(report)))


@cli.command()
@click.argument("output")
@click.option(
    "--stat", default=None, help="Statistic to draw (default mean, else the file's first)."
)
@click.option("--output", "-o", "png", default=None, help="PNG to write (default OUTPUT.STAT.png).")
@click.option("--regions", default=None, help="Comma-separated region numbers (default all).")
@handle_errors
def plot(output: str, stat: str | None, png: str | None, regions: str | None) -> None:
    """A PNG of per-frame traces of one statistic, one line per region, from a job's OUTPUT."""
    from framestats.errors import OptionError

    from .plot import plot as do_plot

    try:
        chosen = [int(r) for r in regions.split(",") if r.strip()] if regions else None
    except ValueError as exc:
        raise OptionError(f"--regions takes region numbers like 1,3: {exc}") from exc
    click.echo(do_plot(output, stat, png, chosen))


@cli.command()
@click.argument("output")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "parquet"]),
    default="csv",
    show_default=True,
    help="csv for spreadsheets, parquet for pandas and friends.",
)
@click.option(
    "--stat", "stats", multiple=True, help="Statistic to export (repeatable; default all)."
)
@click.option(
    "--output", "-o", "target", default=None, help="File to write (default OUTPUT.FORMAT)."
)
@handle_errors
def export(output: str, fmt: str, stats: tuple[str, ...], target: str | None) -> None:
    """A table of a job's OUTPUT: one row per frame, one column per statistic and region."""
    from .export import export as do_export

    click.echo(do_export(output, fmt, stats, target))


@cli.command()
@click.option("--port", type=int, default=9108, show_default=True, help="Port to serve on.")
@click.option(
    "--host",
    default="127.0.0.1",
    envvar="FRAMESTATS_METRICS_HOST",
    show_default=True,
    help="Address to bind (0.0.0.0 inside a container).",
)
@handle_errors
def metrics(port: int, host: str) -> None:
    """Serve Prometheus metrics at http://HOST:PORT/metrics until interrupted."""
    from .metrics import serve

    click.echo(f"serving metrics on http://{host}:{port}/metrics", err=True)
    try:
        serve(settings(), port, host)
    except KeyboardInterrupt:
        pass


@cli.command()
@click.option(
    "--folder", default="demo-data", show_default=True, help="Where the sample data and output go."
)
@click.option("--frames", default=400, show_default=True, help="Frames in the sample stack.")
@handle_errors
def demo(folder: str, frames: int) -> None:
    """Make a sample stack and mask, run one real job on it, print where the result is."""
    from .demo import run_demo

    sys.exit(run_demo(folder, frames, settings()))


def main() -> None:
    # The producer does no linear algebra: one BLAS thread spares every command the start
    # and join of numpy's thread pool.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from framestats import redaction

    try:  # nothing the commands print (errors, tracebacks) shows a password of REDIS_URL
        redaction.install(settings().redis_url)
    except ValueError:
        pass  # a bad setting is reported by the command itself
    try:
        cli(prog_name="producer")
    finally:
        # The interpreter's exit runs full garbage collections over every object the
        # imports made (numpy, h5py, redis-py: most of a short command's exit time);
        # frozen, they are skipped. Only what a collection would finalize is lost, and
        # nothing needs it: the commands close their files and connections in with-blocks,
        # and the interpreter flushes stdout and stderr itself.
        gc.freeze()
