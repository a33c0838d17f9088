"""Object and event selection (spec §3) on hand-built events, through the functions that
``process_events`` runs: :func:`objects` (tight leptons), :func:`select_regions` (jets, b tags,
regions) and ``process_events`` itself (which histograms an event fills)."""

import numpy as np
import pytest
from conftest import electron, jet, make_events, muon

from agc.analysis import count_per_event, objects, process_events, select_regions


def tight_leptons(events) -> list[int]:
    return objects(events).n_leptons.tolist()


def region_masks(events, pt_factor: float = 1.0) -> dict[str, list[bool]]:
    """Per region, which events are in it (with the jet pT scaled by ``pt_factor``)."""
    obj = objects(events)
    selected = select_regions(obj, obj.jets["pt"] * np.float64(pt_factor))
    empty = [False] * len(events)
    return {r: selected[r].mask.tolist() if r in selected else empty for r in ("4j1b", "4j2b")}


def yields(events, **kw) -> dict[str, float]:
    hists = process_events(events, process="ttbar", variation="nominal", weight=1.0, **kw)
    return {r: hists[f"{r}_ttbar"].sum(flow=True).value for r in ("4j1b", "4j2b")}


ONE_B = [jet(80, btag=0.9), jet(70), jet(60), jet(50)]
TWO_B = [jet(80, btag=0.9), jet(70, btag=0.8), jet(60), jet(50)]


@pytest.mark.parametrize(
    ("candidate", "passes"),
    [
        (electron(), True),
        (electron(pt=30.0), False),  # strict pT > 30
        (electron(pt=30.01), True),
        (electron(eta=-2.1), False),  # strict |eta| < 2.1
        (electron(eta=2.09), True),
        (electron(cutBased=3), False),  # only tight (4)
        (electron(sip3d=4.0), False),  # strict sip3d < 4
        (electron(sip3d=3.99), True),
    ],
)
def test_electron_selection(candidate, passes):
    events = make_events([{"electrons": [candidate], "jets": ONE_B}])
    assert tight_leptons(events) == [int(passes)]
    assert yields(events)["4j1b"] == int(passes)


@pytest.mark.parametrize(
    ("candidate", "passes"),
    [
        (muon(), True),
        (muon(pt=30.0), False),
        (muon(eta=2.1), False),
        (muon(tightId=False), False),
        (muon(sip3d=4.0), False),
        (muon(iso=0.15), False),  # strict pfRelIso04_all < 0.15
        (muon(iso=0.149), True),
    ],
)
def test_muon_selection(candidate, passes):
    events = make_events([{"muons": [candidate], "jets": TWO_B}])
    assert tight_leptons(events) == [int(passes)]
    assert yields(events)["4j2b"] == int(passes)


@pytest.mark.parametrize(
    ("candidate", "passes"),
    [
        (jet(), True),
        (jet(pt=30.0), False),  # strict pT > 30
        (jet(pt=30.01), True),
        (jet(eta=2.4), False),  # strict |eta| < 2.4
        (jet(eta=-2.39), True),
        (jet(jetId=2), False),  # tight but not lepton-veto
        (jet(jetId=0), False),
        (jet(jetId=4), True),  # the lepton-veto bit alone is what counts
    ],
)
def test_jet_selection(candidate, passes):
    """Three good jets and the candidate: four selected jets (4j1b) only if it passes."""
    events = make_events([{"electrons": [electron()], "jets": ONE_B[:3] + [candidate]}])
    assert region_masks(events)["4j1b"] == [passes]


def test_btag_threshold_is_strict():
    """btagCSVV2 > 0.5: a jet at exactly 0.5 is not b-tagged (counting and regions)."""
    at_threshold = [jet(80, btag=0.9), jet(70, btag=0.5), jet(60), jet(50)]
    just_above = [jet(80, btag=0.9), jet(70, btag=0.5001), jet(60), jet(50)]
    events = make_events(
        [{"electrons": [electron()], "jets": at_threshold}, {"muons": [muon()], "jets": just_above}]
    )
    assert region_masks(events) == {"4j1b": [True, False], "4j2b": [False, True]}
    hists = process_events(events, process="ttbar", variation="nominal", weight=1.0)
    assert [hists[f"{r}_ttbar"].sum(flow=True).value for r in ("4j1b", "4j2b")] == [1, 1]


def test_btags_count_only_selected_jets():
    """A b-tagged jet that fails the jet selection is not a b tag."""
    forward_b = jet(90, eta=2.6, btag=0.95)
    events = make_events([{"electrons": [electron()], "jets": [*ONE_B, forward_b]}])
    assert region_masks(events) == {"4j1b": [True], "4j2b": [False]}


def test_regions():
    events = make_events(
        [
            {"electrons": [electron()], "jets": ONE_B},  # 4j1b
            {"muons": [muon()], "jets": TWO_B},  # 4j2b
            {"electrons": [electron()], "muons": [muon()], "jets": ONE_B},  # 2 leptons
            {"electrons": [electron()], "jets": TWO_B[:3]},  # 3 jets
            {"electrons": [electron()], "jets": [jet(80), jet(70), jet(60), jet(50)]},  # 0 b
            # a failing lepton does not count as a lepton; a failing jet does not count as a jet
            {
                "electrons": [electron(), electron(cutBased=2)],
                "jets": [*ONE_B, jet(100, btag=0.95, eta=3.0)],
            },  # 4j1b
            {
                "electrons": [electron()],
                "jets": [
                    jet(80, btag=0.9),
                    jet(70, btag=0.9),
                    jet(60),
                    jet(50),
                    jet(45, btag=0.99),
                ],
            },  # 3 b: 4j2b
        ]
    )
    masks = region_masks(events)
    assert masks["4j1b"] == [True, False, False, False, False, True, False]
    assert masks["4j2b"] == [False, True, False, False, False, False, True]
    assert yields(events) == {"4j1b": 2.0, "4j2b": 2.0}


def test_varied_jet_pt_reselects_jets():
    """The selection runs on the varied pT: 29.5 GeV fails nominal, passes at +3 %."""
    events = make_events([{"electrons": [electron()], "jets": [*ONE_B[:3], jet(29.5)]}])
    assert region_masks(events)["4j1b"] == [False]
    assert region_masks(events, 1.03)["4j1b"] == [True]


def test_count_per_event():
    counts = np.array([3, 0, 2, 1])
    mask = np.array([True, False, True, True, False, True])
    assert count_per_event(mask, counts).tolist() == [2, 0, 1, 1]
