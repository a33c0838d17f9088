"""``agc bench``: scenario files, datasets by content key, run records, the baseline runner."""

from __future__ import annotations

import argparse
import os

import pandas as pd
import pytest

from agc import bench
from agc.bench import BenchError, ensure_dataset, load_scenarios, points, run_scenario

SCENARIOS = """
datasets:
  tiny:
    layout: minimal
    seed: 5
    events: {ttbar__nominal: [1, 1500], wjets__nominal: [1, 1500]}
scenarios:
  quick:
    description: full pipeline and I/O only
    dataset: tiny
    base: {mode: inprocess, chunksize: 1000}
    points:
      - {label: full, io_only: false}
      - {label: io, io_only: true}
    repeats: 2
    warmup: 1
  sizes:
    dataset: tiny
    base: {mode: inprocess}
    vary: {chunksize: [500, 1500]}
  batch:
    dataset: tiny
    base: {workers: 1, chunksize: 1500}
    points:
      - {label: local, mode: inprocess}
      - {label: htcondor (stand-in), backend: htcondor, profile: htcondor-standin, standins: true}
      - {label: nowhere, backend: slurm, profile: slurm-local, requires: "exit 3"}
    repeats: 1
    warmup: 0
"""


@pytest.fixture(scope="session")
def scenario_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "scenarios.yaml"
    path.write_text(SCENARIOS)
    return path


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("bench-data")


@pytest.fixture(scope="session")
def quick_results(scenario_file, data_root, tmp_path_factory):
    """The records of the 'quick' scenario: 2 points x (1 warm-up + 2 repeats)."""
    out = tmp_path_factory.mktemp("results") / "report"
    run_scenario("quick", out, scenarios_file=scenario_file, data_root=data_root, progress=False)
    return out


def test_points_from_vary_and_from_a_list(scenario_file):
    spec = load_scenarios(scenario_file)
    assert points(spec["scenarios"]["sizes"]) == [
        {"mode": "inprocess", "chunksize": 500, "label": "chunksize=500"},
        {"mode": "inprocess", "chunksize": 1500, "label": "chunksize=1500"},
    ]
    assert [p["label"] for p in points(spec["scenarios"]["quick"])] == ["full", "io"]


def test_schedule_runs_warmups_first_and_interleaves_points():
    a, b = {"label": "a"}, {"label": "b"}
    order = [(p["label"], i, w) for p, i, w in bench._schedule([a, b], repeats=2, warmup=1)]
    assert order == [
        ("a", 0, True),
        ("b", 0, True),
        ("a", 0, False),
        ("b", 0, False),
        ("a", 1, False),
        ("b", 1, False),
    ]


def test_every_run_is_recorded_with_scenario_columns(quick_results):
    runs = pd.read_csv(quick_results / "raw" / "quick-runs.csv")
    assert len(runs) == 6
    assert runs.groupby("point").size().to_dict() == {"full": 3, "io": 3}
    assert runs["warmup"].sum() == 2
    assert set(runs["events"]) == {3000}
    assert runs.set_index("point")["io_only"].groupby(level=0).all().to_dict() == {
        "full": False,
        "io": True,
    }
    assert (runs["events_per_second"] > 0).all()
    assert runs["git_commit"].notna().all() and runs["machine_cpu_count"].notna().all()
    assert runs["dataset"].str.startswith("tiny-").all()
    # chunks of 1000 events over two 1500-event files: 2 chunks per file
    assert set(runs["chunks"]) == {4} and set(runs["files"]) == {2}


def test_tasks_split_read_and_analysis_time(quick_results):
    tasks = pd.read_csv(quick_results / "raw" / "quick-tasks.csv")
    assert len(tasks) == 6 * 4
    assert ((tasks["read_seconds"] >= 0) & (tasks["analysis_seconds"] >= 0)).all()
    full = tasks[tasks["point"] == "full"]
    total = full["finished"] - full["started"]
    assert ((full["read_seconds"] + full["analysis_seconds"]) <= total + 1e-6).all()
    phases = pd.read_csv(quick_results / "raw" / "quick-phases.csv")
    assert {"processing", "first_result", "preprocessing"} <= set(phases["phase"])


def test_dataset_is_generated_once_per_content_key(scenario_file, data_root, quick_results):
    spec = load_scenarios(scenario_file)["datasets"]["tiny"]
    catalog = ensure_dataset("tiny", spec, data_root)
    stamp = os.stat(catalog).st_mtime_ns
    assert ensure_dataset("tiny", spec, data_root) == catalog
    assert os.stat(catalog).st_mtime_ns == stamp
    other = dict(spec, seed=6)
    assert bench.dataset_key(other) != bench.dataset_key(spec)


