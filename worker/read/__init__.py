"""Reading and decoding a job's frames: HDF5 files to blocks the reduction reads.

``FrameReader`` is the one entry point; it picks per dataset how chunks are decoded
(``decode_path``: on the device, on the host's cores, or by HDF5). Modules: ``reader``
(blocks, paths, file opening), ``buffers`` (reused host buffers), ``filters`` (which
pipelines are ours), ``chunk_index`` (chunk offsets, merged reads), ``host_decode``
(threaded host decoding), ``bitshuffle`` (block tables), ``nvcomp`` and ``lz4_host``
(the batched LZ4 call on a GPU, or on the host), ``unshuffle`` (bit-unshuffle on the
device), ``device_decode`` (the device pipeline).
"""

from .buffers import POOL, BufferPool, BufferProvider
from .reader import DEVICE, HDF5, HOST, FrameReader

__all__ = [
    "DEVICE",
    "HDF5",
    "HOST",
    "POOL",
    "BufferPool",
    "BufferProvider",
    "FrameReader",
]
