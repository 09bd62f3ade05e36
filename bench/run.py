"""``python -m bench``: the end-to-end benchmark, every method in one run, interleaved.

For each storage form of one generated stack (contiguous, gzip 4 + shuffle,
Bitshuffle-LZ4) and each repetition, in a rotating order: (a) ``producer submit
--wait`` with warm ``worker`` processes, (a1) the same with one worker process (for
scaling), (b) N plain processes, (c) Dask threaded and Dask delayed-by-path, (d) the
article's vectorized form. Page cache warm, medians over repetitions. Prints the table
and writes it, with the machine and versions, into bench/RESULTS.md between markers
(other sections of that file are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import baselines, e2e
from .data import DATASET, FORMS, Stack, data_root, ensure_stack, file_sizes
from .host import cpu_model
from .report import replace_section

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
LABELS = {"none": "contiguous", "gzip": "gzip 4 + shuffle", "bslz4": "Bitshuffle-LZ4"}
METHODS = (
    "a",
    "a_job",
    "a1",
    "a1_job",
    "b",
    "b1",
    "b_prefetch",
    "b_hdf5",
    "c_threads",
    "c_delayed",
    "d",
)
#: CPU seconds rows (not throughput): shown as seconds.
CPU_ROWS = ("a_cpu", "b_cpu")
NAMES = {
    "a": "(a) producer submit --wait, N workers",
    "a_job": "(a) counted from the job's creation in Redis (no CLI start-up, no checks)",
    "a1": "(a1) the same, 1 worker",
    "a1_job": "(a1) counted from the job's creation",
    "a_cpu": "(a) CPU seconds of the worker node (parent + pool processes)",
    "b_cpu": "(b) CPU seconds of the plain processes",
    "b": "(b) N plain processes, same read + kernel",
    "b1": "(b1) the same, 1 process (the machine's own scaling)",
    "b_prefetch": "(b) with FRAMESTATS_PREFETCH=1 (read ahead in a thread)",
    "b_hdf5": "(b) with FRAMESTATS_DECODE_THREADS=0 (HDF5 decodes Bitshuffle)",
    "c_threads": "(c) Dask from_array, threads",
    "c_delayed": "(c') Dask delayed by path, processes",
    "d": "(d) article's vectorized form, 1 process",
}


def machine() -> dict[str, str]:
    import celery
    import dask
    import h5py
    import hdf5plugin
    import redis
    import torch

    cpu = cpu_model(platform.processor() or "?")
    mem = "?"
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            kb = int(fh.readline().split()[1])
        mem = f"{kb / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "memory": mem,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": (
            f"torch {torch.__version__}, numpy {np.__version__}, h5py {h5py.__version__} "
            f"(HDF5 {h5py.version.hdf5_version}), hdf5plugin {hdf5plugin.version}, "
            f"dask {dask.__version__}, celery {celery.__version__}, redis-py {redis.__version__}"
        ),
    }


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def check_same(name: str, got: np.ndarray, want: np.ndarray, exact: bool) -> None:
    if exact:
        np.testing.assert_array_equal(got, want, err_msg=f"{name} disagrees with (b)")
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=f"{name} disagrees with (b)")


#: What a runner returns: the per-frame sums, or the sums and named extra timings.
Outcome = np.ndarray | tuple[np.ndarray, dict[str, float]]


def bench_form(
    form: str, reps: int, runners: dict[str, Callable[[], Outcome]], log: Callable[[str], None]
) -> dict[str, list[float]]:
    """Every runner ``reps`` times, in a rotating order; checks they agree on the sums."""
    times: dict[str, list[float]] = {m: [] for m in runners}
    reference: np.ndarray | None = None
    order = list(runners)
    for rep in range(reps):
        rot = order[rep % len(order) :] + order[: rep % len(order)]
        for m in rot:
            t = time.perf_counter()
            outcome = runners[m]()
            seconds = time.perf_counter() - t
            sums, extra = outcome if isinstance(outcome, tuple) else (outcome, {})
            times[m].append(extra.pop("wall", seconds))
            for key, value in extra.items():
                times.setdefault(f"{m}_{key}", []).append(value)
            if rep == 0:
                if reference is None:
                    reference = sums
                check_same(NAMES[m], sums, reference, exact=m != "d")
        log(
            f"  {form} rep {rep + 1}/{reps}: "
            + ", ".join(f"{m} {times[m][-1]:.2f}s" for m in order)
        )
    return times


def form_runners(
    path: str,
    stack: Stack,
    mask: np.ndarray,
    spec: Any,
    out_a: str,
    redis_url: str,
    n: int,
    workers: e2e.Workers,
    single: e2e.Workers | None,
    noqueue: baselines.NoQueue,
    delayed: baselines.DaskDelayed,
    variants: dict[str, baselines.NoQueue],
    form: str,
) -> dict[str, Callable[[], Outcome]]:
    """One callable per method for one file; each returns the per-frame sums."""
    runners: dict[str, Callable[[], Outcome]] = {
        "a": lambda: e2e.submit_wait(redis_url, workers, path, stack.mask, out_a),
        "b": lambda: noqueue.run(spec, mask),
        "c_threads": lambda: baselines.dask_threaded(path, DATASET, mask, n),
        "c_delayed": lambda: delayed.run(path, DATASET, mask, stack.frames),
        "d": lambda: baselines.article(path, DATASET, mask),
    }
    if single is not None:
        runners["a1"] = lambda: e2e.submit_wait(redis_url, single, path, stack.mask, out_a)
    if "b1" in variants:
        runners["b1"] = lambda: variants["b1"].run(spec, mask)
    if "b_prefetch" in variants:
        runners["b_prefetch"] = lambda: variants["b_prefetch"].run(spec, mask)
    if "b_hdf5" in variants and form == "bslz4":
        runners["b_hdf5"] = lambda: variants["b_hdf5"].run(spec, mask)
    return runners


def run(args: argparse.Namespace) -> dict[str, Any]:
    from framestats.settings import Settings
    from framestats.submission import SubmitRequest, prepare

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    redis_url = args.redis_url or os.environ.get("REDIS_URL") or Settings.redis_url
    n = args.workers
    forms = tuple(args.forms.split(","))
    stack = ensure_stack(args.frames, args.size, args.size, forms=forms, root=args.data)
    mask = np.load(stack.mask)
    scratch = tempfile.mkdtemp(prefix="bench-", dir=args.data or data_root())
    result: dict[str, Any] = {
        "machine": machine(),
        "load": {"start": os.getloadavg()},
        "params": {
            "frames": args.frames,
            "shape": [args.size, args.size],
            "nbytes": stack.nbytes,
            "file_bytes": file_sizes(stack, forms),
            "reps": args.reps,
            "workers": n,
            "redis": "local",
        },
        "forms": {},
    }
    from framestats import connection

    client = connection.connect(redis_url)
    log(f"starting {n}+1 worker processes and the baseline pools")
    workers = e2e.start_workers(redis_url, n, scratch)
    single = e2e.start_workers(redis_url, 1, scratch)
    noqueue = baselines.NoQueue(n)
    delayed = baselines.DaskDelayed(n)
    variants: dict[str, baselines.NoQueue] = {}
    if not args.no_scaling:
        variants["b1"] = baselines.NoQueue(1)
    if not args.no_variants:
        variants["b_prefetch"] = baselines.NoQueue(n, {"FRAMESTATS_PREFETCH": "1"})
        variants["b_hdf5"] = baselines.NoQueue(n, {"FRAMESTATS_DECODE_THREADS": "0"})
    try:
        workers.wait_ready(client)
        single.wait_ready(client)
        for form in forms:
            path = stack.path(form)
            with open(path, "rb") as fh:  # warm the page cache
                while fh.read(1 << 24):
                    pass
            spec = prepare(
                SubmitRequest(
                    inputs=(path,),
                    mask=stack.mask,
                    output=os.path.join(scratch, f"b-{form}.h5"),
                    stats=("sum",),
                ),
                Settings.from_env({"REDIS_URL": redis_url}),
            ).spec
            runners = form_runners(
                path,
                stack,
                mask,
                spec,
                os.path.join(scratch, f"a-{form}.h5"),
                redis_url,
                n,
                workers,
                None if args.no_scaling else single,
                noqueue,
                delayed,
                variants,
                form,
            )
            log(f"{form}: {spec.n_chunks} chunks of {spec.chunk_frames} frames")
            times = bench_form(form, args.reps, runners, log)
            result["forms"][form] = {"times": times, "chunks": spec.n_chunks}
        log("producer costs")
        costs: dict[str, list[float]] = {"help": [], "status": [], "plan": [], "plan_cli": []}
        plan_parts: list[dict[str, float]] = []
        for _ in range(max(3, args.reps)):
            costs["help"].append(e2e.cli_seconds(redis_url, "--help"))
            costs["status"].append(e2e.cli_seconds(redis_url, "status"))
        for _ in range(args.plan_reps):
            p = e2e.plan_publish(redis_url, args.plan_chunks, scratch)
            plan_parts.append(p)
            costs["plan"].append(p["in_process"])
            costs["plan_cli"].append(p["cli"])
        result["costs"] = costs
        result["plan_parts"] = plan_parts
    finally:
        workers.stop(client)
        single.stop(client)
        noqueue.close()
        delayed.close()
        for pool in variants.values():
            pool.close()
        shutil.rmtree(scratch, ignore_errors=True)  # outputs, masks and worker logs
    result["load"]["end"] = os.getloadavg()
    summarize(result, stack)
    return result


def summarize(result: dict[str, Any], stack: Stack) -> None:
    gb = stack.nbytes / 1e9
    for data in result["forms"].values():
        med = {m: median(v) for m, v in data["times"].items()}
        data["median_s"] = med
        data["gbps"] = {m: gb / t for m, t in med.items() if not m.endswith("_cpu") and t > 0}
        c_best = min(med["c_threads"], med["c_delayed"])
        data["ratios"] = {
            "a/b": med["b"] / med["a"],
            "a_job/b": med["b"] / med["a_job"],
            "a/c": c_best / med["a"],
            "a/d": med["d"] / med["a"],
        }
        if "a1" in med:
            data["ratios"]["scaling"] = med["a1"] / med["a"]
            data["ratios"]["scaling_job"] = med["a1_job"] / med["a_job"]
        if "b1" in med:
            data["ratios"]["scaling_b"] = med["b1"] / med["b"]
        if med.get("a_cpu", 0) > 0 and "b_cpu" in med:
            data["ratios"]["cpu_b/a"] = med["b_cpu"] / med["a_cpu"]
            data["cpu_overhead_ms_per_chunk"] = 1e3 * (med["a_cpu"] - med["b_cpu"]) / data["chunks"]
        data["overhead_ms_per_chunk"] = 1e3 * (med["a"] - med["b"]) / data["chunks"]
        data["job_overhead_ms_per_chunk"] = 1e3 * (med["a_job"] - med["b"]) / data["chunks"]


def table(result: dict[str, Any]) -> str:
    forms = list(result["forms"])
    p = result["params"]
    head = "| | " + " | ".join(LABELS.get(f, f) for f in forms) + " |"
    rows = [head, "|---" * (len(forms) + 1) + "|"]
    for m in METHODS:
        if any(m in result["forms"][f]["gbps"] for f in forms):
            cells = [
                f"{result['forms'][f]['gbps'][m]:.2f} GB/s ({result['forms'][f]['median_s'][m]:.2f} s)"
                if m in result["forms"][f]["gbps"]
                else "-"
                for f in forms
            ]
            name = NAMES[m].replace("N ", f"{p['workers']} ")
            rows.append(f"| {name} | " + " | ".join(cells) + " |")
    for m in CPU_ROWS:
        if all(m in result["forms"][f]["median_s"] for f in forms):
            cells = [f"{result['forms'][f]['median_s'][m]:.2f} s" for f in forms]
            rows.append(f"| {NAMES[m]} | " + " | ".join(cells) + " |")
    for key, label, goal in (
        ("a/b", "(a)/(b), goal >= 0.9", 0.9),
        ("a_job/b", "(a from the job's creation)/(b)", None),
        ("cpu_b/a", "CPU seconds (b)/(a): the queue's cost, load-independent", None),
        ("a/c", "(a)/(best c), goal >= 1.4", 1.4),
        ("a/d", "(a)/(d)", None),
        ("scaling", "scaling 1 -> N workers, goal >= 1.8 (compressed)", 1.8),
        ("scaling_job", "scaling, counted from the job's creation", None),
        ("scaling_b", "scaling of (b) 1 -> N plain processes (the limit here)", None),
    ):
        if all(key in result["forms"][f]["ratios"] for f in forms):
            cells = []
            for f in forms:
                v = result["forms"][f]["ratios"][key]
                ok = ""
                if goal is not None and not (key == "scaling" and f == "none"):
                    ok = " ok" if v >= goal else " **miss**"
                cells.append(f"{v:.2f}{ok}")
            rows.append(f"| {label} | " + " | ".join(cells) + " |")
    for key, label in (
        ("overhead_ms_per_chunk", "per-chunk overhead ((a) - (b)) / chunks"),
        ("job_overhead_ms_per_chunk", "the same from the job's creation"),
        ("cpu_overhead_ms_per_chunk", "the same in CPU time of the worker processes"),
    ):
        if not all(key in result["forms"][f] for f in forms):
            continue
        cells = [
            f"{result['forms'][f][key]:.1f} ms x {result['forms'][f]['chunks']}" for f in forms
        ]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def costs_table(result: dict[str, Any]) -> str:
    c = result["costs"]
    parts = result["plan_parts"]
    chunks = int(parts[0]["chunks"]) if parts else 0
    inner = {k: median([p[k] for p in parts]) for k in ("prepare", "write", "enqueue")}
    rows = [
        "| producer cost | median | goal |",
        "|---|---|---|",
        f"| plan + publish {chunks:,} chunks (prepare + write + enqueue, in process) | "
        f"{median(c['plan']):.2f} s (prepare {inner['prepare']:.2f}, write {inner['write']:.2f}, "
        f"enqueue {inner['enqueue']:.2f}) | < 10 s {_ok(median(c['plan']) < 10)} |",
        f"| the same as one `producer submit` command | {median(c['plan_cli']):.2f} s | |",
        f"| `producer --help` | {median(c['help']):.3f} s | < 0.15 s {_ok(median(c['help']) < 0.15)} |",
        f"| `producer status` | {median(c['status']):.3f} s | < 0.3 s {_ok(median(c['status']) < 0.3)} |",
    ]
    return "\n".join(rows)


def _ok(flag: bool) -> str:
    return "ok" if flag else "**miss**"


def report(result: dict[str, Any], command: str) -> str:
    m = result["machine"]
    p = result["params"]
    sizes = ", ".join(
        f"{LABELS.get(k, k)} {v / 2**20:,.0f} MiB" for k, v in p["file_bytes"].items()
    )
    return "\n".join(
        [
            "## End to end (`python -m bench`)",
            "",
            f"`{command}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
            f"Machine: {m['cpu']}, {m['memory']}, {m['os']}, Python {m['python']}; {m['versions']}.",
            "",
            "Load average (1, 5, 15 min) at the start "
            + ", ".join(f"{x:.1f}" for x in result["load"]["start"])
            + ", at the end "
            + ", ".join(f"{x:.1f}" for x in result["load"]["end"])
            + " (the machine is shared; 2 = both cores busy with others' work).",
            "",
            f"Input: {p['frames']} uint16 frames of {p['shape'][0]}x{p['shape'][1]} "
            f"({p['nbytes'] / 2**30:.2f} GiB uncompressed; files: {sizes}), masked sum of one "
            f"annulus region. GB/s = uncompressed bytes / median wall time of {p['reps']} "
            f"interleaved repetitions, page cache warm, {p['workers']} worker processes.",
            "",
            table(result),
            "",
            costs_table(result),
            "",
        ]
    )


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=4096, help="frames (4096 x 512^2 = 2 GiB)")
    ap.add_argument("--size", type=int, default=512, help="frame height and width")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="N (default: cores)")
    ap.add_argument("--forms", default=",".join(FORMS))
    ap.add_argument("--plan-chunks", type=int, default=100_000)
    ap.add_argument("--plan-reps", type=int, default=3)
    ap.add_argument("--no-scaling", action="store_true", help="skip the 1-worker runs")
    ap.add_argument(
        "--no-variants", action="store_true", help="skip (b) with prefetch / HDF5 decoding"
    )
    ap.add_argument(
        "--data", default=None, help="data folder (default $FRAMESTATS_BENCH_DATA or .bench-data)"
    )
    ap.add_argument("--redis-url", default=None, help="default $REDIS_URL")
    ap.add_argument("--json", default=None, help="also write the raw results here")
    ap.add_argument("--no-write", action="store_true", help="do not touch bench/RESULTS.md")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    result = run(args)
    command = "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv)
    text = report(result, command.strip())
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=1)
    if not args.no_write:
        replace_section(RESULTS, "bench.run", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
