"""Loading and checking masks (numpy only; no torch).

A mask is boolean (one region: True pixels) or integer labels 1..K (0 = no region).
Whatever the user passes is turned into one int32 label image at submit and saved in
the job folder, so workers never reinterpret user files.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from .errors import MaskError


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_array(path: str) -> np.ndarray:
    """The array stored in a ``.npy`` file, with one clear MaskError for every failure."""
    if not os.path.exists(path):
        raise MaskError(f"mask file not found: {path}")
    if not path.endswith(".npy"):
        raise MaskError(f"mask file must be a .npy array: {path}")
    try:
        array = np.load(path, allow_pickle=False)
    except PermissionError as exc:
        raise MaskError(f"mask file is not readable: {path}") from exc
    except (OSError, ValueError, EOFError) as exc:
        raise MaskError(f"mask file is not a valid .npy array: {path} ({exc})") from exc
    if not isinstance(array, np.ndarray):
        raise MaskError(f"mask file does not hold a single array: {path}")
    return array


def to_labels(array: np.ndarray, source: str) -> np.ndarray:
    """An int32 label image from a boolean, integer or integer-valued float mask."""
    if array.ndim != 2:
        raise MaskError(
            f"mask {source} is {array.ndim}-D {array.shape}; expected 2-D (height, width)"
        )
    if array.dtype == np.bool_:
        return array.astype(np.int32)
    if array.dtype.kind in "ui":
        if array.dtype.kind == "i" and array.size and array.min() < 0:
            raise MaskError(f"mask {source} has negative labels; labels are 0 (none) or 1..K")
        if array.size and int(array.max()) > np.iinfo(np.int32).max:
            raise MaskError(f"mask {source} has labels beyond int32")
        return array.astype(np.int32)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise MaskError(
                f"mask {source} is float with non-integer values; pass a boolean or integer label mask"
            )
        if array.size and array.min() < 0:
            raise MaskError(f"mask {source} has negative labels; labels are 0 (none) or 1..K")
        return array.astype(np.int32)
    raise MaskError(f"mask {source} has dtype {array.dtype}; expected bool or integer labels")


def check_fits(labels: np.ndarray, frame_shape: tuple[int, int], source: str) -> int:
    """Number of regions K; MaskError when the mask does not fit or selects nothing."""
    if tuple(labels.shape) != tuple(frame_shape):
        raise MaskError(
            f"mask {source} has shape {tuple(labels.shape)} but frames are {tuple(frame_shape)}"
        )
    n_regions = int(labels.max()) if labels.size else 0
    if n_regions == 0:
        raise MaskError(f"mask {source} selects no pixel")
    return n_regions


def pixel_counts(labels: np.ndarray, n_regions: int) -> np.ndarray:
    """Mask pixels per region 1..K, int64 (K,)."""
    return np.bincount(labels.ravel(), minlength=n_regions + 1)[1:].astype(np.int64)
