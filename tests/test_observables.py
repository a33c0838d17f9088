"""HT and the trijet mass on hand-built events with answers computed independently (spec §3)."""

import numpy as np
import pytest
from conftest import jet, make_events

from agc.analysis.events import collections
from agc.analysis.observables import ht, trijet_mass


def four_vector(pt, eta, phi, mass):
    """(E, px, py, pz) in float64, textbook formulas."""
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    return np.array([np.sqrt(px**2 + py**2 + pz**2 + mass**2), px, py, pz])


def invariant_mass(p):
    return np.sqrt(max(p[0] ** 2 - p[1] ** 2 - p[2] ** 2 - p[3] ** 2, 0.0))


def test_ht_sums_all_jets():
    events = make_events([{"jets": [jet(100), jet(80), jet(60), jet(40), jet(35)]}, {"jets": []}])
    _, _, jets = collections(events)
    assert ht(jets).tolist() == [315.0, 0.0]


def test_trijet_mass_of_three_jets():
    specs = [(120.0, 0.3, 0.1, 12.0), (70.0, -0.8, 2.2, 8.0), (45.0, 1.1, -1.9, 6.0)]
    events = make_events(
        [
            {
                "jets": [
                    jet(pt, eta, phi, m, btag=0.9 if i == 0 else 0.1)
                    for i, (pt, eta, phi, m) in enumerate(specs)
                ]
            }
        ]
    )
    _, _, jets = collections(events)
    expected = invariant_mass(sum(four_vector(*s) for s in specs))
    assert trijet_mass(jets).tolist() == pytest.approx([expected], rel=1e-5)


def test_trijet_picks_highest_pt_combination_with_a_btag():
    # jets 0,1,2 are back-to-back-ish with no b tag; the highest-|pT| trijet *with* a b tag
    # must be chosen even though (0,1,2) has a larger |sum pT|.
    specs = [
        (150.0, 0.0, 0.0, 10.0),
        (140.0, 0.2, 0.3, 10.0),
        (130.0, -0.2, -0.3, 10.0),
        (60.0, 0.5, 3.0, 5.0),
    ]
    btags = [0.1, 0.2, 0.3, 0.95]
    events = make_events([{"jets": [jet(*s, btag=b) for s, b in zip(specs, btags, strict=True)]}])
    _, _, jets = collections(events)
    candidates = [(0, 1, 3), (0, 2, 3), (1, 2, 3)]  # all combinations containing the b jet
    p4s = [sum(four_vector(*specs[i]) for i in c) for c in candidates]
    best = max(p4s, key=lambda p: np.hypot(p[1], p[2]))
    assert trijet_mass(jets).tolist() == pytest.approx([invariant_mass(best)], rel=1e-5)
    everything = invariant_mass(sum(four_vector(*specs[i]) for i in (0, 1, 2)))
    assert trijet_mass(jets)[0] != pytest.approx(everything, rel=1e-3)


def test_trijet_mass_matches_coffea_nanoevents(shared_data, tmp_path):
    """The same function on coffea NanoEvents gives the same trijet masses as on flat branches."""
    import awkward as ak
    import uproot
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    path = shared_data / "nanoAOD_2015_CMS_Open_Data_ttbar.root"
    NanoAODSchema.warn_missing_crossrefs = False
    nano = NanoEventsFactory.from_root(
        {str(path): "Events"}, schemaclass=NanoAODSchema, mode="eager"
    ).events()
    flat = uproot.open(path)["Events"].arrays(
        ["Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass", "Jet_btagCSVV2", "Jet_jetId"]
    )
    flat = ak.with_field(
        ak.with_field(flat, [[]] * len(flat), "Electron_pt"), [[]] * len(flat), "Muon_pt"
    )
    _, _, jets = collections(flat)
    has3 = ak.num(jets) >= 3
    has_b = ak.any(jets.btagCSVV2 > 0.5, axis=1)
    keep = has3 & has_b
    assert ak.sum(keep) > 5  # the W+jets file still has a few 3-jet events with a b tag
    ours = trijet_mass(jets[keep])
    reference = trijet_mass(nano.Jet[keep])
    assert ours.tolist() == pytest.approx(reference.tolist(), rel=1e-6)


def _reference_trijet_mass(jets):
    """The reference's algorithm, verbatim in spirit: coffea candidates summed with ``+``."""
    import awkward as ak
    from coffea.nanoevents.methods import candidate

    jets = ak.zip(
        {
            "pt": jets.pt,
            "eta": jets.eta,
            "phi": jets.phi,
            "mass": jets.mass,
            "btagCSVV2": jets.btagCSVV2,
            "charge": ak.zeros_like(jets.pt),
        },
        with_name="PtEtaPhiMCandidate",
        behavior=candidate.behavior,
    )
    trijet = ak.combinations(jets, 3, fields=["j1", "j2", "j3"])
    trijet["p4"] = trijet.j1 + trijet.j2 + trijet.j3
    trijet["max_btag"] = np.maximum(
        trijet.j1.btagCSVV2, np.maximum(trijet.j2.btagCSVV2, trijet.j3.btagCSVV2)
    )
    trijet = trijet[trijet.max_btag > 0.5]
    return ak.flatten(trijet["p4"][ak.argmax(trijet.p4.pt, axis=1, keepdims=True)].mass)


@pytest.mark.parametrize("pt_dtype", [np.float32, np.float64])
def test_trijet_mass_is_bit_identical_to_coffea_candidates(small_catalog, pt_dtype):
    """On 4j2b-like synthetic events, our flat trijet search equals coffea's candidate sums."""
    import json

    import awkward as ak

    from agc.analysis.selection import select_jets
    from agc.reader import read_chunk

    catalog = json.loads(small_catalog.read_text())
    path = small_catalog.parent / catalog["ttbar"]["nominal"]["files"][0]["path"]
    events, _ = read_chunk(
        str(path),
        [
            "Jet_pt",
            "Jet_eta",
            "Jet_phi",
            "Jet_mass",
            "Jet_btagCSVV2",
            "Jet_jetId",
            "Electron_pt",
            "Muon_pt",
        ],
        0,
        3000,
    )
    _, _, jets = collections(events)
    jets = select_jets(
        ak.with_field(jets, ak.values_astype(jets.pt, pt_dtype) * pt_dtype(1.03), "pt")
    )
    keep = (ak.num(jets) >= 4) & (ak.sum(jets.btagCSVV2 > 0.5, axis=1) >= 2)
    assert ak.sum(keep) > 50
    ours = ak.to_numpy(trijet_mass(jets[keep]))
    theirs = ak.to_numpy(_reference_trijet_mass(jets[keep]))
    assert ours.dtype == theirs.dtype == pt_dtype
    np.testing.assert_array_equal(ours, theirs)
