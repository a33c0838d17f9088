"""Array-namespace helpers: the analysis takes numpy or cupy from the data it is given.

Awkward arrays carry their backend ("cpu" or "cuda"); ufuncs such as ``np.abs`` on an awkward
array already dispatch to it. Only the few places that work on flat buffers (the seeded
resolution smear) need the namespace explicitly.
"""

from __future__ import annotations

from types import ModuleType

import awkward as ak
import numpy as np

from agc.devices import check_cuda


def to_device(events: ak.Array, device: str | None) -> ak.Array:
    """``events`` where the analysis of ``device`` works on them: awkward's CUDA backend for
    ``"cuda"`` (its buffers copied to the GPU), unchanged for ``"cpu"`` and None."""
    if device == "cuda":
        check_cuda()
        return ak.to_backend(events, "cuda")
    return events


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


def segment_sum(values, counts):
    """Per segment (event): the sum of its ``counts`` consecutive entries of flat ``values``.

    The entries of each segment are added left to right in the dtype of ``values``, as
    awkward's ``ak.sum(ak.unflatten(values, counts), axis=1)`` does on the CPU, so the sums are
    identical bit for bit; the work is xp code only (no awkward kernel, so it runs on cupy
    without awkward's CUDA kernels): one vectorised step per entry position, over the
    segments that long, longest first.
    """
    xp = flat_namespace(values)
    counts = xp.asarray(counts)
    out = xp.zeros(len(counts), dtype=values.dtype)
    if len(values) == 0:
        return out
    starts = xp.cumsum(counts) - counts
    order = xp.argsort(-counts)  # longest segments first (any order of equal ones)
    sorted_starts = starts[order]
    # segments longer than j: the first lengths[j] of the sorted ones
    negative = -counts[order]  # ascending
    longest = int(-negative[0])
    lengths = to_host(xp.searchsorted(negative, -xp.arange(longest), side="left"))
    acc = xp.zeros(len(counts), dtype=values.dtype)
    for j in range(longest):
        m = int(lengths[j])
        acc[:m] += values[sorted_starts[:m] + j]
    out[order] = acc
    return out
