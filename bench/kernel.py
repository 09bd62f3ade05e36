"""Throughput of the masked-reduction kernel (``MaskedReducer``), frames in memory.

Run as ``python -m bench.kernel [--sections table,sweep] [--threads 1] [--device cpu]``.
All numbers are GB/s of *input* bytes, best of ``--repeat`` runs; variants compared in a
table are measured interleaved (round robin), so load from other processes on a shared
machine hits them alike: read the ratios, not the absolute numbers.

Sections:

* ``table``: few regions (a detector's boolean mask, 16 rings, 16 boxes), uint16 and
  float32, sum+mean and all six statistics, beside the yardstick ``numpy.sum`` over a
  float32 array of the same size (one thread's memory bandwidth) and the "article" form
  ``(x * mask).sum(dim=(1, 2))`` (one pass per region for labels).
* ``sweep``: K = 16, 100, 1,000 rings of a radial profile and 10,000 4x4-pixel bins,
  uint16, sum and all six statistics, beside numpy ``bincount(labels, weights=frame)``
  and a ``scipy.sparse`` CSR product (both sum only), with the CPU strategy each
  reducer measured for itself and each strategy forced.
* ``compare`` (needs ``--baseline PATH``): the ``table`` masks' sum+mean and all six with
  this checkout's reducer and with the one of another checkout (e.g. the main branch),
  interleaved, so a change's effect is measured in one process.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import shutil
import statistics
import sys
import tempfile
import time
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from worker.reduce import STATS, MaskedReducer, mask_regions, resolve_device
from worker.reduce.cpu import STRATEGIES

SIZE = 512
SECTIONS = ("table", "sweep", "compare")


# -- data ------------------------------------------------------------------------------------


def detector_good(size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Good pixels of a detector (beam stop, 3-px module gap cross, 0.1 % dead pixels)
    and each pixel's distance from the beam centre."""
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2 + 0.5, xx - size / 2 + 0.5)
    good = r >= 24
    gap = slice(size // 2 - 1, size // 2 + 2)
    good[gap, :] = False
    good[:, gap] = False
    good[np.random.default_rng(7).random((size, size)) < 0.001] = False
    return good, r


def rings(n_rings: int, size: int = SIZE) -> np.ndarray:
    """A radial profile: ``n_rings`` equal-width rings from the beam stop to the edge."""
    good, r = detector_good(size)
    labels = ((r - 24) / (size / 2 - 24) * n_rings).astype(np.int32) + 1
    labels[(labels > n_rings) | ~good] = 0
    return labels


def pixel_bins(per_side: int = 100, bin_px: int = 4, size: int = SIZE) -> np.ndarray:
    """``per_side``**2 regions of ``bin_px`` x ``bin_px`` pixels in the frame's centre."""
    good, _ = detector_good(size)
    labels = np.zeros((size, size), dtype=np.int32)
    side = per_side * bin_px
    o = (size - side) // 2
    yy, xx = np.mgrid[:side, :side]
    labels[o : o + side, o : o + side] = (yy // bin_px) * per_side + xx // bin_px + 1
    labels[~good] = 0
    return labels


def detector_masks(size: int = SIZE) -> dict[str, np.ndarray]:
    """The table's masks: the boolean detector mask, 16 rings, a 4 x 4 grid of boxes."""
    good, _ = detector_good(size)
    boxes = np.zeros((size, size), dtype=np.int32)
    step = size // 4
    for i in range(4):
        for j in range(4):
            boxes[i * step + 8 : (i + 1) * step - 8, j * step + 8 : (j + 1) * step - 8] = (
                4 * i + j + 1
            )
    boxes[~good] = 0
    return {"bool": good, "16 rings": rings(16, size), "16 boxes": boxes}


def detector_frames(n: int, dtype: np.dtype, size: int = SIZE) -> np.ndarray:
    """Low Poisson counts with a radial fall-off; 64 distinct frames repeated."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    lam = 0.5 + 8.0 * np.exp(-np.hypot(yy - size / 2, xx - size / 2) / (size / 4))
    distinct = min(n, 64)
    base: np.ndarray = rng.poisson(lam, (distinct, size, size))
    if np.dtype(dtype).kind == "f":  # gain-corrected counts with read noise
        gain = rng.normal(1.0, 0.02, (size, size))
        base = base * gain + rng.normal(0.0, 0.1, base.shape)
    out = np.empty((n, size, size), dtype=dtype)
    for i in range(0, n, distinct):
        m = min(distinct, n - i)
        out[i : i + m] = base[:m]
    return out


def blocks(frames: np.ndarray, block: int) -> list[np.ndarray]:
    return [frames[i : i + block] for i in range(0, len(frames), block)]


# -- timing ----------------------------------------------------------------------------------


def interleaved(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, list[float]]:
    """Seconds of each function, ``repeat`` rounds, round robin (after one warm-up call
    each: compilation and first-touch memory are not timed)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def gbps(nbytes: int, seconds: list[float]) -> float:
    """GB/s of the best run."""
    return nbytes / min(seconds) / 1e9


def reduce_all(reducer: Any, parts: list[np.ndarray]) -> Callable[[], object]:
    return lambda: [reducer.reduce(p) for p in parts]


def to_float(x: torch.Tensor) -> torch.Tensor:
    """float32 copy of x on its device (uint16 needs it: torch refuses uint16 * bool)."""
    try:
        return x.float()
    except RuntimeError:  # a device without uint16 kernels: go through int32
        return (x.view(torch.int16).to(torch.int32) & 0xFFFF).float()


def article_fn(
    parts: list[np.ndarray], mask: np.ndarray, device: torch.device
) -> Callable[[], object]:
    """The naive form: ``(x * mask).sum(dim=(1, 2))``, once per region."""
    labels, n_regions = mask_regions(mask)
    masks = [torch.from_numpy(labels == k).to(device) for k in range(1, n_regions + 1)]

    def run() -> object:
        out = []
        for p in parts:
            x = torch.from_numpy(p).to(device)
            if x.dtype != torch.float32:
                x = to_float(x)
            out.append(torch.stack([(x * m).sum(dim=(1, 2)) for m in masks], 1).cpu())
        return out

    return run


def bincount_fn(parts: list[np.ndarray], labels: np.ndarray) -> Callable[[], object]:
    """numpy's scatter: ``bincount(labels, weights=frame)`` frame by frame (sum only)."""
    flat = labels.ravel()
    k = int(flat.max()) + 1
    return lambda: [np.bincount(flat, weights=f.ravel(), minlength=k) for p in parts for f in p]


def onehot(labels: np.ndarray) -> Any:
    """The labels (0 outside every region) as a scipy.sparse CSR one-hot, K x pixels."""
    from scipy import sparse

    flat = labels.ravel()
    masked = np.flatnonzero(flat)
    k = int(flat.max())
    return sparse.csr_matrix(
        (np.ones(masked.size), (flat[masked] - 1, masked)), shape=(k, flat.size)
    )


def csr_fn(parts: list[np.ndarray], labels: np.ndarray) -> Callable[[], object] | None:
    """The CSR one-hot (``onehot``) times each block (sum only); None without scipy
    (``pip install .[bench]``)."""
    try:
        matrix = onehot(labels)
    except ImportError:
        return None
    return lambda: [matrix @ p.reshape(p.shape[0], -1).T for p in parts]


def check_exact(reducer: Any, frames: np.ndarray, mask: np.ndarray) -> bool:
    """Kernel sums on a few frames equal numpy's int64 (or float64 to 1e-12) sums."""
    labels, n_regions = mask_regions(mask)
    sample = frames[:16]
    got = reducer.reduce(sample)["sum"]
    wide = np.int64 if sample.dtype.kind in "iu" else np.float64
    ref = np.stack(
        [sample[:, labels == k].astype(wide).sum(axis=1) for k in range(1, n_regions + 1)], 1
    ).astype(np.float64)
    if wide is np.int64:
        return bool(np.array_equal(got, ref))
    return bool(np.allclose(got, ref, rtol=1e-12, atol=0))


def chosen(reducer: MaskedReducer) -> str:
    """The CPU strategy a reducer measured for itself (or '-' on a device)."""
    picks = getattr(reducer._impl, "chosen", {})
    return ", ".join(sorted(set(picks.values()))) or "-"


# -- sections --------------------------------------------------------------------------------


def table(args: argparse.Namespace, device: torch.device) -> None:
    n16 = int(args.gib * 2**30) // (SIZE * SIZE * 2)
    n32 = int(args.gib * 2**30) // (SIZE * SIZE * 4)
    stacks = {
        "uint16": detector_frames(n16, np.dtype(np.uint16)),
        "float32": detector_frames(n32, np.dtype(np.float32)),
    }
    yard_src = stacks["float32"]
    rows = []
    yard: list[float] = []
    for dname, frames in stacks.items():
        parts = blocks(frames, args.block)
        # The article form is slow: time it on at most 256 MiB of the same blocks.
        few = parts[: max(1, (256 << 20) // max(1, parts[0].nbytes))]
        for mname, mask in detector_masks().items():
            fast = MaskedReducer(mask, ("sum", "mean"), device=device)
            full = MaskedReducer(mask, STATS, device=device)
            exact = check_exact(fast, frames, mask)
            times = interleaved(
                {
                    "yardstick": lambda: np.sum(yard_src),
                    "fast": reduce_all(fast, parts),
                    "full": reduce_all(full, parts),
                },
                args.repeat,
            )
            article = interleaved({"article": article_fn(few, mask, device)}, 1)["article"]
            yard += times["yardstick"]
            k1, k2 = gbps(frames.nbytes, times["fast"]), gbps(frames.nbytes, times["full"])
            art = gbps(sum(p.nbytes for p in few), article)
            rows.append((dname, mname, k1, k2, art, exact, chosen(fast), chosen(full)))
            print(f"# measured {dname} / {mname}", file=sys.stderr, flush=True)
    best_yard = gbps(yard_src.nbytes, yard)
    print(
        f"\n## Few regions (`--sections table`, {args.gib} GiB per dtype, blocks of {args.block})"
    )
    print(
        f"\nyardstick numpy.sum over {yard_src.nbytes / 2**30:.2f} GiB float32: {best_yard:.2f} GB/s"
    )
    print(
        "\n| input | mask | sum+mean | all six | article | sum+mean / yardstick | "
        "all six / sum+mean | exact | strategy (sum+mean; all six) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for dname, mname, k1, k2, art_rate, exact, s1, s2 in rows:
        print(
            f"| {dname} | {mname} | {k1:.2f} | {k2:.2f} | {art_rate:.2f} | {k1 / best_yard:.2f}x | "
            f"{k2 / k1:.2f} | {'yes' if exact else 'NO'} | {s1}; {s2} |"
        )


def sweep(args: argparse.Namespace, device: torch.device) -> None:
    frames = detector_frames(args.sweep_frames, np.dtype(np.uint16))
    parts = blocks(frames, args.block)
    masks = {16: rings(16), 100: rings(100), 1000: rings(1000), 10000: pixel_bins()}
    rows = []
    for k, labels in masks.items():
        assert int(labels.max()) == k
        fns: dict[str, Callable[[], object]] = {}
        reducers = {
            "sum": MaskedReducer(labels, ("sum",), device=device),
            "all": MaskedReducer(labels, STATS, device=device),
        }
        fns["sum"] = reduce_all(reducers["sum"], parts)
        fns["all"] = reduce_all(reducers["all"], parts)
        if device.type == "cpu" and args.strategies:
            for strategy in STRATEGIES:
                for tag, stats in (("sum", ("sum",)), ("all", STATS)):
                    forced = MaskedReducer(labels, stats, device=device, strategy=strategy)
                    fns[f"{tag} {strategy}"] = reduce_all(forced, parts)
        fns["bincount"] = bincount_fn(parts, labels)
        csr = csr_fn(parts, labels)
        if csr is not None:
            fns["csr"] = csr
        times = interleaved(fns, args.repeat)
        rate = {name: gbps(frames.nbytes, t) for name, t in times.items()}
        changes = int(np.count_nonzero(np.diff(labels.ravel()) != 0))
        rows.append((k, rate, chosen(reducers["sum"]), chosen(reducers["all"]), changes))
        print(f"# measured K = {k}", file=sys.stderr, flush=True)
    print(
        f"\n## K sweep (`--sections sweep`, uint16 {SIZE}x{SIZE}, {args.sweep_frames} frames "
        f"in blocks of {args.block}, {args.repeat} interleaved rounds, best)"
    )
    forced_heads = "".join(f" forced {s}: sum, all six |" for s in STRATEGIES)
    print(
        "\n| K | label changes / frame | sum | all six | bincount (sum) | CSR (sum) | "
        "sum / bincount | all six / sum | strategy (sum; all six) |" + forced_heads
    )
    print("|---" * (9 + len(STRATEGIES)) + "|")
    for k, rate, s_sum, s_all, changes in rows:
        csr_rate = f"{rate['csr']:.2f}" if "csr" in rate else "no scipy"
        forced_rates = [
            f"{rate[f'sum {s}']:.2f}, {rate[f'all {s}']:.2f}" if f"sum {s}" in rate else "-"
            for s in STRATEGIES
        ]
        print(
            f"| {k:,} | {changes:,} | {rate['sum']:.2f} | {rate['all']:.2f} | "
            f"{rate['bincount']:.2f} | {csr_rate} | {rate['sum'] / rate['bincount']:.2f}x | "
            f"{rate['all'] / rate['sum']:.2f} | {s_sum}; {s_all} | {' | '.join(forced_rates)} |"
        )


def load_baseline(path: str) -> types.ModuleType:
    """The ``worker`` package of another checkout, imported as ``baseline_worker`` from a
    temporary copy (so that neither bytecode nor numba's cache is written into it)."""
    copy = os.path.join(tempfile.mkdtemp(prefix="bench-baseline-"), "worker")
    shutil.copytree(
        os.path.join(path, "worker"), copy, ignore=shutil.ignore_patterns("__pycache__")
    )
    init = os.path.join(copy, "__init__.py")
    spec = importlib.util.spec_from_file_location(
        "baseline_worker", init, submodule_search_locations=[os.path.dirname(init)]
    )
    if spec is None or spec.loader is None:
        raise SystemExit(f"no worker package in {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_worker"] = module
    spec.loader.exec_module(module)
    return module


def compare(args: argparse.Namespace, device: torch.device) -> None:
    if not args.baseline:
        raise SystemExit("--sections compare needs --baseline PATH (another checkout)")
    load_baseline(args.baseline)
    name = (
        "kernel" if os.path.exists(os.path.join(args.baseline, "worker", "kernel.py")) else "reduce"
    )
    baseline = importlib.import_module(f"baseline_worker.{name}")
    n16 = int(args.gib * 2**30) // (SIZE * SIZE * 2)
    n32 = int(args.gib * 2**30) // (SIZE * SIZE * 4)
    stacks = {
        "uint16": detector_frames(n16, np.dtype(np.uint16)),
        "float32": detector_frames(n32, np.dtype(np.float32)),
    }
    print(
        f"\n## This checkout against {args.baseline} (`--sections compare`, interleaved, "
        f"{args.repeat} rounds; GB/s best / median)"
    )
    print("\n| input | mask | stats | baseline | this | this / baseline (best; median) |")
    print("|---|---|---|---|---|---|")
    for dname, frames in stacks.items():
        parts = blocks(frames, args.block)
        for mname, mask in detector_masks().items():
            for tag, stats in (("sum+mean", ("sum", "mean")), ("all six", STATS)):
                old = baseline.MaskedReducer(mask, stats, device=device)
                new = MaskedReducer(mask, stats, device=device)
                t = interleaved(
                    {"old": reduce_all(old, parts), "new": reduce_all(new, parts)}, args.repeat
                )
                best = {k: gbps(frames.nbytes, v) for k, v in t.items()}
                med = {k: frames.nbytes / statistics.median(v) / 1e9 for k, v in t.items()}
                print(
                    f"| {dname} | {mname} | {tag} | {best['old']:.2f} / {med['old']:.2f} | "
                    f"{best['new']:.2f} / {med['new']:.2f} | {best['new'] / best['old']:.2f}x; "
                    f"{med['new'] / med['old']:.2f}x |",
                    flush=True,
                )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", default="table,sweep", help=f"comma-separated: {SECTIONS}")
    ap.add_argument("--gib", type=float, default=1.0, help="table: size of each frame stack")
    ap.add_argument("--sweep-frames", type=int, default=256, help="sweep: uint16 frames")
    ap.add_argument("--threads", type=int, default=1, help="torch and numba threads")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--block", type=int, default=256, help="frames per reduce() call")
    ap.add_argument("--repeat", type=int, default=5, help="interleaved rounds (best counts)")
    ap.add_argument(
        "--no-strategies",
        dest="strategies",
        action="store_false",
        help="sweep: skip the columns with each CPU strategy forced",
    )
    ap.add_argument("--baseline", help="compare: another checkout's root (e.g. /work/main)")
    args = ap.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}: use {SECTIONS}")
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    load = os.getloadavg()
    print(
        f"# python -m bench.kernel {' '.join(argv if argv is not None else sys.argv[1:])}\n"
        f"# device={device} threads={args.threads} cores={os.cpu_count()} "
        f"load average at start {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}"
    )
    for section in sections:
        {"table": table, "sweep": sweep, "compare": compare}[section](args, device)
    load = os.getloadavg()
    print(f"\n# load average at end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")


if __name__ == "__main__":
    main()
