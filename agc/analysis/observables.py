"""Region observables (spec §3): HT for 4j1b, the b-jet-jet trijet mass for 4j2b."""

from __future__ import annotations

import awkward as ak
import numpy as np

from agc.analysis.selection import BTAG_THRESHOLD


def ht(jets: ak.Array) -> ak.Array:
    """Scalar sum of the pT of *all* selected jets per event, in GeV."""
    return ak.sum(jets.pt, axis=-1)


def trijet_mass(jets: ak.Array) -> ak.Array:
    """Mass of the trijet with the largest |sum pT| among those with max(btagCSVV2) > 0.5, in GeV.

    Combinations are taken in stored (pT-ordered) order; on ties the first one wins (argmax).
    Jets must carry a Lorentz-vector behaviour (coffea ``PtEtaPhiMCandidate``), so the four-vector
    arithmetic is the same as the reference's. Every 4j2b event has at least one valid trijet.
    """
    trijet = ak.combinations(jets, 3, fields=["j1", "j2", "j3"])
    p4 = trijet.j1 + trijet.j2 + trijet.j3
    max_btag = np.maximum(
        trijet.j1.btagCSVV2, np.maximum(trijet.j2.btagCSVV2, trijet.j3.btagCSVV2)
    )
    p4 = p4[max_btag > BTAG_THRESHOLD]
    best = ak.argmax(p4.pt, axis=1, keepdims=True)
    return ak.flatten(p4[best].mass)
