"""Region observables (spec §3): HT for 4j1b, the b-jet-jet trijet mass for 4j2b.

The trijet mass works on flat per-jet arrays (one entry per jet, plus jets per event): the
combinatorics is a table lookup per jet multiplicity instead of a jagged record of records, which
is where most of the analysis time went. The four-vector arithmetic is the one of coffea's
``PtEtaPhiMCandidate`` (scikit-hep ``vector`` formulas, in the input precision), so masses are
identical bit for bit to summing coffea candidates.
"""

from __future__ import annotations

import functools
import itertools

import awkward as ak
import numpy as np

from agc.analysis.selection import btag_mask
from agc.analysis.xp import flat_namespace, to_flat_xp


def ht_flat(pt, counts):
    """H_T per event: the scalar sum of the pT of its jets, from flat per-jet pT (GeV).

    ``counts`` = jets per event; the jets are those selected (all of them enter the sum).
    """
    return to_flat_xp(ak.sum(ak.unflatten(pt, counts), axis=1))


@functools.cache
def _triplets(n: int) -> np.ndarray:
    """All (i, j, k), i < j < k < n, in the lexicographic order of ``ak.combinations``."""
    return np.array(list(itertools.combinations(range(n), 3)), dtype=np.int64).reshape(-1, 3)


def cartesian(pt, eta, phi, mass, xp):
    """(x, y, z, t) of (pt, eta, phi, mass) with scikit-hep vector's formulas (rhophi_eta_tau)."""
    expmeta = xp.exp(-eta)
    invsintheta = 0.5 * (1 + expmeta**2) / expmeta
    t = xp.sqrt(xp.maximum(xp.copysign(mass**2, mass) + pt**2 * invsintheta**2, 0))
    return pt * xp.cos(phi), pt * xp.sin(phi), pt * xp.sinh(eta), t


def trijet_mass_flat(pt, eta, phi, mass, btag, counts):
    """Per-event trijet mass from flat per-jet arrays; ``counts`` = jets per event.

    Returns ``(mass, valid)``: one value per event, and whether the event has a trijet with
    max(btagCSVV2) > 0.5 (``mass`` is NaN where it has none).
    """
    xp = flat_namespace(pt)
    counts = xp.asarray(counts)
    starts = xp.cumsum(counts) - counts
    x, y, z, t = cartesian(pt, eta, phi, mass, xp)
    out = xp.full(len(counts), xp.nan, dtype=pt.dtype)
    valid = xp.zeros(len(counts), dtype=bool)
    host_counts = counts.get() if hasattr(counts, "get") else counts
    for n in np.unique(host_counts):
        if n < 3:
            continue
        events = xp.nonzero(counts == n)[0]
        idx = starts[events][:, None, None] + xp.asarray(_triplets(int(n)))[None]  # E x C x 3
        i1, i2, i3 = idx[..., 0], idx[..., 1], idx[..., 2]
        # (j1 + j2) + j3 in cartesian components, as the candidates' add does
        px, py = x[i1] + x[i2] + x[i3], y[i1] + y[i2] + y[i3]
        pz, e = z[i1] + z[i2] + z[i3], t[i1] + t[i2] + t[i3]
        trijet_pt = xp.sqrt(px**2 + py**2)
        tau2 = e**2 - (px**2 + py**2 + pz**2)
        trijet_m = xp.copysign(xp.sqrt(xp.absolute(tau2)), tau2)
        has_btag = btag_mask(xp.maximum(btag[i1], xp.maximum(btag[i2], btag[i3])))
        ranked = xp.where(has_btag, trijet_pt, -xp.inf)
        best = xp.argmax(ranked, axis=1)  # first of equal maxima, like ak.argmax
        rows = xp.arange(len(events))
        out[events] = trijet_m[rows, best]
        valid[events] = has_btag[rows, best]
    out[~valid] = xp.nan
    return out, valid
