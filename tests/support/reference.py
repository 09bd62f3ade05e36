"""An independent numpy reference for the statistics (no torch, no project code)."""

from __future__ import annotations

import numpy as np


def reference(
    frames: np.ndarray, labels: np.ndarray, stats: tuple[str, ...]
) -> dict[str, np.ndarray]:
    """Per-frame statistics per region 1..K, computed pixel list by pixel list in int64/float64."""
    k = int(labels.max())
    n = frames.shape[0]
    out = {s: np.full((n, k), np.nan) for s in stats}
    exact = frames.dtype.kind in "ui"
    for r in range(1, k + 1):
        sel = labels == r
        px = frames[:, sel]
        px = px.astype(np.int64) if exact else px.astype(np.float64)
        for i in range(n):
            v = px[i]
            if not exact:
                v = v[~np.isnan(v)]
            cnt = v.size
            if "sum" in stats:
                out["sum"][i, r - 1] = float(v.sum()) if cnt else 0.0
            if "count" in stats:
                out["count"][i, r - 1] = cnt
            if cnt:
                vf = v.astype(np.float64)
                if "mean" in stats:
                    out["mean"][i, r - 1] = v.sum() / cnt
                if "min" in stats:
                    out["min"][i, r - 1] = v.min()
                if "max" in stats:
                    out["max"][i, r - 1] = v.max()
                if "std" in stats:
                    out["std"][i, r - 1] = vf.std()
    return out


def read_output(path: str) -> dict[str, np.ndarray]:
    """Every dataset under /results of an output file."""
    import h5py

    with h5py.File(path, "r") as f:
        return {k: f["results"][k][()] for k in f["results"]}


def check_against_reference(
    out: dict[str, np.ndarray], frames: np.ndarray, labels: np.ndarray, stats: tuple[str, ...]
) -> None:
    """Sums, counts, min and max equal numpy's exactly for integer data; the rest to 1e-12."""
    ref = reference(frames, labels, stats)
    for s in stats:
        if frames.dtype.kind in "ui" and s in ("sum", "count", "min", "max"):
            np.testing.assert_array_equal(out[s], ref[s], err_msg=s)
        else:
            np.testing.assert_allclose(
                out[s], ref[s], rtol=1e-12, atol=0, equal_nan=True, err_msg=s
            )
    k = int(labels.max())
    np.testing.assert_array_equal(
        out["pixel_count"], np.bincount(labels.ravel(), minlength=k + 1)[1:]
    )
