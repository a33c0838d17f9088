"""Statistical inference: cabinetry config -> templates -> pyhf workspace -> fit (spec §6).

The public entry points read as the pipeline:

- :func:`cabinetry_config` -- the cabinetry configuration of the AGC (regions, samples,
  systematics, ``ttbar_norm``), validated with cabinetry's own schema; :func:`model_config`
  gives the same model for other regions (the ML validation of :mod:`agc.ml_fit`);
- :func:`load_fit_input` -- histograms from a run directory, ``histograms.root`` or a reference
  JSON, with the statistical variances the fit needs (see below);
- :func:`build_workspace` -- ``templates.build`` (through :func:`rebinning_router`) ->
  ``templates.postprocess`` -> ``workspace.build``, optionally saving ``workspace.json``
  (non-positive ``normsys`` factors, possible only with very few MC events, are repaired and
  logged; see :func:`_repair_normsys`);
- :func:`fit` -- maximum-likelihood fit to the pseudodata, with a ``strategy=2`` retry;
- :func:`fit_run` -- all of the above for one input, writing ``workspace.json`` and
  ``fit_result.json``.

The ML feature histograms are not fitted: :mod:`agc.ml_fit` maps this fit's parameters onto
their workspace.

MC statistical uncertainties (variances)
-----------------------------------------
cabinetry puts one ``staterror`` modifier per fit bin (22 in all), whose width comes from the
variances of the nominal MC templates. ``histograms.root`` written by the harness (or by the
reference) stores them (``sumw2``). The reference JSONs store contents only. Every event of a
sample carries the same weight w = sigma L / N (spec §1.3), so a bin with k events holds k w
and has variance sum(w^2) = k w^2 = content * w. :func:`load_fit_input` restores exactly these
variances for JSON input: it finds the files-per-sample N whose weights make the contents
integer multiples of w (the reference JSONs are; spec §7.3) and sets
``variance = |content| * w(sample)``. With this, the reference JSONs give the published
results (N=1: 0.960 +- 0.104, N=5: 0.953 +- 0.089, all: 0.946 +- 0.083). Neither
``variance = content`` (0.957 +- 0.075 at N=1) nor zero variance (0.970 +- 0.065) does.
A JSON written by a harness run uses the weights in the run's ``summary.json`` instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import hist
import numpy as np

from agc.errors import UserError
from agc.fileio import atomic_write_text
from agc.histograms import HistogramFileError, read_histograms
from agc.vocabulary import (
    CABINETRY_REGIONS,
    CABINETRY_SAMPLES,
    FIT_BINNING,
    FIT_REBIN,
    FIT_START,
    N_BTAG_VARIATIONS,
    OBSERVABLE_LABELS,
    POI,
    PSEUDODATA,
    histogram_name,
    parse_histogram_name,
    split_sample_key,
)

log = logging.getLogger(__name__)

Histograms = dict[str, hist.Hist]

#: The rebinning applied to each 25-bin input histogram to get :data:`FIT_BINNING`.
REBIN = np.s_[FIT_START * 1j :: hist.rebin(FIT_REBIN)]

#: A Minuit strategy; ``None`` lets pyhf choose (1 for the numpy backend).
Strategy = Literal[0, 1, 2] | None

#: Minuit strategies tried in turn: pyhf's default, then the slower, more careful 2 (spec §11.6).
DEFAULT_STRATEGIES: tuple[Strategy, ...] = (None, 2)

#: Files-per-sample values for which reference JSONs exist (spec §1.4); -1 = all files.
REFERENCE_N_FILES: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100, 200, -1)


class MissingTemplateError(HistogramFileError):
    """The histograms lack templates the statistical model needs."""


class TemplateBinningError(HistogramFileError):
    """A template's bin edges are not those of its region in the statistical model."""


class FitError(UserError, RuntimeError):
    """The likelihood fit did not converge with any of the strategies tried."""


# --------------------------------------------------------------------------------------------
# Configuration


