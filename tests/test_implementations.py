"""The harness beside the AGC's own implementations: the coffea engine (coffea's
processor.Runner running the harness's analysis), the coffea reference read from its checkout,
the RDataFrame implementation's inputs, the bin-for-bin comparison and the bench scenario."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import hist
import numpy as np
import pytest
import yaml
from conftest import assert_same_histograms

from agc.config import ConfigError, RunConfig
from agc.implementations import (
    ImplementationError,
    compare,
    flat_histograms,
    load_coffea_reference,
    rdf_inputs,
    run_coffea_reference,
)
from agc.runner import run

REFERENCES = Path(__file__).resolve().parents[1].parent / "shared" / "reference-implementations"
COFFEA_REFERENCE = REFERENCES / "coffea"
needs_reference = pytest.mark.skipif(
    not (COFFEA_REFERENCE / "ttbar_analysis_pipeline.py").exists(),
    reason="the AGC coffea reference is not in ../shared/reference-implementations (a user's "
    "clone has none)",
)


@pytest.fixture(scope="module")
def chunked(small_catalog):
    return run(RunConfig(catalog=str(small_catalog), mode="inprocess"), progress=False, write=False)


# -- the coffea engine -------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["inprocess", "processes", "dask"])
def test_coffea_engine_gives_the_chunked_engines_histograms(small_catalog, chunked, mode):
    result = run(
        RunConfig(catalog=str(small_catalog), engine="coffea", mode=mode, workers=2),
        progress=False,
        write=False,
    )
    assert_same_histograms(chunked.histograms, result.histograms, rtol=0, what=f"coffea {mode}")
    assert result.record.engine == "coffea"
    assert result.events == chunked.events
    # coffea read the same baskets the other engines account for
    assert result.record.bytes_read == pytest.approx(chunked.record.bytes_read, rel=0.2)
    assert all(t.analysis_seconds > 0 for t in result.tasks)


def test_coffea_engine_refuses_what_it_does_not_run():
    with pytest.raises(ConfigError, match="coffea"):
        RunConfig(engine="coffea", io_only=True)
    with pytest.raises(ConfigError, match="coffea"):
        RunConfig(engine="coffea", backend="gpu", device="cpu")


# -- the coffea reference ------------------------------------------------------------------------
def test_a_folder_without_the_reference_is_refused_naming_it(tmp_path):
    with pytest.raises(ImplementationError, match="no ttbar_analysis_pipeline.py here"):
        load_coffea_reference(tmp_path)


@needs_reference
def test_coffea_reference_agrees_with_the_harness_bit_for_bit(small_catalog, chunked):
    from agc.catalog import build_fileset, load_catalog

    catalog, base = load_catalog(small_catalog)
    fileset = build_fileset(catalog, base)
    histograms, events, seconds = run_coffea_reference(
        COFFEA_REFERENCE, fileset, workers=1, chunksize=100_000
    )
    assert events == chunked.events and seconds > 0
    check = compare(chunked.histograms, histograms)
    assert check["compared"] >= 50, check  # every sample, region and variation but one
    assert check["identical"] == check["compared"], check["differing"]
    assert check["missing"] == []
    # the unseeded smear is left out of the comparison, and it is the only thing left out
    assert any("pt_res_up" in n for n in histograms)
    assert all("pt_res_up" not in n for n in check["differing"])


RDF_REFERENCE = REFERENCES / "rdf"
HAS_ROOT = importlib.util.find_spec("ROOT") is not None


@needs_reference
@pytest.mark.skipif(not HAS_ROOT, reason="ROOT is not installed (pip install '.[rdf]')")
def test_rdf_reference_agrees_with_the_harness_to_float_precision(small_catalog, chunked):
    from agc.catalog import build_fileset, load_catalog
    from agc.implementations import run_rdf_reference

    catalog, base = load_catalog(small_catalog)
    fileset = build_fileset(catalog, base)
    histograms, events, seconds = run_rdf_reference(RDF_REFERENCE, fileset, workers=1)
    assert events == chunked.events and seconds > 0
    check = compare(chunked.histograms, histograms)
    assert check["compared"] >= 50 and check["missing"] == []
    # every bin within float32 rounding: no entry migrated to another bin
    assert check["max_rel_diff"] < 1e-6, check


# -- the comparison ------------------------------------------------------------------------------
def _h(values, weight=1.0) -> hist.Hist:
    h = hist.Hist(hist.axis.Regular(25, 50, 550), storage=hist.storage.Weight())
    h.fill(np.asarray(values, dtype=float), weight=weight)
    return h


def test_compare_finds_a_migrated_entry_and_a_rounding_difference():
    base = {"4j1b_ttbar": _h([100, 200]), "4j2b_ttbar": _h([300]), "4j1b_ttbar_pt_res_up": _h([1])}
    same = compare(base, {k: h.copy() for k, h in base.items()})
    assert same["identical"] == same["compared"] == 2 and same["max_rel_diff"] == 0
    moved = {**base, "4j1b_ttbar": _h([100, 221])}  # one entry in the next bin
    check = compare(base, moved)
    assert check["differing"] == ["4j1b_ttbar"] and check["max_rel_diff"] == 1.0
    rounded = {**base, "4j2b_ttbar": _h([300], weight=1 + 1e-15)}
    assert 0 < compare(base, rounded)["max_rel_diff"] < 1e-14
    assert compare(base, {"4j1b_ttbar": base["4j1b_ttbar"]})["missing"] == ["4j2b_ttbar"]


def test_flat_histograms_names_the_references_categories():
    h = (
        hist.Hist.new.Reg(25, 50, 550, name="observable")
        .StrCat([], name="process", growth=True)
        .StrCat([], name="variation", growth=True)
        .Weight()
    )
    h.fill(observable=[100.0], process="ttbar", variation="nominal", weight=2.0)
    h.fill(observable=[120.0], process="wjets", variation="btag_var_0_up", weight=1.0)
    flat = flat_histograms({"4j1b": h})
    assert sorted(flat) == ["4j1b_ttbar", "4j1b_wjets_btag_var_0_up"]  # empty combinations out
    assert flat["4j1b_ttbar"].sum().value == 2.0


def test_rdf_inputs_map_back_to_the_harness_files(small_catalog):
    from agc.catalog import build_fileset, load_catalog
    from agc.implementations import RDF_URL_PREFIX

    catalog, base = load_catalog(small_catalog)
    fileset = build_fileset(catalog, base)
    spec = rdf_inputs(fileset, small_catalog.parent)
    entry = spec["ttbar"]["nominal"]
    assert entry["nevts_total"] == fileset["ttbar__nominal"].nevts
    for f, original in zip(entry["files"], fileset["ttbar__nominal"].files, strict=True):
        assert f["path"].startswith(RDF_URL_PREFIX + "/")
        local = f["path"].replace(RDF_URL_PREFIX, str(small_catalog.parent))
        assert Path(local).resolve() == Path(original.path).resolve()


# -- the bench scenario --------------------------------------------------------------------------
def test_shipped_implementations_scenario_loads():
    from agc.bench import load_scenarios, points

    spec = load_scenarios()
    kinds = [
        p.get("implementation", "harness") for p in points(spec["scenarios"]["implementations"])
    ]
    assert kinds.count("harness") == 3 and {"coffea-reference", "rdf-reference"} <= set(kinds)


def test_a_point_with_an_unknown_implementation_is_refused(tmp_path):
    from agc.bench import BenchError, load_scenarios

    spec = {
        "datasets": {"d": {"layout": "minimal", "events": {"ttbar__nominal": [1, 10]}}},
        "scenarios": {"s": {"dataset": "d", "points": [{"label": "x", "implementation": "root"}]}},
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(BenchError, match="implementation 'root'"):
        load_scenarios(path)


@needs_reference
def test_implementations_scenario_records_rates_and_checks(tmp_path):
    from agc.bench import SCENARIOS_FILE, run_scenario

    shipped = yaml.safe_load(SCENARIOS_FILE.read_text())
    scenario = {
        "kind": "implementations",
        "dataset": "tiny",
        "base": {"workers": 1, "chunksize": 2000},
        "points": [
            {"label": "harness", "mode": "inprocess"},
            {
                "label": "coffea reference",
                "implementation": "coffea-reference",
                "checkout": str(COFFEA_REFERENCE),
            },
            {
                "label": "nothing here",
                "implementation": "rdf-reference",
                "checkout": "x",
                "requires": "false",
            },
        ],
    }
    tiny = {
        **shipped["datasets"]["small"],
        "events": {"ttbar__nominal": [1, 2000], "wjets__nominal": [1, 2000]},
    }
    path = tmp_path / "scenarios.yaml"
    path.write_text(yaml.safe_dump({"datasets": {"tiny": tiny}, "scenarios": {"impl": scenario}}))
    raw = run_scenario(
        "impl",
        tmp_path / "results",
        scenarios_file=path,
        repeats=1,
        warmup=0,
        data_root=tmp_path / "data",
        progress=False,
    )
    import pandas as pd

    runs = pd.read_csv(raw / "impl-runs.csv")
    assert list(runs["point"]) == ["harness", "coffea reference"]
    assert (runs["events"] == 4000).all()
    assert (runs["wall_seconds"] > runs["processing_seconds"]).all()  # whole process > loop
    meta = json.loads((raw / "impl-meta.json").read_text())
    check = meta["checks"]["coffea reference"]
    assert check["against"] == "harness" and check["identical"] == check["compared"] > 0
    assert "nothing here" in meta["skipped"]
