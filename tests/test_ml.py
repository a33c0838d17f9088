"""The ML step (spec §5): candidates, features, models, the best candidate, the histograms.

Known answers come from hand-built events and from slow per-event computations in plain
Python (lists, ``math``), never from the code under test. Small XGBoost models are trained here
(no network) so that each model's choice is known; the reference models are used when the
reference implementation sits beside the project.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
from conftest import assert_same_histograms, electron, jet, make_events, muon

from agc import vocabulary as v
from agc.analysis import ml, process_events
from agc.analysis.ml import JetColumns, LeptonColumns
from agc.histograms import split_ml_histograms

xgboost = pytest.importorskip("xgboost")

#: The coffea reference's trained models, beside the project (as ../shared is in CI).
REFERENCE_MODELS = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "reference-implementations"
    / "coffea"
    / "models"
)
F = {name: i for i, name in enumerate(v.ML_FEATURES)}


# -- small models with known preferences --------------------------------------------------------


def _train(label, rounds=4, depth=2, seed=1):
    """A booster trained on random 20-feature rows labelled by ``label(X)``."""
    rng = np.random.default_rng(seed)
    x = np.column_stack(
        [rng.uniform(lo, hi, 20000) for lo, hi in (v.ML_RANGES[f] for f in v.ML_FEATURES)]
    )
    params = {
        "objective": "binary:logistic",
        "max_depth": depth,
        "eta": 1.0,
        "tree_method": "exact",
        "nthread": 1,
        "seed": 0,
    }
    return xgboost.train(params, xgboost.DMatrix(x, label=label(x)), num_boost_round=rounds)


def _save(directory: Path, even, odd) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    even.save_model(directory / "model_even.json")
    odd.save_model(directory / "model_odd.json")
    return directory


@pytest.fixture(scope="module")
def blep_models(tmp_path_factory) -> Path:
    """model_even prefers a hard b_lep jet (pT > 90), model_odd a soft one (pT < 50).

    One split on pt_btoplep each: every candidate with the same b_lep jet ties, so the first
    in candidate order must win.
    """
    hard = _train(lambda x: x[:, F["pt_btoplep"]] > 90, rounds=1, depth=1)
    soft = _train(lambda x: x[:, F["pt_btoplep"]] < 50, rounds=1, depth=1)
    return _save(tmp_path_factory.mktemp("blep-models"), hard, soft)


@pytest.fixture(scope="module")
def physics_models(tmp_path_factory) -> Path:
    """Two models that look at several features and disagree: W-like pairs vs soft pairs."""
    w_like = _train(
        lambda x: (np.abs(x[:, F["mass_w1w2"]] - 80) < 15) & (x[:, F["deltar_w1w2"]] < 3),
        rounds=6,
        depth=3,
    )
    soft = _train(lambda x: x[:, F["pt_w1"]] + x[:, F["pt_w2"]] < 150, rounds=6, depth=3)
    return _save(tmp_path_factory.mktemp("physics-models"), w_like, soft)


# -- vocabulary ---------------------------------------------------------------------------------


def test_features_binning_and_branch_sets():
    assert len(v.ML_FEATURES) == len(set(v.ML_FEATURES)) == 20 and v.MAX_N_JETS == 6
    assert v.ML_FEATURES[0] == "deltar_leptonbtoplep" and v.ML_FEATURES[-1] == "qgl_btoplep"
    spec = {"deltar": (0, 6), "pt": (25, 300), "btag": (0, 1), "qgl": (-1, 1)}
    for f in v.ML_FEATURES:
        wide = f in ("mass_w1w2btophad", "pt_w1w2btophad")
        kind = f.split("_")[0]
        want = (50, 550) if wide else (50, 300) if kind == "mass" else spec[kind]
        assert v.ML_RANGES[f] == want, f
        assert f in v.ML_FEATURE_LABELS
    extras = {"Jet_qgl", "Electron_phi", "Electron_mass", "Muon_phi", "Muon_mass", "event"}
    assert set(v.ML_EXTRA_BRANCHES) == extras
    assert set(v.ML_BRANCHES) == set(v.ANALYSIS_BRANCHES) | extras
    assert len(v.ML_BRANCHES) == len(set(v.ML_BRANCHES)) == 23
    assert len(set(v.ML_SPEC_BRANCHES)) == 24
    assert v.branch_set(v.ML_BRANCH_SET) == v.ML_BRANCHES  # I/O-only mode can read it


def test_ml_spec_branches_are_the_bytes_of_spec_section_2(shared_data):
    import json

    ratios = json.loads((shared_data / "agc" / "nanoaod_branch_ratios.json").read_text())
    assert sum(ratios[b] for b in v.ML_SPEC_BRANCHES) == pytest.approx(0.0631, abs=5e-5)


@pytest.mark.parametrize(
    ("name", "parts"),
    [
        ("pt_w1_ttbar", ("pt_w1", "ttbar", "nominal")),
        ("pt_w1w2btophad_single_top_tW_btag_var_3_down",
         ("pt_w1w2btophad", "single_top_tW", "btag_var_3_down")),
        ("qgl_btoplep_wjets_scale_var_up", ("qgl_btoplep", "wjets", "scale_var_up")),
        ("deltar_w1w2_ttbar_PS_var", ("deltar_w1w2", "ttbar", "PS_var")),
        ("mass_w1w2_pseudodata", ("mass_w1w2", "pseudodata", "nominal")),
    ],
)  # fmt: skip
def test_ml_names_parse_back(name, parts):
    parsed = v.parse_ml_histogram_name(name)
    assert tuple(parsed) == parts and str(parsed) == name
    assert v.parse_histogram_name(name) is None  # never taken for a region histogram


def test_ml_and_region_names_never_collide():
    ml_names = {n for s in v.SAMPLES for n in v.ml_histogram_names(*v.split_sample_key(s))}
    assert len(ml_names) == 20 * 61  # 20 x (15 ttbar + 3 x 11 single top + 13 W+jets)
    main = {n for s in v.SAMPLES for n in v.histogram_names(*v.split_sample_key(s))}
    assert not ml_names & main
    assert all(v.parse_ml_histogram_name(n) is None for n in main)
    assert v.parse_ml_histogram_name("pt_w3_ttbar") is None
    assert v.parse_ml_histogram_name("pt_w1_zjets") is None


# -- candidates ---------------------------------------------------------------------------------


def test_candidates_of_four_jets_in_the_reference_order():
    assert ml.candidate_permutations(4).tolist() == [
        [1, 0, 2, 3], [1, 0, 3, 2], [2, 0, 1, 3], [2, 0, 3, 1], [2, 1, 0, 3], [2, 1, 3, 0],
        [3, 0, 1, 2], [3, 0, 2, 1], [3, 1, 0, 2], [3, 1, 2, 0], [3, 2, 0, 1], [3, 2, 1, 0],
    ]  # fmt: skip


@pytest.mark.parametrize(("n", "count"), [(4, 12), (5, 60), (6, 180)])
def test_candidates_for_five_and_six_jets(n, count):
    table = ml.candidate_permutations(n)
    # nested loops over (W1, W2, b_had, b_lep): lexicographic, distinct jets, W1 > W2
    expected = [
        [a, b, c, d]
        for a in range(n)
        for b in range(n)
        for c in range(n)
        for d in range(n)
        if len({a, b, c, d}) == 4 and a > b
    ]
    assert table.shape == (count, 4) and table.tolist() == expected
    # each assignment once: the unordered W pair, b_had and b_lep
    assignments = {(frozenset(r[:2]), r[2], r[3]) for r in table.tolist()}
    assert len(assignments) == count == math.factorial(n) // (2 * math.factorial(n - 4))
    assert table.tolist()[0] == [1, 0, 2, 3] and table.tolist()[-1] == [n - 1, n - 2, n - 3, n - 4]


def test_candidate_table_is_shared_and_read_only():
    assert ml.candidate_permutations(5) is ml.candidate_permutations(5)
    with pytest.raises(ValueError):
        ml.candidate_permutations(5)[0, 0] = 3
    with pytest.raises(ValueError, match="at least 4 jets"):
        ml.candidate_permutations(3)


# -- features: slow per-event computation -------------------------------------------------------


def _p4(pt, eta, phi, mass):
    """(E, px, py, pz) in double precision; a negative mass is a negative m^2, as in NanoAOD."""
    px, py, pz = pt * math.cos(phi), pt * math.sin(phi), pt * math.sinh(eta)
    return (math.sqrt(max(px**2 + py**2 + pz**2 + math.copysign(mass**2, mass), 0)), px, py, pz)


def _mass(*vectors):
    e, px, py, pz = (sum(c) for c in zip(*vectors, strict=True))
    m2 = e**2 - px**2 - py**2 - pz**2
    return math.copysign(math.sqrt(abs(m2)), m2)


def _delta_r(a, b):
    return math.sqrt((a["eta"] - b["eta"]) ** 2 + (a["phi"] - b["phi"]) ** 2)  # no wrapping


def slow_features(jets: list[dict], lepton: dict) -> list[list[float]]:
    """The 20 features of every candidate of one event, in candidate order, in plain Python."""
    jets = jets[: v.MAX_N_JETS]
    n = len(jets)
    p4 = [_p4(j["pt"], j["eta"], j["phi"], j["mass"]) for j in jets]
    lep = _p4(lepton["pt"], lepton["eta"], lepton["phi"], lepton["mass"])
    out = []
    for w1, w2, bh, bl in itertools.permutations(range(n), 4):
        if w1 < w2:
            continue
        roles = [jets[w1], jets[w2], jets[bh], jets[bl]]
        top = p4[w1], p4[w2], p4[bh]
        top_pt = math.hypot(top[0][1] + top[1][1] + top[2][1], top[0][2] + top[1][2] + top[2][2])
        out.append(
            [
                _delta_r(lepton, jets[bl]),
                _delta_r(jets[w1], jets[w2]),
                _delta_r(jets[w1], jets[bh]),
                _delta_r(jets[w2], jets[bh]),
                _mass(lep, p4[bl]),
                _mass(p4[w1], p4[w2]),
                _mass(*top),
                top_pt,
                *(j["pt"] for j in roles),
                *(j["btag"] for j in roles),
                *(j["qgl"] for j in roles),
            ]
        )
    return out


def _random_jets(rng, n_events, min_jets=4, max_jets=8):
    """Per event a list of jets (float32 values, stored order not pT order) and a lepton."""
    events = []
    for _ in range(n_events):
        n = int(rng.integers(min_jets, max_jets + 1))
        jets = [
            {
                "pt": float(np.float32(rng.uniform(30, 250))),
                "eta": float(np.float32(rng.uniform(-2.4, 2.4))),
                "phi": float(np.float32(rng.uniform(-math.pi, math.pi))),
                "mass": float(np.float32(rng.uniform(2, 30))),
                "btag": float(np.float32(rng.uniform(0, 1))),
                "qgl": float(np.float32(rng.choice([-1.0, rng.uniform(0, 1)], p=[0.1, 0.9]))),
            }
            for _ in range(n)
        ]
        is_electron = rng.uniform() < 0.5
        lepton = {
            "pt": float(np.float32(rng.uniform(30, 200))),
            "eta": float(np.float32(rng.uniform(-2.1, 2.1))),
            "phi": float(np.float32(rng.uniform(-math.pi, math.pi))),
            # electron masses in NanoAOD are tiny and of either sign
            "mass": float(np.float32(rng.normal(0, 0.01) if is_electron else 0.10571)),
        }
        events.append((jets, lepton))
    return events


def _columns(events, dtype=np.float32) -> tuple[JetColumns, np.ndarray, LeptonColumns]:
    """Flat columns of (jets, lepton) events; float32 as NanoAOD, or float64 for exact checks
    (the features are computed in the precision of their inputs)."""

    def flat(key):
        return np.array([j[key] for jets, _ in events for j in jets], dtype=dtype)

    jets = JetColumns(*(flat(k) for k in ("pt", "eta", "phi", "mass", "btag", "qgl")))
    counts = np.array([len(jets) for jets, _ in events], dtype=np.int64)
    lepton = LeptonColumns(
        *(np.array([lep[k] for _, lep in events], dtype) for k in ("pt", "eta", "phi", "mass"))
    )
    return jets, counts, lepton


def test_every_feature_of_every_candidate_matches_a_slow_computation():
    rng = np.random.default_rng(2024)
    events = _random_jets(rng, 300)
    # double precision in, double precision out: the formulas agree to rounding
    got = ml.candidate_features(*_columns(events, np.float64))
    assert len(got) == len(events)
    for i, (jets, lepton) in enumerate(events):
        want = np.array(slow_features(jets, lepton))
        assert len(want) == {4: 12, 5: 60}.get(len(jets), 180)
        mine = ak.to_numpy(got[i])
        assert mine.shape == want.shape
        np.testing.assert_allclose(mine, want, rtol=1e-9, atol=1e-9, err_msg=f"event {i}")
    # NanoAOD's float32 in: float32 arithmetic, as in the reference (pinned bit for bit below)
    single = ml.candidate_features(*_columns(events))
    np.testing.assert_allclose(
        ak.to_numpy(ak.flatten(single, axis=1)), ak.to_numpy(ak.flatten(got, axis=1)), rtol=5e-4
    )


def test_only_the_six_first_stored_jets_count_and_phi_is_not_wrapped():
    jets = [
        {"pt": 50.0, "eta": 0.0, "phi": 3.0, "mass": 5.0, "btag": 0.9, "qgl": 0.1},
        {"pt": 40.0, "eta": 0.0, "phi": -3.0, "mass": 5.0, "btag": 0.8, "qgl": 0.2},
        *({"pt": 35.0, "eta": 0.5, "phi": 0.1 * k, "mass": 5.0, "btag": 0.1, "qgl": 0.3}
          for k in range(4)),
        {"pt": 500.0, "eta": 1.0, "phi": 1.0, "mass": 9.0, "btag": 0.99, "qgl": 0.9},  # 7th
    ]  # fmt: skip
    lepton = {"pt": 40.0, "eta": 0.0, "phi": 0.0, "mass": 0.10571}
    got = ak.to_numpy(ml.candidate_features(*_columns([(jets, lepton)]))[0])
    assert got.shape == (180, 20)
    assert got[:, F["pt_w1"] : F["pt_btoplep"] + 1].max() == np.float32(50.0)  # never the 7th
    # candidate 0 is (1, 0, 2, 3): W1 = jet 1 (phi -3), W2 = jet 0 (phi 3): dphi = 6, unwrapped
    assert got[0, F["deltar_w1w2"]] == pytest.approx(6.0)
    assert got[0, F["pt_w1"]] == np.float32(40.0) and got[0, F["pt_w2"]] == np.float32(50.0)
    assert got[0, F["qgl_btophad"]] == np.float32(0.3)


def test_four_vector_features_equal_the_reference_libraries_bit_for_bit():
    """lepton + b_lep as scikit-hep vector's Momentum4D sum; jet sums as coffea candidates."""
    vector = pytest.importorskip("vector")
    candidate = pytest.importorskip("coffea.nanoevents.methods.candidate")
    vector.register_awkward()
    rng = np.random.default_rng(5)
    events = _random_jets(rng, 200)
    for pt_dtype in (np.float32, np.float64):  # stored pT, varied pT
        jets, counts, lepton = _columns(events)
        jets = JetColumns(jets.pt.astype(pt_dtype) * pt_dtype(1.03), *list(vars(jets).values())[1:])
        got = ml.candidate_features(jets, counts, lepton)
        used = np.minimum(counts, 6)
        perms = ak.Array([ml.candidate_permutations(int(n)).tolist() for n in used])
        fields = {"pt": jets.pt, "eta": jets.eta, "phi": jets.phi, "mass": jets.mass}
        jagged = {k: ak.unflatten(c, counts) for k, c in fields.items()}
        cand = ak.zip(
            {**jagged, "charge": ak.zeros_like(jagged["pt"])},
            with_name="PtEtaPhiMCandidate",
            behavior=candidate.behavior,
        )
        m4d = ak.zip(jagged, with_name="Momentum4D")
        lep = ak.zip(dict(zip(("pt", "eta", "phi", "mass"), vars(lepton).values(), strict=True)),
                     with_name="Momentum4D")  # fmt: skip
        w1, w2, bh, bl = (perms[..., k] for k in range(4))
        top = cand[w1] + cand[w2] + cand[bh]
        for name, theirs in (
            ("mass_leptonbtoplep", (lep + m4d[bl]).mass),
            ("mass_w1w2", (cand[w1] + cand[w2]).mass),
            ("mass_w1w2btophad", top.mass),
            ("pt_w1w2btophad", top.pt),
        ):
            ours = ak.to_numpy(ak.flatten(got[:, :, F[name]]))
            np.testing.assert_array_equal(ours, ak.to_numpy(ak.flatten(theirs)), err_msg=name)


