"""framestats worker: the Celery app, tasks, the reduction kernel and the HDF5 reader.

Importing this package must stay cheap: torch is imported only by the kernel.
"""
