"""The columns the analysis reads, and their collections."""

from __future__ import annotations

import awkward as ak

#: Data branches of the core analysis (spec §2); counters nJet/nElectron/nMuon come with them.
CORE_BRANCHES: tuple[str, ...] = (
    "Electron_pt",
    "Electron_eta",
    "Electron_cutBased",
    "Electron_sip3d",
    "Muon_pt",
    "Muon_eta",
    "Muon_tightId",
    "Muon_sip3d",
    "Muon_pfRelIso04_all",
    "Jet_pt",
    "Jet_eta",
    "Jet_phi",
    "Jet_mass",
    "Jet_btagCSVV2",
    "Jet_jetId",
)
COUNTER_BRANCHES: tuple[str, ...] = ("nJet", "nElectron", "nMuon")
#: Event identity, used to seed the per-jet resolution smear independently of chunking.
EVENT_ID_BRANCHES: tuple[str, ...] = ("run", "luminosityBlock", "event")
#: Branches the ML extension reads in addition (spec §2); not needed for the histograms.
ML_BRANCHES: tuple[str, ...] = (
    "Jet_qgl",
    "Electron_phi",
    "Electron_mass",
    "Muon_phi",
    "Muon_mass",
    "event",
)
#: Everything one chunk of the analysis reads.
ANALYSIS_BRANCHES: tuple[str, ...] = CORE_BRANCHES + EVENT_ID_BRANCHES

#: I/O-only branch sets of the reference (``IO_BRANCHES`` in utils/config.py, spec §2/§9),
#: keyed by the percentage of file bytes they represent on the real inputs.
IO_BRANCH_SETS: dict[str, tuple[str, ...]] = {
    "4.1": ("Jet_pt", "Jet_eta", "Jet_phi", "Jet_btagCSVV2", "Jet_mass", "Muon_pt", "Electron_pt"),
    "15": ("LHEPdfWeight", "GenPart_pdgId", "CorrT1METJet_phi"),
    "25": ("LHEPdfWeight", "GenPart_pt", "GenPart_eta", "GenPart_pdgId", "LHEScaleWeight"),
}

_COLLECTIONS = ("Electron", "Muon", "Jet")


def collections(events: ak.Array) -> tuple[ak.Array, ak.Array, ak.Array]:
    """(electrons, muons, jets) from events read as flat branches or as coffea NanoEvents.

    Flat branches (``Jet_pt``...) are zipped into records; jets get coffea's
    ``PtEtaPhiMCandidate`` behaviour so that four-vector sums and masses use the same code as
    the reference running on NanoEvents.
    """
    if all(c in events.fields for c in _COLLECTIONS):
        return events.Electron, events.Muon, events.Jet
    from coffea.nanoevents.methods import candidate

    out = []
    for name in _COLLECTIONS:
        prefix = name + "_"
        fields = {f[len(prefix) :]: events[f] for f in events.fields if f.startswith(prefix)}
        if name == "Jet":
            # NanoAODSchema gives jets a zero charge so that they are Candidates; so do we.
            fields["charge"] = ak.zeros_like(fields["pt"])
            out.append(ak.zip(fields, with_name="PtEtaPhiMCandidate", behavior=candidate.behavior))
        else:
            out.append(ak.zip(fields))
    return tuple(out)
