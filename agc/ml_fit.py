"""The ML validation of the fit (spec §5, §6): the main fit's result applied to the features of
the jet-parton assignment.

The ML step fills, for the 4j2b events of every sample and variation, the 20 features of each
event's best-scoring jet-parton assignment into histograms ``{feature}_{process}[_{variation}]``
(25 bins each), plus ``{feature}_pseudodata`` built like the main pseudodata. No fit is run on
them: the statistical model of the main fit is built on the features, and the main fit's
parameters are carried over to draw pre- and post-fit data/model comparisons. The pipeline:

- :func:`ml_cabinetry_config` -- the model of :func:`agc.inference.cabinetry_config` (same
  samples, systematics and ``ttbar_norm``) with 20 regions ``Feature0`` ... ``Feature19``, one
  per feature in its 25 histogram bins (the reference ``cabinetry_config_ml.yml``);
- :func:`build_ml_workspace` -- its pyhf workspace, the templates taken as they are (not
  rebinned, unlike the main fit's);
- :func:`prune_ml_workspace` -- the workspace cut to the channels of :data:`ML_FIT_CHANNELS`
  (``Feature0``, 1, 2, 4, 5, 6 and 7), as the reference does;
- :func:`match_main_fit` -- the main fit's parameters mapped onto the pruned model's: shared
  parameters (``ttbar_norm``, the systematics) take their best-fit values, uncertainties and
  correlations; the others (the features' MC-statistics ``staterror`` parameters) their
  pre-fit values (``cabinetry.model_utils.match_fit_results``);
- :func:`fit_ml` -- all of the above, writing ``workspace_ml.json``, the pre-/post-fit
  data/model plots of the kept channels and the grid of all 20 stacked features.

Input histograms
----------------
``histograms_ml.root`` stores every ML histogram with 1e-6 added to each bin (flow included),
as the reference writes it: features with empty bins in every sample would otherwise give a
model with zero expected events there. Histograms read from that file are used as they are;
histograms handed over in memory get the same offset first (:func:`add_offset`), so that
either way the model is the one of the file.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hist
import numpy as np
from matplotlib.figure import Figure

from agc import inference, plots
from agc.fileio import atomic_write_text
from agc.histograms import (
    ML_HISTOGRAMS_FILE,
    ML_OFFSET,
    HistogramFileError,
    add_offset,
    read_histograms,
)
from agc.inference import FitResult

# The ML step's vocabulary: its only import point in this module.
from agc.vocabulary import ML_FEATURE_LABELS, ML_FEATURES, ML_N_BINS, ML_RANGES

log = logging.getLogger(__name__)

Histograms = dict[str, hist.Hist]

#: The pruned ML workspace.
ML_WORKSPACE_FILE = "workspace_ml.json"

#: Indices (into :data:`ML_FEATURES`) of the features whose channels stay in the workspace.
ML_FIT_INDICES: tuple[int, ...] = (0, 1, 2, 4, 5, 6, 7)


def ml_channel(index: int) -> str:
    """The cabinetry region (pyhf channel) of feature ``index``: ``Feature{index}``."""
    return f"Feature{index}"


#: The channels kept in the ML workspace: Feature0, 1, 2, 4, 5, 6, 7.
ML_FIT_CHANNELS: tuple[str, ...] = tuple(ml_channel(i) for i in ML_FIT_INDICES)
#: Channel -> feature, for every feature.
ML_CHANNEL_FEATURES: dict[str, str] = {ml_channel(i): f for i, f in enumerate(ML_FEATURES)}


def ml_binning(feature: str) -> list[float]:
    """Bin edges of a feature's histograms: :data:`ML_N_BINS` equal bins over its range."""
    low, high = ML_RANGES[feature]
    return [round(float(x), 10) for x in np.linspace(low, high, ML_N_BINS + 1)]


# --------------------------------------------------------------------------------------------
# Configuration and workspace


def ml_regions() -> list[dict[str, Any]]:
    """The 20 cabinetry regions ``Feature0`` ... ``Feature19``, in the features' order."""
    return [
        {
            "Name": ml_channel(i),
            "RegionPath": feature,
            "Variable": ML_FEATURE_LABELS[feature],
            "Binning": ml_binning(feature),
        }
        for i, feature in enumerate(ML_FEATURES)
    ]


def ml_cabinetry_config(
    histogram_path: str | os.PathLike = ML_HISTOGRAMS_FILE,
    *,
    histogram_folder: str | os.PathLike = "histograms/",
) -> dict[str, Any]:
    """The cabinetry configuration of the ML features (the reference ``cabinetry_config_ml.yml``).

    Args:
        histogram_path: the ``histograms_ml.root`` the templates are read from (only used when
            templates are built without :func:`agc.inference.rebinning_router`).
        histogram_folder: where cabinetry stores its template histograms.

    Returns:
        The configuration, validated against cabinetry's schema.
    """
    return inference.model_config(
        ml_regions(), histogram_path=histogram_path, histogram_folder=histogram_folder
    )