def _systematic(name: str, up: str, down: str | None, samples: str | None = None) -> dict:
    """A NormPlusShape systematic; ``down=None`` symmetrises the up variation."""
    entry: dict[str, Any] = {
        "Name": name,
        "Type": "NormPlusShape",
        "Up": {"VariationPath": up},
        "Down": {"Symmetrize": True} if down is None else {"VariationPath": down},
    }
    if samples is not None:
        entry["Samples"] = samples
    return entry


def cabinetry_config(
    histogram_path: str | os.PathLike = "histograms.root",
    *,
    histogram_folder: str | os.PathLike = "histograms/",
) -> dict[str, Any]:
    """The cabinetry configuration of the AGC ttbar fit (the reference ``cabinetry_config.yml``).

    Args:
        histogram_path: the ``histograms.root`` the templates are read from (only used when
            templates are built without :func:`rebinning_router`).
        histogram_folder: where cabinetry stores its template histograms.

    Returns:
        The configuration, validated against cabinetry's schema.
    """
    regions = [
        {
            "Name": channel,
            "RegionPath": region,
            "Variable": OBSERVABLE_LABELS[region],
            "Binning": list(FIT_BINNING),
        }
        for channel, region in CABINETRY_REGIONS.items()
    ]
    return model_config(regions, histogram_path=histogram_path, histogram_folder=histogram_folder)


def model_config(
    regions: Sequence[Mapping[str, Any]],
    *,
    histogram_path: str | os.PathLike,
    histogram_folder: str | os.PathLike,
) -> dict[str, Any]:
    """A cabinetry configuration of the AGC model (samples, systematics, ``ttbar_norm``) for
    the given regions.

    The main fit (:func:`cabinetry_config`) and the ML validation
    (:func:`agc.ml_fit.ml_cabinetry_config`) differ only in their regions: both have the six
    samples (the pseudodata as data), the eleven systematics of spec §6 and the normalisation
    factor ``ttbar_norm`` on ttbar in [0, 10].

    Args:
        regions: cabinetry regions (``Name``, ``RegionPath``, ``Variable``, ``Binning``).
        histogram_path: the ROOT file the templates are read from (only used when templates
            are built without :func:`rebinning_router`).
        histogram_folder: where cabinetry stores its template histograms.

    Returns:
        The configuration, validated against cabinetry's schema.
    """
    import cabinetry

    config: dict[str, Any] = {
        "General": {
            "Measurement": "CMS_ttbar",
            "POI": POI,
            "HistogramFolder": str(histogram_folder),
            "InputPath": f"{histogram_path}:{{RegionPath}}_{{SamplePath}}{{VariationPath}}",
            "VariationPath": "",
        },
        "Regions": [dict(region) for region in regions],
        "Samples": [
            {"Name": name, "SamplePath": path, **({"Data": True} if path == PSEUDODATA else {})}
            for name, path in CABINETRY_SAMPLES.items()
        ],
        "Systematics": [
            _systematic("ME variation", "_ME_var", None, "ttbar"),
            _systematic("PS variation", "_PS_var", None, "ttbar"),
            _systematic("ttbar scale variations", "_scaleup", "_scaledown", "ttbar"),
            _systematic("Jet energy scale", "_pt_scale_up", None),
            _systematic("Jet energy resolution", "_pt_res_up", None),
            *(
                _systematic(f"b-tag NP {i + 1}", f"_btag_var_{i}_up", f"_btag_var_{i}_down")
                for i in range(N_BTAG_VARIATIONS)
            ),
            _systematic("W+jets scale variations", "_scale_var_up", "_scale_var_down", "W+jets"),
            {
                "Name": "Luminosity",
                "Type": "Normalization",
                "Up": {"Normalization": 0.03},
                "Down": {"Normalization": -0.03},
            },
        ],
        "NormFactors": [
            {"Name": POI, "Samples": "ttbar", "Nominal": 1.0, "Bounds": [0, 10]},
        ],
    }
    cabinetry.configuration.validate(config)
    return config