# -- models ---------------------------------------------------------------------------------------


def test_missing_models_name_the_directory_and_the_files(tmp_path):
    with pytest.raises(ml.ModelFilesError) as err:
        ml.load_models(tmp_path / "nowhere")
    message = str(err.value)
    assert f"{tmp_path / 'nowhere'} does not exist" in message
    assert "model_even.json" in message and "model_odd.json" in message
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model_even.json").write_text("{}")
    for call in (ml.load_models, ml.models_fingerprint):
        with pytest.raises(ml.ModelFilesError, match=r"half: model_odd\.json is missing"):
            call(tmp_path / "half")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ml.ModelFilesError, match=r"model_even\.json and model_odd\.json are"):
        ml.load_models(tmp_path / "empty")


def test_unreadable_models_are_named(tmp_path, blep_models):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model_even.json").write_bytes((blep_models / "model_even.json").read_bytes())
    (bad / "model_odd.json").write_text("this is no model")
    with pytest.raises(ml.ModelFilesError, match=r"bad/model_odd\.json: not a readable"):
        ml.load_models(bad)


def test_fingerprint_covers_the_bytes_and_the_roles_of_both_files(tmp_path, blep_models):
    first = ml.models_fingerprint(blep_models)
    assert first == ml.models_fingerprint(blep_models) == ml.load_models(blep_models).fingerprint
    assert len(first) == 64
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    for a, b in (("model_even.json", "model_odd.json"), ("model_odd.json", "model_even.json")):
        (swapped / a).write_bytes((blep_models / b).read_bytes())
    assert ml.models_fingerprint(swapped) != first
    changed = tmp_path / "changed"
    changed.mkdir()
    for name in ("model_even.json", "model_odd.json"):
        (changed / name).write_bytes((blep_models / name).read_bytes())
    with (changed / "model_odd.json").open("ab") as f:
        f.write(b" ")
    assert ml.models_fingerprint(changed) != first


