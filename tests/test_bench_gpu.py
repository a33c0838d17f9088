"""The ``gpu`` bench scenario: its points are valid runs (one chunk per file of >= 1M events),
its CUDA point runs only where cupy sees a GPU, and the scenario's points run end to end (on a
tiny dataset: the scenario's own 2M events are not generated here)."""

from __future__ import annotations

import importlib.util
import json

import pandas as pd
import pytest
import yaml

from agc import bench
from agc.bench import load_scenarios, points, run_config, run_scenario

HAS_CUPY = importlib.util.find_spec("cupy") is not None
LABELS = ["CPU path, 1 core", "GPU path on numpy (--device cpu)", "GPU (cuda)"]


@pytest.fixture(scope="module")
def spec():
    return load_scenarios()


def test_the_gpu_scenario_loads_and_its_points_are_run_configs(spec):
    scenario = spec["scenarios"]["gpu"]
    dataset = spec["datasets"][scenario["dataset"]]
    pts = {p["label"]: p for p in points(scenario)}
    assert list(pts) == LABELS
    configs = {label: run_config("catalog.json", p, label) for label, p in pts.items()}
    cpu, numpy_device, cuda = (configs[label] for label in LABELS)
    assert (cpu.backend, cpu.mode, cpu.device) == ("local", "inprocess", None)
    assert cpu.workers == 1
    assert (numpy_device.backend, numpy_device.device) == ("gpu", "cpu")
    assert (cuda.backend, cuda.device) == ("gpu", "cuda")
    assert cuda.backend_kwargs()["device"] == "cuda"
    assert numpy_device.mode == cuda.mode == "inprocess"
    # one chunk per file, and every chunk of at least 1M events
    per_file = [int(e) for _, e in dataset["events"].values()]
    assert min(per_file) >= 1_000_000
    assert all(c.chunksize >= max(per_file) for c in configs.values())
    assert not any(c.fit for c in configs.values())
    # only the CUDA point needs anything of the machine
    assert [label for label, p in pts.items() if p.get("requires")] == ["GPU (cuda)"]
    assert "check_cuda" in pts["GPU (cuda)"]["requires"]


@pytest.mark.skipif(HAS_CUPY, reason="cupy is importable here")
def test_the_cuda_point_is_skipped_without_cupy_and_says_why(spec):
    cuda = points(spec["scenarios"]["gpu"])[2]
    reason = bench.unavailable(cuda)
    assert reason is not None and "cupy" in reason
    assert bench.unavailable(points(spec["scenarios"]["gpu"])[1]) is None


@pytest.fixture(scope="module")
def tiny_gpu_records(spec, tmp_path_factory):
    """The gpu scenario's points, once each, on 3000 events in one file (one chunk)."""
    root = tmp_path_factory.mktemp("bench-gpu")
    scenario = {
        **spec["scenarios"]["gpu"],
        "dataset": "tiny",
        "base": {**spec["scenarios"]["gpu"]["base"], "chunksize": 3000},
    }
    file = {
        "datasets": {
            "tiny": {"layout": "minimal", "seed": 3, "events": {"ttbar__nominal": [1, 3000]}}
        },
        "scenarios": {"gpu": scenario},
    }
    (root / "s.yaml").write_text(yaml.safe_dump(file))
    out = root / "results"
    run_scenario(
        "gpu",
        out,
        scenarios_file=root / "s.yaml",
        data_root=root / "data",
        repeats=1,
        warmup=0,
        progress=False,
    )
    return out


def test_the_points_run_and_record_their_device_and_stage_seconds(tiny_gpu_records):
    raw = tiny_gpu_records / "raw"
    runs = pd.read_csv(raw / "gpu-runs.csv", keep_default_na=False).set_index("point")
    tasks = pd.read_csv(raw / "gpu-tasks.csv").set_index("point")
    skipped = json.loads((raw / "gpu-meta.json").read_text())["skipped"]
    if not HAS_CUPY:
        assert list(skipped) == ["GPU (cuda)"] and "cupy" in skipped["GPU (cuda)"]
    assert list(runs.index) == [label for label in LABELS if label not in skipped]
    assert runs.loc["CPU path, 1 core", "device"] == ""
    assert runs.loc["GPU path on numpy (--device cpu)", "device"] == "cpu"
    assert runs.loc["GPU path on numpy (--device cpu)", "backend"] == "gpu"
    assert (runs["events"] == 3000).all() and (runs["chunks"] == 1).all()
    assert pd.isna(tasks.loc["CPU path, 1 core", "transfer_seconds"])  # no device: no transfer
    assert tasks.loc["GPU path on numpy (--device cpu)", "transfer_seconds"] >= 0
    assert (tasks["analysis_seconds"] > 0).all() and (tasks["read_seconds"] > 0).all()


def test_the_report_shows_the_gpu_table_of_those_records(tiny_gpu_records):
    from agc.report import build_report, gpu_table, load_records, not_measured

    records = load_records(tiny_gpu_records)
    table = gpu_table(records).set_index("point")
    assert table.loc["CPU path, 1 core", "vs CPU path"] == 1.0
    assert table.loc["GPU path on numpy (--device cpu)", "device"] == "cpu"
    assert (table["events"] == 3000).all() and (table["analysis events/s"] > 0).all()
    notes = not_measured(records)
    if "cuda" not in set(records.runs["device"].dropna()):
        assert any(n.startswith("GPU path: not measured here") and "numpy" in n for n in notes)
        assert any(n.startswith("Scenario gpu, GPU (cuda): not measured") for n in notes)
    page = (build_report(tiny_gpu_records).parent / "README.md").read_text()
    assert "## GPU path" in page and "| GPU path on numpy (--device cpu) | cpu |" in page
    assert "no GPU machine was available" not in page
