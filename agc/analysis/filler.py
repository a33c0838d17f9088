"""Histogram filling on the device of the data, one device-to-host copy per chunk.

:class:`Filler` collects the fills of one chunk (observable values and weights, numpy or cupy
arrays) and turns them into ordinary :class:`hist.Hist` objects at the end: the bin of each
value by boost-histogram's own formula for a regular axis, per histogram one ``bincount`` for
the sums of weights and one for the sums of squared weights into a device buffer over the bins
of all the chunk's histograms, and a single copy of that buffer to the host.

boost-histogram's regular axis (``boost/histogram/axis/regular.hpp``), with flow bins::

    z = (x - min) / (max - min)         # in double precision, x converted to double first
    bin = int(z * n)  if 0 <= z < 1
          -1          if z < 0          # underflow (x = -inf included)
          n           otherwise         # overflow: z >= 1, x = +inf, and NaN

Weight storage adds ``w`` and ``w * w`` to the bin, fill after fill, in double precision. On
numpy, ``bincount`` adds the weights of each bin in the order given, and the fills of one
histogram are concatenated in their order, so every histogram gets exactly boost's sums, bit for
bit. On a GPU, cupy's ``bincount`` adds with atomics in no fixed order: sums
may then differ from the host's in the last bits (never in which bin a value lands).
"""

from __future__ import annotations

from typing import Any

import hist
import numpy as np

from agc.analysis.xp import flat_namespace, to_host


def regular_bins(values, low: float, high: float, n: int, xp: Any = None):
    """Flow-bin index (0 = underflow, 1..n, n + 1 = overflow) of each value, as boost does.

    ``floor(z * n)`` clipped to [-1, n] is boost's ``int(z * n)`` for 0 <= z < 1, -1 below and
    n above (z * n can round up to n only where boost also gives n); NaN goes to n.
    """
    xp = xp or flat_namespace(values)
    z = xp.asarray(values).astype(xp.float64)  # a copy: worked on in place below
    z -= low
    z /= high - low
    z *= n
    xp.floor(z, out=z)
    xp.clip(z, -1, n, out=z)
    z[xp.isnan(z)] = n
    index = z.astype(xp.int64)
    index += 1
    return index


class Filler:
    """The fills of one chunk for histograms of a regular axis and Weight storage.

    ``histograms``: the chunk's empty histograms by name (each a 1D ``Regular`` axis with
    ``Weight`` storage). :meth:`fill` computes the bins on the data's device and keeps them;
    :meth:`result` adds them up (two ``bincount`` calls per filled histogram, its fills in
    their order) into one device buffer over the bins of all histograms, copies that buffer to
    the host once, and returns the histograms, each with what ``hist.fill`` would have given
    (bit for bit on numpy).
    """

    def __init__(self, histograms: dict[str, hist.Hist], xp: Any = np) -> None:
        self.xp = xp
        self.histograms = histograms
        self._offset: dict[str, int] = {}
        total = 0
        for name, h in histograms.items():
            axis = h.axes[0]
            if h.ndim != 1 or not isinstance(axis, hist.axis.Regular):
                raise TypeError(f"Filler: {name} is not a one-dimensional regular histogram")
            if not isinstance(h.storage_type(), hist.storage.Weight):
                raise TypeError(f"Filler: {name} does not have Weight storage")
            self._offset[name] = total
            total += axis.size + 2
        self._bins = total
        self._pending: dict[str, list[tuple[Any, Any]]] = {}

    def fill(self, name: str, values, weight) -> None:
        """Fill histogram ``name`` with ``values``, each of weight ``weight`` (a number or an
        array like ``values``)."""
        xp = self.xp
        axis = self.histograms[name].axes[0]
        values = xp.asarray(values)
        index = regular_bins(values, float(axis.edges[0]), float(axis.edges[-1]), axis.size, xp)
        if isinstance(weight, int | float):
            weight = xp.full(len(values), float(weight), dtype=xp.float64)
        else:
            weight = xp.asarray(weight).astype(xp.float64, copy=False)
        self._pending.setdefault(name, []).append((index, weight))

    def result(self) -> dict[str, hist.Hist]:
        """The histograms with every fill so far, in one device-to-host copy."""
        if not self._pending:
            return self.histograms
        xp = self.xp
        sums = xp.zeros((2, self._bins), dtype=xp.float64)
        for name, parts in self._pending.items():
            index = parts[0][0] if len(parts) == 1 else xp.concatenate([p[0] for p in parts])
            weight = parts[0][1] if len(parts) == 1 else xp.concatenate([p[1] for p in parts])
            start = self._offset[name]
            n = self.histograms[name].axes[0].size + 2
            sums[0, start : start + n] = xp.bincount(index, weights=weight, minlength=n)
            sums[1, start : start + n] = xp.bincount(index, weights=weight * weight, minlength=n)
        host = to_host(sums)  # the one device-to-host copy of the chunk
        for name in self._pending:
            h = self.histograms[name]
            start = self._offset[name]
            view: Any = h.view(flow=True)  # a WeightedSumView: fields value and variance
            view["value"] += host[0, start : start + h.axes[0].size + 2]
            view["variance"] += host[1, start : start + h.axes[0].size + 2]
        self._pending.clear()
        return self.histograms