def test_bad_scenario_names_and_options_are_user_errors(scenario_file, tmp_path):
    with pytest.raises(BenchError, match="unknown; choose one of quick, sizes"):
        run_scenario("nope", tmp_path, scenarios_file=scenario_file)
    with pytest.raises(BenchError, match="chunk_size"):
        bench.run_config(tmp_path / "catalog.json", {"chunk_size": 5})
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: {}\nscenarios: {x: {dataset: missing}}\n")
    with pytest.raises(BenchError, match="names dataset 'missing'"):
        load_scenarios(bad)


def test_run_in_a_fresh_interpreter_with_a_given_source_tree(
    scenario_file, data_root, quick_results
):
    spec = load_scenarios(scenario_file)["datasets"]["tiny"]
    catalog = ensure_dataset("tiny", spec, data_root)
    row = bench.run_in_subprocess(
        bench.REPO_ROOT, catalog, {"mode": "inprocess", "chunksize": 1000, "label": "x"}
    )
    assert row["events"] == 3000 and row["label"] == "x"
    assert "processing" in row["phases"]


def test_cli_registers_bench_and_report():
    parser = argparse.ArgumentParser()
    bench.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "workers", "io", "--results", "out", "--repeats", "5"])
    assert args.scenario == ["workers", "io"] and args.repeats == 5
    assert args.func is bench.cmd_bench
    args = parser.parse_args(["report", "results/x"])
    assert args.results_dir == "results/x" and args.func is bench.cmd_report


def test_the_shipped_scenario_file_is_valid():
    spec = load_scenarios()
    assert {
        "workers",
        "chunksize",
        "io",
        "engines",
        "backends",
        "cache",
        "before-after",
        "latency",
        "implementations",
        "gpu",
    } <= set(spec["scenarios"])
    for scenario in spec["scenarios"].values():
        for point in points(scenario):
            if point.get("implementation", "harness") != "harness":
                continue  # one of the AGC's own implementations: not a harness run
            bench.run_config("catalog.json", point)  # every option is a run option


def test_points_that_cannot_run_are_skipped_and_stand_ins_are_selected(
    scenario_file, data_root, tmp_path
):
    """A point whose ``requires`` fails is recorded as skipped; a ``standins`` point submits
    through the stand-in condor_submit (its jobs leave records in the scratch state)."""
    from agc.report import build_report, load_records, not_measured

    path_before = os.environ["PATH"]
    raw = run_scenario(
        "batch", tmp_path, scenarios_file=scenario_file, data_root=data_root, progress=False
    )
    assert os.environ["PATH"] == path_before
    runs = pd.read_csv(raw / "batch-runs.csv")
    assert runs.set_index("point")["backend"].to_dict() == {
        "local": "local",
        "htcondor (stand-in)": "htcondor",
    }
    assert runs.set_index("point")["first_worker_seconds"].notna().all()
    meta = load_records(tmp_path).meta["batch"]
    assert list(meta["skipped"]) == ["nowhere"]
    assert "'exit 3' failed" in meta["skipped"]["nowhere"]
    notes = not_measured(load_records(tmp_path))
    assert any(n.startswith("Scenario batch, nowhere: not measured") for n in notes)
    assert any(n.startswith("htcondor (stand-in): the production cluster classes") for n in notes)
    assert not any(n.startswith("Batch backends") for n in notes)
    assert "Scenario batch, nowhere: not measured" in (build_report(tmp_path).read_text())


def test_benchmark_data_lives_under_the_one_cache_root_and_its_size_is_announced(
    tmp_path, monkeypatch, caplog
):
    import logging

    from agc import bench

    monkeypatch.delenv("AGC_BENCH_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert bench.default_data_root() == tmp_path / "xdg" / "agc-harness" / "bench"
    spec = {"layout": "minimal", "seed": 1, "events": {"wjets__nominal": [1, 400]}}
    with caplog.at_level(logging.WARNING, logger="agc.bench"):
        catalog = bench.ensure_dataset("tiny", spec)
    assert catalog.is_relative_to(tmp_path / "xdg" / "agc-harness" / "bench")
    assert "tiny (400 events, about 0.0 GB)" in caplog.text
    assert bench.dataset_bytes({"layout": "realistic", "events": {"a": [2, 500_000]}}) == 1.8e9


def test_the_scenarios_ship_with_the_package():
    import tomllib

    from agc import bench

    project = tomllib.loads((bench.REPO_ROOT / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    assert "benchmarks*" in setuptools["packages"]["find"]["include"]
    assert "scenarios.yaml" in setuptools["package-data"]["benchmarks"]
    assert bench.SCENARIOS_FILE.is_file() and "ml" in bench.load_scenarios()["scenarios"]
