"""ML validation of the fit (agc.ml_fit): configuration, pruned workspace, the main fit's
parameters on it, pre-/post-fit predictions and plots."""

from __future__ import annotations

import json
from pathlib import Path

import hist
import matplotlib.image
import numpy as np
import pytest
from test_inference import toy_histograms

from agc import inference, ml_fit, plots
from agc.histograms import write_root

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

#: Spec §5: the 20 features in order, and their histogram ranges (25 bins each).
SPEC_FEATURES = {
    "deltar_leptonbtoplep": (0, 6),
    "deltar_w1w2": (0, 6),
    "deltar_w1btophad": (0, 6),
    "deltar_w2btophad": (0, 6),
    "mass_leptonbtoplep": (50, 300),
    "mass_w1w2": (50, 300),
    "mass_w1w2btophad": (50, 550),
    "pt_w1w2btophad": (50, 550),
    "pt_w1": (25, 300),
    "pt_w2": (25, 300),
    "pt_btophad": (25, 300),
    "pt_btoplep": (25, 300),
    "btag_w1": (0, 1),
    "btag_w2": (0, 1),
    "btag_btophad": (0, 1),
    "btag_btoplep": (0, 1),
    "qgl_w1": (-1, 1),
    "qgl_w2": (-1, 1),
    "qgl_btophad": (-1, 1),
    "qgl_btoplep": (-1, 1),
}
KEPT = ["Feature0", "Feature1", "Feature2", "Feature4", "Feature5", "Feature6", "Feature7"]
KEPT_FEATURES = [list(SPEC_FEATURES)[int(c.removeprefix("Feature"))] for c in KEPT]
PROCESSES = ("ttbar", "single_top_s_chan", "single_top_t_chan", "single_top_tW", "wjets")
YIELDS = {
    "ttbar": 3000.0,
    "wjets": 500.0,
    "single_top_s_chan": 10.0,
    "single_top_t_chan": 60.0,
    "single_top_tW": 150.0,
}
#: In the toy histograms, ttbar's variations in this feature equal its nominal: there only the
#: normalisation factor (and the luminosity) act on ttbar.
NORM_ONLY_FEATURE = "deltar_w1w2"
NORM_ONLY_CHANNEL = "Feature1"
#: ...and in this one only the jet energy scale acts on ttbar, raising it by 10 %.
JES_FEATURE, JES_CHANNEL = "deltar_leptonbtoplep", "Feature0"


def split(name: str) -> tuple[str, str, str]:
    """``mass_w1w2_ttbar_pt_scale_up`` -> (mass_w1w2, ttbar, pt_scale_up)."""
    feature = max((f for f in SPEC_FEATURES if name.startswith(f + "_")), key=len)
    rest = name[len(feature) + 1 :]
    process = max((p for p in (*PROCESSES, "pseudodata") if rest.startswith(p)), key=len)
    return feature, process, rest[len(process) + 1 :]


def feature_histogram(feature: str, contents: np.ndarray, weight: float = 0.5) -> hist.Hist:
    low, high = SPEC_FEATURES[feature]
    h = hist.Hist(
        hist.axis.Regular(25, low, high, name="observable"), storage=hist.storage.Weight()
    )
    view = h.view(flow=False)
    view.value = contents
    view.variance = contents * weight
    return h


def shape(feature: str, process: str) -> np.ndarray:
    """A smooth, process-dependent shape normalised to the process's yield; some bins empty."""
    low, high = SPEC_FEATURES[feature]
    x = (np.linspace(low, high, 26)[:-1] + (high - low) / 50 - low) / (high - low)  # centres
    centre = {"ttbar": 0.4, "wjets": 0.6}.get(process, 0.5)
    density = np.exp(-0.5 * ((x - centre) / 0.15) ** 2)
    density[density < 1e-3] = 0.0  # the tails are empty, as in real features
    return YIELDS[process] * density / density.sum()


