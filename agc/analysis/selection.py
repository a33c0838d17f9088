"""Object and event selection of the AGC v2 ttbar analysis (spec §3).

All cuts are strict. There is no lepton-jet overlap removal, no extra-lepton veto, no trigger.
Functions take awkward record arrays (coffea NanoEvents collections or the uproot-zipped
collections of :func:`agc.analysis.events.collections`) and work on any awkward backend.
"""

from __future__ import annotations

import awkward as ak

BTAG_THRESHOLD = 0.5  # btagCSVV2 > 0.5, counted over selected jets


def electron_mask(pt, eta, cut_based, sip3d):
    """Tight electrons: pT > 30 GeV, |eta| < 2.1, cutBased == 4, sip3d < 4 (any array type)."""
    return (pt > 30) & (abs(eta) < 2.1) & (cut_based == 4) & (sip3d < 4)


def muon_mask(pt, eta, tight_id, sip3d, iso):
    """Tight isolated muons: pT > 30 GeV, |eta| < 2.1, tightId, sip3d < 4, pfRelIso04_all < 0.15."""
    return (pt > 30) & (abs(eta) < 2.1) & tight_id & (sip3d < 4) & (iso < 0.15)


def jet_mask(pt, eta, jet_id):
    """Jets with pT > 30 GeV, |eta| < 2.4 and bit 2 (tight lepton veto) of jetId (any arrays)."""
    return (pt > 30) & (abs(eta) < 2.4) & ((jet_id & 4) != 0)


def select_electrons(electrons: ak.Array) -> ak.Array:
    """Tight electrons (see :func:`electron_mask`)."""
    return electrons[
        electron_mask(electrons.pt, electrons.eta, electrons.cutBased, electrons.sip3d)
    ]


def select_muons(muons: ak.Array) -> ak.Array:
    """Tight isolated muons (see :func:`muon_mask`)."""
    return muons[muon_mask(muons.pt, muons.eta, muons.tightId, muons.sip3d, muons.pfRelIso04_all)]


def select_jets(jets: ak.Array) -> ak.Array:
    """Jets with pT > 30 GeV (on the possibly varied pT), |eta| < 2.4 and the tight-lepton-veto ID.

    The ID is coffea's ``isTightLeptonVeto``, bit 2 (value 4) of ``jetId``; on the AGC inputs
    (jetId in {0, 2, 6}) it is identical to the RDF version's ``jetId == 6``.
    """
    return jets[jet_mask(jets.pt, jets.eta, jets.jetId)]


def count_btags(jets: ak.Array) -> ak.Array:
    """Number of b-tagged jets per event (btagCSVV2 > 0.5)."""
    return ak.sum(jets.btagCSVV2 > BTAG_THRESHOLD, axis=1)


def region_masks(electrons: ak.Array, muons: ak.Array, jets: ak.Array) -> dict[str, ak.Array]:
    """Event masks of the two analysis regions from *selected* objects.

    4j1b: exactly one lepton, >= 4 jets, exactly one b tag (control region, HT).
    4j2b: exactly one lepton, >= 4 jets, >= 2 b tags (signal region, m_bjj).
    """
    return region_masks_from_counts(
        ak.num(electrons, axis=1) + ak.num(muons, axis=1), ak.num(jets, axis=1), count_btags(jets)
    )


def region_masks_from_counts(n_leptons, n_jets, n_btags) -> dict:
    """The region masks of :func:`region_masks` from per-event object counts (any array type)."""
    base = (n_leptons == 1) & (n_jets >= 4)
    return {"4j1b": base & (n_btags == 1), "4j2b": base & (n_btags >= 2)}
