"""Statistical model and fit (agc.inference): config, rebinning, reference fits, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import hist
import numpy as np
import pytest

from agc import inference
from agc.histograms import new_histogram, write_root

REFERENCE = Path(__file__).parents[1].parent / "shared" / "data" / "agc" / "reference"

#: Published re-fits of the reference JSONs (spec §6): ttbar_norm best fit and uncertainty.
PUBLISHED = {"1": (0.960, 0.104), "5": (0.953, 0.089), "all": (0.946, 0.083)}


def reference_json(n: str) -> Path:
    path = REFERENCE / f"histos_{n}_file_per_process.json"
    if not path.exists():
        pytest.skip(f"reference histograms not found at {path} (../shared/data beside the project)")
    return path


def toy_histograms(weight: float = 0.5) -> dict[str, hist.Hist]:
    """A complete, well-behaved set of the fit's input histograms (25 bins in [50, 550])."""
    centers = new_histogram().axes[0].centers
    shapes = {
        "ttbar": 4000 * np.exp(-0.5 * ((centers - 180) / 60) ** 2) + 200,
        "wjets": 600 * np.exp(-centers / 200),
        "single_top_s_chan": np.full(25, 5.0),
        "single_top_t_chan": np.full(25, 40.0),
        "single_top_tW": np.full(25, 80.0),
    }
    rng = np.random.default_rng(1)
    out = {}
    for name in inference.required_templates(inference.cabinetry_config()):
        region, rest = name.split("_", 1)
        process = next(
            (p for p in sorted(shapes, key=len, reverse=True) if rest.startswith(p)), "pseudodata"
        )
        if process == "pseudodata":  # 0.95 x the model's ttbar, other processes as they are
            contents = sum(shapes.values()) - 0.05 * shapes["ttbar"]
        else:
            variation = rest[len(process) + 1 :]
            scale = 1 + 0.05 * rng.standard_normal() if variation else 1.0
            slope = 0.02 * rng.standard_normal() if variation else 0.0
            contents = shapes[process] * scale * (1 + slope * (centers - 300) / 250)
        contents = contents * (1.0 if region == "4j1b" else 1.5)
        h = new_histogram(region)
        view = h.view(flow=False)
        view.value = contents
        view.variance = contents * weight
        out[name] = h
    return out


def test_config_is_the_reference_model():
    config = inference.cabinetry_config("some/histograms.root")
    assert [r["Name"] for r in config["Regions"]] == ["4j1b CR", "4j2b SR"]
    for region in config["Regions"]:
        assert region["Binning"] == pytest.approx(np.arange(110, 551, 40))
    samples = {s["Name"]: s for s in config["Samples"]}
    assert samples["Pseudodata"]["Data"] is True
    assert set(samples) == {
        "Pseudodata",
        "ttbar",
        "W+jets",
        "single top, s-channel",
        "single top, t-channel",
        "tW",
    }
    systematics = {s["Name"]: s for s in config["Systematics"]}
    assert len(systematics) == 11
    assert systematics["ME variation"]["Down"] == {"Symmetrize": True}
    assert systematics["ttbar scale variations"]["Down"]["VariationPath"] == "_scaledown"
    assert systematics["W+jets scale variations"]["Samples"] == "W+jets"
    assert "Samples" not in systematics["Jet energy resolution"]  # all MC
    assert systematics["Luminosity"]["Type"] == "Normalization"
    assert config["NormFactors"] == [
        {"Name": "ttbar_norm", "Samples": "ttbar", "Nominal": 1.0, "Bounds": [0, 10]}
    ]
    assert config["General"]["InputPath"].startswith("some/histograms.root:")


def test_required_templates_follow_the_naming():
    names = inference.required_templates(inference.cabinetry_config())
    assert "4j2b_ttbar_PS_var" in names
    assert "4j1b_pseudodata" in names
    assert "4j1b_wjets_scale_var_down" in names
    assert "4j1b_ttbar_scale_var_up" not in names  # W+jets only
    assert "4j1b_single_top_tW_ME_var" not in names  # ttbar only
    # 2 regions x (pseudodata + ttbar 15 + 3 single top x 11 + wjets 13) = 124, as in a full run
    assert len(names) == 124


def test_rebinning_router_gives_eleven_40_gev_bins():
    h = new_histogram("4j1b")
    h.fill(observable=np.array([60.0, 115.0, 125.0, 149.0, 545.0, 600.0]), weight=2.0)
    rebinned = hist.Hist(h)[inference.REBIN]
    assert rebinned.axes[0].edges == pytest.approx(inference.FIT_BINNING)
    assert rebinned.values()[0] == pytest.approx(6.0)  # 115 and 125 in [110, 150), 149 too
    assert rebinned.values()[-1] == pytest.approx(2.0)
    assert rebinned.values().sum() == pytest.approx(8.0)


def test_missing_template_is_named(tmp_path):
    histograms = toy_histograms()
    del histograms["4j2b_ttbar_PS_var"]
    with pytest.raises(inference.MissingTemplateError, match="4j2b_ttbar_PS_var") as err:
        inference.build_workspace(histograms, tmp_path)
    assert "1 histogram(s)" in str(err.value) and "Re-run" in str(err.value)
    assert not (tmp_path / "workspace.json").exists()


def test_missing_template_from_file(tmp_path):
    histograms = toy_histograms()
    del histograms["4j1b_pseudodata"]
    write_root(histograms, tmp_path / "histograms.root")
    with pytest.raises(inference.MissingTemplateError, match=r"histograms\.root.*4j1b_pseudodata"):
        inference.fit_run(tmp_path)