def load_ml_histograms(path: str | os.PathLike) -> Histograms:
    """Read the ML histograms from a run directory or a ``histograms_ml.root`` file.

    The histograms are returned as stored: with the 1e-6 per bin the file was written with.
    """
    path = Path(path)
    if path.is_dir():
        path = path / ML_HISTOGRAMS_FILE
    if not path.exists():
        raise HistogramFileError(
            f"{path}: no such file; the ML histograms are written to {ML_HISTOGRAMS_FILE} "
            "by a run with the ML step"
        )
    return read_histograms(path)


def build_ml_workspace(
    histograms: Mapping[str, hist.Hist], *, source: str = "the ML histograms"
) -> dict[str, Any]:
    """The full (unpruned) workspace of the ML features: 20 channels of 25 bins.

    :func:`agc.inference.build_workspace` with :func:`ml_cabinetry_config`, the templates as
    they are (each histogram's bins must be its region's ``Binning``).

    Raises:
        agc.inference.MissingTemplateError: a template the model needs is missing.
        agc.inference.TemplateBinningError: a histogram's bins are not its feature's.
    """
    with tempfile.TemporaryDirectory(prefix="agc-ml-templates-") as tmp:
        config = ml_cabinetry_config(histogram_folder=tmp)
        return inference.build_workspace(histograms, config=config, source=source, rebin=None)


def prune_ml_workspace(
    workspace: Mapping[str, Any], keep: Sequence[str] = ML_FIT_CHANNELS
) -> dict[str, Any]:
    """The workspace with only the channels ``keep`` (pyhf's ``Workspace.prune``).

    Raises:
        ValueError: a channel of ``keep`` is not in the workspace.
    """
    import pyhf

    channels = [c["name"] for c in workspace["channels"]]
    unknown = [c for c in keep if c not in channels]
    if unknown:
        raise ValueError(f"channels {unknown} are not in the workspace (it has {channels})")
    pruned = pyhf.Workspace(dict(workspace)).prune(channels=[c for c in channels if c not in keep])
    return json.loads(json.dumps(pruned))


# --------------------------------------------------------------------------------------------
# The main fit's parameters on the ML model


def match_main_fit(model: Any, main_fit: FitResult) -> Any:
    """The main fit's result mapped onto ``model``'s parameters (cabinetry ``FitResults``).

    Parameters of both models take the main fit's best-fit values, uncertainties and
    correlations; parameters only ``model`` has take their pre-fit values and uncertainties,
    uncorrelated; parameters only the main fit has are dropped
    (``cabinetry.model_utils.match_fit_results``).
    """
    import cabinetry

    shared = set(model.config.par_names) & set(main_fit.labels)
    if main_fit.poi not in shared:
        log.warning(
            "the main fit's %s is not a parameter of the ML model: its post-fit prediction "
            "is its pre-fit one",
            main_fit.poi,
        )
    return cabinetry.model_utils.match_fit_results(model, main_fit.to_cabinetry())


@dataclass
class MLFitSummary:
    """What :func:`fit_ml` made: the files, and the model and predictions behind the plots.

    ``labels``, ``values`` and ``errors`` are the parameters of the ML model as mapped from the
    main fit; ``from_main_fit`` lists those taken from it (the others are at their pre-fit
    values).
    """

    workspace: Path
    plots: list[Path]
    channels: list[str]
    labels: list[str]
    values: list[float]
    errors: list[float]
    from_main_fit: list[str]
    # live objects for drawing; not serialised
    model: Any = field(default=None, repr=False, compare=False)
    data: Any = field(default=None, repr=False, compare=False)
    prefit: Any = field(default=None, repr=False, compare=False)
    postfit: Any = field(default=None, repr=False, compare=False)
    fit_results: Any = field(default=None, repr=False, compare=False)

    @property
    def paths(self) -> list[Path]:
        """Every file written: the workspace, then the plots."""
        return [self.workspace, *self.plots]

    @property
    def parameters(self) -> dict[str, tuple[float, float]]:
        return {k: (v, e) for k, v, e in zip(self.labels, self.values, self.errors, strict=True)}


# --------------------------------------------------------------------------------------------
# Plots


def data_mc_figures(
    summary: MLFitSummary, *, label: str, experiment: str
) -> dict[str, Callable[[], Figure]]:
    """Builders of the pre-/post-fit data/model figure of each kept channel, by plot name.

    Each value is a no-argument callable returning the figure (draw it under the plot style,
    e.g. with :func:`agc.plots.draw_figure`); the plot of channel ``FeatureN`` is named
    ``ml_data_mc_{feature}``.
    """
    builders: dict[str, Callable[[], Figure]] = {}
    for channel in summary.model.config.channels:
        feature = ML_CHANNEL_FEATURES[channel]
        builders[f"ml_data_mc_{feature}"] = functools.partial(
            plots.data_mc_prefit_postfit,
            summary.prefit,
            summary.postfit,
            summary.data,
            channel,
            label=label,
            experiment=experiment,
            binning=ml_binning(feature),
            xlabel=ML_FEATURE_LABELS[feature],
            title=channel,
        )
    return builders