def template_name(
    region: Mapping[str, Any],
    sample: Mapping[str, Any],
    systematic: Mapping[str, Any],
    template: str | None,
) -> str:
    """Histogram name of one cabinetry template: ``{RegionPath}_{SamplePath}{VariationPath}``."""
    variation = "" if template is None else systematic[template].get("VariationPath", "")
    return f"{region['RegionPath']}_{sample['SamplePath']}{variation}"


def required_templates(config: Mapping[str, Any]) -> list[str]:
    """Names of all histograms the configuration needs, in cabinetry's order."""
    from cabinetry import route

    names: list[str] = []

    def collect(region, sample, systematic, template) -> None:
        names.append(template_name(region, sample, systematic, template))

    route.apply_to_all_templates(dict(config), collect)
    return list(dict.fromkeys(names))


def check_templates(
    histograms: Mapping[str, hist.Hist], config: Mapping[str, Any], source: str = "the histograms"
) -> None:
    """Raise :class:`MissingTemplateError` naming every template ``histograms`` lacks."""
    missing = [n for n in required_templates(config) if n not in histograms]
    if missing:
        shown = ", ".join(missing[:12]) + (
            f" and {len(missing) - 12} more" if len(missing) > 12 else ""
        )
        raise MissingTemplateError(
            f"{source}: {len(missing)} histogram(s) needed by the fit are missing: {shown}. "
            "The fit needs a complete run with systematics: all nine samples (ttbar nominal, "
            "scaleup, scaledown, ME_var, PS_var, single top s/t/tW, W+jets) and the "
            "pseudodata of every region. Re-run without --no-systematics / --samples restrictions, "
            "or with more events if a sample selected none."
        )


def rebinning_router(histograms: Mapping[str, hist.Hist], rebin: slice | None = REBIN):
    """A cabinetry router whose template builder takes each template from ``histograms``.

    By default each 25-bin histogram (20 GeV bins in [50, 550]) is cut to start at 110 GeV and
    rebinned by 2 (``h[110j::hist.rebin(2)]``), giving the 11 fit bins of :data:`FIT_BINNING`.

    Args:
        histograms: the templates by name (``{RegionPath}_{SamplePath}{VariationPath}``).
        rebin: the slice applied to each histogram (:data:`REBIN`), or ``None`` to take the
            histograms as they are (the ML features, modelled in their 25 bins).

    The template builder raises :class:`MissingTemplateError` for a missing histogram and
    :class:`TemplateBinningError` for one whose (rebinned) bin edges are not the region's
    ``Binning``.
    """
    import cabinetry

    router = cabinetry.route.Router()

    @router.register_template_builder()
    def rebinned_template(region, sample, systematic, template) -> hist.Hist:
        name = template_name(region, sample, systematic, template)
        try:
            h = hist.Hist(histograms[name])
        except KeyError:
            raise MissingTemplateError(f"histogram {name!r} needed by the fit is missing") from None
        if rebin is not None:
            h = cast(hist.Hist, h[rebin])
        edges, binning = np.asarray(h.axes[0].edges), np.asarray(region["Binning"], dtype=float)
        if edges.shape != binning.shape or not np.allclose(edges, binning):
            raise TemplateBinningError(
                f"histogram {name!r} has {len(edges) - 1} bins in [{edges[0]:g}, {edges[-1]:g}]"
                f"{'' if rebin is None else ' after rebinning'}; region {region['Name']!r} "
                f"needs {len(binning) - 1} bins in [{binning[0]:g}, {binning[-1]:g}]"
            )
        return h

    return router


# --------------------------------------------------------------------------------------------
# Input histograms and their variances


def with_mc_stat_variances(
    histograms: Mapping[str, hist.Hist], weights: Mapping[str, float]
) -> Histograms:
    """Copies of ``histograms`` with variance = |content| * w of the sample that filled them.

    Args:
        histograms: histograms by name (spec §6 names).
        weights: per-event weight by fileset key (``ttbar__nominal``...), as in ``summary.json``.

    Returns:
        New histograms; names that belong to no sample in ``weights`` (pseudodata) are copied
        unchanged.
    """
    processes = tuple(sorted({split_sample_key(key)[0] for key in weights}))
    out: Histograms = {}
    for name, h in histograms.items():
        h = h.copy()
        parsed = parse_histogram_name(name, processes)
        key = parsed.sample if parsed is not None else None
        if key is not None and key in weights:
            view: Any = h.view(flow=True)  # a WeightedSumView (typed as a plain ndarray)
            view.variance = np.abs(view.value) * weights[key]
        out[name] = h
    return out


