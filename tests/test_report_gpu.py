"""The report's GPU path: the ``gpu`` scenario's table, and the notes on what the records do not
measure, derived from the devices the runs used (hand-built records)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from agc.report import Records, build_report, gpu_note, gpu_table, not_measured

CPU, NUMPY, CUDA = "CPU path, 1 core", "GPU path on numpy (--device cpu)", "GPU (cuda)"
GPU_NOTE = "GPU path: not measured here — no run in these records used a CUDA device."


def _records(devices: dict[str, str | None], *, transfer: bool = True) -> Records:
    """Scenario gpu: per point one warm-up and three runs of two 1M-event chunks each.

    Analysis seconds per chunk: CPU path 1.0 / 1.2 / 1.1 (warm-up 10), numpy 0.5, cuda 0.05;
    read 0.3 per chunk; transfer 0.02 per chunk (cuda), 1e-6 (numpy), none (CPU path).
    ``devices``: point -> its runs' device (None: the records have no device column).
    """
    analysis = {CPU: [10.0, 1.0, 1.2, 1.1], NUMPY: [9.0, 0.5, 0.5, 0.5], CUDA: [9.0, 0.05] * 2}
    per_chunk_transfer = {CPU: np.nan, NUMPY: 1e-6, CUDA: 0.02}
    runs, tasks = [], []
    for point in devices:
        for repeat, seconds in enumerate(analysis[point]):
            run_id = f"{point}-{repeat}"
            row = {
                "scenario": "gpu",
                "point": point,
                "run_id": run_id,
                "warmup": repeat == 0,
                "events": 2_000_000,
                "backend": "local" if point == CPU else "gpu",
                "workers": 1,
                "wall_seconds": 3.0,
                "events_per_second": 2e6 / 3,
            }
            if devices[point] is not None:
                row["device"] = devices[point]
            runs.append(row)
            for chunk in range(2):
                task = {
                    "scenario": "gpu",
                    "point": point,
                    "run_id": run_id,
                    "warmup": repeat == 0,
                    "entry_start": 0,
                    "entry_stop": 1_000_000,
                    "started": 0.0,
                    "finished": 2.0,
                    "cpu_seconds": 1.5,
                    "read_seconds": 0.3,
                    "open_seconds": 0.0 if chunk else 0.01,
                    "analysis_seconds": seconds,
                }
                if transfer:
                    task["transfer_seconds"] = per_chunk_transfer[point]
                tasks.append(task)
    return Records(pd.DataFrame(runs), pd.DataFrame(), pd.DataFrame(tasks))


def test_the_table_gives_medians_of_the_stage_seconds_and_the_ratio_to_the_cpu_path():
    records = _records({CPU: "", NUMPY: "cpu", CUDA: "cuda"})
    table = gpu_table(records).set_index("point")
    assert list(table.index) == [CPU, NUMPY, CUDA]
    assert table["device"].to_dict() == {CPU: "— (CPU path)", NUMPY: "cpu", CUDA: "cuda"}
    assert (table["runs"] == 3).all() and (table["events"] == 2_000_000).all()  # no warm-up
    assert table["read_s"].to_list() == pytest.approx([0.6] * 3)
    assert np.isnan(table.loc[CPU, "transfer_s"])
    assert table.loc[NUMPY, "transfer_s"] == pytest.approx(2e-6)
    assert table.loc[CUDA, "transfer_s"] == pytest.approx(0.04)
    # the CPU path: runs of 2.0, 2.4 and 2.2 s of analysis -> the median run, 2.2 s
    assert table.loc[CPU, "analysis_s"] == pytest.approx(2.2)
    assert table.loc[CPU, "analysis events/s"] == pytest.approx(2e6 / 2.2)
    assert table.loc[NUMPY, "analysis events/s"] == pytest.approx(2e6)
    assert table.loc[CUDA, "analysis events/s"] == pytest.approx(2e7)
    assert table.loc[CPU, "vs CPU path"] == 1.0
    assert table.loc[NUMPY, "vs CPU path"] == pytest.approx(2.2)
    assert table.loc[CUDA, "vs CPU path"] == pytest.approx(22.0)


def test_records_without_a_device_column_are_the_cpu_path_and_measure_no_gpu():
    records = _records({CPU: None, NUMPY: None}, transfer=False)
    notes = not_measured(records)
    assert GPU_NOTE in notes  # no mention of numpy runs: there are none
    assert "no GPU machine was available" not in " ".join(notes)
    table = gpu_table(records).set_index("point")
    assert set(table["device"]) == {"— (CPU path)"}
    assert table["transfer_s"].isna().all()  # old task records: no transfer column
    assert table.loc[NUMPY, "vs CPU path"] == pytest.approx(2.2)  # the first point is the base
    assert "No run here used a CUDA device." in gpu_note(records)


def test_runs_of_device_cpu_only_say_they_ran_the_gpu_code_on_numpy():
    records = _records({CPU: "", NUMPY: "cpu"})
    (note,) = [n for n in not_measured(records) if n.startswith("GPU path")]
    assert note.startswith(GPU_NOTE)
    assert "device cpu ran the GPU code path on numpy" in note and "measure no GPU" in note
    text = gpu_note(records)
    assert "No run here used a CUDA device." in text and "on numpy" in text


def test_a_cuda_run_removes_the_not_measured_gpu_line():
    records = _records({CPU: "", NUMPY: "cpu", CUDA: "cuda"})
    notes = not_measured(records)
    assert not [n for n in notes if n.startswith("GPU path")]
    assert "the runs here use the gpu, local backends only." in notes[0]  # the backends run
    text = gpu_note(records)
    assert f"{CUDA}: on a CUDA GPU." in text and "No run here" not in text


def test_the_report_page_has_the_gpu_section(tmp_path):
    records = _records({CPU: "", NUMPY: "cpu"})
    raw = tmp_path / "raw"
    raw.mkdir()
    records.runs.to_csv(raw / "gpu-runs.csv", index=False)
    records.tasks.to_csv(raw / "gpu-tasks.csv", index=False)
    page = (build_report(tmp_path).parent / "README.md").read_text()
    assert "## GPU path" in page and gpu_note(records) in page
    assert f"| {NUMPY} | cpu | 3 | 2000000 |" in page
    assert f"- {[n for n in not_measured(records) if n.startswith('GPU path')][0]}" in page
    assert "no GPU machine was available" not in page


def test_no_gpu_scenario_no_table():
    runs = pd.DataFrame({"scenario": "io", "point": "p", "run_id": "r", "warmup": False}, index=[0])
    assert gpu_table(Records(runs, pd.DataFrame(), pd.DataFrame())).empty
    assert GPU_NOTE in not_measured(Records(runs, pd.DataFrame(), pd.DataFrame()))
    assert GPU_NOTE in not_measured(Records(pd.DataFrame(), pd.DataFrame(), pd.DataFrame()))
