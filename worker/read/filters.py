"""Which HDF5 filter pipeline a dataset uses, as far as this package decodes it itself.

Only pipelines whose output is certain to equal HDF5's are named: exactly one of the
filter lists below, chunks that hold whole frames, native little-endian elements.
Everything else is ``None`` here and read by HDF5.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import h5py
import numpy as np

#: HDF5 filter ids: deflate (gzip), byte shuffle, bitshuffle.
DEFLATE_ID = 1
SHUFFLE_ID = 2
BSHUF_ID = 32008
#: Bitshuffle's compression codes (``cd_values[4]``).
BSHUF_LZ4 = 2
BSHUF_ZSTD = 3


@dataclass(frozen=True)
class Pipeline:
    """A filter pipeline this package decodes: ``kind`` and what it needs to know."""

    #: "bitshuffle" or "deflate".
    kind: str
    #: Bitshuffle's codec (``BSHUF_LZ4``/``BSHUF_ZSTD``); 0 for deflate.
    codec: int
    #: Bytes per element.
    itemsize: int
    #: Deflate only: HDF5's byte shuffle runs before it.
    shuffle: bool = False

    @property
    def bitshuffle_lz4(self) -> bool:
        return self.kind == "bitshuffle" and self.codec == BSHUF_LZ4


def whole_frame_chunks(dset: h5py.Dataset) -> bool:
    """Chunked (N, H, W) with each chunk holding whole frames."""
    return (
        dset.chunks is not None
        and len(dset.shape) == 3
        and tuple(dset.chunks[1:]) == tuple(dset.shape[1:])
    )


def native_little(dtype: np.dtype) -> bool:
    """Integers or floats stored native and little-endian (what the decoders produce)."""
    little = dtype.byteorder == "<" or (dtype.byteorder in "=|" and sys.byteorder == "little")
    return dtype.isnative and little and dtype.kind in "uif"


def pipeline_of(dset: h5py.Dataset) -> Pipeline | None:
    """The dataset's pipeline when it is one this package decodes bit for bit, else None."""
    if not whole_frame_chunks(dset) or not native_little(dset.dtype):
        return None
    plist = dset.id.get_create_plist()
    filters = [plist.get_filter(i) for i in range(plist.get_nfilters())]
    codes = [f[0] for f in filters]
    itemsize = dset.dtype.itemsize
    if codes == [BSHUF_ID]:
        values = filters[0][2]
        if len(values) >= 5 and values[4] in (BSHUF_LZ4, BSHUF_ZSTD) and values[2] == itemsize:
            return Pipeline("bitshuffle", int(values[4]), itemsize)
        return None
    if codes == [DEFLATE_ID]:
        return Pipeline("deflate", 0, itemsize)
    if codes == [SHUFFLE_ID, DEFLATE_ID] and tuple(filters[0][2])[:1] in ((itemsize,), ()):
        return Pipeline("deflate", 0, itemsize, shuffle=True)
    return None
