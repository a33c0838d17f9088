"""Array-namespace helpers: the analysis takes numpy or cupy from the data it is given.

Awkward arrays carry their backend ("cpu" or "cuda"); ufuncs such as ``np.abs`` on an awkward
array already dispatch to it. Only the few places that work on flat buffers (the seeded
resolution smear) need the namespace explicitly.
"""

from __future__ import annotations

from types import ModuleType

import awkward as ak
import numpy as np


def array_namespace(array: ak.Array) -> ModuleType:
    """numpy for CPU-backed awkward arrays, cupy for CUDA-backed ones."""
    if ak.backend(array) == "cuda":
        import cupy  # noqa: PLC0415 - only on GPU machines

        return cupy
    return np


def flat_namespace(array) -> ModuleType:
    """numpy for a numpy array, cupy for a cupy array."""
    if hasattr(array, "__cuda_array_interface__"):
        import cupy  # noqa: PLC0415 - only on GPU machines

        return cupy
    return np


def to_flat_xp(array: ak.Array):
    """A one-dimensional numeric awkward array as a numpy/cupy array on its own device."""
    if ak.backend(array) == "cuda":
        return ak.to_cupy(array)
    return ak.to_numpy(array)


def to_host(array) -> np.ndarray:
    """Anything array-like (awkward, numpy, cupy) as a numpy array in host memory."""
    if isinstance(array, ak.Array):
        array = ak.to_numpy(ak.to_backend(array, "cpu"))
    if hasattr(array, "get") and not isinstance(array, np.ndarray):  # cupy
        array = array.get()
    return np.asarray(array)
