"""framestats: per-frame statistics of HDF5 image stacks inside masks and regions.

The shared core of the ``producer`` command line and the ``worker`` processes. Importing
it is light: no torch, Celery or h5py is imported until a function needs them.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
