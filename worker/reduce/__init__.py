"""The masked reduction: per-frame statistics inside the regions of a mask.

``MaskedReducer`` is the one API (``reducer``); it hands the work to an engine:
``cpu`` (numba loops in ``cpu_runs``, ``cpu_scatter`` and ``cpu_vector``, finished by
``moments``) or ``cuda`` (``triton_sums`` and ``triton_regions`` kernels, ``cuda_torch``
without Triton). Importing this package imports torch and numba, never Triton.
"""

from .reducer import STATS, MaskedReducer, mask_regions, resolve_device

__all__ = ["STATS", "MaskedReducer", "mask_regions", "resolve_device"]
