"""Object and event selection of the AGC v2 ttbar analysis (spec §3).

All cuts are strict. There is no lepton-jet overlap removal, no extra-lepton veto, no trigger.
Functions take awkward record arrays (coffea NanoEvents collections or the uproot-zipped
collections of :func:`agc.analysis.events.collections`) and work on any awkward backend.
"""

from __future__ import annotations

import awkward as ak
import numpy as np

BTAG_THRESHOLD = 0.5  # btagCSVV2 > 0.5, counted over selected jets


def select_electrons(electrons: ak.Array) -> ak.Array:
    """Tight electrons: pT > 30 GeV, |eta| < 2.1, cutBased == 4, sip3d < 4."""
    mask = (
        (electrons.pt > 30)
        & (np.abs(electrons.eta) < 2.1)
        & (electrons.cutBased == 4)
        & (electrons.sip3d < 4)
    )
    return electrons[mask]


def select_muons(muons: ak.Array) -> ak.Array:
    """Tight isolated muons: pT > 30 GeV, |eta| < 2.1, tightId, sip3d < 4, pfRelIso04_all < 0.15."""
    mask = (
        (muons.pt > 30)
        & (np.abs(muons.eta) < 2.1)
        & muons.tightId
        & (muons.sip3d < 4)
        & (muons.pfRelIso04_all < 0.15)
    )
    return muons[mask]


def select_jets(jets: ak.Array) -> ak.Array:
    """Jets with pT > 30 GeV (on the possibly varied pT), |eta| < 2.4 and the tight-lepton-veto ID.

    The ID is coffea's ``isTightLeptonVeto``, bit 2 (value 4) of ``jetId``; on the AGC inputs
    (jetId in {0, 2, 6}) it is identical to the RDF version's ``jetId == 6``.
    """
    mask = (jets.pt > 30) & (np.abs(jets.eta) < 2.4) & ((jets.jetId & 4) != 0)
    return jets[mask]


def count_btags(jets: ak.Array) -> ak.Array:
    """Number of b-tagged jets per event (btagCSVV2 > 0.5)."""
    return ak.sum(jets.btagCSVV2 > BTAG_THRESHOLD, axis=1)


def region_masks(electrons: ak.Array, muons: ak.Array, jets: ak.Array) -> dict[str, ak.Array]:
    """Event masks of the two analysis regions from *selected* objects.

    4j1b: exactly one lepton, >= 4 jets, exactly one b tag (control region, HT).
    4j2b: exactly one lepton, >= 4 jets, >= 2 b tags (signal region, m_bjj).
    """
    exactly_1l = (ak.num(electrons, axis=1) + ak.num(muons, axis=1)) == 1
    atleast_4j = ak.num(jets, axis=1) >= 4
    nbtag = count_btags(jets)
    base = exactly_1l & atleast_4j
    return {"4j1b": base & (nbtag == 1), "4j2b": base & (nbtag >= 2)}