def test_models_pickle_for_worker_processes(physics_models):
    import pickle

    models = ml.load_models(physics_models, n_threads=1)
    copy = pickle.loads(pickle.dumps(models))
    assert copy.fingerprint == models.fingerprint and copy.directory == str(physics_models)
    rng = np.random.default_rng(8)
    features = np.column_stack([rng.uniform(*v.ML_RANGES[f], 2000) for f in v.ML_FEATURES])
    for even_event in (True, False):
        scores = models.scores(features, even_event)
        np.testing.assert_array_equal(copy.scores(features, even_event), scores)
    assert not np.array_equal(models.scores(features, True), models.scores(features, False))


def _four_jet_event(event_number):
    jets = [
        {"pt": pt, "eta": 0.3 * k, "phi": 0.5 * k, "mass": 8.0, "btag": 0.9, "qgl": 0.5}
        for k, pt in enumerate([100.0, 80.0, 60.0, 40.0])
    ]
    lepton = {"pt": 45.0, "eta": 0.2, "phi": -1.0, "mass": 0.0005}
    return jets, lepton, event_number


def test_argmax_takes_the_first_best_candidate_with_the_model_of_the_event_parity(blep_models):
    models = ml.load_models(blep_models)
    events = [_four_jet_event(7), _four_jet_event(8)]
    jets, counts, lepton = _columns([(j, lep) for j, lep, _ in events])
    best = ml.best_candidate_features(models, jets, counts, lepton, np.array([7, 8], np.uint64))
    pts = best[:, F["pt_w1"] : F["pt_btoplep"] + 1].tolist()
    # odd event 7 -> model_even (hard b_lep): b_lep = jet 0; its candidates (2,1,3,0),
    # (3,1,2,0), (3,2,1,0) tie, the first wins
    assert pts[0] == [60.0, 80.0, 40.0, 100.0]
    # even event 8 -> model_odd (soft b_lep): b_lep = jet 3; (1,0,2,3) is the first of its ties
    assert pts[1] == [80.0, 100.0, 60.0, 40.0]