def feature_grid(histograms: Mapping[str, hist.Hist], *, label: str, experiment: str) -> Figure:
    """The 10 x 2 grid of the 20 features: nominal MC stacked by process, pseudodata points."""
    return plots.feature_stacks(
        histograms,
        {f: ML_FEATURE_LABELS[f] for f in ML_FEATURES},
        label=label,
        experiment=experiment,
    )


# --------------------------------------------------------------------------------------------
# Entry point


def fit_ml(
    ml_histograms: Mapping[str, hist.Hist] | str | os.PathLike,
    main_fit: FitResult | str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    label: str = plots.OPEN_DATA_LABEL,
    experiment: str = "CMS",
    formats: Sequence[str] = plots.FORMATS,
    offset: float | None = None,
) -> MLFitSummary:
    """The ML validation: workspace of the features, the main fit's parameters on it, plots.

    No fit is run. The ML model is built from the histograms (:func:`build_ml_workspace`),
    pruned to :data:`ML_FIT_CHANNELS`, and predicted before and after the main fit
    (:func:`match_main_fit`).

    Writes into ``output_dir``:

    - ``workspace_ml.json``: the pruned workspace (atomically);
    - ``ml_data_mc_{feature}``: pre-fit | post-fit data/model of each kept channel;
    - ``ml_features``: the 10 x 2 grid of all 20 stacked features (as given, nominal).

    Args:
        ml_histograms: the ML histograms by name (``{feature}_{process}[_{variation}]`` and
            ``{feature}_pseudodata``), or a ``histograms_ml.root`` or the run directory
            holding one. The file's histograms carry the 1e-6 per bin it was written with.
        main_fit: the main fit's result, or its ``fit_result.json`` (or the run directory
            holding it).
        output_dir: where the workspace and the plots go (created if needed).
        label, experiment: the plot label, as for :func:`agc.plots.make_plots`:
            :data:`agc.plots.SYNTHETIC_LABEL` with ``experiment="AGC"`` for synthetic events.
        formats: plot file formats, PNG and PDF by default; none: no plots (the summary's
            predictions still give them, see :func:`data_mc_figures` and
            :func:`feature_grid`).
        offset: added to every bin before the model is built; by default :data:`ML_OFFSET`
            for histograms given as a mapping (what writing ``histograms_ml.root`` adds) and
            nothing for histograms read from a file (they have it already).

    Returns:
        The files written, the mapped parameters and the live model and predictions.

    Raises:
        agc.inference.MissingTemplateError: a histogram the model needs is missing (nothing
            is written).
        agc.inference.TemplateBinningError: a histogram's bins are not its feature's.
    """
    import cabinetry

    if isinstance(ml_histograms, Mapping):
        histograms, source = dict(ml_histograms), "the ML histograms"
        offset = ML_OFFSET if offset is None else offset
    else:
        histograms, source = load_ml_histograms(ml_histograms), str(ml_histograms)
        offset = 0.0 if offset is None else offset
    if offset:
        histograms = add_offset(histograms, offset)
    if not isinstance(main_fit, FitResult):
        main_fit = inference.load_fit_result(main_fit)

    workspace = prune_ml_workspace(build_ml_workspace(histograms, source=source))
    with inference.quiet_cabinetry():
        model, data = cabinetry.model_utils.model_and_data(workspace)
        matched = match_main_fit(model, main_fit)
        prefit = cabinetry.model_utils.prediction(model)
        postfit = cabinetry.model_utils.prediction(model, fit_results=matched)

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    workspace_path = output_dir / ML_WORKSPACE_FILE
    atomic_write_text(workspace_path, json.dumps(workspace, indent=1))

    labels = list(matched.labels)
    summary = MLFitSummary(
        workspace=workspace_path,
        plots=[],
        channels=list(model.config.channels),
        labels=labels,
        values=[float(x) for x in matched.bestfit],
        errors=[float(x) for x in matched.uncertainty],
        from_main_fit=[name for name in labels if name in set(main_fit.labels)],
        model=model,
        data=data,
        prefit=prefit,
        postfit=postfit,
        fit_results=matched,
    )
    if formats:
        for name, build in data_mc_figures(summary, label=label, experiment=experiment).items():
            summary.plots += plots.draw_figure(build, output_dir, name, formats)
        summary.plots += plots.draw_figure(
            lambda: feature_grid(histograms, label=label, experiment=experiment),
            output_dir,
            "ml_features",
            formats,
        )
    log.info(
        "ML validation: %d channels, %d of %d parameters from the main fit; wrote %s and "
        "%d plot files to %s",
        len(summary.channels),
        len(summary.from_main_fit),
        len(labels),
        ML_WORKSPACE_FILE,
        len(summary.plots),
        output_dir,
    )
    return summary
