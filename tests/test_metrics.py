"""The metrics model: derived rates, task totals, tidy tables with machine, versions, commit."""

from __future__ import annotations

import math

import pytest

from agc.metrics import (
    PHASES,
    PhaseClock,
    RunRecord,
    TaskTiming,
    phases_frame,
    runs_frame,
    task_totals,
    tasks_frame,
)


def record(**kw) -> RunRecord:
    base = dict(
        run_id="r1",
        backend="local",
        engine="processes",
        workers=2,
        cores_per_worker=1,
        chunksize=1000,
        n_files=-1,
        io_only=False,
        systematics=True,
        events=10_000,
        chunks=10,
        bytes_read=5_000_000,
        wall_seconds=2.0,
        cpu_seconds=3.0,
        peak_rss_mb_per_worker=300.0,
        phases={"processing": 1.5, "first_result": 0.4},
    )
    return RunRecord(**{**base, **kw})


def task(path="a.root", start=0, stop=1000, t0=10.0, t1=10.5, read=0.2, cached=False):
    return TaskTiming(
        "ttbar__nominal",
        path,
        start,
        stop,
        t0,
        t1,
        0.4,
        1000,
        "vm:1",
        200.0,
        cached=cached,
        read_seconds=read,
        analysis_seconds=t1 - t0 - read,
    )


def test_rates_per_core_and_cpu_efficiency():
    r = record()
    assert r.events_per_second == 5000.0
    assert r.events_per_second_per_core == 2500.0
    assert r.cpu_efficiency == pytest.approx(3.0 / (2.0 * 2))
    assert math.isnan(record(wall_seconds=0.0).events_per_second)


def test_task_totals_skip_cached_chunks():
    tasks = [
        task(),
        task(start=1000, stop=2000, t0=11.0, t1=11.25, read=0.05),
        task(path="b.root", cached=True),
    ]
    totals = task_totals(tasks)
    assert totals["files"] == 1
    assert totals["task_seconds"] == pytest.approx(0.75)
    assert totals["read_seconds"] == pytest.approx(0.25)
    assert totals["analysis_seconds"] == pytest.approx(0.5)


def test_runs_table_row_has_phases_machine_versions_commit():
    df = runs_frame([record(**task_totals([task()]))])
    row = df.iloc[0]
    assert row["events_per_second"] == 5000.0 and row["files"] == 1
    assert row["processing_seconds"] == 1.5 and math.isnan(row["fit_seconds"])
    assert row["machine_cpu_count"] >= 1 and row["git_commit"]
    assert {f"{p}_seconds" for p in PHASES} <= set(df.columns)
    assert any(c.startswith("version_awkward") for c in df.columns)


def test_phases_and_tasks_tables_are_tidy():
    ph = phases_frame([record(), record(run_id="r2", phases={"merge": 0.1})])
    assert list(ph["phase"]) == ["first_result", "processing", "merge"]
    assert list(ph["run_id"]) == ["r1", "r1", "r2"]
    tasks = tasks_frame("r1", [task(), task(start=1000)])
    assert list(tasks["run_id"]) == ["r1", "r1"] and "read_seconds" in tasks


def test_phase_clock_accumulates_and_records():
    clock = PhaseClock()
    clock.start("merge")
    first = clock.stop("merge")
    clock.start("merge")
    clock.stop("merge")
    assert clock.durations["merge"] >= first >= 0
    clock.record("first_result", 1.25)
    assert clock.durations["first_result"] == 1.25
    assert clock.elapsed() >= clock.durations["merge"]


def test_bytes_read_count_the_file_metadata_once_and_a_changed_file_is_reopened(tmp_path):
    from agc import synth
    from agc.reader import close_open_files, open_tree, read_chunk
    from agc.vocabulary import ANALYSIS_BRANCHES

    synth.generate(
        tmp_path, events={"ttbar__nominal": (1, 2000)}, layout="minimal", seed=1, workers=1
    )
    path = str(next(tmp_path.rglob("*.root")))
    close_open_files()
    _, first = read_chunk(path, ANALYSIS_BRANCHES, 0, 1000)
    _, second = read_chunk(path, ANALYSIS_BRANCHES, 1000, 2000)
    assert first > second > 0  # the first chunk also pays the file's metadata
    assert open_tree(path)[2] is False  # still open in this process
    synth.generate(
        tmp_path, events={"ttbar__nominal": (1, 3000)}, layout="minimal", seed=1, workers=1
    )
    events, _ = read_chunk(path, ANALYSIS_BRANCHES, 2000, 3000)  # the new, longer file
    assert len(events) == 1000
    close_open_files()
