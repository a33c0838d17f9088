"""The ML step through a whole run: ``agc run --ml MODELS_DIR`` writes the 20 feature histograms
of every sample and variation, the ML workspace and plots; the histograms do not depend on the
workers or the cache; the cache key follows the models."""

from __future__ import annotations

import json

import pytest
from conftest import assert_same_histograms

from agc import RunConfig, run
from agc import vocabulary as v
from agc.config import ConfigError

xgboost = pytest.importorskip("xgboost")
from test_ml import REFERENCE_MODELS, physics_models  # noqa: E402, F401 - fixtures


def _config(catalog, models, **kw) -> RunConfig:
    kw.setdefault("mode", "inprocess")
    kw.setdefault("fit", False)
    return RunConfig(catalog=str(catalog), ml=str(models), chunksize=1000, **kw)


@pytest.fixture(scope="module")
def ml_run(small_catalog, physics_models, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("ml-run") / "run"
    return run(_config(small_catalog, physics_models, output_dir=str(out)), progress=False)


def test_a_run_with_ml_writes_every_feature_of_every_sample_and_variation(ml_run, small_catalog):
    import uproot

    from agc.catalog import build_fileset, load_catalog

    fileset = build_fileset(*load_catalog(str(small_catalog)))
    expected = {
        name
        for sample in fileset.values()
        for name in v.ml_histogram_names(sample.process, sample.variation, True)
    } | {v.ml_histogram_name(f, v.PSEUDODATA) for f in v.ML_FEATURES}
    assert set(ml_run.ml_histograms) == expected
    labels = sum(len(v.histogram_labels(s.process, s.variation, True)) for s in fileset.values())
    assert len(expected) == 20 * (labels + 1)  # + the pseudodata
    with uproot.open(ml_run.run_dir / "histograms_ml.root") as f:
        stored = {k.split(";")[0] for k in f.keys()}
        h = f["mass_w1w2_ttbar"]
        mine = ml_run.ml_histograms["mass_w1w2_ttbar"]
        assert (h.values() == mine.values() + 1e-6).all()  # the reference's offset
    assert stored == expected
    assert not any(n in stored for n in ml_run.histograms)  # histograms.root keeps its 124+
    with uproot.open(ml_run.run_dir / "histograms.root") as f:
        assert not any(k.startswith("mass_") for k in f.keys())
    assert json.loads((ml_run.run_dir / "summary.json").read_text())["ml"]["histograms"] == len(
        expected
    )
    # the 4j2b events: each fills every feature once per variation label, with its weight
    for feature in v.ML_FEATURES:
        ml = ml_run.ml_histograms[v.ml_histogram_name(feature, "ttbar")]
        region = ml_run.histograms[v.histogram_name("4j2b", "ttbar")]
        assert ml.sum(flow=True).value == pytest.approx(region.sum(flow=True).value, rel=1e-12)


def test_the_main_histograms_do_not_change_with_ml(ml_run, small_catalog):
    plain = run(RunConfig(catalog=str(small_catalog), mode="inprocess", chunksize=1000, fit=False),
                progress=False, write=False)  # fmt: skip
    assert_same_histograms(ml_run.histograms, plain.histograms, rtol=0)


def test_ml_histograms_do_not_depend_on_workers_or_chunking(ml_run, small_catalog, physics_models):  # noqa: F811
    pool = run(_config(small_catalog, physics_models, mode="processes", workers=2), progress=False,
               write=False)  # fmt: skip
    assert_same_histograms(pool.ml_histograms, ml_run.ml_histograms, rtol=0)
    rechunked = run(
        RunConfig(catalog=str(small_catalog), ml=str(physics_models), chunksize=700,
                  mode="inprocess", fit=False), progress=False, write=False,
    )  # fmt: skip
    assert_same_histograms(rechunked.ml_histograms, ml_run.ml_histograms, rtol=1e-12)


def test_the_cache_key_follows_the_models(small_catalog, physics_models, tmp_path):  # noqa: F811
    from test_ml import F, _save, _train

    store = str(tmp_path / "store")
    cold = run(_config(small_catalog, physics_models, cache=store, data_lake="off"),
               progress=False, write=False)  # fmt: skip
    warm = run(_config(small_catalog, physics_models, cache=store, data_lake="off"),
               progress=False, write=False)  # fmt: skip
    assert warm.record.cache_hits == warm.chunks and cold.record.cache_hits == 0
    assert_same_histograms(warm.ml_histograms, cold.ml_histograms, rtol=0)
    other = _save(tmp_path / "other", *(_train(lambda x: x[:, F["btag_w1"]] > 0.5),) * 2)
    changed = run(_config(small_catalog, other, cache=store, data_lake="off"), progress=False,
                  write=False)  # fmt: skip
    assert changed.record.cache_hits == 0  # other models: every chunk computed again
    without = run(RunConfig(catalog=str(small_catalog), mode="inprocess", chunksize=1000,
                            fit=False, cache=store, data_lake="off"), progress=False,
                  write=False)  # fmt: skip
    assert without.record.cache_hits == 0 and not without.ml_histograms


def test_missing_models_fail_before_any_work(small_catalog, tmp_path, monkeypatch):
    import agc.engines
    from agc.analysis.ml import ModelFilesError

    def never(task):
        raise AssertionError("a chunk was processed")

    monkeypatch.setattr(agc.engines, "process_chunk", never)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model_even.json").write_text("{}")
    with pytest.raises(ModelFilesError, match="model_odd.json"):
        run(_config(small_catalog, tmp_path / "models"), progress=False, write=False)
    with pytest.raises(ConfigError, match="ml=.* needs the analysis, not io_only"):
        RunConfig(ml=str(tmp_path), io_only=True)


@pytest.fixture(scope="module")
def fit_catalog(tmp_path_factory):
    """All nine samples with enough W+jets for the main fit (minimal layout, ~90k events)."""
    from conftest import SMALL_DATASET

    from agc import synth

    events = {key: (1, 6000) for key in SMALL_DATASET} | {"wjets__nominal": (1, 40_000)}
    return synth.generate(
        tmp_path_factory.mktemp("ml-fit-data"), events=events, layout="minimal", seed=11
    )


@pytest.mark.slow
def test_the_reference_models_through_agc_run_with_the_fit_and_ml_plots(fit_catalog, tmp_path):
    """``agc run --ml`` with the AGC's trained models: histograms_ml.root, workspace_ml.json with
    the 7 kept features, the ML plots (needs the models beside the project, as in CI)."""
    import subprocess
    import sys

    if not (REFERENCE_MODELS / "model_even.json").is_file():
        pytest.skip(
            f"the reference models are not at {REFERENCE_MODELS} (beside the project in CI)"
        )
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "agc", "run", "--catalog", str(fit_catalog), "--ml",
         str(REFERENCE_MODELS), "--mode", "inprocess", "--output", str(out), "--quiet"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    workspace = json.loads((out / "workspace_ml.json").read_text())
    assert [c["name"] for c in workspace["channels"]] == [
        f"Feature{i}" for i in (0, 1, 2, 4, 5, 6, 7)
    ]
    plots = {p.stem for p in out.glob("ml_*.png")}
    assert plots == {"ml_features"} | {
        f"ml_data_mc_{v.ML_FEATURES[i]}" for i in (0, 1, 2, 4, 5, 6, 7)
    }
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fit"]["ml"]["channels"] == [c["name"] for c in workspace["channels"]]
    assert "histograms_ml.root" in done.stdout