def reference_weights(
    histograms: Mapping[str, hist.Hist], *, atol: float = 1e-3
) -> tuple[int, dict[str, float]] | None:
    """Find the files-per-sample N of reference histograms from their contents.

    Reference histograms hold k * w per bin with integer k (spec §7.3); the N whose AGC
    weights (from the bundled ``nanoaod_inputs.json``) make every sample's 4j1b contents
    integer multiples of its w (within ``atol`` events) is the one they were made with.
    With a wrong N the contents are off by up to half a weight, so the match is unambiguous.

    Returns:
        ``(N, {fileset key: w})`` or ``None`` if no N fits.
    """
    from agc.catalog import build_fileset, load_catalog

    catalog, _ = load_catalog("agc")
    for n_files in REFERENCE_N_FILES:
        weights = {k: s.weight for k, s in build_fileset(catalog, n_files=n_files).items()}
        if _contents_are_multiples(histograms, weights, atol):
            return n_files, weights
    return None


def _contents_are_multiples(
    histograms: Mapping[str, hist.Hist], weights: Mapping[str, float], atol: float
) -> bool:
    checked = 0
    for key, w in weights.items():
        name = histogram_name("4j1b", *split_sample_key(key))
        h = histograms.get(name)
        if h is None:
            continue
        k = np.asarray(h.values(flow=True)) / w
        if np.max(np.abs(k - np.round(k)), initial=0.0) > atol:
            return False
        checked += 1
    return checked > 0


@dataclass
class FitInput:
    """Histograms ready for the fit, and where they (and their variances) came from."""

    histograms: Histograms
    source: Path
    variances: str
    n_files: int | None = None


def _resolve_input(path: Path) -> Path:
    if path.is_dir():
        for candidate in ("histograms.root", "histograms.json"):
            if (path / candidate).exists():
                return path / candidate
        raise HistogramFileError(
            f"{path}: no histograms.root in this directory; give a run "
            "directory, a histograms.root or a reference JSON file"
        )
    return path


def load_fit_input(path: str | os.PathLike) -> FitInput:
    """Read the fit's histograms from a run directory, ``histograms.root`` or JSON file.

    ROOT files keep their stored variances (sumw2). JSON files have none: the variances are
    rebuilt as |content| * w (module docstring), with w from the run's ``summary.json`` if the
    JSON sits in a run directory, else from the AGC weights of the N that fits the contents.
    If neither is available, variance = |content| is used (Poisson approximation; a warning
    is logged).
    """
    source = _resolve_input(Path(path))
    histograms = read_histograms(source)
    if source.suffix != ".json":
        return FitInput(histograms, source, "stored sumw2")
    summary = source.parent / "summary.json"
    if summary.exists():
        with contextlib.suppress(OSError, ValueError, AttributeError):
            weights = json.loads(summary.read_text()).get("weights")
            if weights:
                return FitInput(
                    with_mc_stat_variances(histograms, weights),
                    source,
                    "|content| * w, w from summary.json",
                )
    found = reference_weights(histograms)
    if found is not None:
        n_files, weights = found
        return FitInput(
            with_mc_stat_variances(histograms, weights),
            source,
            f"|content| * w, w of the AGC inputs at N={n_files} files per sample",
            n_files,
        )
    log.warning(
        "%s: cannot tell the per-event weights; using variance = |content| for the "
        "MC statistical uncertainties",
        source,
    )
    return FitInput(histograms, source, "|content| (Poisson approximation)")


# --------------------------------------------------------------------------------------------
# Workspace


