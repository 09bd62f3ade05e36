"""Loading and checking masks (numpy only; no torch).

A mask is boolean (one region: True pixels) or integer labels 1..K (0 = no region).
Whatever the user passes is turned into one int32 label image at submit and saved in
the job folder, so workers never reinterpret user files.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import LimitExceeded, MaskError, OptionError


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


#: Largest label an int32 label image holds.
INT32_MAX = int(np.iinfo(np.int32).max)


def to_labels(array: np.ndarray, source: str, max_regions: int = INT32_MAX) -> np.ndarray:
    """An int32 label image from a boolean, integer or integer-valued float mask.

    Labels must be whole numbers from 0 to ``max_regions`` (``FRAMESTATS_MAX_REGIONS``),
    checked before the conversion: a float or int64 label beyond int32 would wrap around.
    """
    if array.ndim != 2:
        raise MaskError(
            f"mask {source} is {array.ndim}-D {array.shape}; expected 2-D (height, width)"
        )
    if array.dtype == np.bool_:
        return array.astype(np.int32)
    if array.dtype.kind not in "uif":
        raise MaskError(f"mask {source} has dtype {array.dtype}; expected bool or integer labels")
    if array.dtype.kind == "f" and (
        not np.all(np.isfinite(array)) or not np.all(array == np.round(array))
    ):
        raise MaskError(
            f"mask {source} is float with non-integer values; pass a boolean or integer label mask"
        )
    if array.size and array.min() < 0:
        raise MaskError(f"mask {source} has negative labels; labels are 0 (none) or 1..K")
    top = array.max() if array.size else 0
    if top > min(max_regions, INT32_MAX):
        raise LimitExceeded(
            f"mask {source} has a label of {_label_text(top)}: each label is a region (an "
            f"output column), and at most {max_regions} are allowed (FRAMESTATS_MAX_REGIONS)",
            "FRAMESTATS_MAX_REGIONS",
            max_regions,
        )
    return array.astype(np.int32)


def _label_text(value: Any) -> str:
    number = float(value)
    return str(int(number)) if number < 1e15 else f"{number:.3g}"


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


# --- Masks from any source, conventions, exclusions -------------------------------------

#: Mask conventions for ``--mask``: ``labels`` (True / 1..K are regions) or ``nexus``
#: (a NeXus pixel mask: one region of the good pixels).
CONVENTIONS = ("labels", "nexus")
#: NeXus NXdetector pixel_mask: a pixel is bad when one of its lower 16 bits is set; the
#: upper 16 bits tag properties that are no reason to reject it.
NEXUS_BAD_BITS = 0xFFFF
#: How bad-pixel masks (``--exclude``, the detector mask) are read, for the provenance.
BAD_PIXEL_RULE = "bool: True is bad; integer: bad where (value & 0xFFFF) != 0"
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs", ".nx5", ".cxi")
IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
#: PIL modes of single-channel images (bilevel, 8/16/32-bit integer, palette, float).
IMAGE_MODES = ("1", "L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")


@dataclass(frozen=True)
class LoadedMask:
    """A mask array and where it came from."""

    array: np.ndarray
    #: The mask as the user wrote it (``FILE`` or ``FILE.h5:/path``).
    spec: str
    file: str
    dataset: str | None
    sha256: str
    #: "file" (sha256 of the file's bytes) or "array" (of the dataset's C-order bytes).
    sha256_of: str
    #: "file", or "array" for a mask passed as an array and kept in the job folder.
    given_as: str = "file"

    @property
    def path(self) -> str:
        """Absolute ``FILE`` or ``FILE:/dataset``."""
        return self.file + (f":{self.dataset}" if self.dataset else "")

    def record(self, **extra: Any) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.file,
            "dataset": self.dataset,
            "sha256": self.sha256,
            "sha256_of": self.sha256_of,
            "dtype": self.array.dtype.str,
            "shape": list(self.array.shape),
        }
        if self.given_as != "file":
            out["given_as"] = self.given_as
        out.update(extra)
        return out


@dataclass(frozen=True)
class BuiltMask:
    """The int32 label image workers get, and the record of how it was made."""

    labels: np.ndarray
    n_regions: int
    main: LoadedMask
    records: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class ArrayMask:
    """A mask passed as an array (the Python API), kept in the job folder as ``file``.

    ``npy`` is the array as a ``.npy`` file: hashed now as file masks are, written by
    submit once every check has passed.
    """

    array: np.ndarray
    file: str
    npy: bytes
    #: How messages name it ("array", "exclude array 1", ...).
    name: str = "array"

    @classmethod
    def of(cls, array: Any, file: str, name: str = "array") -> ArrayMask:
        array = np.asarray(array)
        if array.dtype.kind not in "buif":
            raise MaskError(f"mask {name} has dtype {array.dtype}; expected bool or integer labels")
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        return cls(array, os.path.abspath(file), buffer.getvalue(), name)


def keep_arrays(
    folder: str, mask: Any, exclude: tuple[Any, ...]
) -> tuple[str | ArrayMask, tuple[str | ArrayMask, ...]]:
    """``mask`` and ``exclude`` with every array among them an ArrayMask kept in ``folder``."""
    from ..constants import ARRAY_MASK_NAME

    def kept(item: Any, role: str, name: str) -> str | ArrayMask:
        if isinstance(item, str | ArrayMask):
            return item
        if isinstance(item, os.PathLike):
            return os.fspath(item)
        return ArrayMask.of(item, os.path.join(folder, ARRAY_MASK_NAME.format(role=role)), name)

    return kept(mask, "regions", "array"), tuple(
        kept(item, f"exclude-{i}", f"exclude array {i}") for i, item in enumerate(exclude, 1)
    )


def sha256_array(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def split_spec(spec: str) -> tuple[str, str | None]:
    """``FILE.h5:/path/to/dataset`` -> (FILE.h5, /path/to/dataset); a plain path -> (path, None)."""
    if os.path.exists(spec):
        return spec, None
    idx = spec.find(":/")
    if idx > 0:
        return spec[:idx], spec[idx + 1 :]
    return spec, None


def load(spec: str | ArrayMask) -> LoadedMask:
    """A mask from ``.npy``, an HDF5 dataset (``FILE.h5:/path``), ``.tif``, ``.png`` or an array."""
    if isinstance(spec, ArrayMask):
        digest = hashlib.sha256(spec.npy).hexdigest()
        return LoadedMask(spec.array, spec.name, spec.file, None, digest, "file", "array")
    file, dataset = split_spec(spec)
    if not os.path.exists(file):
        raise MaskError(f"mask file not found: {file}")
    if os.path.isdir(file):
        raise MaskError(f"mask is a folder, not a file: {file}")
    lower = file.lower()
    if dataset is not None or lower.endswith(HDF5_SUFFIXES):
        array, name = _load_h5(file, dataset)
        return LoadedMask(array, spec, os.path.abspath(file), name, sha256_array(array), "array")
    if lower.endswith(IMAGE_SUFFIXES):
        image = _load_image(file)
        return LoadedMask(image, spec, os.path.abspath(file), None, sha256_file(file), "file")
    if lower.endswith(".npy"):
        array = load_array(file)
        return LoadedMask(array, spec, os.path.abspath(file), None, sha256_file(file), "file")
    if _is_hdf5(file):
        array, name = _load_h5(file, None)
        return LoadedMask(array, spec, os.path.abspath(file), name, sha256_array(array), "array")
    raise MaskError(
        f"mask file must be a .npy array, an HDF5 dataset (FILE.h5:/path), .tif or .png: {file}"
    )


def _is_hdf5(path: str) -> bool:
    import h5py

    try:
        return bool(h5py.is_hdf5(path))
    except OSError:
        return False


def _load_h5(file: str, dataset: str | None) -> tuple[np.ndarray, str]:
    """(array, dataset path) of a mask stored in HDF5; the only 2-D dataset when unnamed."""
    import h5py

    from .hdf5 import missing_filters, read_with_all_filters

    if not os.access(file, os.R_OK):
        raise MaskError(f"mask file is not readable: {file}")
    if not _is_hdf5(file):
        raise MaskError(f"mask file is not an HDF5 file: {file}")
    try:
        f = h5py.File(file, "r")
    except OSError as exc:
        raise MaskError(f"cannot open mask file {file}: {exc}") from exc
    with f:
        if dataset is None:
            found: list[str] = []

            def visit(name: str, obj: Any) -> None:
                if isinstance(obj, h5py.Dataset) and obj.ndim == 2:
                    found.append("/" + name)

            f.visititems(visit)
            if not found:
                raise MaskError(f"no 2-D dataset in mask file {file}; name one as {file}:/path")
            if len(found) > 1:
                raise MaskError(
                    f"several 2-D datasets in mask file {file} ({', '.join(found)}); "
                    f"name one as {file}:/path"
                )
            dataset = found[0]
        obj = f.get(dataset)
        if obj is None:
            raise MaskError(f"dataset {dataset} not found in mask file {file}")
        if not isinstance(obj, h5py.Dataset):
            raise MaskError(f"{dataset} in mask file {file} is a group, not a dataset")
        missing = missing_filters(obj)  # registers a plugin filter the mask needs
        if missing:
            raise MaskError(
                f"mask {dataset} in {file} needs a compression filter that is not available: "
                + ", ".join(missing)
            )
        try:
            array = read_with_all_filters(lambda: obj[()])
        except Exception as exc:
            raise MaskError(f"cannot read mask {dataset} in {file}: {exc}") from exc
        name = obj.name or dataset
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "buif":
        raise MaskError(f"mask {dataset} in {file} is not a numeric array")
    return array, name


def _load_image(file: str) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - Pillow is a dependency
        raise MaskError(f"reading {file} needs Pillow (pip install Pillow)") from exc
    try:
        with Image.open(file) as image:
            pages = int(getattr(image, "n_frames", 1))
            if pages > 1:
                raise MaskError(f"mask image {file} has {pages} pages; expected one label image")
            if image.mode not in IMAGE_MODES:
                raise MaskError(
                    f"mask image {file} is {image.mode}; expected a single-channel "
                    "label image (1-bit, 8/16/32-bit integer or float)"
                )
            return np.array(image)
    except MaskError:
        raise
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ...
        raise MaskError(f"mask file is not a readable image: {file} ({exc})") from exc


def bad_pixels(array: np.ndarray, source: str) -> np.ndarray:
    """Boolean bad-pixel map: True where bool is True, or an integer's lower 16 bits are set."""
    if array.ndim != 2:
        raise MaskError(
            f"mask {source} is {array.ndim}-D {array.shape}; expected 2-D (height, width)"
        )
    if array.dtype == np.bool_:
        return array.copy()
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise MaskError(f"mask {source} is float with non-integer values; expected integers")
        array = array.astype(np.int64)
    if array.dtype.kind not in "ui":
        raise MaskError(f"mask {source} has dtype {array.dtype}; expected bool or integers")
    return (array.astype(np.int64, copy=False) & NEXUS_BAD_BITS) != 0


