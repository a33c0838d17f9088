"""Histogram definitions, merging, pseudodata, ROOT/JSON I/O and validation (spec §3, §6, §7).

A run's histograms are a flat ``dict[name, hist.Hist]`` of one-dimensional histograms with the
observable axis ``Reg(25, 50, 550)`` and ``Weight()`` storage, keyed by the cabinetry names of
spec §6 (``4j1b_ttbar``, ``4j2b_wjets_btag_var_2_down``, ``4j1b_pseudodata``...). A flat dict
merges by key, pickles small, and maps one to one onto ``histograms.root``; the reference's
three-axis view (observable x process x variation) is available from :func:`to_hist_dict`.

With the ML step (spec §5) the same dict also holds the 20 feature histograms per sample and
variation, named ``{feature}_{process}[_{variation}]`` (:func:`agc.vocabulary.ml_histogram_name`)
with their own binning (:func:`new_ml_histogram`). They belong in ``histograms_ml.root``, not
in ``histograms.root``: :func:`split_ml_histograms` separates the two kinds.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import hist
import numpy as np

from agc.errors import UserError
from agc.fileio import atomic_write, atomic_write_text
from agc.vocabulary import (
    HIGH,
    LOW,
    ML_FEATURE_LABELS,
    ML_FEATURES,
    ML_N_BINS,
    ML_RANGES,
    N_BINS,
    OBSERVABLE_LABELS,
    PROCESSES,
    PSEUDODATA,
    REGIONS,
    histogram_name,
    ml_histogram_name,
    parse_histogram_name,
    parse_ml_histogram_name,
)

log = logging.getLogger(__name__)

Histograms = dict[str, hist.Hist]


def new_histogram(region: str = "") -> hist.Hist:
    """An empty observable histogram: 25 bins of 20 GeV in [50, 550], with flow, Weight storage."""
    label = OBSERVABLE_LABELS.get(region, "observable [GeV]")
    return hist.Hist(
        hist.axis.Regular(N_BINS, LOW, HIGH, name="observable", label=label),
        storage=hist.storage.Weight(),
    )


#: What the ML histograms are written to (spec §5), beside ``histograms.root``.
ML_HISTOGRAMS_FILE = "histograms_ml.root"
#: Added to every bin of every ML histogram before it is written, as the reference does
#: (spec §5), so that no bin of an ML template is empty.
ML_OFFSET = 1e-6


def add_offset(histograms: Mapping[str, hist.Hist], offset: float = ML_OFFSET) -> Histograms:
    """Copies of ``histograms`` with ``offset`` added to every bin, flow included.

    As in the reference (``h += 1e-6``), the offset is added like one fill of weight ``offset``:
    with weighted storage the variances grow by ``offset**2``.
    """
    out: Histograms = {}
    for name, h in histograms.items():
        h = h.copy()
        h += offset
        out[name] = h
    return out


def new_ml_histogram(feature: str) -> hist.Hist:
    """An empty histogram of an ML feature (spec §5): 25 bins in the feature's range, Weight."""
    low, high = ML_RANGES[feature]
    return hist.Hist(
        hist.axis.Regular(
            ML_N_BINS, low, high, name="observable", label=ML_FEATURE_LABELS[feature]
        ),
        storage=hist.storage.Weight(),
    )


def split_ml_histograms(histograms: Mapping[str, hist.Hist]) -> tuple[Histograms, Histograms]:
    """(the region histograms, the ML feature histograms) of a mixed dict, names kept.

    A name is an ML one when :func:`agc.vocabulary.parse_ml_histogram_name` reads it.
    """
    main: Histograms = {}
    ml: Histograms = {}
    for name, h in histograms.items():
        (ml if parse_ml_histogram_name(name) is not None else main)[name] = h
    return main, ml


def add_ml_pseudodata(histograms: Histograms) -> Histograms:
    """Add ``{feature}_pseudodata``: the ML counterpart of :func:`add_pseudodata`."""
    return _with_pseudodata(histograms, ML_FEATURES, ml_histogram_name)


def merge(histograms: Iterable[Mapping[str, hist.Hist]]) -> Histograms:
    """Sum several histogram dicts key by key (keys missing from some inputs are fine)."""
    total: Histograms = {}
    for part in histograms:
        for name, h in part.items():
            total[name] = total[name] + h if name in total else h.copy()
    return total


def add_pseudodata(histograms: Histograms) -> Histograms:
    """Add ``{region}_pseudodata`` = (ttbar ME_var + ttbar PS_var) / 2 + wjets nominal (spec §6).

    Written only when all three inputs exist for the region (no single top, as in the code).
    """
    return _with_pseudodata(histograms, REGIONS, histogram_name)


