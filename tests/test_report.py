"""``agc report``: the numbers on the page are those of the records; the page is self-contained
and renders in a real headless Chromium."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from agc.report import build_report, fixed_cost_per_chunk, load_records, summarize, targets

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def report(quick_results):
    """A report built from the records of the 'quick' scenario (see test_bench)."""
    return build_report(quick_results, title="test report")


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    from test_bench import SCENARIOS

    from agc.bench import run_scenario

    root = tmp_path_factory.mktemp("report")
    (root / "s.yaml").write_text(SCENARIOS)
    out = root / "results"
    run_scenario(
        "quick",
        out,
        scenarios_file=root / "s.yaml",
        data_root=root / "data",
        repeats=2,
        warmup=1,
        progress=False,
    )
    return out


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"src='data:image/png;base64,([^']+)'", page)]


def test_summary_is_median_and_spread_without_warmups(quick_results):
    records = load_records(quick_results)
    summary = summarize(records).set_index("point")
    runs = records.runs[~records.runs["warmup"]]
    for point, g in runs.groupby("point"):
        assert summary.loc[point, "runs"] == 2
        assert summary.loc[point, "events_per_s_median"] == pytest.approx(
            g["events_per_second"].median()
        )
        assert summary.loc[point, "events_per_s_max"] == g["events_per_second"].max()
    # the warm-up run's rate is not part of any statistic
    warm = records.runs[records.runs["warmup"]]
    assert len(warm) == 2


def test_page_is_self_contained_and_shows_the_records(report, quick_results):
    page = report.read_text()
    summary = pd.read_csv(quick_results / "summary.csv")
    assert not re.search(r"""(src|href)=['"]?(https?:)?//""", page)  # nothing from the network
    assert "<link" not in page and "<script" not in page
    for _, row in summary.iterrows():
        assert f"<td>{row['point']}</td>" in page
        assert f"{row['events_per_s_median']:,.0f}" in page
    images = _images(page)
    assert images and all(png.startswith(PNG_MAGIC) and len(png) > 5000 for png in images)
    markdown = (quick_results / "README.md").read_text()
    assert "| point |" in markdown and "![quick](plots/quick.png)" in markdown
    assert (quick_results / "plots" / "quick.png").read_bytes().startswith(PNG_MAGIC)
    assert "Not measured" in page and "git_commit" in page


def test_targets_report_what_was_not_measured(quick_results):
    goal = targets(load_records(quick_results))
    goals = goal[goal["met"] != "for information"]
    assert len(goals) == 5 and set(goals["met"]) == {"not measured"}  # no such scenarios run
    opening = goal[goal["target"].str.startswith("opening one input file")]["measured"]
    assert len(opening) == 1 and opening.iloc[0] > 0  # from the quick runs' task records


def test_fixed_cost_per_chunk_is_the_intercept_of_task_time():
    n = np.array([1000, 2000, 4000, 8000])
    tasks = pd.DataFrame(
        {"entry_start": 0, "entry_stop": n, "started": 0.0, "finished": 0.15 + 2e-6 * n}
    )
    intercept, slope = fixed_cost_per_chunk(tasks)
    assert intercept == pytest.approx(0.15) and slope == pytest.approx(2e-6)


def test_report_of_a_folder_without_records_is_a_user_error(tmp_path):
    from agc.errors import UserError

    with pytest.raises(UserError, match="agc bench SCENARIO"):
        build_report(tmp_path)


def _chromium(tmp_path, *args) -> subprocess.CompletedProcess:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_page_renders_in_headless_chromium(report, quick_results, tmp_path):
    dom = _chromium(tmp_path, "--dump-dom", report.as_uri()).stdout
    summary = pd.read_csv(quick_results / "summary.csv")
    assert dom.count("<tr>") >= len(summary) + 5
    for _, row in summary.iterrows():
        assert f"{row['events_per_s_median']:,.0f}" in dom
    images = _images(dom.replace('"', "'"))
    assert images and all(png.startswith(PNG_MAGIC) and len(png) > 5000 for png in images)

    shot = tmp_path / "page.png"
    _chromium(tmp_path, "--window-size=1000,1400", f"--screenshot={shot}", report.as_uri())
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.std() > 10  # not a blank page: text, tables and plots


# -- the reliability table (from the fault suite's record) --------------------------------
_FAULT_TESTS = """
import pytest

@pytest.mark.fault("disk full", "failed clearly", histograms="none written")
@pytest.mark.parametrize("size", [1, 2])
def test_full(size):
    assert size

@pytest.mark.fault("file gone", "partial", histograms="flagged")
def test_gone(fault_details):
    fault_details.update(events_lost=10, events=40)

@pytest.mark.fault("server restarted", "survived", histograms="identical")
def test_restart():
    assert False, "the fault was not survived"

def test_not_a_fault():
    pass
"""


def test_the_fault_suite_records_each_marked_test_and_the_report_shows_it(pytester, tmp_path):
    """The conftest plugin behind ``nox -s faults``: marked tests only, their outcome as run;
    the reliability table merges a fault's tests and shows a failure as FAILED."""
    import json
    from pathlib import Path

    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makepyfile(test_faults_example=_FAULT_TESTS)
    record = tmp_path / "results" / "raw" / "faults.json"
    outcome = pytester.runpytest_inprocess(f"--fault-record={record}", "-q")
    outcome.assert_outcomes(passed=4, failed=1)
    rows = json.loads(record.read_text())["faults"]
    assert [(r["fault"], r["passed"]) for r in rows] == [
        ("disk full", True),
        ("disk full", True),
        ("file gone", True),
        ("server restarted", False),
    ]
    page = build_report(tmp_path / "results")
    from agc.report import reliability_table

    table = reliability_table(tmp_path / "results").set_index("fault")
    assert table.loc["disk full", "result"] == "passed (2 tests)"
    assert table.loc["file gone", "events lost"] == "10 of 40"
    assert table.loc["server restarted", "result"] == "FAILED"
    text = page.with_name("README.md").read_text()
    assert "| server restarted | survived | identical | 0 | FAILED |" in text


def test_a_benchmark_report_with_a_fault_record_gains_the_reliability_section(
    quick_results, tmp_path
):
    import json

    folder = tmp_path / "both"
    shutil.copytree(quick_results, folder)
    (folder / "raw" / "faults.json").write_text(
        json.dumps(
            {
                "commit": "abc1234",
                "machine": "m",
                "python": "3.11",
                "faults": [
                    {"fault": "f", "outcome": "survived", "histograms": "identical",
                     "test": "t", "passed": True},
                ],
            }
        )
    )  # fmt: skip
    text = build_report(folder).with_name("README.md").read_text()
    assert "## Targets" in text and "## Reliability" in text
    assert "at commit abc1234 on m" in text and "| f | survived | identical | 0 | passed |" in text


def test_ml_cost_is_the_rate_ratio_and_the_ml_share_of_task_time():
    from agc.report import Records, ml_cost

    runs = pd.DataFrame(
        {
            "scenario": "ml",
            "point": ["without ML", "with ML"] * 3,
            "warmup": [True, True, False, False, False, False],
            "ml": [False, True] * 3,
            "events_per_second_per_core": [1.0, 1.0, 100.0, 40.0, 120.0, 50.0],
            "run_id": ["w0", "m0", "w1", "m1", "w2", "m2"],
        }
    )
    # every run: two tasks; without ML 1 s each, with ML 4 s each -> ML share 1 - 2/8
    tasks = pd.DataFrame(
        {
            "scenario": "ml",
            "point": [p for p in runs["point"] for _ in range(2)],
            "run_id": [r for r in runs["run_id"] for _ in range(2)],
            "warmup": [w for w in runs["warmup"] for _ in range(2)],
            "started": 0.0,
            "finished": [4.0 if p == "with ML" else 1.0 for p in runs["point"] for _ in range(2)],
            "cpu_seconds": 1.0,
            "read_seconds": 0.5,
            "open_seconds": 0.1,
            "analysis_seconds": 0.4,
        }
    )
    cost = ml_cost(Records(runs, pd.DataFrame(), tasks)).set_index("point")
    assert cost.loc["without ML", "events/s per core"] == 110.0  # median of the repeats
    assert cost.loc["with ML", "vs without ML"] == pytest.approx(45.0 / 110.0)
    assert cost.loc["with ML", "ML share of task time"] == pytest.approx(0.75)
    assert cost.loc["without ML", "ML share of task time"] == 0.0
    assert ml_cost(Records(runs.drop(columns="ml"), pd.DataFrame(), tasks)).empty


def test_many_workers_table_gives_the_idle_worker_seconds_per_task():
    from agc.report import Records, many_workers_table

    runs = pd.DataFrame(
        {
            "scenario": "many-workers",
            "point": ["workers=4", "workers=16"],
            "warmup": False,
            "workers": [4, 16],
            "chunks": [100, 100],
            "processing_seconds": [10.0, 5.0],
            "merge_seconds": [0.1, 0.2],
            "all_workers_at_seconds": [3.0, 9.0],
            "run_id": ["a", "b"],
        }
    )
    # 100 tasks of 0.3 s each in both runs: 30 busy worker-seconds
    tasks = pd.DataFrame(
        {
            "scenario": "many-workers",
            "point": ["workers=4"] * 100 + ["workers=16"] * 100,
            "run_id": ["a"] * 100 + ["b"] * 100,
            "warmup": False,
            "started": 0.0,
            "finished": 0.3,
            "cpu_seconds": 0.2,
            "read_seconds": 0.1,
            "open_seconds": 0.0,
            "analysis_seconds": 0.2,
        }
    )
    table = many_workers_table(Records(runs, pd.DataFrame(), tasks)).set_index("workers")
    assert table.loc[4, "idle worker-s per task"] == pytest.approx((10 * 4 - 30) / 100)
    assert table.loc[16, "idle worker-s per task"] == pytest.approx((5 * 16 - 30) / 100)
    assert table.loc[16, "all workers after (s)"] == 9.0 and table.loc[4, "merge (s)"] == 0.1


def test_the_summary_gives_the_steady_state_rate_next_to_the_end_to_end_one():
    from agc.report import Records

    runs = pd.DataFrame(
        {
            "scenario": "s",
            "point": "p",
            "warmup": [True, False, False, False],
            "events": 1000,
            "workers": 1,
            "wall_seconds": 2.0,
            "events_per_second": 500.0,
            "processing_events_per_second": [1.0, 800.0, 900.0, 1000.0],
        }
    )
    row = summarize(Records(runs, pd.DataFrame(), pd.DataFrame())).iloc[0]
    assert row["processing_events_per_s_median"] == 900.0 and row["events_per_s_median"] == 500.0


# -- agc bench refuses a tree that the records could not name -----------------------------
@pytest.fixture
def bench_cli(tmp_path, monkeypatch):
    """``agc bench quick`` with the scenario runner stubbed: (a function of the extra
    arguments that runs it and returns the exit code, the scenarios run, the scenario file)."""
    from test_bench import SCENARIOS

    from agc import bench
    from agc.cli import main

    scenarios = tmp_path / "s.yaml"
    scenarios.write_text(SCENARIOS)
    calls = []
    monkeypatch.setattr(bench, "run_scenario", lambda name, results, **kw: calls.append(name))
    argv = ["bench", "quick", "--scenarios", str(scenarios), "--quiet"]
    argv += ["--results", str(tmp_path / "results")]
    return (lambda *extra: main([*argv, *extra])), calls, scenarios


@pytest.mark.parametrize(
    ("commit", "named"),
    [
        ("0123456789abcdef0123456789abcdef01234567-dirty", "has uncommitted changes"),
        ("unknown", "is unknown"),
    ],
)
def test_bench_refuses_a_dirty_or_unknown_tree_unless_allowed(
    bench_cli, monkeypatch, capsys, commit, named
):
    import agc.metrics

    run, calls, _ = bench_cli
    monkeypatch.setattr(agc.metrics, "git_commit", lambda: commit)
    assert run() == 2 and calls == []
    err = capsys.readouterr().err
    assert commit in err and named in err
    assert "Commit the changes first, or pass --allow-dirty" in err
    assert run("--allow-dirty") == 0 and calls == ["quick"]  # the report labels the figures


def test_bench_runs_on_a_clean_tree_and_lists_scenarios_on_any(bench_cli, monkeypatch, capsys):
    import agc.metrics
    from agc.cli import main

    run, calls, scenarios = bench_cli
    monkeypatch.setattr(agc.metrics, "git_commit", lambda: "0123456789abcdef")
    assert run() == 0 and calls == ["quick"]
    monkeypatch.setattr(agc.metrics, "git_commit", lambda: "unknown")
    assert main(["bench", "list", "--scenarios", str(scenarios)]) == 0
    assert "quick" in capsys.readouterr().out
    # an unknown scenario is named as such, before the tree is looked at
    assert main(["bench", "nope", "--scenarios", str(scenarios)]) == 2
    assert "scenario 'nope': unknown" in capsys.readouterr().err


def test_summary_of_scenarios_that_record_different_columns(tmp_path):
    """A column one scenario records (cache hits) is NaN in another's rows once the records
    are read together: the summary leaves it out there instead of failing."""
    raw = tmp_path / "raw"
    raw.mkdir()
    common = {"point": "p", "repeat": 0, "warmup": False, "events": 100, "workers": 1,
              "wall_seconds": 1.0, "events_per_second": 100.0}  # fmt: skip
    pd.DataFrame([{"scenario": "cache", **common, "run_id": "a", "cache_hits": 3}]).to_csv(
        raw / "cache-runs.csv", index=False
    )
    pd.DataFrame([{"scenario": "implementations", **common, "run_id": "b"}]).to_csv(
        raw / "implementations-runs.csv", index=False
    )
    records = load_records(tmp_path)
    summary = summarize(records).set_index("scenario")  # failed on the NaN before
    assert summary.loc["cache", "cache_hits"] == 3
    assert np.isnan(summary.loc["implementations", "cache_hits"])
