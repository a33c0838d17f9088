"""H_T and the trijet mass (spec §3) on hand-built events with answers computed independently,
through the functions ``process_events`` runs (:func:`select_regions`, :func:`ht_flat`,
:func:`trijet_mass_flat`) and through ``process_events`` itself."""

import numpy as np
import pytest
from conftest import electron, jet, make_events

from agc.analysis import objects, process_events, select_regions
from agc.analysis.observables import ht_flat, trijet_mass_flat


def four_vector(pt, eta, phi, mass):
    """(E, px, py, pz) in float64, textbook formulas."""
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    return np.array([np.sqrt(px**2 + py**2 + pz**2 + mass**2), px, py, pz])


def invariant_mass(p):
    return np.sqrt(max(p[0] ** 2 - p[1] ** 2 - p[2] ** 2 - p[3] ** 2, 0.0))


def observable(events, region):
    """The region's observable per event in it, as the production path computes it."""
    obj = objects(events)
    return select_regions(obj, obj.jets["pt"])[region].observable.tolist()


def test_ht_sums_every_selected_jet():
    jets = [jet(100, btag=0.9), jet(80), jet(60), jet(40), jet(35)]
    # a fifth, forward jet fails the selection and is not in H_T
    events = make_events(
        [
            {"electrons": [electron()], "jets": jets},
            {"electrons": [electron()], "jets": [*jets[:4], jet(200, eta=3.0)]},
        ]
    )
    assert observable(events, "4j1b") == [315.0, 280.0]
    hists = process_events(events, process="ttbar", variation="nominal", weight=1.0)
    values = hists["4j1b_ttbar"].values()
    assert values[(315 - 50) // 20] == 1 and values[(280 - 50) // 20] == 1


def test_ht_flat_of_flat_jets():
    pt = np.array([10.0, 20.0, 30.0, 5.0, 7.5], dtype=np.float32)
    assert ht_flat(pt, np.array([3, 0, 2])).tolist() == [60.0, 0.0, 12.5]


def test_trijet_mass_of_three_jets():
    specs = [(120.0, 0.3, 0.1, 12.0), (70.0, -0.8, 2.2, 8.0), (45.0, 1.1, -1.9, 6.0)]
    columns = [np.array(c, dtype=np.float64) for c in zip(*specs, strict=True)]
    btag = np.array([0.9, 0.1, 0.1])
    mass, valid = trijet_mass_flat(*columns, btag, np.array([3]))
    expected = invariant_mass(sum(four_vector(*s) for s in specs))
    assert valid.tolist() == [True]
    assert mass.tolist() == pytest.approx([expected], rel=1e-9)


def test_trijet_needs_a_btag_above_the_threshold():
    """max(btagCSVV2) > 0.5, strictly: a trijet whose best b tag is 0.5 is no candidate."""
    columns = [np.array([60.0, 50.0, 40.0]), np.zeros(3), np.array([0.0, 2.0, 4.0]), np.ones(3)]
    mass, valid = trijet_mass_flat(*columns, np.array([0.5, 0.2, 0.1]), np.array([3]))
    assert valid.tolist() == [False] and np.isnan(mass[0])
    mass, valid = trijet_mass_flat(*columns, np.array([0.5001, 0.2, 0.1]), np.array([3]))
    assert valid.tolist() == [True] and not np.isnan(mass[0])


def test_trijet_picks_highest_pt_combination_with_a_btag():
    # jets 0,1,2 are back-to-back-ish with no b tag; the highest-|pT| trijet *with* a b tag
    # must be chosen even though (0,1,2) has a larger |sum pT|. Jets 3 and 4 are the b tags.
    specs = [
        (150.0, 0.0, 0.0, 10.0),
        (140.0, 0.2, 0.3, 10.0),
        (130.0, -0.2, -0.3, 10.0),
        (60.0, 0.5, 3.0, 5.0),
        (35.0, -1.0, -2.0, 4.0),
    ]
    btags = [0.1, 0.2, 0.3, 0.95, 0.9]
    events = make_events(
        [
            {
                "electrons": [electron()],
                "jets": [jet(*s, btag=b) for s, b in zip(specs, btags, strict=True)],
            }
        ]
    )
    candidates = [c for c in __import__("itertools").combinations(range(5), 3) if {3, 4} & set(c)]
    p4s = [sum(four_vector(*specs[i]) for i in c) for c in candidates]
    best = max(p4s, key=lambda p: np.hypot(p[1], p[2]))
    (ours,) = observable(events, "4j2b")
    assert ours == pytest.approx(invariant_mass(best), rel=1e-5)
    everything = invariant_mass(sum(four_vector(*specs[i]) for i in (0, 1, 2)))
    assert ours != pytest.approx(everything, rel=1e-3)
    hists = process_events(events, process="ttbar", variation="nominal", weight=1.0)
    assert hists["4j2b_ttbar"].values()[int((ours - 50) // 20)] == 1


def test_trijet_mass_on_real_nanoaod_equals_coffea_candidates(shared_data):
    """On the real AGC file read as coffea NanoEvents: the reference's candidate sums."""
    import awkward as ak
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    path = shared_data / "nanoAOD_2015_CMS_Open_Data_ttbar.root"
    NanoAODSchema.warn_missing_crossrefs = False
    nano = NanoEventsFactory.from_root(
        {str(path): "Events"}, schemaclass=NanoAODSchema, mode="eager"
    ).events()
    jets = nano.Jet
    keep = (ak.num(jets) >= 3) & ak.any(jets.btagCSVV2 > 0.5, axis=1)
    assert ak.sum(keep) > 5
    jets = jets[keep]
    columns = [ak.to_numpy(ak.flatten(jets[f])) for f in ("pt", "eta", "phi", "mass", "btagCSVV2")]
    ours, valid = trijet_mass_flat(*columns, ak.to_numpy(ak.num(jets)))
    assert valid.all()
    np.testing.assert_array_equal(ours, ak.to_numpy(_reference_trijet_mass(jets)))


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
    """On the 4j2b events of synthetic ttbar (jet pT varied by 3 % in float32 or float64), the
    m_bjj of select_regions equals the reference's coffea candidate sums bit for bit."""
    import json

    import awkward as ak

    from agc.reader import read_chunk
    from agc.vocabulary import ANALYSIS_BRANCHES

    catalog = json.loads(small_catalog.read_text())
    path = small_catalog.parent / catalog["ttbar"]["nominal"]["files"][0]["path"]
    events, _ = read_chunk(str(path), ANALYSIS_BRANCHES, 0, 3000)
    obj = objects(events)
    pt = obj.jets["pt"].astype(pt_dtype) * pt_dtype(1.03)
    region = select_regions(obj, pt)["4j2b"]
    assert len(region.counts) > 50
    jets = ak.zip(
        {
            "pt": ak.unflatten(region.pt, region.counts),
            **{
                f: ak.unflatten(getattr(region, a), region.counts)
                for f, a in (
                    ("eta", "eta"),
                    ("phi", "phi"),
                    ("mass", "mass"),
                    ("btagCSVV2", "btag"),
                )
            },
        }
    )
    theirs = ak.to_numpy(_reference_trijet_mass(jets))
    assert region.observable.dtype == theirs.dtype == pt_dtype
    np.testing.assert_array_equal(region.observable, theirs)