def test_scores_are_predict_proba_of_the_classifier(blep_models, physics_models):
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(3)
    features = np.column_stack([rng.uniform(*v.ML_RANGES[f], 5000) for f in v.ML_FEATURES])
    for directory in (blep_models, physics_models):
        models = ml.load_models(directory)
        for even_event, name in ((True, "model_odd.json"), (False, "model_even.json")):
            classifier = xgboost.XGBClassifier()
            classifier.load_model(directory / name)
            np.testing.assert_array_equal(
                models.scores(features, even_event), classifier.predict_proba(features)[:, 1]
            )


def _slow_choice(booster, jets, lepton, rows=None):
    """Index and features of the best candidate: scores one by one, the first maximum wins."""
    rows = slow_features(jets, lepton) if rows is None else rows
    scores = booster.predict(xgboost.DMatrix(np.array(rows)))
    best = 0
    for k, s in enumerate(scores):
        if s > scores[best]:
            best = k
    return best, rows[best]


def test_best_candidate_and_model_choice_match_a_slow_computation(physics_models):
    models = ml.load_models(physics_models)
    rng = np.random.default_rng(11)
    events = _random_jets(rng, 150, max_jets=7)
    numbers = rng.integers(1, 10**9, len(events)).astype(np.uint64)
    best = ml.best_candidate_features(models, *_columns(events, np.float64), numbers)
    other_model_differs = 0
    for i, (jets, lepton) in enumerate(events):
        rows = slow_features(jets, lepton)
        even = int(numbers[i]) % 2 == 0
        _, want = _slow_choice(models.odd if even else models.even, jets, lepton, rows)
        np.testing.assert_allclose(best[i], want, rtol=1e-9, atol=1e-9, err_msg=f"event {i}")
        _, wrong = _slow_choice(models.even if even else models.odd, jets, lepton, rows)
        other_model_differs += not np.allclose(wrong, want, rtol=1e-9, atol=1e-9)
    assert other_model_differs > 0.3 * len(events)  # so the parity is really tested


