"""Object and event selection of the AGC v2 ttbar analysis (spec §3).

All cuts are strict. There is no lepton-jet overlap removal, no extra-lepton veto, no trigger.
The masks take flat per-object arrays (numpy or cupy, one entry per object) or awkward arrays
alike: :func:`agc.analysis.processor.process_events` calls them on flat columns.
"""

from __future__ import annotations

BTAG_THRESHOLD = 0.5  # btagCSVV2 > 0.5, counted over selected jets


def electron_mask(pt, eta, cut_based, sip3d):
    """Tight electrons: pT > 30 GeV, |eta| < 2.1, cutBased == 4, sip3d < 4."""
    return (pt > 30) & (abs(eta) < 2.1) & (cut_based == 4) & (sip3d < 4)


def muon_mask(pt, eta, tight_id, sip3d, iso):
    """Tight isolated muons: pT > 30 GeV, |eta| < 2.1, tightId, sip3d < 4, pfRelIso04_all < 0.15."""
    return (pt > 30) & (abs(eta) < 2.1) & tight_id & (sip3d < 4) & (iso < 0.15)


def jet_mask(pt, eta, jet_id):
    """Jets with pT > 30 GeV (on the possibly varied pT), |eta| < 2.4 and the tight-lepton-veto ID.

    The ID is coffea's ``isTightLeptonVeto``, bit 2 (value 4) of ``jetId``; on the AGC inputs
    (jetId in {0, 2, 6}) it is identical to the RDF version's ``jetId == 6``.
    """
    return (pt > 30) & (abs(eta) < 2.4) & ((jet_id & 4) != 0)


def btag_mask(btag):
    """b-tagged jets: btagCSVV2 > 0.5 (strict), applied to selected jets."""
    return btag > BTAG_THRESHOLD


def region_masks(n_leptons, n_jets, n_btags) -> dict:
    """Event masks of the two regions from per-event counts of *selected* objects.

    4j1b: exactly one lepton, >= 4 jets, exactly one b tag (control region, HT).
    4j2b: exactly one lepton, >= 4 jets, >= 2 b tags (signal region, m_bjj).
    """
    base = (n_leptons == 1) & (n_jets >= 4)
    return {"4j1b": base & (n_btags == 1), "4j2b": base & (n_btags >= 2)}
