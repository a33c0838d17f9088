"""Systematic variations on hand-built events (spec §4)."""

import awkward as ak
import numpy as np
import pytest
from conftest import electron, jet, make_events

from agc.analysis import objects, process_events
from agc.analysis.systematics import btag_weight, resolution_factors_flat
from agc.analysis.xp import to_flat_xp
from agc.vocabulary import SAMPLES, histogram_names, split_sample_key


def _yield(hists, name):
    return hists[name].sum(flow=True).value


def test_btag_weight_matches_reference_correctionlib(shared_data):
    correctionlib = pytest.importorskip("correctionlib")
    cset = correctionlib.CorrectionSet.from_file(str(shared_data / "agc" / "corrections.json"))
    pt = np.array([30.5, 47.25, 123.0, 812.5], dtype=np.float32)
    for direction in ("up", "down"):
        reference = cset["event_systematics"].evaluate("btag_var", direction, pt)
        np.testing.assert_array_equal(btag_weight(pt, direction), reference)


def test_nominal_and_weight_systematics():
    w = 2.0
    jets = [jet(100, btag=0.9), jet(80), jet(60), jet(40), jet(20)]  # 4 selected, 1 b
    events = make_events([{"electrons": [electron()], "jets": jets}])
    hists = process_events(events, process="ttbar", variation="nominal", weight=w)
    assert _yield(hists, "4j1b_ttbar") == pytest.approx(w)
    assert _yield(hists, "4j2b_ttbar") == 0
    # HT = 280 GeV falls in bin [270, 290)
    assert hists["4j1b_ttbar"].values()[(280 - 50) // 20] == pytest.approx(w)
    for i, pt in enumerate([100, 80, 60, 40]):
        assert _yield(hists, f"4j1b_ttbar_btag_var_{i}_up") == pytest.approx(
            w * (1 + 0.075 * pt / 50)
        )
        assert _yield(hists, f"4j1b_ttbar_btag_var_{i}_down") == pytest.approx(
            w * (1 - 0.075 * pt / 50)
        )
    assert "4j1b_ttbar_scale_var_up" not in hists  # W+jets only


def test_wjets_scale_variation():
    events = make_events(
        [
            {
                "electrons": [electron()],
                "jets": [jet(100, btag=0.9), jet(80, btag=0.8), jet(60), jet(40)],
            }
        ]
    )
    hists = process_events(events, process="wjets", variation="nominal", weight=10.0)
    assert _yield(hists, "4j2b_wjets_scale_var_up") == pytest.approx(10.25)
    assert _yield(hists, "4j2b_wjets_scale_var_down") == pytest.approx(9.75)


def test_jet_energy_scale_reselects():
    # the fourth jet has 29.5 GeV: 1.03 * 29.5 = 30.385 passes only in pt_scale_up
    events = make_events(
        [{"electrons": [electron()], "jets": [jet(100, btag=0.9), jet(80), jet(60), jet(29.5)]}]
    )
    hists = process_events(events, process="single_top_tW", variation="nominal", weight=1.0)
    assert _yield(hists, "4j1b_single_top_tW") == 0
    assert _yield(hists, "4j1b_single_top_tW_pt_scale_up") == 1.0
    ht_up = 1.03 * (100 + 80 + 60 + 29.5)
    assert hists["4j1b_single_top_tW_pt_scale_up"].values()[int((ht_up - 50) // 20)] == 1.0


def test_alternative_samples_get_no_systematics():
    events = make_events(
        [{"electrons": [electron()], "jets": [jet(100, btag=0.9), jet(80), jet(60), jet(40)]}]
    )
    hists = process_events(events, process="ttbar", variation="PS_var", weight=1.0)
    assert sorted(hists) == ["4j1b_ttbar_PS_var", "4j2b_ttbar_PS_var"]
    assert _yield(hists, "4j1b_ttbar_PS_var") == 1.0


def test_full_run_has_124_histograms():
    names = set()
    for sample in SAMPLES:
        names |= set(histogram_names(*split_sample_key(sample)))
    names |= {"4j1b_pseudodata", "4j2b_pseudodata"}
    assert len(names) == 124
    # 15 ttbar, 11 per single top, 13 wjets, 1 pseudodata per region
    assert sum(n.startswith("4j1b_ttbar") for n in names) == 15
    assert sum(n.startswith("4j2b_wjets") for n in names) == 13
    assert sum(n.startswith("4j1b_single_top_s_chan") for n in names) == 11


def _smear(events, dataset="ttbar__nominal", seed=1):
    """The per-jet factors of the pt_res_up variation, as process_events draws them."""
    counts = objects(events).jet_counts
    ids = (to_flat_xp(events[b]) for b in ("run", "luminosityBlock", "event"))
    return ak.unflatten(resolution_factors_flat(counts, *ids, dataset=dataset, seed=seed), counts)


def test_resolution_smear_is_independent_of_chunking():
    rng = np.random.default_rng(3)
    evs = [
        {"event": int(e), "jets": [jet(float(p)) for p in rng.uniform(20, 200, rng.integers(0, 7))]}
        for e in rng.choice(10**9, size=500, replace=False)
    ]
    events = make_events(evs)
    whole = _smear(events)
    parts = ak.concatenate([_smear(events[:123]), _smear(events[123:400]), _smear(events[400:])])
    assert whole.tolist() == parts.tolist()
    # a different seed or dataset changes the factors
    assert whole.tolist() != _smear(events, seed=2).tolist()
    assert whole.tolist() != _smear(events, dataset="wjets__nominal").tolist()


def test_resolution_smear_is_gaussian_with_5_percent_width():
    n = 20000
    evs = [{"event": e, "jets": [jet(50.0)] * 3} for e in range(n)]
    factors = ak.to_numpy(ak.flatten(_smear(make_events(evs))))
    assert factors.dtype == np.float64
    assert abs(factors.mean() - 1.0) < 0.002
    assert abs(factors.std() - 0.05) < 0.002
    assert abs(np.mean(np.abs(factors - 1) < 0.05) - 0.6827) < 0.01  # one-sigma coverage