def test_batches_do_not_change_the_choice(physics_models, monkeypatch):
    models = ml.load_models(physics_models)
    rng = np.random.default_rng(12)
    events = _random_jets(rng, 120)
    numbers = np.arange(len(events), dtype=np.uint64)
    whole = ml.best_candidate_features(models, *_columns(events), numbers)
    monkeypatch.setattr(ml, "CANDIDATES_PER_BATCH", 200)  # a few events per XGBoost call
    np.testing.assert_array_equal(
        ml.best_candidate_features(models, *_columns(events), numbers), whole
    )


# -- the processor -----------------------------------------------------------------------------


def with_ml_branches(events: ak.Array, rng) -> ak.Array:
    """Events of conftest.make_events with the ML branches added (random values)."""
    for branch, collection in (
        ("Jet_qgl", "Jet"),
        ("Electron_phi", "Electron"),
        ("Electron_mass", "Electron"),
        ("Muon_phi", "Muon"),
        ("Muon_mass", "Muon"),
    ):
        counts = ak.num(events[f"{collection}_pt"])
        n = int(ak.sum(counts))
        if branch.endswith("phi"):
            values = rng.uniform(-math.pi, math.pi, n)
        elif branch == "Jet_qgl":
            values = rng.uniform(0, 1, n)
        else:
            values = np.full(n, 0.10571 if collection == "Muon" else 0.0005)
        events = ak.with_field(events, ak.unflatten(values.astype(np.float32), counts), branch)
    return events