def _with_pseudodata(
    histograms: Histograms, prefixes: Iterable[str], name: Callable[..., str]
) -> Histograms:
    """``histograms`` and, per prefix (region or ML feature) whose three inputs exist,
    ``name(prefix, "pseudodata")`` = (ttbar ME_var + ttbar PS_var) / 2 + wjets nominal."""
    out = dict(histograms)
    for prefix in prefixes:
        names = [name(prefix, "ttbar", "ME_var"), name(prefix, "ttbar", "PS_var")]
        names.append(name(prefix, "wjets"))
        if all(n in histograms for n in names):
            me, ps, wjets = (histograms[n] for n in names)
            out[name(prefix, PSEUDODATA)] = (me + ps) / 2 + wjets
    return out


def is_written(h: hist.Hist) -> bool:
    """The reference writes a histogram only when its in-range bins sum to more than zero."""
    return float(np.sum(h.values())) > 0


def write_root(histograms: Mapping[str, hist.Hist], path: str | os.PathLike) -> list[str]:
    """Write the non-empty histograms as TH1D (with flow and sumw2) to a ROOT file, atomically.

    Returns the names written.
    """
    import uproot

    names = sorted(n for n, h in histograms.items() if is_written(h))

    def write(tmp: Path) -> None:
        with uproot.recreate(tmp) as f:
            for name in names:
                f[name] = histograms[name]

    atomic_write(path, write)
    return names


def to_json_dict(histograms: Mapping[str, hist.Hist]) -> dict[str, dict[str, list[float]]]:
    """The reference JSON structure: ``{name: {"edges": [26], "contents": [27 incl. flow]}}``."""
    out = {}
    for name in sorted(histograms):
        h = histograms[name]
        if not is_written(h):
            continue
        out[name] = {
            "edges": [float(e) for e in h.axes[0].edges],
            "contents": [float(c) for c in h.values(flow=True)],
        }
    return out


def write_json(histograms: Mapping[str, hist.Hist], path: str | os.PathLike) -> None:
    """Write :func:`to_json_dict` to ``path`` atomically."""
    payload = to_json_dict(histograms)
    atomic_write_text(path, json.dumps(payload, indent=1))


class HistogramFileError(UserError, ValueError):
    """A histogram file is missing, unreadable or not of the expected form."""


def read_histograms(path: str | os.PathLike) -> Histograms:
    """Read histograms from ``histograms.root`` (TH1, highest cycle) or a reference-style JSON.

    JSON files carry no variances; their histograms get variances equal to their contents.
    """
    path = Path(path)
    if not path.exists():
        raise HistogramFileError(f"{path}: no such file; give a histograms.root or .json file")
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise HistogramFileError(f"{path}: not a readable JSON file ({err})") from err
        if not isinstance(data, dict):
            raise HistogramFileError(
                f"{path}: expected an object of histograms {{name: {{'edges', 'contents'}}}}, "
                f"not a JSON {type(data).__name__}"
            )
        out = {}
        for name, entry in data.items():
            try:
                edges = np.asarray(entry["edges"], dtype=float)
                contents = np.asarray(entry["contents"], dtype=float)
            except (TypeError, KeyError, ValueError) as err:
                raise HistogramFileError(
                    f"{path}: histogram {name!r} needs numeric 'edges' and 'contents'"
                ) from err
            if len(contents) != len(edges) + 1:
                raise HistogramFileError(
                    f"{path}: histogram {name!r} has {len(contents)} contents for "
                    f"{len(edges) - 1} bins; expected bins + 2 flow entries"
                )
            h = hist.Hist(
                hist.axis.Variable(edges, name="observable"), storage=hist.storage.Weight()
            )
            view = h.view(flow=True)
            view.value = contents
            view.variance = np.abs(contents)
            out[name] = h
        return out
    import uproot

    try:
        with uproot.open(path) as f:
            names = {k.split(";")[0] for k, cls in f.classnames().items() if cls.startswith("TH1")}
            return {n: f[n].to_hist() for n in sorted(names)}
    except Exception as err:  # uproot raises many kinds for a damaged file
        raise HistogramFileError(f"{path}: cannot read histograms ({err})") from err


