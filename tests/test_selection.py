"""Object and event selection on hand-built events (spec §3)."""

import awkward as ak
import pytest
from conftest import electron, jet, make_events, muon

from agc.analysis.events import collections
from agc.analysis.selection import (
    count_btags,
    region_masks,
    select_electrons,
    select_jets,
    select_muons,
)


def _select(events, key, fn):
    electrons, muons, jets = collections(events)
    coll = {"electrons": electrons, "muons": muons, "jets": jets}[key]
    return ak.num(fn(coll), axis=1).tolist()


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
    ],
)
def test_electron_selection(candidate, passes):
    events = make_events([{"electrons": [candidate]}])
    assert _select(events, "electrons", select_electrons) == [int(passes)]


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
    events = make_events([{"muons": [candidate]}])
    assert _select(events, "muons", select_muons) == [int(passes)]


@pytest.mark.parametrize(
    ("candidate", "passes"),
    [
        (jet(), True),
        (jet(pt=30.0), False),
        (jet(eta=2.4), False),
        (jet(eta=-2.39), True),
        (jet(jetId=2), False),  # tight but not lepton-veto
        (jet(jetId=0), False),
        (jet(jetId=4), True),  # the lepton-veto bit alone is what counts
    ],
)
def test_jet_selection(candidate, passes):
    events = make_events([{"jets": [candidate]}])
    assert _select(events, "jets", select_jets) == [int(passes)]


def test_btag_threshold_is_strict():
    events = make_events([{"jets": [jet(btag=0.5), jet(btag=0.5001), jet(btag=0.9)]}])
    _, _, jets = collections(events)
    assert count_btags(select_jets(jets)).tolist() == [2]


def test_regions():
    four_jets_1b = [jet(80, btag=0.9), jet(70), jet(60), jet(50)]
    four_jets_2b = [jet(80, btag=0.9), jet(70, btag=0.8), jet(60), jet(50)]
    events = make_events(
        [
            {"electrons": [electron()], "jets": four_jets_1b},  # 4j1b
            {"muons": [muon()], "jets": four_jets_2b},  # 4j2b
            {"electrons": [electron()], "muons": [muon()], "jets": four_jets_1b},  # 2 leptons
            {"electrons": [electron()], "jets": four_jets_2b[:3]},  # 3 jets
            {"electrons": [electron()], "jets": [jet(80), jet(70), jet(60), jet(50)]},  # 0 b
            # a failing lepton does not count as a lepton; a failing jet does not count as a jet
            {
                "electrons": [electron(), electron(cutBased=2)],
                "jets": four_jets_1b + [jet(100, btag=0.95, eta=3.0)],
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
    electrons, muons, jets = collections(events)
    masks = region_masks(select_electrons(electrons), select_muons(muons), select_jets(jets))
    assert masks["4j1b"].tolist() == [True, False, False, False, False, True, False]
    assert masks["4j2b"].tolist() == [False, True, False, False, False, False, True]
