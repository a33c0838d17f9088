"""The AGC's own implementations, run on the harness's inputs, for comparison.

What users would otherwise run: the AGC's **coffea reference** (``ttbar_analysis_pipeline.py``:
its ``TtbarAnalysis`` processor in coffea's ``processor.Runner``) and its **ROOT RDataFrame**
implementation (``analysis.py``). Their code is read from a checkout the user points to, at run
time, and never copied into the harness:

- coffea reference: the module's imports and its ``TtbarAnalysis`` class are compiled from the
  checkout's source and run (the rest of the script, which runs the whole notebook, is not);
  its ``utils`` package is imported from the checkout and its ``corrections.json`` read there.
  It gets the harness's fileset (same files, same metadata) and runs with coffea's
  ``FuturesExecutor`` (``workers`` processes) or ``IterativeExecutor`` (``workers=1``).
- RDataFrame: ``analysis.py`` runs as its own process in a scratch folder holding a
  ``nanoaod_inputs.json`` of the harness's files (its format, its URL prefix replaced by
  ``--remote-data-prefix``) and links to its C++ helpers, with ``--ncores workers``.

Each implementation runs in a fresh Python process (:func:`run_point`) so that its
whole-process time (interpreter start to histograms, imports included) is comparable; the
process reports the event loop's own time too. Histograms are compared with the harness's bin
for bin (:func:`compare`), leaving out ``pt_res_up``: the reference draws that smear unseeded,
so it differs from run to run (the harness's is seeded, see :mod:`agc.analysis.systematics`).
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import pickle
import re
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import hist
import numpy as np

from agc.errors import UserError
from agc.histograms import relative_difference
from agc.vocabulary import histogram_name

#: The reference files each implementation is found by, in its checkout.
COFFEA_PIPELINE = "ttbar_analysis_pipeline.py"
RDF_ANALYSIS = "analysis.py"
#: The implementations of :func:`run_point` (``implementation:`` of a bench point).
IMPLEMENTATIONS = ("harness", "coffea-reference", "rdf-reference")
#: Variation left out of the comparison: unseeded in the references.
UNSEEDED = "pt_res_up"
#: The prefix of the real files' URLs in the RDF implementation's inputs.
RDF_URL_PREFIX = "https://xrootd-local.unl.edu:1094//store/user/AGC"


class ImplementationError(UserError, RuntimeError):
    """A checkout that is not the implementation it should be, or a run of it that failed."""


@dataclass
class PointResult:
    """What one implementation's run gave (written by the child process, read by the parent)."""

    implementation: str
    label: str
    events: int
    #: the event loop alone (the Runner call, RDataFrame's RunGraphs; the harness's
    #: processing phase), and the whole process (set by the parent)
    event_loop_seconds: float
    workers: int
    whole_process_seconds: float = float("nan")
    versions: dict[str, str] = field(default_factory=dict)


def checkout_file(checkout: str | os.PathLike, name: str, what: str) -> Path:
    """``checkout/name``, or :class:`ImplementationError` saying what to point to."""
    path = Path(checkout).expanduser().resolve() / name
    if not path.is_file():
        raise ImplementationError(
            f"{checkout}: no {name} here; point to a checkout of {what} (e.g. "
            "../shared/reference-implementations/"
            f"{'coffea' if name == COFFEA_PIPELINE else 'rdf'})"
        )
    return path


# -- the coffea reference ----------------------------------------------------------------------
def load_coffea_reference(checkout: str | os.PathLike):
    """The reference's ``TtbarAnalysis`` processor (no ML inference), compiled from the
    checkout's ``ttbar_analysis_pipeline.py``: its imports and that class only."""
    path = checkout_file(checkout, COFFEA_PIPELINE, "the AGC's coffea reference")
    tree = ast.parse(path.read_text(), filename=str(path))
    keep: list[ast.stmt] = [
        node
        for node in tree.body
        if isinstance(node, ast.Import | ast.ImportFrom)
        or (isinstance(node, ast.ClassDef) and node.name == "TtbarAnalysis")
    ]
    if not any(isinstance(n, ast.ClassDef) for n in keep):
        raise ImplementationError(f"{path}: has no class TtbarAnalysis")
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))  # its utils package
    # not in sys.modules: coffea's cloudpickle sends the class to its workers by value
    module = types.ModuleType("agc_coffea_reference")
    module.__file__ = str(path)
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(path), "exec"), module.__dict__)
    with _working_directory(path.parent):  # it reads corrections.json from there
        return module.TtbarAnalysis(False, False)


def coffea_fileset(fileset: Mapping[str, Any]) -> dict[str, dict]:
    """The reference's fileset (files and the metadata its processor reads) of the harness's
    :func:`agc.catalog.build_fileset`."""
    return {
        key: {
            "files": {f.path: "Events" for f in sample.files},
            "metadata": {
                "process": sample.process,
                "variation": sample.variation,
                "xsec": sample.xsec,
                "nevts": sample.nevts,
            },
        }
        for key, sample in fileset.items()
    }


