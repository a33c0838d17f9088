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

from agc.analysis.selection import BTAG_THRESHOLD
from agc.analysis.xp import flat_namespace, to_flat_xp


def ht(jets: ak.Array) -> ak.Array:
    """Scalar sum of the pT of *all* selected jets per event, in GeV."""
    return ak.sum(jets.pt, axis=-1)


@functools.cache
def _triplets(n: int) -> np.ndarray:
    """All (i, j, k), i < j < k < n, in the lexicographic order of ``ak.combinations``."""
    return np.array(list(itertools.combinations(range(n), 3)), dtype=np.int64).reshape(-1, 3)


def _cartesian(pt, eta, phi, mass, xp):
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
    x, y, z, t = _cartesian(pt, eta, phi, mass, xp)
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
        has_btag = xp.maximum(btag[i1], xp.maximum(btag[i2], btag[i3])) > BTAG_THRESHOLD
        ranked = xp.where(has_btag, trijet_pt, -xp.inf)
        best = xp.argmax(ranked, axis=1)  # first of equal maxima, like ak.argmax
        rows = xp.arange(len(events))
        out[events] = trijet_m[rows, best]
        valid[events] = has_btag[rows, best]
    out[~valid] = xp.nan
    return out, valid


def trijet_mass(jets: ak.Array) -> ak.Array:
    """Mass of the trijet with the largest |sum pT| among those with max(btagCSVV2) > 0.5, in GeV.

    Combinations are taken in stored (pT-ordered) order; on ties the first one wins (argmax).
    Events without such a trijet give None. Every 4j2b event has at least one valid trijet.
    """
    columns = [to_flat_xp(ak.flatten(jets[f])) for f in ("pt", "eta", "phi", "mass", "btagCSVV2")]
    mass, valid = trijet_mass_flat(*columns, to_flat_xp(ak.num(jets, axis=1)))
    return ak.mask(ak.Array(mass), ak.Array(valid))