def _random_lepton(rng):
    """An electron or a muon, tight or not (pT, eta, ID, isolation drawn around the cuts)."""
    pt, eta = float(rng.uniform(25, 120)), float(rng.uniform(-2.3, 2.3))
    if rng.uniform() < 0.5:
        return "electrons", electron(pt=pt, eta=eta, cutBased=int(rng.choice([2, 4, 4, 4])))
    iso = float(rng.choice([0.05, 0.05, 0.3]))
    return "muons", muon(pt=pt, eta=eta, tightId=bool(rng.uniform() < 0.8), iso=iso)


def _random_events(rng, n):
    """Events of every kind: 0-2 leptons of both flavours, 2-9 jets in random pT order."""
    out = []
    for _ in range(n):
        event = {"electrons": [], "muons": [], "event": int(rng.integers(1, 10**6))}
        for _ in range(int(rng.choice([0, 1, 1, 1, 2]))):
            kind, lepton = _random_lepton(rng)
            event[kind].append(lepton)
        event["jets"] = [
            jet(
                pt=float(rng.uniform(20, 200)),
                eta=float(rng.uniform(-2.6, 2.6)),
                phi=float(rng.uniform(-math.pi, math.pi)),
                mass=float(rng.uniform(2, 25)),
                btag=float(rng.uniform(0, 1)),
                jetId=int(rng.choice([6, 6, 6, 2])),
            )
            for _ in range(int(rng.integers(2, 10)))
        ]
        out.append(event)
    return out


def test_ml_histograms_of_random_events_match_a_slow_selection_and_assignment(physics_models):
    """Selection, tight lepton (electron or muon), stored jet order, even/odd and argmax."""
    models = ml.load_models(physics_models)
    rng = np.random.default_rng(99)
    events = with_ml_branches(make_events(_random_events(rng, 400)), rng)
    hists = process_events(
        events, process="ttbar", variation="nominal", weight=1.0, systematics=False, ml=models
    )
    expected = {f: [] for f in v.ML_FEATURES}
    for e in ak.to_list(events):
        leptons = [
            {"pt": pt, "eta": eta, "phi": phi, "mass": m}
            for pt, eta, phi, m, cut, sip in zip(
                e["Electron_pt"], e["Electron_eta"], e["Electron_phi"], e["Electron_mass"],
                e["Electron_cutBased"], e["Electron_sip3d"], strict=True,
            )
            if pt > 30 and abs(eta) < 2.1 and cut == 4 and sip < 4
        ] + [
            {"pt": pt, "eta": eta, "phi": phi, "mass": m}
            for pt, eta, phi, m, tight, sip, iso in zip(
                e["Muon_pt"], e["Muon_eta"], e["Muon_phi"], e["Muon_mass"], e["Muon_tightId"],
                e["Muon_sip3d"], e["Muon_pfRelIso04_all"], strict=True,
            )
            if pt > 30 and abs(eta) < 2.1 and tight and sip < 4 and iso < 0.15
        ]  # fmt: skip
        jets = [
            {"pt": pt, "eta": eta, "phi": phi, "mass": m, "btag": b, "qgl": q}
            for pt, eta, phi, m, b, q, jid in zip(
                e["Jet_pt"], e["Jet_eta"], e["Jet_phi"], e["Jet_mass"], e["Jet_btagCSVV2"],
                e["Jet_qgl"], e["Jet_jetId"], strict=True,
            )
            if pt > 30 and abs(eta) < 2.4 and jid & 4
        ]  # fmt: skip
        if len(leptons) != 1 or len(jets) < 4 or sum(j["btag"] > 0.5 for j in jets) < 2:
            continue
        booster = models.odd if e["event"] % 2 == 0 else models.even
        _, best = _slow_choice(booster, jets, leptons[0])
        for f, value in zip(v.ML_FEATURES, best, strict=True):
            expected[f].append(value)
    n_selected = len(expected["pt_w1"])
    assert n_selected > 40
    assert hists["4j2b_ttbar"].sum(flow=True).value == n_selected
    for f in v.ML_FEATURES:
        h = hists[v.ml_histogram_name(f, "ttbar")]
        want = np.histogram(expected[f], bins=h.axes[0].edges)[0]
        inner = h.values()
        # float32 vs double arithmetic may move a value sitting on a bin edge, nothing else
        assert np.abs(inner - want).sum() <= 2, f
        assert h.sum(flow=True).value == n_selected, f