def build_workspace(
    histograms_or_path: Mapping[str, hist.Hist] | str | os.PathLike,
    workdir: str | os.PathLike | None = None,
    *,
    config: Mapping[str, Any] | None = None,
    source: str | None = None,
    rebin: slice | None = REBIN,
) -> dict[str, Any]:
    """Build the pyhf workspace: ``templates.build`` -> ``postprocess`` -> ``workspace.build``.

    Args:
        histograms_or_path: histograms by name, or anything :func:`load_fit_input` reads.
        workdir: if given, ``workspace.json`` is written there (atomically).
        config: the :func:`cabinetry_config` to use, whose ``HistogramFolder`` takes cabinetry's
            intermediate template files; by default one with a temporary folder. Any
            :func:`model_config` will do (the ML one: :func:`agc.ml_fit.ml_cabinetry_config`).
        source: how error messages name the histograms.
        rebin: what :func:`rebinning_router` applies to each histogram; ``None`` for none.

    Returns:
        The workspace (a pyhf JSON dict).

    Raises:
        MissingTemplateError: a template the model needs is not among the histograms.
        TemplateBinningError: a template's bins are not those of its region.
    """
    import cabinetry

    if isinstance(histograms_or_path, Mapping):
        histograms = dict(histograms_or_path)
    else:
        fit_input = load_fit_input(histograms_or_path)
        histograms, source = fit_input.histograms, source or str(fit_input.source)
    if config is None:
        with tempfile.TemporaryDirectory(prefix="agc-templates-") as tmp:
            folder = cabinetry_config(histogram_folder=tmp)
            return build_workspace(histograms, workdir, config=folder, source=source, rebin=rebin)
    check_templates(histograms, config, source or "the histograms")
    with quiet_cabinetry():
        cabinetry.templates.build(dict(config), router=rebinning_router(histograms, rebin))
        cabinetry.templates.postprocess(dict(config))
        workspace = cabinetry.workspace.build(dict(config))
    _repair_normsys(workspace)
    if workdir is not None:
        atomic_write_text(Path(workdir) / "workspace.json", json.dumps(workspace, indent=1))
    return workspace


@contextlib.contextmanager
def quiet_cabinetry() -> Iterator[None]:
    """cabinetry warns once per empty template bin (expected with few events): its warnings
    are hidden unless its logger was given a level (``logging.getLogger("cabinetry")``)."""
    logger = logging.getLogger("cabinetry")
    if logger.level != logging.NOTSET:
        yield
        return
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(logging.NOTSET)


def _repair_normsys(workspace: dict[str, Any]) -> list[str]:
    """Replace non-positive normalisation factors by the reciprocal of the other side.

    pyhf interpolates ``normsys`` exponentially (log of the factors), so a factor <= 0 makes
    the likelihood NaN everywhere. That only happens with very few MC events, e.g. W+jets with
    1 event in a region whose jet-energy-scale variation has 5: symmetrising +400 % gives
    -300 %. Such a factor becomes 1 / (other factor), the symmetric effect in log space; the
    published reference fits contain none. Returns the modifiers changed (also logged).
    """
    repaired = []
    for channel in workspace["channels"]:
        for sample in channel["samples"]:
            for modifier in sample["modifiers"]:
                if modifier["type"] != "normsys":
                    continue
                data = modifier["data"]
                if data["hi"] > 0 and data["lo"] > 0:
                    continue
                old = dict(data)
                if data["hi"] > 0:
                    data["lo"] = 1.0 / data["hi"]
                elif data["lo"] > 0:
                    data["hi"] = 1.0 / data["lo"]
                else:
                    data["hi"] = data["lo"] = 1.0
                where = f"{channel['name']} / {sample['name']} / {modifier['name']}"
                log.warning(
                    "%s: normalisation effect hi=%.3g lo=%.3g is not positive (too few "
                    "MC events?); using hi=%.3g lo=%.3g",
                    where,
                    old["hi"],
                    old["lo"],
                    data["hi"],
                    data["lo"],
                )
                repaired.append(where)
    return repaired


# --------------------------------------------------------------------------------------------
# Fit


