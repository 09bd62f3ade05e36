"""The ``worker`` command: parse options, pick the device layout, start Celery nodes."""

from __future__ import annotations

import logging
import os
import sys

import click

from framestats.settings import Settings

from . import launch


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(min=1),
    envvar="WORKER_CONCURRENCY",
    help="Processes (CPU: default one per core; GPU: per GPU, default 1).",
)
@click.option(
    "--device",
    envvar="FRAMESTATS_DEVICE",
    default="auto",
    show_default=True,
    help="auto, cpu, cuda (one pinned process per visible GPU) or cuda:N.",
)
@click.option(
    "--queues",
    "-Q",
    envvar="WORKER_QUEUES",
    default="framestats",
    show_default=True,
    help="Comma-separated queues to consume.",
)
@click.option(
    "--name",
    "-n",
    envvar="WORKER_NAME",
    default=None,
    help="Node name base (default framestats@HOST).",
)
@click.option("--loglevel", "-l", default="info", show_default=True)
@click.pass_context
def cli(
    ctx: click.Context,
    concurrency: int | None,
    device: str,
    queues: str,
    name: str | None,
    loglevel: str,
) -> None:
    """Run a framestats worker until SIGTERM/SIGINT (warm shutdown: running chunks finish)."""
    if ctx.invoked_subcommand is not None:
        return
    logging.basicConfig(
        level=loglevel.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    settings = Settings.from_env()
    from framestats.inputs.reach import check_environment

    check_environment(settings.data_root)  # HDF5 must look only where DATA_ROOT is checked
    if not settings.data_root:
        click.echo(
            "warning: DATA_ROOT is unset; this worker will open any path a message names", err=True
        )
    queue_list = _split(queues) or ["framestats"]
    device = device.strip().lower()
    if device.startswith("cuda:"):
        index = device.split(":", 1)[1]
        os.environ["CUDA_VISIBLE_DEVICES"] = index
        device = "cuda"
        sys.exit(
            launch.run_node(
                concurrency or 1,
                queue_list,
                launch.node_name(name, f"gpu{index}"),
                loglevel,
                "cuda",
            )
        )
    gpus = launch.count_gpus() if device in ("auto", "cuda") else 0
    if device == "cuda" and gpus == 0:
        raise click.UsageError("--device cuda given but no CUDA device is visible")
    if gpus == 0 or device == "cpu":
        n = concurrency or launch.usable_cores()
        sys.exit(launch.run_node(n, queue_list, launch.node_name(name), loglevel, "cpu"))
    if gpus == 1:
        sys.exit(
            launch.run_node(
                concurrency or 1, queue_list, launch.node_name(name, "gpu0"), loglevel, "cuda"
            )
        )
    commands: list[tuple[list[str], dict[str, str]]] = []
    for i in range(gpus):
        argv = [
            sys.executable,
            "-m",
            "worker",
            "--device",
            f"cuda:{i}",
            "--queues",
            ",".join(queue_list),
            "--loglevel",
            loglevel,
            "--concurrency",
            str(concurrency or 1),
        ]
        if name:
            argv += ["--name", name]
        # Each GPU's process decodes Bitshuffle chunks on its share of the cores.
        threads = settings.decode_threads
        if threads is None:
            threads = max(1, launch.usable_cores() // gpus)
        commands.append((argv, {"FRAMESTATS_DECODE_THREADS": str(threads)}))
    sys.exit(launch.supervise(commands))


@cli.command()
def health() -> None:
    """Exit 0 when Redis answers and a worker on this host has beaten recently."""
    import socket
    import time

    from framestats import connection
    from framestats import constants as C
    from framestats.errors import BrokerUnavailable

    settings = Settings.from_env()
    client = connection.connect(settings.redis_url, timeout=3)
    try:
        connection.ping(client, settings.redis_url_redacted)
    except BrokerUnavailable as exc:
        click.echo(f"unhealthy: {exc}", err=True)
        sys.exit(1)
    host = socket.gethostname()
    cutoff = time.time() - settings.worker_timeout
    for worker_id in map(str, client.zrangebyscore(C.WORKERS_INDEX, cutoff, "+inf")):
        if client.hget(C.worker_key(worker_id), "host") == host:
            click.echo(f"healthy: {worker_id}")
            return
    click.echo(
        f"unhealthy: no worker heartbeat from {host} in the last {settings.worker_timeout:.0f} s",
        err=True,
    )
    sys.exit(1)


def main() -> None:
    from framestats import redaction
    from framestats.errors import FramestatsError

    try:  # before any log handler or banner exists: they write through the redacting streams
        redaction.install(Settings.from_env().redis_url)
    except ValueError:
        pass  # a bad setting is reported by the command itself
    try:
        cli(prog_name="worker")
    except FramestatsError as exc:  # e.g. an unsafe (pickle) configuration: one line, no trace
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