def test_missing_ml_branches_are_named(blep_models):
    models = ml.load_models(blep_models)
    events = make_events([{"electrons": [electron()], "jets": [jet(), jet(), jet(), jet()]}])
    with pytest.raises(ml.MissingBranchesError) as err:
        process_events(events, process="ttbar", variation="nominal", weight=1.0, ml=models)
    message = str(err.value)
    for branch in ("Jet_qgl", "Electron_phi", "Electron_mass", "Muon_phi", "Muon_mass"):
        assert branch in message
    assert "event," not in message  # the event number is there
    rng = np.random.default_rng(0)
    partial = ak.without_field(with_ml_branches(events, rng), "Muon_mass")
    with pytest.raises(ml.MissingBranchesError, match=r"branches Muon_mass, which"):
        process_events(partial, process="ttbar", variation="nominal", weight=1.0, ml=models)


def test_weight_variations_reuse_the_nominal_assignment_with_their_weights(blep_models):
    models = ml.load_models(blep_models)
    rng = np.random.default_rng(4)
    b = 0.9
    events = [
        {"electrons": [electron()], "event": 2 * i + 1, "jets": [
            jet(120 + i, btag=b, phi=0.1), jet(90, btag=b, phi=1.0), jet(70, phi=2.0),
            jet(45, phi=-2.0), jet(31, phi=-1.0),
        ]}
        for i in range(3)
    ]  # fmt: skip
    events = with_ml_branches(make_events(events), rng)
    w = 2.5
    hists = process_events(events, process="wjets", variation="nominal", weight=w, ml=models)
    nominal = {f: hists[v.ml_histogram_name(f, "wjets")] for f in v.ML_FEATURES}
    for f, h in nominal.items():
        assert h.sum(flow=True).value == 3 * w
        for direction, factor in (("up", 1.025), ("down", 0.975)):
            varied = hists[v.ml_histogram_name(f, "wjets", f"scale_var_{direction}")]
            np.testing.assert_allclose(varied.values(flow=True), h.values(flow=True) * factor)
        for i in range(4):
            up = hists[v.ml_histogram_name(f, "wjets", v.btag_variation(i, "up"))]
            main = hists[v.histogram_name("4j2b", "wjets", v.btag_variation(i, "up"))]
            assert up.sum(flow=True).value == pytest.approx(main.sum(flow=True).value)
    # the hard-b_lep model puts the leading jet (120-122 GeV) at b_lep in every event
    assert nominal["pt_btoplep"].values()[int((121 - 25) // 11)] == 3 * w
    # b-tag weight of jet 0 (120, 121, 122 GeV) up: the weights of exactly these events
    up0 = hists[v.ml_histogram_name("pt_btoplep", "wjets", "btag_var_0_up")]
    assert up0.sum().value == pytest.approx(w * sum(1 + 0.075 * (120 + i) / 50 for i in range(3)))


def test_jet_pt_variations_rerun_the_assignment(blep_models):
    models = ml.load_models(blep_models)
    rng = np.random.default_rng(5)
    # b_lep (hard model, odd event) is the leading jet: 88 GeV nominal, 90.64 GeV scaled > 90
    jets = [jet(88, btag=0.9), jet(70, btag=0.9), jet(60), jet(50)]
    events = with_ml_branches(make_events([{"electrons": [electron()], "jets": jets}]), rng)
    hists = process_events(events, process="ttbar", variation="nominal", weight=1.0, ml=models)
    nominal = hists["pt_btoplep_ttbar"].values()
    scaled = hists["pt_btoplep_ttbar_pt_scale_up"].values()
    edges = hists["pt_btoplep_ttbar"].axes[0].edges
    # nominal: no candidate passes the split, all tie: the first, (1, 0, 2, 3), b_lep = 50 GeV
    assert nominal[np.searchsorted(edges, 50.0) - 1] == 1
    assert scaled[np.searchsorted(edges, 88 * 1.03) - 1] == 1
    assert hists["pt_btoplep_ttbar_pt_res_up"].sum(flow=True).value == 1


def test_names_of_the_ml_histograms_of_each_sample(blep_models):
    models = ml.load_models(blep_models)
    rng = np.random.default_rng(6)
    jets = [jet(100, btag=0.9), jet(80, btag=0.8), jet(60), jet(45)]  # all pass pt_res_up
    events = with_ml_branches(make_events([{"muons": [muon()], "jets": jets}]), rng)
    for sample in v.SAMPLES:
        process, variation = v.split_sample_key(sample)
        hists = process_events(events, process=process, variation=variation, weight=1.0, ml=models)
        main, ml_hists = split_ml_histograms(hists)
        assert sorted(main) == sorted(v.histogram_names(process, variation))
        assert sorted(ml_hists) == sorted(v.ml_histogram_names(process, variation))
        labels = v.histogram_labels(process, variation)
        assert len(ml_hists) == 20 * len(labels)
        for name, h in ml_hists.items():
            parsed = v.parse_ml_histogram_name(name)
            assert parsed is not None and str(parsed) == name
            assert (h.axes[0].edges[0], h.axes[0].edges[-1]) == v.ML_RANGES[parsed.feature]
            assert h.axes[0].size == 25
            # the one 4j2b event, in every variation, with the weight of its 4j2b histogram
            region = main[v.histogram_name("4j2b", process, parsed.variation)]
            assert h.sum(flow=True).value == region.sum(flow=True).value > 0


# -- synthetic ttbar and the reference models -----------------------------------------------------


@pytest.fixture(scope="module")
def ttbar_events(tmp_path_factory):
    """20k synthetic ttbar events (minimal layout) with the ML branches."""
    from agc import synth
    from agc.reader import read_chunk

    catalog = synth.generate(
        tmp_path_factory.mktemp("ml-ttbar"),
        events={"ttbar__nominal": (1, 20_000), "wjets__nominal": (1, 5_000)},
        layout="minimal",
        seed=31,
        workers=1,
    )
    out = {}
    for sample, n in (("ttbar__nominal", 20_000), ("wjets__nominal", 5_000)):
        path = next(catalog.parent.glob(f"{sample}/*.root"))
        out[sample] = read_chunk(str(path), v.ML_BRANCHES, 0, n)[0]
    return out


@pytest.fixture(scope="module")
def reference_models():
    if not (REFERENCE_MODELS / "model_even.json").is_file():
        pytest.skip(
            f"the reference models are not at {REFERENCE_MODELS} (beside the project in CI)"
        )
    return ml.load_models(REFERENCE_MODELS)


@pytest.mark.parametrize("sample", ["ttbar__nominal", "wjets__nominal"])
def test_region_histograms_are_bit_identical_with_and_without_ml(ttbar_events, blep_models, sample):
    process, variation = v.split_sample_key(sample)
    events = ttbar_events[sample]
    args = {"process": process, "variation": variation, "weight": 1.7}
    without = process_events(events, **args)
    with_ml = process_events(events, **args, ml=ml.load_models(blep_models))
    main, ml_hists = split_ml_histograms(with_ml)
    assert_same_histograms(without, main, rtol=0, what="region histograms with ml")
    assert len(ml_hists) == 20 * len(v.histogram_labels(process, variation))
    # every 4j2b event fills every feature once, in each variation
    for label in v.histogram_labels(process, variation):
        total = main[v.histogram_name("4j2b", process, label)].sum(flow=True).value
        for f in v.ML_FEATURES:
            got = ml_hists[v.ml_histogram_name(f, process, label)].sum(flow=True).value
            assert got == pytest.approx(total, rel=1e-12), (f, label)


def test_reference_models_score_like_the_classifier(ttbar_events, reference_models):
    pytest.importorskip("sklearn")
    from agc.analysis import objects, select_regions

    events = ttbar_events["ttbar__nominal"]
    obj = objects(events)
    region = select_regions(obj, obj.jets["pt"])["4j2b"]
    columns = ml.ml_columns(events)
    jets = JetColumns(region.pt, region.eta, region.phi, region.mass, region.btag,
                      columns.qgl[region.jet_mask])  # fmt: skip
    lepton = columns.lepton.take(region.mask)
    features = ak.to_numpy(ak.flatten(ml.candidate_features(jets, region.counts, lepton), axis=1))
    assert len(features) > 10_000
    for even_event, name in ((True, "model_odd.json"), (False, "model_even.json")):
        scores = reference_models.scores(features, even_event)
        assert np.all((scores > 0) & (scores < 1))
        classifier = xgboost.XGBClassifier()
        classifier.load_model(REFERENCE_MODELS / name)
        np.testing.assert_array_equal(scores, classifier.predict_proba(features)[:, 1])
    # the trained assignment finds the W and the hadronic top better than a random candidate
    best = ml.best_candidate_features(
        reference_models, jets, region.counts, lepton, columns.event[region.mask]
    )
    assert len(best) > 300 and np.isfinite(best).all()
    for feature, mass, window in (("mass_w1w2", 80.4, 15), ("mass_w1w2btophad", 172.5, 25)):
        near_best = np.mean(np.abs(best[:, F[feature]] - mass) < window)
        near_any = np.mean(np.abs(features[:, F[feature]] - mass) < window)
        assert near_best > 1.5 * near_any, feature
