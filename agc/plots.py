"""The AGC ttbar plots (spec §6), in a CMS-like mplhep style, as PNG and PDF.

:func:`make_plots` draws everything that its inputs allow into one directory:

- ``stack_4j1b`` / ``stack_4j2b``: stacked nominal templates with the pseudodata
  (4j1b H_T from 110 GeV in 40 GeV bins, as fitted; 4j2b m_bjj over the full range);
- ``ttbar_btag_variations``: ttbar 4j1b H_T, nominal vs ``btag_var_{0..3}_up``;
- ``ttbar_jet_variations``: ttbar 4j2b m_bjj, nominal vs ``pt_scale_up`` and ``pt_res_up``;
- with a fit result: ``pulls`` (nuisance parameters, ``ttbar_norm`` and MC-stat excluded) and
  ``data_mc_4j1b`` / ``data_mc_4j2b``: pre-fit | post-fit data/model with ratio panels.

The ML validation (:func:`agc.ml_fit.fit_ml`) draws with the same pieces: the pre-/post-fit
grid of :func:`data_mc_prefit_postfit` for each kept feature channel, and the grid of stacked
features of :func:`feature_stacks`; :func:`draw_figure` builds and saves any one figure.

Figures are built as :class:`matplotlib.figure.Figure` objects (no pyplot state, no GUI), under
``mplhep.style.CMS`` applied only while drawing.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import hist
import matplotlib as mpl
import mplhep
import numpy as np
from matplotlib.figure import Figure

from agc.constants import LUMINOSITY_PB
from agc.vocabulary import (
    FIT_BINNING,
    FIT_REBIN,
    FIT_START,
    N_BTAG_VARIATIONS,
    OBSERVABLE_LABELS,
    PSEUDODATA,
    btag_variation,
    histogram_name,
    process_of_cabinetry_sample,
    region_of_channel,
)

log = logging.getLogger(__name__)

#: Integrated luminosity in fb^-1 for the labels (3378 pb^-1).
LUMINOSITY_FB = LUMINOSITY_PB / 1000.0

#: Label text for the real AGC inputs (CMS 2015 open data simulation).
OPEN_DATA_LABEL = "Open Data"
#: Label text for the harness's synthetic events; use with ``experiment="AGC"``.
SYNTHETIC_LABEL = "Simulation (synthetic)"

REGION_TITLES = {"4j1b": r"$\geq$4 jets, 1 b-tag", "4j2b": r"$\geq$4 jets, $\geq$2 b-tags"}

#: Processes in stacking order (bottom to top) and their legend labels.
PROCESS_LABELS: dict[str, str] = {
    "single_top_s_chan": "Single top, s-channel",
    "single_top_t_chan": "Single top, t-channel",
    "single_top_tW": "tW",
    "wjets": "W+jets",
    "ttbar": r"$t\bar{t}$",
}

#: Colour-blind safe palette (the 6-colour Petroff scheme CMS recommends).
COLORS: dict[str, str] = {
    "ttbar": "#e42536",
    "wjets": "#5790fc",
    "single_top_tW": "#f89c20",
    "single_top_t_chan": "#964a8b",
    "single_top_s_chan": "#9c9ca1",
}
VARIATION_COLORS = ("black", "#5790fc", "#f89c20", "#e42536", "#964a8b", "#7a21dd")

FORMATS = ("png", "pdf")


@contextmanager
def _style():
    """mplhep's CMS style while drawing; pyplot left as it was.

    ``mplhep.label.exp_label`` calls ``pyplot.gca()`` while placing its text even when it is
    given an axis (mplhep 1.x), which opens a pyplot figure that would stay behind in a
    notebook: figures opened meanwhile are closed.
    """
    import matplotlib.pyplot as plt

    before = set(plt.get_fignums())
    with mpl.rc_context():
        mplhep.style.use("CMS")
        try:
            yield
        finally:
            for number in set(plt.get_fignums()) - before:
                plt.close(number)


def _label(ax, label: str, experiment: str) -> None:
    """Experiment label (left, above the frame) and luminosity / energy (right)."""
    # a long label (e.g. the synthetic one) is set smaller so it does not run into the lumi
    long_label = len(experiment) + len(label) > 16
    fontsize = mpl.rcParams["font.size"] * (0.78 if long_label else 1.0)
    mplhep.label.exp_label(
        exp=experiment,
        text=label,
        data=True,
        lumi=LUMINOSITY_FB,
        lumi_format="{0:.1f}",
        com=13,
        ax=ax,
        loc=0,
        fontsize=fontsize,
    )


def draw_figure(
    build: Callable[[], Figure], output_dir: Path, name: str, formats: Sequence[str] = FORMATS
) -> list[Path]:
    """Build a figure under the plot style and save it as ``{name}.{format}`` in ``output_dir``.

    A figure whose inputs are missing (``build`` raises ValueError) is skipped with a warning.

    Returns:
        The files written (none if skipped).
    """
    with _style():
        try:
            fig = build()
        except ValueError as err:
            log.warning("plot %s skipped: %s", name, err)
            return []
        return _save(fig, output_dir, name, formats)


def _save(fig: Figure, output_dir: Path, name: str, formats: Sequence[str]) -> list[Path]:
    paths = []
    for fmt in formats:
        path = output_dir / f"{name}.{fmt}"
        fig.savefig(path, dpi=100 if fmt == "png" else None, bbox_inches="tight", pad_inches=0.15)
        paths.append(path)
    return paths


def _rebinned(h: hist.Hist, start: float | None, rebin: int) -> hist.Hist:
    h = hist.Hist(h)
    return cast(hist.Hist, h[(start * 1j if start is not None else None) :: hist.rebin(rebin)])


def _per_bin_label(edges: Sequence[float] | np.ndarray, unit: str = "GeV") -> str:
    """``Events / 40 GeV`` (``Events / 0.24`` without a unit); ``Events / bin`` if they vary."""
    widths = np.unique(np.round(np.diff(np.asarray(edges, dtype=float)), 6))
    if len(widths) != 1:
        return "Events / bin"
    return f"Events / {widths[0]:g}" + (f" {unit}" if unit else "")


def _unit(xlabel: str) -> str:
    """The unit of an axis label ending in ``[unit]`` (``"GeV"``), else ``""``."""
    text = xlabel.strip()
    if text.endswith("]") and "[" in text:
        return text[text.rindex("[") + 1 : -1].strip()
    return ""


def _headroom(ax, top: float, factor: float = 1.6) -> None:
    """Leave space above the highest point for the labels and the legend."""
    ax.set_ylim(0, top * factor if top > 0 else 1)


# --------------------------------------------------------------------------------------------
# Histogram plots


def _stack(ax, processes: Sequence[str], histograms: Sequence[hist.Hist]) -> float:
    """Draw ``histograms`` of ``processes`` stacked (filled, with the process colours and
    labels); returns the height of the stack."""
    mplhep.histplot(
        [h.values() for h in histograms],
        histograms[0].axes[0].edges,
        ax=ax,
        stack=True,
        histtype="fill",
        label=[PROCESS_LABELS[p] for p in processes],
        color=[COLORS[p] for p in processes],
        edgecolor="black",
        linewidth=0.5,
        flow=None,
    )
    return float(np.sum([h.values() for h in histograms], axis=0).max())


def stacked_region(
    histograms: Mapping[str, hist.Hist],
    region: str,
    *,
    start: float | None,
    rebin: int,
    label: str,
    experiment: str,
) -> Figure:
    """Stacked nominal MC of ``region`` with the pseudodata as points."""
    names = [(p, histogram_name(region, p)) for p in PROCESS_LABELS]
    present = [(p, histograms[n]) for p, n in names if n in histograms]
    if not present:
        raise ValueError(f"no nominal {region} histograms to plot")
    stack = [_rebinned(h, start, rebin) for _, h in present]
    fig = Figure(figsize=(10, 9))
    ax = fig.add_subplot()
    top = _stack(ax, [p for p, _ in present], stack)
    data_name = histogram_name(region, PSEUDODATA)
    if data_name in histograms:
        data = _rebinned(histograms[data_name], start, rebin)
        values = data.values()
        mplhep.histplot(
            values,
            data.axes[0].edges,
            yerr=np.sqrt(np.abs(values)),
            ax=ax,
            histtype="errorbar",
            color="black",
            label="Pseudodata",
            flow=None,
        )
        top = max(top, float(values.max()))
    _headroom(ax, top)
    ax.set_xlabel(OBSERVABLE_LABELS[region])
    ax.set_ylabel(_per_bin_label(stack[0].axes[0].edges))
    ax.set_xlim(stack[0].axes[0].edges[0], stack[0].axes[0].edges[-1])
    _legend(ax, title=REGION_TITLES[region])
    _label(ax, label, experiment)
    return fig


def _legend(ax, *, title: str, ncols: int = 1, fontsize: str = "small") -> None:
    """Legend with data first, then the uncertainty, then the stack from top to bottom."""
    handles, labels = ax.get_legend_handles_labels()
    stack_rank = {text: i for i, text in enumerate(PROCESS_LABELS.values())}

    def rank(text: str) -> float:
        if text == "Pseudodata":
            return -2
        if text == "Uncertainty":
            return -1
        return len(stack_rank) - stack_rank.get(text, -1)

    order = sorted(range(len(labels)), key=lambda i: rank(labels[i]))
    ax.legend(
        [handles[i] for i in order],
        [labels[i] for i in order],
        loc="upper right",
        ncols=ncols,
        fontsize=fontsize,
        title=title,
        title_fontsize=fontsize,
    )


def variations(
    histograms: Mapping[str, hist.Hist],
    region: str,
    process: str,
    variation_labels: Mapping[str, str],
    *,
    start: float | None,
    rebin: int,
    label: str,
    experiment: str,
    title: str,
) -> Figure:
    """Nominal vs variations of one process in one region, with a variation/nominal panel."""
    nominal_name = histogram_name(region, process)
    if nominal_name not in histograms:
        raise ValueError(f"histogram {nominal_name!r} is missing")
    curves = {"nominal": ("Nominal", _rebinned(histograms[nominal_name], start, rebin))}
    for variation, text in variation_labels.items():
        name = histogram_name(region, process, variation)
        if name in histograms:
            curves[variation] = (text, _rebinned(histograms[name], start, rebin))
        else:
            log.warning("variation plot: %s is missing, not drawn", name)
    fig = Figure(figsize=(10, 10))
    ax, rax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (3, 1), "hspace": 0.05})
    nominal = curves["nominal"][1].values()
    edges = curves["nominal"][1].axes[0].edges
    top, spread = 0.0, 0.05
    for (key, (text, h)), color in zip(curves.items(), VARIATION_COLORS, strict=False):
        values = h.values()
        style = {
            "linewidth": 2.5 if key == "nominal" else 1.8,
            "linestyle": "-" if key == "nominal" else "--",
        }
        mplhep.histplot(
            values, edges, ax=ax, histtype="step", color=color, label=text, flow=None, **style
        )
        if key != "nominal":
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(nominal > 0, values / nominal, np.nan)
            mplhep.histplot(ratio, edges, ax=rax, histtype="step", color=color, flow=None, **style)
            spread = max(spread, float(np.nanmax(np.abs(ratio - 1.0), initial=0.0)))
        top = max(top, float(values.max()))
    rax.axhline(1.0, color="black", linewidth=1)
    _headroom(ax, top, 1.5)
    ax.set_ylabel(_per_bin_label(curves["nominal"][1].axes[0].edges))
    ax.set_xlabel("")
    ax.legend(loc="upper right", fontsize="small", title=title, title_fontsize="small")
    rax.set_ylabel("Var. / nom.")
    rax.set_xlabel(OBSERVABLE_LABELS[region])
    rax.set_xlim(edges[0], edges[-1])
    margin = min(1.25 * spread, 0.5)  # ratio range follows the largest effect, at most +-50 %
    rax.set_ylim(1 - margin, 1 + margin)
    _label(ax, label, experiment)
    return fig


def feature_stacks(
    histograms: Mapping[str, hist.Hist],
    features: Mapping[str, str],
    *,
    label: str,
    experiment: str,
    rows: int = 10,
    title: str = REGION_TITLES["4j2b"],
) -> Figure:
    """A grid of stacked nominal MC with the pseudodata as points, one panel per feature.

    The features fill the grid column by column (``rows`` per column: the ML step's 20
    features make a 10 x 2 grid). Each feature's histograms are named like a region's,
    ``{feature}_{process}`` and ``{feature}_pseudodata``.

    Args:
        histograms: histograms by name.
        features: feature name -> its axis label, in drawing order.
        title: the legend title of the top panels (the ML features are of 4j2b events).

    Raises:
        ValueError: not one nominal histogram of any feature is present.
    """
    names = list(features)
    if not any(histogram_name(f, p) in histograms for f in names for p in PROCESS_LABELS):
        raise ValueError("no nominal feature histograms to plot")
    columns = -(-len(names) // rows)
    fig = Figure(figsize=(12 * columns, 6.5 * rows))
    grid = fig.subplots(rows, columns, squeeze=False, gridspec_kw={"hspace": 0.45, "wspace": 0.25})
    for i, feature in enumerate(names):
        ax = grid[i % rows, i // rows]
        present = [
            (p, histograms[histogram_name(feature, p)])
            for p in PROCESS_LABELS
            if histogram_name(feature, p) in histograms
        ]
        top = 0.0
        if present:
            edges = present[0][1].axes[0].edges
            top = _stack(ax, [p for p, _ in present], [h for _, h in present])
            data_name = histogram_name(feature, PSEUDODATA)
            if data_name in histograms:
                values = histograms[data_name].values()
                mplhep.histplot(
                    values,
                    histograms[data_name].axes[0].edges,
                    yerr=np.sqrt(np.abs(values)),
                    ax=ax,
                    histtype="errorbar",
                    color="black",
                    markersize=5,
                    label="Pseudodata",
                    flow=None,
                )
                top = max(top, float(values.max()))
            ax.set_xlim(edges[0], edges[-1])
            ax.set_ylabel(_per_bin_label(edges, _unit(features[feature])), fontsize="small")
        else:
            ax.text(0.5, 0.5, "no events", ha="center", va="center", transform=ax.transAxes)
        _headroom(ax, top, 1.5 if i % rows else 1.9)
        ax.set_xlabel(features[feature], fontsize="small")
        ax.tick_params(labelsize="x-small")
        if i % rows == 0:
            if present:
                _legend(ax, title=title, ncols=2, fontsize="x-small")
            _label(ax, label, experiment)
    for j in range(len(names), rows * columns):  # a grid larger than the features
        fig.delaxes(grid[j % rows, j // rows])
    return fig


# --------------------------------------------------------------------------------------------
# Fit plots


def pulls(
    labels: Sequence[str],
    values: Sequence[float],
    errors: Sequence[float],
    *,
    exclude: Sequence[str] = ("ttbar_norm",),
    label: str,
    experiment: str,
) -> Figure:
    """Post-fit pulls (theta_hat - theta_0) / Delta theta of the nuisance parameters.

    ``exclude`` parameters, MC-stat (``staterror_*``) and fixed parameters are left out, as in
    ``cabinetry.visualize.pulls``.
    """
    keep = [
        i
        for i, name in enumerate(labels)
        if name not in exclude and not name.startswith("staterror_") and errors[i] > 0
    ]
    if not keep:
        raise ValueError("no nuisance parameters to show")
    names = [labels[i] for i in keep]
    y = np.arange(len(keep))[::-1]
    fig = Figure(figsize=(12, 2.5 + 0.6 * len(keep)))
    ax = fig.add_subplot()
    span = (-0.5, len(keep) - 0.5)
    ax.fill_betweenx(span, -2, 2, color="#f5e14b", linewidth=0, label=r"$\pm 2\sigma$")
    ax.fill_betweenx(span, -1, 1, color="#7bd389", linewidth=0, label=r"$\pm 1\sigma$")
    ax.axvline(0, color="black", linewidth=1, linestyle="--")
    ax.errorbar(
        [values[i] for i in keep],
        y,
        xerr=[errors[i] for i in keep],
        fmt="o",
        color="black",
        markersize=7,
        capsize=0,
        label="Post-fit",
    )
    ax.set_yticks(y)
    ax.set_yticklabels(names)
    ax.set_xlim(-3, 3)
    ax.set_ylim(-0.5, len(keep) - 0.5 + 1.2)  # room for the legend
    ax.set_xlabel(r"$(\hat{\theta} - \theta_0)\,/\,\Delta\theta$")
    ax.tick_params(axis="y", which="minor", left=False, right=False)
    ax.legend(loc="upper center", ncols=3, fontsize="small", frameon=False)
    _label(ax, label, experiment)
    return fig


def data_mc_prefit_postfit(
    prefit,
    postfit,
    data: Sequence[float],
    channel: str,
    *,
    label: str,
    experiment: str,
    binning: Sequence[float] | None = None,
    xlabel: str | None = None,
    title: str | None = None,
) -> Figure:
    """2x2 grid for one channel: pre-fit | post-fit stacked model vs data, ratio panels below.

    Args:
        prefit, postfit: ``cabinetry.model_utils.ModelPrediction`` of the same model.
        data: observed yields of all channels (auxdata may follow; it is cut off).
        channel: cabinetry channel name (``"4j1b CR"``).
        binning: the channel's bin edges; :data:`FIT_BINNING` by default.
        xlabel: the observable's label; by default that of the channel's region.
        title: the legend title before "pre-fit" / "post-fit"; the channel name by default.
    """
    config = prefit.model.config
    i_ch = config.channels.index(channel)
    observed = np.asarray(data[: sum(config.channel_nbins.values())], dtype=float)
    observed = observed[config.channel_slices[channel]]
    observed_err = np.sqrt(np.abs(observed))
    if xlabel is None:
        xlabel = OBSERVABLE_LABELS.get(region_of_channel(channel), "observable [GeV]")
    edges = np.asarray(FIT_BINNING if binning is None else binning, dtype=float)
    if len(edges) != len(observed) + 1:
        raise ValueError(
            f"channel {channel!r} has {len(observed)} bins, but {len(edges)} bin edges were given"
        )
    centers = 0.5 * (edges[1:] + edges[:-1])
    samples = _stack_order(config.samples)
    order = [config.samples.index(s) for s in samples]

    fig = Figure(figsize=(18, 10))
    grid = fig.add_gridspec(2, 2, height_ratios=(3, 1), hspace=0.05, wspace=0.05)
    main = [fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])]
    ratio_axes = [
        fig.add_subplot(grid[1, 0], sharex=main[0]),
        fig.add_subplot(grid[1, 1], sharex=main[1]),
    ]
    main[1].sharey(main[0])
    top = 0.0
    for ax, rax, prediction in zip(main, ratio_axes, (prefit, postfit), strict=True):
        yields = [np.asarray(prediction.model_yields[i_ch][i], dtype=float) for i in order]
        total = np.sum(yields, axis=0)
        unc = np.asarray(prediction.total_stdev_model_bins[i_ch][-1], dtype=float)
        mplhep.histplot(
            yields,
            edges,
            ax=ax,
            stack=True,
            histtype="fill",
            label=[_sample_label(n) for n in samples],
            color=[COLORS.get(_sample_process(n), "#7a21dd") for n in samples],
            edgecolor="black",
            linewidth=0.5,
            flow=None,
        )
        ax.stairs(
            total + unc,
            edges,
            baseline=total - unc,
            fill=True,
            facecolor="none",
            edgecolor="#555555",
            hatch="///",
            linewidth=0,
            label="Uncertainty",
        )
        ax.errorbar(
            centers,
            observed,
            yerr=observed_err,
            fmt="o",
            color="black",
            markersize=6,
            label="Pseudodata",
        )
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(total > 0, unc / total, np.nan)
            ratio = np.where(total > 0, observed / total, np.nan)
            ratio_err = np.where(total > 0, observed_err / total, np.nan)
        rax.stairs(
            1 + rel,
            edges,
            baseline=1 - rel,
            fill=True,
            facecolor="none",
            edgecolor="#555555",
            hatch="///",
            linewidth=0,
        )
        rax.axhline(1.0, color="black", linestyle="--", linewidth=1)
        rax.errorbar(centers, ratio, yerr=ratio_err, fmt="o", color="black", markersize=6)
        rax.set_ylim(0.5, 1.5)
        rax.set_yticks([0.5, 0.75, 1.0, 1.25])
        rax.set_xlim(edges[0], edges[-1])
        rax.set_xlabel(xlabel)
        ax.tick_params(labelbottom=False)
        ax.set_xlabel("")
        top = max(top, float(np.max(total + unc)), float(np.max(observed + observed_err)))
        _legend(
            ax,
            title=f"{title or channel}, {prediction.label.lower()}",
            ncols=2,
            fontsize="x-small",
        )
        _label(ax, label, experiment)
    _headroom(main[0], top, 1.6)
    main[0].set_ylabel(_per_bin_label(edges, _unit(xlabel)))
    ratio_axes[0].set_ylabel("Data / model")
    for ax in (main[1], ratio_axes[1]):
        ax.tick_params(labelleft=False)
        ax.set_ylabel("")
    return fig


def _sample_process(sample: str) -> str:
    return process_of_cabinetry_sample(sample)


def _sample_label(sample: str) -> str:
    return PROCESS_LABELS.get(_sample_process(sample), sample)


def _stack_order(samples: Sequence[str]) -> list[str]:
    rank = {p: i for i, p in enumerate(PROCESS_LABELS)}
    return sorted(samples, key=lambda s: rank.get(_sample_process(s), -1))


# --------------------------------------------------------------------------------------------
# Entry point


def make_plots(
    histograms: Mapping[str, hist.Hist],
    output_dir: str | os.PathLike,
    fit_result: Any = None,
    model_and_data: tuple[Any, Sequence[float]] | None = None,
    *,
    label: str = OPEN_DATA_LABEL,
    experiment: str = "CMS",
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """Draw the AGC plots into ``output_dir`` and return the files written.

    Args:
        histograms: histograms by name (spec §6), e.g. ``RunResult.histograms`` or
            :func:`agc.histograms.read_histograms` output.
        output_dir: the run directory (created if needed).
        fit_result: an :class:`agc.inference.FitResult`; adds the pulls and, with a model, the
            pre-/post-fit data/model plots.
        model_and_data: ``(pyhf model, data)``; defaults to the ones kept in ``fit_result``.
        label: text after the experiment name: :data:`OPEN_DATA_LABEL` for the real inputs,
            :data:`SYNTHETIC_LABEL` for synthetic events (with ``experiment="AGC"``).
        experiment: the bold first word of the label.
        formats: file formats, PNG and PDF by default.

    Returns:
        Paths of the files written.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    common = {"label": label, "experiment": experiment}
    written: list[Path] = []

    def draw(name: str, build) -> None:
        written.extend(draw_figure(build, output_dir, name, formats))

    draw(
        "stack_4j1b",
        lambda: stacked_region(histograms, "4j1b", start=FIT_START, rebin=FIT_REBIN, **common),
    )
    draw("stack_4j2b", lambda: stacked_region(histograms, "4j2b", start=None, rebin=1, **common))
    draw(
        "ttbar_btag_variations",
        lambda: variations(
            histograms,
            "4j1b",
            "ttbar",
            {btag_variation(i, "up"): f"b-tag NP {i + 1} up" for i in range(N_BTAG_VARIATIONS)},
            start=FIT_START,
            rebin=FIT_REBIN,
            title=r"$t\bar{t}$, " + REGION_TITLES["4j1b"],
            **common,
        ),
    )
    draw(
        "ttbar_jet_variations",
        lambda: variations(
            histograms,
            "4j2b",
            "ttbar",
            {"pt_scale_up": "Jet energy scale up", "pt_res_up": "Jet energy resolution up"},
            start=None,
            rebin=1,
            title=r"$t\bar{t}$, " + REGION_TITLES["4j2b"],
            **common,
        ),
    )

    if fit_result is not None:
        draw(
            "pulls",
            lambda: pulls(fit_result.labels, fit_result.values, fit_result.errors, **common),
        )
        if model_and_data is None and getattr(fit_result, "model", None) is not None:
            model_and_data = (fit_result.model, fit_result.data)
    if fit_result is not None and model_and_data is not None:
        import cabinetry

        model, data = model_and_data
        prefit = cabinetry.model_utils.prediction(model)
        postfit = cabinetry.model_utils.prediction(model, fit_results=fit_result.to_cabinetry())
        for channel in model.config.channels:
            region = region_of_channel(channel)
            draw(
                f"data_mc_{region}",
                lambda channel=channel: data_mc_prefit_postfit(
                    prefit, postfit, data, channel, label=label, experiment=experiment
                ),
            )
    log.info("wrote %d plot files to %s", len(written), output_dir)
    return written


def plot_run(
    run_dir: str | os.PathLike,
    *,
    label: str = OPEN_DATA_LABEL,
    experiment: str = "CMS",
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """Draw all plots of a run directory from its files.

    Uses ``histograms.root`` (or ``histograms.json``), and, when present, ``fit_result.json``
    and ``workspace.json`` written by :func:`agc.inference.fit_run`.
    """
    import cabinetry

    from agc import inference

    run_dir = Path(run_dir)
    histograms = inference.load_fit_input(run_dir).histograms
    fit_result = model_and_data = None
    if (run_dir / "fit_result.json").exists():
        fit_result = inference.load_fit_result(run_dir)
        if (run_dir / "workspace.json").exists():
            workspace = json.loads((run_dir / "workspace.json").read_text())
            model_and_data = cabinetry.model_utils.model_and_data(workspace)
    return make_plots(
        histograms,
        run_dir,
        fit_result,
        model_and_data,
        label=label,
        experiment=experiment,
        formats=formats,
    )