def ml_histograms(seed: int = 11) -> dict[str, hist.Hist]:
    """Every ML histogram the model needs, with known contents (no offset added)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in inference.required_templates(ml_fit.ml_cabinetry_config()):
        feature, process, variation = split(name)
        if process == "pseudodata":  # 0.9 x the model's ttbar, the rest as it is
            contents = sum(shape(feature, p) for p in PROCESSES) - 0.1 * shape(feature, "ttbar")
        elif process == "ttbar" and feature in (NORM_ONLY_FEATURE, JES_FEATURE):
            up = feature == JES_FEATURE and variation == "pt_scale_up"
            contents = shape(feature, process) * (1.1 if up else 1.0)
        elif not variation:
            contents = shape(feature, process)
        else:
            bins = np.linspace(-1, 1, 25)
            scale, slope = 1 + 0.05 * rng.standard_normal(), 0.05 * rng.standard_normal()
            contents = shape(feature, process) * scale * (1 + slope * bins)
        out[name] = feature_histogram(feature, contents)
    return out


#: A main-fit result with known values: ttbar_norm 1.3, two pulled nuisance parameters, the
#: luminosity at its nominal value, one MC-stat parameter of the main model only.
MAIN_VALUES = {
    "ttbar_norm": (1.3, 0.1),
    "Jet energy scale": (0.8, 0.6),
    "b-tag NP 2": (-0.5, 0.9),
    "Luminosity": (0.0, 1.0),
    "ME variation": (0.2, 0.7),
    "staterror_4j2b SR[3]": (1.02, 0.01),
}


def known_main_fit() -> inference.FitResult:
    labels = list(MAIN_VALUES)
    correlation = np.eye(len(labels))
    i, j = labels.index("ttbar_norm"), labels.index("Jet energy scale")
    correlation[i, j] = correlation[j, i] = -0.3
    return inference.FitResult.from_dict(
        {
            "poi": "ttbar_norm",
            "bestfit": 1.3,
            "uncertainty": 0.1,
            "labels": labels,
            "parameters": {k: {"value": v, "uncertainty": e} for k, (v, e) in MAIN_VALUES.items()},
            "correlation": correlation.tolist(),
            "best_twice_nll": 12.5,
            "strategy": None,
            "attempts": [{"strategy": None, "converged": True}],
        }
    )


@pytest.fixture(scope="module")
def histograms():
    return ml_histograms()


@pytest.fixture(scope="module")
def workspace(histograms):
    return ml_fit.build_ml_workspace(ml_fit.add_offset(histograms))


@pytest.fixture(scope="module")
def known(histograms, tmp_path_factory):
    """fit_ml with the known main-fit result (no plot files: the figures are built by the tests)."""
    out = tmp_path_factory.mktemp("ml-known")
    return ml_fit.fit_ml(histograms, known_main_fit(), out, formats=())


def sample_yields(prediction, channel: str, sample: str) -> np.ndarray:
    config = prediction.model.config
    return np.asarray(
        prediction.model_yields[config.channels.index(channel)][config.samples.index(sample)]
    )


def texts(fig) -> str:
    return " ".join(t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text")))


# --------------------------------------------------------------------------------------------
# Configuration and workspace


def test_config_has_the_20_feature_regions_and_the_main_model():
    import cabinetry

    config = ml_fit.ml_cabinetry_config()
    assert cabinetry.configuration.validate(config)
    regions = config["Regions"]
    assert [r["Name"] for r in regions] == [f"Feature{i}" for i in range(20)]
    assert [r["RegionPath"] for r in regions] == list(SPEC_FEATURES)
    for region, (low, high) in zip(regions, SPEC_FEATURES.values(), strict=True):
        edges = np.asarray(region["Binning"])
        assert len(edges) == 26 and edges[0] == low and edges[-1] == high
        np.testing.assert_allclose(np.diff(edges), (high - low) / 25)
        assert region["Variable"]
    assert config["Regions"][4]["Binning"][:3] == pytest.approx([50, 60, 70])  # as the reference
    main = inference.cabinetry_config()
    for key in ("Samples", "Systematics", "NormFactors"):
        assert config[key] == main[key], key
    general = config["General"]
    assert general["InputPath"] == "histograms_ml.root:{RegionPath}_{SamplePath}{VariationPath}"
    assert {k: v for k, v in general.items() if k != "InputPath"} == {
        k: v for k, v in main["General"].items() if k != "InputPath"
    }


def test_required_templates_are_the_ml_names():
    names = inference.required_templates(ml_fit.ml_cabinetry_config())
    assert len(names) == 20 * 62  # per feature: as many as per region of the main fit
    assert "mass_w1w2_ttbar_pt_scale_up" in names
    assert "pt_w1_wjets_scale_var_down" in names
    assert "qgl_btoplep_pseudodata" in names
    assert "btag_w2_single_top_tW_btag_var_3_down" in names
    assert "pt_w1_single_top_tW_ME_var" not in names  # ttbar only
    assert "deltar_w1w2_ttbar_scale_var_up" not in names  # W+jets only


def test_full_workspace_has_20_channels_of_25_bins(workspace):
    channels = {c["name"]: c for c in workspace["channels"]}
    assert list(channels) == [f"Feature{i}" for i in range(20)]
    for channel in channels.values():
        assert {len(s["data"]) for s in channel["samples"]} == {25}


def test_pruned_workspace_keeps_the_seven_channels(workspace, histograms):
    import pyhf

    pruned = ml_fit.prune_ml_workspace(workspace)
    assert [c["name"] for c in pruned["channels"]] == KEPT
    assert [o["name"] for o in pruned["observations"]] == KEPT
    pyhf.Workspace(pruned)  # valid by pyhf's schema
    # the observations are the pseudodata of each kept feature, with the 1e-6 offset
    observed = {o["name"]: np.asarray(o["data"]) for o in pruned["observations"]}
    expected = histograms["mass_w1w2btophad_pseudodata"].values() + ml_fit.ML_OFFSET
    np.testing.assert_allclose(observed["Feature6"], expected, rtol=1e-12)
    with pytest.raises(ValueError, match="Feature20"):
        ml_fit.prune_ml_workspace(workspace, keep=["Feature0", "Feature20"])


def test_missing_ml_histogram_is_named(histograms, tmp_path):
    partial = dict(histograms)
    del partial["pt_btophad_ttbar_btag_var_1_up"]
    with pytest.raises(inference.MissingTemplateError, match="pt_btophad_ttbar_btag_var_1_up"):
        ml_fit.fit_ml(partial, known_main_fit(), tmp_path)
    assert not list(tmp_path.iterdir())


def test_histogram_of_the_wrong_binning_is_refused(histograms, tmp_path):
    wrong = dict(histograms)
    wrong["mass_w1w2_wjets"] = feature_histogram("pt_w1", shape("mass_w1w2", "wjets"))
    with pytest.raises(inference.TemplateBinningError, match=r"mass_w1w2_wjets.*\[25, 300\]"):
        ml_fit.fit_ml(wrong, known_main_fit(), tmp_path)


# --------------------------------------------------------------------------------------------
# The main fit's parameters on the ML model


def test_mapped_parameters_are_the_main_fits(known):
    import cabinetry

    model = known.model
    parameters = known.parameters
    assert known.labels == list(model.config.par_names)
    shared = [k for k in MAIN_VALUES if k in parameters]
    assert sorted(known.from_main_fit) == sorted(shared)
    assert set(shared) == set(MAIN_VALUES) - {"staterror_4j2b SR[3]"}  # main-only: dropped
    for name in shared:
        assert parameters[name] == pytest.approx(MAIN_VALUES[name], abs=1e-12), name
    # the others are at their pre-fit values and uncertainties
    prefit_values = cabinetry.model_utils.asimov_parameters(model)
    prefit_errors = cabinetry.model_utils.prefit_uncertainties(model)
    others = [i for i, name in enumerate(known.labels) if name not in MAIN_VALUES]
    assert len(others) == 7 * 25 + 12 - 5  # the MC-stat parameters, 7 unfitted systematics
    for i in others:
        assert known.values[i] == prefit_values[i]
        assert known.errors[i] == prefit_errors[i]
    assert parameters["staterror_Feature0[12]"][0] == 1.0
    assert parameters["ttbar scale variations"][0] == 0.0
    # correlations carried over
    corr = known.fit_results.corr_mat
    i, j = known.labels.index("ttbar_norm"), known.labels.index("Jet energy scale")
    assert corr[i, j] == pytest.approx(-0.3)


def test_postfit_scales_ttbar_by_ttbar_norm_where_only_the_norm_factor_acts(known):
    prefit = sample_yields(known.prefit, NORM_ONLY_CHANNEL, "ttbar")
    postfit = sample_yields(known.postfit, NORM_ONLY_CHANNEL, "ttbar")
    assert prefit.sum() > 1000
    np.testing.assert_allclose(postfit, 1.3 * prefit, rtol=1e-9)
    # where the jet energy scale acts on ttbar, its pull of 0.8 adds to the norm factor
    prefit_jes = sample_yields(known.prefit, JES_CHANNEL, "ttbar")
    postfit_jes = sample_yields(known.postfit, JES_CHANNEL, "ttbar")
    ratio = postfit_jes.sum() / prefit_jes.sum()
    assert ratio == pytest.approx(1.3 * 1.08, rel=0.01)  # +10 % at 1 sigma, ~linear
    # the prediction is the mapped parameters' (a pre-fit one would be the nominal)
    for channel in KEPT:
        assert not np.allclose(
            np.sum(known.prefit.model_yields[KEPT.index(channel)], axis=0),
            np.sum(known.postfit.model_yields[KEPT.index(channel)], axis=0),
        ), channel


def test_postfit_equals_prefit_for_a_main_fit_at_the_nominal_values(histograms, tmp_path):
    nominal = known_main_fit()
    nominal.values = [1.0 if k == "ttbar_norm" else 0.0 for k in nominal.labels]
    nominal.values[nominal.labels.index("staterror_4j2b SR[3]")] = 1.0
    summary = ml_fit.fit_ml(histograms, nominal, tmp_path, formats=())
    np.testing.assert_allclose(  # every channel, every sample
        np.asarray(summary.postfit.model_yields),
        np.asarray(summary.prefit.model_yields),
        rtol=1e-12,
    )


# --------------------------------------------------------------------------------------------
# Plots and files


def test_data_mc_figures_have_the_pre_and_post_fit_panels(known):
    builders = ml_fit.data_mc_figures(known, label=plots.SYNTHETIC_LABEL, experiment="AGC")
    assert list(builders) == [f"ml_data_mc_{f}" for f in KEPT_FEATURES]
    with plots._style():
        fig = builders["ml_data_mc_mass_w1w2"]()
    assert len(fig.axes) == 4
    main_pre, main_post, ratio_pre, ratio_post = fig.axes
    assert ratio_pre.get_xlim() == pytest.approx((50, 300))
    assert ratio_post.get_xlabel() == ml_fit.ML_FEATURE_LABELS["mass_w1w2"]
    assert main_pre.get_ylabel() == "Events / 10 GeV"
    assert "Feature5, pre-fit" == main_pre.get_legend().get_title().get_text()
    assert "Feature5, post-fit" == main_post.get_legend().get_title().get_text()
    text = texts(fig)
    assert "AGC" in text and plots.SYNTHETIC_LABEL in text and "Open Data" not in text
    with plots._style():
        fig = builders["ml_data_mc_deltar_w1w2"]()
    assert fig.axes[0].get_ylabel() == "Events / 0.24"  # no unit
    # 25 data/model points per panel
    ratios = np.asarray(fig.axes[2].containers[0].lines[0].get_ydata(), dtype=float)
    assert ratios.shape == (25,)


def test_feature_grid_is_10_by_2_stacks(histograms):
    with plots._style():
        fig = ml_fit.feature_grid(histograms, label=plots.OPEN_DATA_LABEL, experiment="CMS")
    assert len(fig.axes) == 20
    positions = {
        (ax.get_subplotspec().rowspan.start, ax.get_subplotspec().colspan.start) for ax in fig.axes
    }
    assert positions == {(r, c) for r in range(10) for c in range(2)}
    first_column = [ax for ax in fig.axes if ax.get_subplotspec().colspan.start == 0]
    assert [ax.get_xlabel() for ax in first_column] == [
        ml_fit.ML_FEATURE_LABELS[f] for f in list(SPEC_FEATURES)[:10]
    ]
    ax = fig.axes[0]  # deltar_leptonbtoplep: the stack tops at the sum of the processes
    assert ax.get_xlim() == pytest.approx((0, 6))
    total = sum(histograms[f"deltar_leptonbtoplep_{p}"].values() for p in PROCESSES)
    assert ax.get_ylim()[1] >= total.max()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0] == "Pseudodata" and set(legend) == {
        "Pseudodata",
        *plots.PROCESS_LABELS.values(),
    }
    text = texts(fig)
    assert "CMS" in text and "Open Data" in text


@pytest.mark.slow
def test_fit_ml_end_to_end_with_the_main_fit(histograms, tmp_path):
    main = inference.fit_histograms(toy_histograms(), output_dir=tmp_path / "main")
    summary = ml_fit.fit_ml(
        histograms, main, tmp_path, label=plots.SYNTHETIC_LABEL, experiment="AGC"
    )
    stems = sorted({p.stem for p in summary.plots})
    assert stems == sorted(["ml_features"] + [f"ml_data_mc_{f}" for f in KEPT_FEATURES])
    assert sorted(p.suffix for p in summary.plots) == [".pdf"] * 8 + [".png"] * 8
    for path in summary.paths:
        assert path.exists() and path.stat().st_size > 0, path
    for path in summary.plots:
        if path.suffix == ".pdf":
            assert path.read_bytes().startswith(b"%PDF") and path.stat().st_size > 5_000
        else:
            image = matplotlib.image.imread(path)
            assert image.shape[0] >= 400 and image[..., :3].std() > 0.1, path.name
    grid = matplotlib.image.imread(tmp_path / "ml_features.png")
    assert grid.shape[0] > 2.5 * grid.shape[1]  # ten rows, two columns
    written = json.loads(summary.workspace.read_text())
    assert summary.workspace == tmp_path / "workspace_ml.json"
    assert [c["name"] for c in written["channels"]] == KEPT
    assert not list(tmp_path.glob(".*.tmp"))
    # the real fit's parameters carried over
    assert summary.parameters["ttbar_norm"] == pytest.approx((main.bestfit, main.uncertainty))
    for name in main.labels:
        if name in summary.parameters:
            assert summary.parameters[name] == main.parameters[name]
    assert not any(n.startswith("staterror_4j") for n in summary.from_main_fit)
    assert len(summary.from_main_fit) == 12  # ttbar_norm and the 11 systematics


@pytest.mark.slow
def test_fit_ml_from_histograms_ml_root_and_fit_result_json(histograms, tmp_path):
    """The file carries the offset already: the same model as from the histograms in memory."""
    run = tmp_path / "run"
    write_root(ml_fit.add_offset(histograms), run / "histograms_ml.root")
    (run / "fit_result.json").write_text(json.dumps(known_main_fit().to_dict()))
    from_file = ml_fit.fit_ml(run, run, tmp_path / "file", formats=())
    from_memory = ml_fit.fit_ml(histograms, known_main_fit(), tmp_path / "memory", formats=())
    assert from_file.plots == [] and from_file.paths == [tmp_path / "file" / "workspace_ml.json"]
    a, b = (json.loads(s.workspace.read_text()) for s in (from_file, from_memory))
    for channel_a, channel_b in zip(a["channels"], b["channels"], strict=True):
        for sample_a, sample_b in zip(channel_a["samples"], channel_b["samples"], strict=True):
            np.testing.assert_allclose(sample_a["data"], sample_b["data"], rtol=0, atol=1e-9)
    for obs_a, obs_b in zip(a["observations"], b["observations"], strict=True):
        np.testing.assert_allclose(obs_a["data"], obs_b["data"], rtol=0, atol=1e-9)
    # an empty bin holds the offset, once
    empty = histograms["deltar_w1w2_ttbar"].values() == 0
    assert empty.any()
    ttbar = next(s for s in a["channels"][1]["samples"] if s["name"] == "ttbar")
    np.testing.assert_allclose(np.asarray(ttbar["data"])[empty], 1e-6, rtol=1e-9)
    np.testing.assert_allclose(from_file.values, from_memory.values)


def test_missing_histograms_ml_root_is_reported(tmp_path):
    with pytest.raises(inference.HistogramFileError, match="histograms_ml.root"):
        ml_fit.fit_ml(tmp_path, known_main_fit(), tmp_path)


def reference_ml_histograms() -> list[Path]:
    if not SHARED_DATA.is_dir():
        return []
    return sorted(
        p
        for pattern in ("**/histograms_ml.root", "**/histos_*ml*.root", "**/histos_*ml*.json")
        for p in SHARED_DATA.glob(pattern)
    )


def test_reference_ml_histograms(tmp_path):
    """The reference's own ML histograms, where the shared data has them."""
    found = reference_ml_histograms()
    if not found:
        pytest.skip(
            f"no reference ML histograms (histograms_ml.root, histos_*ml*) under {SHARED_DATA}: "
            "the shared data holds only the main-fit reference JSONs"
        )
    main_json = SHARED_DATA / "agc" / "reference" / "histos_1_file_per_process.json"
    main = inference.fit_run(main_json, output_dir=tmp_path / "main")
    summary = ml_fit.fit_ml(found[0], main, tmp_path, formats=("png",))
    assert summary.channels == KEPT
    assert summary.parameters["ttbar_norm"][0] == pytest.approx(main.bestfit)