def to_hist_dict(
    histograms: Mapping[str, hist.Hist], processes: Iterable[str] | None = None
) -> dict[str, hist.Hist]:
    """The reference's per-region 3D view: observable x process (StrCat) x variation (StrCat).

    ``processes``: the processes to take (default: all of :data:`agc.vocabulary.PROCESSES`
    and the pseudodata).
    """
    known = tuple(processes) if processes is not None else (*PROCESSES, PSEUDODATA)
    out = {}
    for region in REGIONS:
        entries = []
        for name, h in histograms.items():
            parsed = parse_histogram_name(name, known)
            if parsed is not None and parsed.region == region:
                entries.append((parsed.process, parsed.variation, h))
        process_axis = sorted({p for p, _, _ in entries})
        variation_axis = sorted({v for _, v, _ in entries}, key=lambda v: (v != "nominal", v))
        h3 = hist.Hist(
            hist.axis.Regular(
                N_BINS, LOW, HIGH, name="observable", label=OBSERVABLE_LABELS[region]
            ),
            hist.axis.StrCategory(process_axis, name="process", growth=True),
            hist.axis.StrCategory(variation_axis, name="variation", growth=True),
            storage=hist.storage.Weight(),
        )
        view = h3.view(flow=True)
        for process, variation, h in entries:
            ip = h3.axes["process"].index(process)
            iv = h3.axes["variation"].index(variation)
            view[:, ip, iv] = h.view(flow=True)
        out[region] = h3
    return out


# --------------------------------------------------------------------------------------------
# Validation (spec §7.2, the reference's validate_histograms.py)


@dataclass
class ValidationReport:
    """Outcome of comparing an output file with a reference JSON."""

    checked: int = 0
    errors: list[str] = field(default_factory=list)
    migrations: list[str] = field(default_factory=list)
    skipped_content: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def relative_difference(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per bin: |x - y| / max(|x|, |y|); 0 where both are equal (0, the same infinity, or
    both NaN), infinity where only one is finite."""
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.maximum(np.abs(x), np.abs(y))
        rel = np.abs(x - y) / scale
    same = (x == y) | (np.isnan(x) & np.isnan(y))
    rel[same] = 0.0
    rel[~same & ~np.isfinite(rel)] = np.inf
    return rel


def _mismatch_groups(bad: np.ndarray) -> list[tuple[int, int]]:
    """Runs of adjacent True values as (start, stop) index pairs."""
    groups, start = [], None
    for i, b in enumerate(bad):
        if b and start is None:
            start = i
        elif not b and start is not None:
            groups.append((start, i))
            start = None
    if start is not None:
        groups.append((start, len(bad)))
    return groups


def validate(output: Mapping[str, hist.Hist], reference: Mapping[str, Mapping]) -> ValidationReport:
    """Compare histograms with a reference dict ``{name: {"edges", "contents"}}`` (spec §7.2).

    For each reference name: a missing output is an error (``*_pseudodata`` excepted); edges must
    be allclose; ``pt_res_up`` contents are not compared (random in the reference); otherwise bins
    are compared with ``isclose(rtol=1e-5, atol=1e-8)`` and runs of adjacent mismatching bins pass
    as a bin migration only if they agree bin by bin within ``atol=2`` and their sums agree.
    """
    report = ValidationReport()
    for name, ref in reference.items():
        report.checked += 1
        if name not in output:
            if not name.endswith("_pseudodata"):
                report.errors.append(f"{name}: missing from the output")
            continue
        h = output[name]
        edges = np.asarray(h.axes[0].edges)
        ref_edges = np.asarray(ref["edges"], dtype=float)
        if edges.shape != ref_edges.shape or not np.allclose(edges, ref_edges):
            report.errors.append(f"{name}: bin edges differ from the reference")
            continue
        if "pt_res_up" in name:
            report.skipped_content.append(name)
            continue
        got = np.asarray(h.values(flow=True), dtype=float)
        want = np.asarray(ref["contents"], dtype=float)
        if got.shape != want.shape:
            report.errors.append(f"{name}: {got.size} bins (with flow), reference has {want.size}")
            continue
        bad = ~np.isclose(got, want, rtol=1e-5, atol=1e-8)
        for start, stop in _mismatch_groups(bad):
            g, w = got[start:stop], want[start:stop]
            if np.allclose(g, w, atol=2.0) and np.allclose(g.sum(), w.sum()):
                report.migrations.append(f"{name}: bins {start}-{stop - 1} (bin migration)")
            else:
                report.errors.append(
                    f"{name}: bins {start}-{stop - 1} differ: got {np.round(g, 3).tolist()}, "
                    f"reference {np.round(w, 3).tolist()}"
                )
    return report
