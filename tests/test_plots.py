"""Plots (agc.plots): the files are written and the figures hold what they should."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest
from test_inference import toy_histograms

from agc import inference, plots
from agc.histograms import write_root

BASE_PLOTS = ["stack_4j1b", "stack_4j2b", "ttbar_btag_variations", "ttbar_jet_variations"]
FIT_PLOTS = ["pulls", "data_mc_4j1b", "data_mc_4j2b"]


@pytest.fixture(scope="module")
def histograms():
    return toy_histograms()


@pytest.fixture(scope="module")
def fitted(histograms):
    return inference.fit(inference.build_workspace(histograms))


def legend_texts(ax) -> list[str]:
    legend = ax.get_legend()
    assert legend is not None, "axes have no legend"
    return [t.get_text() for t in legend.get_texts()]


def all_texts(fig) -> str:
    return " ".join(t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text")))


def assert_png_is_a_real_plot(path, min_width=600):
    image = matplotlib.image.imread(path)
    height, width = image.shape[:2]
    assert width >= min_width and height >= 400, f"{path.name} is only {width}x{height}"
    gray = image[..., :3].mean(axis=2)
    assert gray.std() > 0.1, f"{path.name} looks blank"
    assert (gray < 0.2).mean() > 0.005, f"{path.name} has almost no dark ink (text, axes)"


def test_stacked_region_content(histograms):
    with plots._style():
        fig = plots.stacked_region(
            histograms, "4j1b", start=110, rebin=2, label="Open Data", experiment="CMS"
        )
    ax = fig.axes[0]
    assert ax.get_xlabel() == "$H_T$ [GeV]"
    assert ax.get_ylabel() == "Events / 40 GeV"
    assert ax.get_xlim() == pytest.approx((110, 550))
    labels = legend_texts(ax)
    assert labels[0] == "Pseudodata" and labels[1] == r"$t\bar{t}$"  # data, then stack top-down
    assert set(labels) == {"Pseudodata", *plots.PROCESS_LABELS.values()}
    assert ax.get_legend().get_title().get_text() == plots.REGION_TITLES["4j1b"]
    # legend and label fit above the highest point
    assert ax.get_ylim()[1] >= 1.5 * max(h.values().max() for h in histograms.values())
    text = all_texts(fig)
    assert "CMS" in text and "Open Data" in text and "3.4" in text and "13 TeV" in text


def test_variation_plot_has_ratio_panel(histograms):
    with plots._style():
        fig = plots.variations(
            histograms,
            "4j2b",
            "ttbar",
            {"pt_scale_up": "JES up", "pt_res_up": "JER up"},
            start=None,
            rebin=1,
            label="Synthetic",
            experiment="AGC",
            title="ttbar",
        )
    ax, rax = fig.axes
    assert legend_texts(ax) == ["Nominal", "JES up", "JER up"]
    assert rax.get_xlabel() == "$m_{bjj}$ [GeV]"
    assert rax.get_ylabel() == "Var. / nom."
    low, high = rax.get_ylim()
    assert low < 1 < high
    assert "AGC" in all_texts(fig) and "Synthetic" in all_texts(fig)


def test_pulls_exclude_poi_and_mc_stat(fitted):
    with plots._style():
        fig = plots.pulls(
            fitted.labels, fitted.values, fitted.errors, label="Open Data", experiment="CMS"
        )
    names = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert "ttbar_norm" not in names
    assert not any(n.startswith("staterror") for n in names)
    assert len(names) == 11 and "Luminosity" in names and "b-tag NP 4" in names


def test_data_mc_grid(fitted):
    import cabinetry

    prefit = cabinetry.model_utils.prediction(fitted.model)
    postfit = cabinetry.model_utils.prediction(fitted.model, fit_results=fitted.cabinetry_result)
    with plots._style():
        fig = plots.data_mc_prefit_postfit(
            prefit, postfit, fitted.data, "4j2b SR", label="Open Data", experiment="CMS"
        )
    main_pre, main_post, ratio_pre, ratio_post = fig.axes
    assert ratio_pre.get_ylim() == pytest.approx((0.5, 1.5))
    assert ratio_post.get_ylim() == pytest.approx((0.5, 1.5))
    assert ratio_pre.get_ylabel() == "Data / model"
    assert ratio_post.get_xlabel() == "$m_{bjj}$ [GeV]"
    assert "pre-fit" in main_pre.get_legend().get_title().get_text()
    assert "post-fit" in main_post.get_legend().get_title().get_text()
    assert {"Pseudodata", "Uncertainty", r"$t\bar{t}$"} <= set(legend_texts(main_post))
    # one data/model point per fit bin, all inside the [0.5, 1.5] panel
    for rax in (ratio_pre, ratio_post):
        ratios = np.asarray(rax.containers[0].lines[0].get_ydata(), dtype=float)
        assert ratios.shape == (11,)
        assert np.all((ratios > 0.5) & (ratios < 1.5))


@pytest.mark.slow
def test_make_plots_writes_png_and_pdf(histograms, fitted, tmp_path):
    paths = plots.make_plots(
        histograms, tmp_path, fitted, label=plots.SYNTHETIC_LABEL, experiment="AGC"
    )
    names = sorted(p.name for p in paths)
    expected = sorted(f"{n}.{ext}" for n in BASE_PLOTS + FIT_PLOTS for ext in ("png", "pdf"))
    assert names == expected
    for path in paths:
        if path.suffix == ".png":
            assert_png_is_a_real_plot(path)
        else:
            assert path.read_bytes().startswith(b"%PDF") and path.stat().st_size > 5_000


def test_make_plots_without_fit_skips_missing_inputs(histograms, tmp_path, caplog):
    partial = {n: h for n, h in histograms.items() if not n.startswith("4j2b_ttbar")}
    paths = plots.make_plots(partial, tmp_path, formats=("png",))
    assert sorted(p.stem for p in paths) == ["stack_4j1b", "stack_4j2b", "ttbar_btag_variations"]
    assert "ttbar_jet_variations skipped" in caplog.text


@pytest.mark.slow
def test_plot_run_from_files(histograms, tmp_path):
    write_root(histograms, tmp_path / "histograms.root")
    inference.fit_run(tmp_path)
    paths = plots.plot_run(tmp_path, formats=("png",))
    assert sorted(p.stem for p in paths) == sorted(BASE_PLOTS + FIT_PLOTS)
    assert_png_is_a_real_plot(tmp_path / "data_mc_4j1b.png", min_width=1200)