def run_coffea_reference(
    checkout: str | os.PathLike, fileset: Mapping[str, Any], *, workers: int, chunksize: int
) -> tuple[dict[str, hist.Hist], int, float]:
    """(flat histograms, events, event-loop seconds) of the coffea reference on ``fileset``."""
    from coffea import processor
    from coffea.nanoevents import NanoAODSchema

    instance = load_coffea_reference(checkout)
    executor = (
        processor.FuturesExecutor(workers=workers, status=False)
        if workers > 1
        else processor.IterativeExecutor(status=False)
    )
    NanoAODSchema.warn_missing_crossrefs = False
    runner = processor.Runner(executor=executor, schema=NanoAODSchema, chunksize=chunksize)
    started = time.perf_counter()
    output = runner(coffea_fileset(fileset), processor_instance=instance, treename="Events")
    seconds = time.perf_counter() - started
    events = int(sum(output["nevents"].values()))
    return flat_histograms(output["hist_dict"]), events, seconds


def flat_histograms(hist_dict: Mapping[str, hist.Hist]) -> dict[str, hist.Hist]:
    """The reference's region histograms (observable x process x variation) by the
    harness's names (``4j1b_ttbar``, ``4j2b_wjets_btag_var_1_up``...)."""
    out: dict[str, hist.Hist] = {}
    for region, h in hist_dict.items():
        for process in h.axes["process"]:
            for variation in h.axes["variation"]:
                one: Any = h[:, process, variation]
                total: Any = one.sum(flow=True)
                if total.value == 0 and total.variance == 0:
                    continue  # a category the growth axes gained for another process
                out[histogram_name(region, process, variation)] = one
    return out


# -- the RDataFrame implementation -------------------------------------------------------------
def rdf_inputs(fileset: Mapping[str, Any], data_dir: Path) -> dict:
    """``nanoaod_inputs.json`` for the RDF implementation: the harness's files, written with
    the real files' URL prefix that ``--remote-data-prefix data_dir`` maps back."""
    out: dict[str, dict] = {}
    for sample in fileset.values():
        files = []
        for f in sample.files:
            relative = Path(f.path).resolve().relative_to(data_dir.resolve())
            files.append({"path": f"{RDF_URL_PREFIX}/{relative.as_posix()}", "nevts": f.nevts})
        out.setdefault(sample.process, {})[sample.variation] = {
            "files": files,
            "nevts_total": sample.nevts,
        }
    return out