def test_fit_run_on_a_run_directory(tmp_path):
    write_root(toy_histograms(), tmp_path / "histograms.root")
    result = inference.fit_run(tmp_path)
    assert result.converged and result.strategy is None
    assert result.bestfit == pytest.approx(0.95, abs=0.1)  # systematics pull a little
    assert 0 < result.uncertainty < 0.2
    assert result.info["variances"] == "stored sumw2"
    written = json.loads((tmp_path / "fit_result.json").read_text())
    assert written["bestfit"] == pytest.approx(result.bestfit)
    assert set(written["parameters"]) == set(result.labels)
    assert len(written["correlation"]) == len(result.labels)
    workspace = json.loads((tmp_path / "workspace.json").read_text())
    assert {c["name"] for c in workspace["channels"]} == {"4j1b CR", "4j2b SR"}
    assert not list(tmp_path.glob(".*.tmp"))


def test_fit_error_when_no_strategy_converges(monkeypatch):
    import cabinetry
    import pyhf

    workspace = inference.build_workspace(toy_histograms())
    tried = []

    def failing_fit(model, data, *, strategy=None, **kwargs):
        tried.append(strategy)
        raise pyhf.exceptions.FailedMinimization(type("R", (), {"message": "no luck"})())

    monkeypatch.setattr(cabinetry.fit, "fit", failing_fit)
    with pytest.raises(
        inference.FitError, match="did not converge with Minuit strategies default, 2"
    ):
        inference.fit(workspace)
    assert tried == [None, 2]


def test_reference_weights_find_n_files():
    from agc.histograms import read_histograms

    found = inference.reference_weights(read_histograms(reference_json("1")))
    assert found is not None
    n_files, weights = found
    assert n_files == 1
    assert weights["ttbar__nominal"] == pytest.approx(1.84753, rel=1e-5)
    assert weights["wjets__nominal"] == pytest.approx(41.8835, rel=1e-5)


def test_reference_weights_reject_other_histograms():
    assert inference.reference_weights(toy_histograms()) is None


@pytest.mark.parametrize("n", ["1", "5"])
def test_reference_fit_reproduces_published_result(n, tmp_path):
    result = inference.fit_run(reference_json(n), output_dir=tmp_path)
    bestfit, uncertainty = PUBLISHED[n]
    assert result.bestfit == pytest.approx(bestfit, abs=1e-3)
    assert result.uncertainty == pytest.approx(uncertainty, abs=1e-3)
    assert result.strategy is None  # converges with the defaults (spec §11.6)
    assert result.info["n_files"] == int(n)
    assert len(result.labels) == 12 + 22  # 11 NPs + ttbar_norm, 22 staterror bins
    saved = json.loads((tmp_path / "fit_result.json").read_text())
    assert saved["bestfit"] == pytest.approx(result.bestfit)


def test_all_files_reference_fit_converges_with_strategy_2(tmp_path):
    result = inference.fit_run(reference_json("all"), output_dir=tmp_path)
    bestfit, uncertainty = PUBLISHED["all"]
    assert result.converged
    assert result.bestfit == pytest.approx(bestfit, abs=1e-3)
    assert result.uncertainty == pytest.approx(uncertainty, abs=1e-3)
    # the default strategy fails on these histograms with cabinetry 0.6 / pyhf 0.7.6
    assert [a["converged"] for a in result.attempts] in ([True], [False, True])
    assert result.strategy == (None if len(result.attempts) == 1 else 2)
    assert result.info["n_files"] == -1


def test_json_input_gets_variances_from_the_run_summary(tmp_path, caplog):
    from agc.histograms import write_json

    histograms = toy_histograms()
    write_json(histograms, tmp_path / "histograms.json")
    no_summary = inference.load_fit_input(tmp_path / "histograms.json")
    assert no_summary.variances.startswith("|content| (Poisson")
    assert "cannot tell the per-event weights" in caplog.text

    weights = {"ttbar__nominal": 2.0, "ttbar__PS_var": 3.0, "wjets__nominal": 40.0}
    (tmp_path / "summary.json").write_text(json.dumps({"weights": weights}))
    fit_input = inference.load_fit_input(tmp_path)  # a run directory without histograms.root
    assert fit_input.variances == "|content| * w, w from summary.json"
    h = fit_input.histograms
    for name, w in [
        ("4j1b_ttbar", 2.0),
        ("4j2b_ttbar_btag_var_1_up", 2.0),
        ("4j2b_ttbar_PS_var", 3.0),
        ("4j1b_wjets_scale_var_up", 40.0),
    ]:
        assert h[name].variances() == pytest.approx(h[name].values() * w)
    assert h["4j1b_pseudodata"].variances() == pytest.approx(
        histograms["4j1b_pseudodata"].values()
    )  # data: read_histograms' default, unused by the fit


def test_non_positive_normalisation_effect_is_repaired(caplog):
    # very few MC events: a +400 % variation, symmetrised to -300 %, would make the NLL NaN
    histograms = toy_histograms()
    histograms["4j2b_wjets_pt_scale_up"] = histograms["4j2b_wjets"] * 5
    workspace = inference.build_workspace(histograms)
    channel = next(c for c in workspace["channels"] if c["name"] == "4j2b SR")
    sample = next(s for s in channel["samples"] if s["name"] == "W+jets")
    normsys = next(
        m for m in sample["modifiers"] if m["name"] == "Jet energy scale" and m["type"] == "normsys"
    )
    assert normsys["data"] == pytest.approx({"hi": 5.0, "lo": 0.2})
    assert "4j2b SR / W+jets / Jet energy scale" in caplog.text
    assert np.isfinite(inference.fit(workspace).bestfit)