@dataclass
class FitResult:
    """Result of the maximum-likelihood fit to the pseudodata.

    ``parameters`` maps every parameter label to ``(best fit, uncertainty)``;
    ``strategy`` is the Minuit strategy that converged (``None`` = pyhf's default, which is
    1 for the numpy backend); ``attempts`` records each strategy tried and its outcome.
    """

    poi: str
    bestfit: float
    uncertainty: float
    labels: list[str]
    values: list[float]
    errors: list[float]
    correlation: list[list[float]]
    best_twice_nll: float
    strategy: Strategy
    attempts: list[dict[str, Any]]
    converged: bool = True
    info: dict[str, Any] = field(default_factory=dict)
    # live objects for plotting; not serialised
    cabinetry_result: Any = field(default=None, repr=False, compare=False)
    model: Any = field(default=None, repr=False, compare=False)
    data: Any = field(default=None, repr=False, compare=False)

    @property
    def parameters(self) -> dict[str, tuple[float, float]]:
        return {k: (v, e) for k, v, e in zip(self.labels, self.values, self.errors, strict=True)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "poi": self.poi,
            "bestfit": self.bestfit,
            "uncertainty": self.uncertainty,
            "converged": self.converged,
            "strategy": self.strategy,
            "attempts": self.attempts,
            "best_twice_nll": self.best_twice_nll,
            "parameters": {
                k: {"value": v, "uncertainty": e}
                for k, v, e in zip(self.labels, self.values, self.errors, strict=True)
            },
            "labels": self.labels,
            "correlation": self.correlation,
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> FitResult:
        """The inverse of :meth:`to_dict` (without the live cabinetry/pyhf objects)."""
        labels = list(payload["labels"])
        parameters = payload["parameters"]
        return cls(
            poi=payload["poi"],
            bestfit=payload["bestfit"],
            uncertainty=payload["uncertainty"],
            labels=labels,
            values=[parameters[k]["value"] for k in labels],
            errors=[parameters[k]["uncertainty"] for k in labels],
            correlation=payload["correlation"],
            best_twice_nll=payload["best_twice_nll"],
            strategy=payload["strategy"],
            attempts=payload["attempts"],
            converged=payload.get("converged", True),
            info=payload.get("info", {}),
        )

    def to_cabinetry(self) -> Any:
        """This result as cabinetry ``FitResults``: the live one kept by :func:`fit`, else one
        rebuilt from the stored values (a result read back with :meth:`from_dict`)."""
        import cabinetry

        if self.cabinetry_result is not None:
            return self.cabinetry_result
        return cabinetry.fit.FitResults(
            np.asarray(self.values, dtype=float),
            np.asarray(self.errors, dtype=float),
            list(self.labels),
            np.asarray(self.correlation, dtype=float),
            self.best_twice_nll,
        )

    def __str__(self) -> str:
        how = "default strategy" if self.strategy is None else f"strategy={self.strategy}"
        return f"{self.poi} = {self.bestfit:.3f} +- {self.uncertainty:.3f} ({how})"


def _try_strategies(
    run: Callable[[Strategy], Any], strategies: Sequence[Strategy]
) -> tuple[Any, Strategy, list[dict[str, Any]]]:
    import pyhf

    attempts: list[dict[str, Any]] = []
    for strategy in strategies:
        try:
            result = run(strategy)
        except (pyhf.exceptions.FailedMinimization, RuntimeError, ValueError) as err:
            # pyhf's message embeds the whole Minuit printout; its first line is the summary
            summary = (str(err).strip().splitlines() or [""])[0]
            message = f"{type(err).__name__}: {summary}"
            log.warning(
                "fit with strategy=%s did not converge (%s); %s",
                strategy,
                message,
                "trying the next strategy" if strategy != strategies[-1] else "giving up",
            )
            attempts.append({"strategy": strategy, "converged": False, "message": message})
            continue
        attempts.append({"strategy": strategy, "converged": True})
        return result, strategy, attempts
    tried = ", ".join("default" if s is None else str(s) for s in strategies)
    raise FitError(
        f"the fit did not converge with Minuit strategies {tried}. Check the input "
        "histograms (empty or tiny samples, e.g. from a run with very few events, make "
        "the model ill-defined) and the log for the minimiser's message."
    )


def fit(
    workspace: Mapping[str, Any], *, strategies: Sequence[Strategy] = DEFAULT_STRATEGIES
) -> FitResult:
    """Maximum-likelihood fit of the workspace's model to its (pseudo)data.

    The fit is tried with each Minuit strategy in ``strategies`` until one converges: pyhf's
    default first, then ``strategy=2``, which the all-files reference needs (spec §11.6).

    Raises:
        FitError: no strategy converged.
    """
    import cabinetry

    with quiet_cabinetry():
        model, data = cabinetry.model_utils.model_and_data(dict(workspace))
        result, strategy, attempts = _try_strategies(
            lambda s: cabinetry.fit.fit(model, data, strategy=s), strategies
        )
    labels = list(result.labels)
    i = labels.index(POI)
    return FitResult(
        poi=POI,
        bestfit=float(result.bestfit[i]),
        uncertainty=float(result.uncertainty[i]),
        labels=labels,
        values=[float(x) for x in result.bestfit],
        errors=[float(x) for x in result.uncertainty],
        correlation=np.asarray(result.corr_mat, dtype=float).round(6).tolist(),
        best_twice_nll=float(result.best_twice_nll),
        strategy=strategy,
        attempts=attempts,
        cabinetry_result=result,
        model=model,
        data=data,
    )


def fit_histograms(
    histograms: Mapping[str, hist.Hist],
    *,
    output_dir: str | os.PathLike | None = None,
    strategies: Sequence[Strategy] = DEFAULT_STRATEGIES,
    source: str = "the histograms",
    info: Mapping[str, Any] | None = None,
) -> FitResult:
    """Build the workspace of ``histograms`` and fit it (the cabinetry config is made once).

    Args:
        histograms: the templates by name, with the variances the MC-statistics terms need.
        output_dir: if given, ``workspace.json`` and ``fit_result.json`` are written there.
        source: how error messages name the histograms.
        info: recorded in the result's ``info`` (where the input came from).

    Raises:
        MissingTemplateError: a template the model needs is missing (nothing is written).
        FitError: the fit did not converge.
    """
    with tempfile.TemporaryDirectory(prefix="agc-templates-") as tmp:
        config = cabinetry_config(histogram_folder=tmp)
        workspace = build_workspace(histograms, output_dir, config=config, source=source)
    result = fit(workspace, strategies=strategies)
    result.info.update(info or {})
    if output_dir is not None:
        text = json.dumps(result.to_dict(), indent=1)
        atomic_write_text(Path(output_dir) / "fit_result.json", text)
    log.info("%s", result)
    return result


def fit_run(
    path: str | os.PathLike | FitInput,
    *,
    output_dir: str | os.PathLike | None = None,
    strategies: Sequence[Strategy] = DEFAULT_STRATEGIES,
) -> FitResult:
    """Fit one run: build the workspace and fit; write ``workspace.json``, ``fit_result.json``.

    Args:
        path: a run directory (with ``histograms.root``), a ``histograms.root`` or a JSON file
            (reference-style or a run's ``histograms.json``), or what :func:`load_fit_input`
            read from one.
        output_dir: where to write the outputs; defaults to the run directory (or the
            directory of the file given). ``agc fit`` always gives one, so that it never
            writes beside its input.

    Returns:
        The fit result (also written to ``fit_result.json``).
    """
    fit_input = path if isinstance(path, FitInput) else load_fit_input(path)
    return fit_histograms(
        fit_input.histograms,
        output_dir=Path(output_dir) if output_dir is not None else fit_input.source.parent,
        strategies=strategies,
        source=str(fit_input.source),
        info={
            "input": str(fit_input.source),
            "variances": fit_input.variances,
            "n_files": fit_input.n_files,
        },
    )


def load_fit_result(path: str | os.PathLike) -> FitResult:
    """Read ``fit_result.json`` (a file or the run directory holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "fit_result.json"
    try:
        return FitResult.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError) as err:
        raise HistogramFileError(
            f"{path}: not a readable fit result ({err}); run the fit first"
        ) from err