def run_rdf_reference(
    checkout: str | os.PathLike, fileset: Mapping[str, Any], *, workers: int
) -> tuple[dict[str, hist.Hist], int, float]:
    """(flat histograms, events, event-loop seconds) of the RDF implementation: its own
    process in a scratch folder. The event loop is the time it prints for executing its
    computation graphs (``RunGraphs``), else (when it prints none) its whole process."""
    script = checkout_file(checkout, RDF_ANALYSIS, "the AGC's RDataFrame implementation")
    files = [Path(f.path) for s in fileset.values() for f in s.files]
    data_dir = Path(os.path.commonpath([str(p.resolve().parent) for p in files]))
    with tempfile.TemporaryDirectory(prefix="agc-rdf-") as scratch:
        work = Path(scratch)
        (work / "nanoaod_inputs.json").write_text(json.dumps(rdf_inputs(fileset, data_dir)))
        for helper in script.parent.glob("*.h"):
            (work / helper.name).symlink_to(helper)
        started = time.perf_counter()
        done = subprocess.run(
            [
                sys.executable,
                str(script),
                "--remote-data-prefix",
                str(data_dir),
                "--ncores",
                str(workers),
                "--no-fitting",
                "--output",
                "histograms.root",
            ],
            cwd=work,
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - started
        loop = re.search(r"Executing the computation graphs took ([0-9.]+) seconds", done.stdout)
        if loop:
            seconds = float(loop.group(1))
        if done.returncode != 0:
            raise ImplementationError(
                f"{script} failed (exit {done.returncode}):\n{done.stderr[-2000:]}"
            )
        from agc.histograms import read_histograms

        histograms = read_histograms(work / "histograms.root")
    events = sum(s.nevts for s in fileset.values())
    return histograms, events, seconds


# -- one point in its own process ----------------------------------------------------------
def run_point(point: Mapping[str, Any], catalog: str, out_dir: Path) -> PointResult:
    """Run one point of the ``implementations`` scenario in a fresh Python process, timed
    from outside (whole process); its histograms are left in ``out_dir/histograms.pkl``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "agc.implementations",
            json.dumps(dict(point)),
            catalog,
            str(out_dir),
        ],
        capture_output=True,
        text=True,
    )
    whole = time.perf_counter() - started
    result_file = out_dir / "result.json"
    if done.returncode != 0 or not result_file.exists():
        raise ImplementationError(
            f"{point.get('label')}: the run failed (exit {done.returncode}):\n{done.stderr[-2000:]}"
        )
    result = PointResult(**json.loads(result_file.read_text()))
    result.whole_process_seconds = whole
    return result


def _child(point: Mapping[str, Any], catalog: str, out_dir: Path) -> None:
    """The process of :func:`run_point`: runs the point, writes its result and histograms."""
    from agc.catalog import build_fileset, load_catalog

    kind = point.get("implementation", "harness")
    workers = int(point.get("workers") or 1)
    if kind == "harness":
        from agc.config import RunConfig
        from agc.runner import run

        controls = ("implementation", "checkout", "requires", "standins")
        options = {k: v for k, v in point.items() if k not in controls}
        options.setdefault("fit", False)
        result = run(RunConfig(catalog=catalog, **options), progress=False, write=False)
        histograms = result.histograms
        events = result.events
        loop = result.record.phases.get("processing", float("nan"))
        workers = result.record.workers
    else:
        cat, base = load_catalog(catalog)
        fileset = build_fileset(cat, base, n_files=int(point.get("n_files", -1)))
        checkout = point.get("checkout")
        if not checkout:
            raise ImplementationError(f"{point.get('label')}: give the checkout of {kind}")
        if kind == "coffea-reference":
            histograms, events, loop = run_coffea_reference(
                checkout, fileset, workers=workers, chunksize=int(point.get("chunksize", 100_000))
            )
        elif kind == "rdf-reference":
            histograms, events, loop = run_rdf_reference(checkout, fileset, workers=workers)
        else:
            raise ImplementationError(
                f"implementation {kind!r}: choose one of {', '.join(IMPLEMENTATIONS)}"
            )
    with open(out_dir / "histograms.pkl", "wb") as f:
        pickle.dump(dict(histograms), f)
    record = PointResult(
        kind, str(point.get("label", kind)), events, loop, workers, versions=_versions(kind)
    )
    (out_dir / "result.json").write_text(json.dumps(asdict(record)))


def _versions(kind: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    names = {"harness": ["agc-harness", "coffea"], "coffea-reference": ["coffea"]}
    out = {}
    for name in names.get(kind, []):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    if kind == "rdf-reference":
        with contextlib.suppress(Exception):
            import ROOT  # noqa: PLC0415 - the optional RDF extra

            out["ROOT"] = str(ROOT.gROOT.GetVersion())
    return out


# -- the comparison ----------------------------------------------------------------------------
def compare(
    harness: Mapping[str, hist.Hist], other: Mapping[str, hist.Hist], exclude: str = UNSEEDED
) -> dict[str, Any]:
    """Bin-for-bin check of ``other``'s histograms against the harness's (values and
    variances, flow bins included), names containing ``exclude`` left out.

    Compared: the names both have. ``identical``: equal to the last bit; ``max_rel_diff``:
    the largest relative difference of any bin; ``missing``: harness histograms with entries
    that ``other`` lacks (its empty categories are not written); ``without_variances``: the
    histograms of ``other`` stored without variances (only their values compared).
    """
    names = sorted(n for n in set(harness) & set(other) if exclude not in n)
    identical, worst, differing = 0, 0.0, []
    without_variances = 0
    for name in names:
        same = True
        for fld in ("value", "variance"):
            a, b = _bins(harness[name], fld), _bins(other[name], fld)
            if a is None or b is None:  # a histogram stored without its sums of squares
                without_variances += fld == "variance"
                continue
            if a.shape != b.shape:
                same, worst = False, float("inf")
                continue
            if not np.array_equal(a, b):
                same = False
                worst = max(worst, float(relative_difference(a, b).max()))
        identical += same
        if not same:
            differing.append(name)
    filled = {n for n, h in harness.items() if exclude not in n and np.any(_bins(h, "value"))}
    missing = sorted(n for n in filled - set(other) if "pseudodata" not in n)
    return {
        "compared": len(names),
        "identical": identical,
        "max_rel_diff": worst,
        "differing": differing,
        "missing": missing,
        "excluded": exclude,
        "without_variances": without_variances,
    }


def _bins(h: hist.Hist, fld: str) -> np.ndarray | None:
    """Values or variances of every bin, flow included; None for variances a histogram does
    not store (a ROOT histogram written without Sumw2 reads back as plain counts)."""
    view: Any = h.view(flow=True)
    if view.dtype.names:
        return np.asarray(view[fld], dtype=float)
    return np.asarray(view, dtype=float) if fld == "value" else None


@contextlib.contextmanager
def _working_directory(path: Path):
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def main(argv: list[str] | None = None) -> int:
    """``python -m agc.implementations POINT_JSON CATALOG OUT_DIR`` (see :func:`run_point`)."""
    args = sys.argv[1:] if argv is None else argv
    point, catalog, out_dir = json.loads(args[0]), args[1], Path(args[2])
    try:
        _child(point, catalog, out_dir)
    except UserError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