def _check_shape(array: np.ndarray, frame_shape: tuple[int, int], source: str) -> None:
    if tuple(array.shape) != tuple(frame_shape):
        raise MaskError(
            f"mask {source} has shape {tuple(array.shape)} but frames are {tuple(frame_shape)}"
        )


def build(
    spec: str | ArrayMask,
    frame_shape: tuple[int, int],
    convention: str = "labels",
    invert: bool = False,
    exclude: tuple[str | ArrayMask, ...] = (),
    detector: tuple[tuple[str, str], ...] = (),
    max_regions: int = INT32_MAX,
) -> BuiltMask:
    """The label image for ``--mask`` read by ``convention``, ``--invert``ed, minus bad pixels.

    ``exclude`` are bad-pixel mask specs (``--exclude``); ``detector`` are (master file,
    pixel mask dataset) pairs applied because the input is an Eiger master file. Region
    numbers K come from the region mask, before bad pixels are taken out, so output
    columns keep the user's label numbers; K is at most ``max_regions``.
    """
    if convention not in CONVENTIONS:
        raise OptionError(
            f"--mask-convention {convention!r} is unknown; choose from {', '.join(CONVENTIONS)}"
        )
    main = load(spec)
    spec = main.spec  # how messages name it
    if convention == "nexus":
        labels = (~bad_pixels(main.array, spec)).astype(np.int32)
    else:
        labels = to_labels(main.array, spec, max_regions)
    if invert:
        top = int(labels.max()) if labels.size else 0
        if top > 1:
            raise MaskError(f"--invert needs a boolean mask; {spec} has integer labels up to {top}")
        labels = (1 - labels).astype(np.int32)
    n_regions = check_fits(labels, frame_shape, spec)
    records: list[dict[str, Any]] = [
        main.record(
            role="regions",
            convention=convention,
            rule=(
                "region 1 = pixels where (value & 0xFFFF) == 0"
                if convention == "nexus"
                else "bool: True is region 1; integer: 0 is none, 1..K are regions"
            ),
            inverted=invert,
            regions=n_regions,
        )
    ]
    in_regions = labels > 0
    removed = np.zeros(frame_shape, dtype=bool)

    def remove(where: str | ArrayMask, role: str) -> None:
        """Exclude the bad pixels of mask ``where`` and record them."""
        loaded = load(where)
        bad = bad_pixels(loaded.array, loaded.spec)
        _check_shape(bad, frame_shape, loaded.spec)
        records.append(
            loaded.record(
                role=role,
                rule=BAD_PIXEL_RULE,
                bad_pixels=int(bad.sum()),
                removed=int((bad & in_regions).sum()),
            )
        )
        removed[bad] = True

    for item in exclude:
        remove(item, "exclude")
    for master, dataset in detector:
        try:
            remove(f"{master}:{dataset}", "detector")
        except MaskError as exc:
            raise MaskError(
                f"detector pixel mask: {exc} (pass --no-detector-mask to skip it)"
            ) from exc
    labels[removed] = 0
    if not labels.any():
        raise MaskError(f"mask {spec} selects no pixel once bad pixels are excluded")
    records.append(
        {
            "role": "combined",
            "sha256": sha256_array(labels.astype("<i4")),
            "sha256_of": "array",
            "dtype": "<i4",
            "regions": n_regions,
            "pixels": int((labels > 0).sum()),
            "excluded": int((removed & in_regions).sum()),
        }
    )
    return BuiltMask(labels=labels, n_regions=n_regions, main=main, records=tuple(records))
