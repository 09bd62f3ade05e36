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
