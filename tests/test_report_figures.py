"""The report's talk figures (agc.report_figures) from hand-built records with known values:
the values drawn, the labels derived from the records (stand-ins, single node, commits), and
the figures skipped cleanly where their records are absent (old records without the columns)."""

from __future__ import annotations

import io
import json
import statistics

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.colors import to_hex
from matplotlib.container import BarContainer, ErrorbarContainer
from matplotlib.text import Text

from agc import report_figures as rf
from agc.metrics import PHASES
from agc.report import Records, build_report

CLEAN = "0123456789abcdef0123456789abcdef01234567"
CLIENT = "client"

#: workers scenario: worker count -> (steady-state rates, end-to-end rates) of the repeats
WORKERS = {
    1: ([100.0, 90.0, 110.0], [80.0, 70.0, 90.0]),
    2: ([180.0, 190.0, 170.0], [150.0, 140.0, 160.0]),
    4: ([300.0, 320.0, 340.0], [240.0, 230.0, 250.0]),
}
#: backends scenario: point -> backend, worker hosts of its tasks, worker arrivals (s)
BACKENDS = {
    "local": ("local", [CLIENT, CLIENT], "[]"),
    "slurm": ("slurm", [CLIENT, CLIENT], "[1.5, 3.0]"),
    "htcondor (stand-in)": ("htcondor", ["node7", "node8"], "[2.0, 4.0]"),
}
#: backends: per point the phase seconds (the same for every repeat)
PHASE_SECONDS = {
    "local": {"preprocessing": 0.5, "cluster_start": 0.1, "processing": 4.0, "merge": 0.2},
    "slurm": {
        "preprocessing": 0.5,
        "cluster_start": 1.0,
        "first_worker": 20.0,
        "all_workers": 25.0,
        "first_result": 2.0,
        "processing": 8.0,
        "merge": 0.3,
        "write": 9.0,
    },
    "htcondor (stand-in)": {
        "preprocessing": 0.4,
        "cluster_start": 3.0,
        "first_worker": 60.0,
        "first_result": 1.5,
        "processing": 9.0,
        "merge": 0.3,
    },
}
PEAK_MB = {"local": [400.0, 420.0, 410.0], "slurm": [300.0, 310.0, 290.0]}
MB_READ = 500e6  # bytes each backends run reads
TASKS_PER_WORKER, TASK_SECONDS, READ_SECONDS, ANALYSIS_SECONDS = 3, 1.0, 0.4, 0.5


def _records(commits: list[str] | None = None) -> Records:
    """Scenarios workers and backends: one warm-up and three measured runs per point."""
    runs, phases, tasks = [], [], []
    for workers, (steady, e2e) in WORKERS.items():
        for repeat in range(-1, 3):
            runs.append(
                {
                    "scenario": "workers",
                    "point": f"workers={workers}",
                    "run_id": f"w{workers}-{repeat}",
                    "backend": "local",
                    "workers": workers,
                    "warmup": repeat < 0,
                    "repeat": max(repeat, 0),
                    "events": 1000,
                    "wall_seconds": 1.0,
                    "processing_events_per_second": 1e9 if repeat < 0 else steady[repeat],
                    "events_per_second": 1e9 if repeat < 0 else e2e[repeat],
                }
            )
    for point, (backend, hosts, arrivals) in BACKENDS.items():
        for repeat in range(-1, 3):
            run_id = f"{point}-{repeat}"
            peak = PEAK_MB.get(point, [np.nan] * 3)
            runs.append(
                {
                    "scenario": "backends",
                    "point": point,
                    "run_id": run_id,
                    "backend": backend,
                    "workers": len(hosts),
                    "warmup": repeat < 0,
                    "repeat": max(repeat, 0),
                    "events": 1000,
                    "wall_seconds": 10.0,
                    "events_per_second": 100.0 * (repeat + 2),
                    "processing_events_per_second": 200.0 * (repeat + 2),
                    "peak_rss_mb_per_worker": 9999.0 if repeat < 0 else peak[repeat],
                    "bytes_read": MB_READ,
                    "processing_seconds": 5.0 * (repeat + 2),
                    "machine_hostname": CLIENT,
                    "worker_arrival_seconds": arrivals,
                }
            )
            for phase, seconds in PHASE_SECONDS[point].items():
                phases.append(
                    {
                        "scenario": "backends",
                        "point": point,
                        "run_id": run_id,
                        "warmup": repeat < 0,
                        "phase": phase,
                        "seconds": 1e4 if repeat < 0 else seconds,
                    }
                )
            for w, host in enumerate(hosts):
                for k in range(TASKS_PER_WORKER):
                    start = 1000.0 + w * 0.5 + k * TASK_SECONDS
                    tasks.append(
                        {
                            "scenario": "backends",
                            "point": point,
                            "run_id": run_id,
                            "warmup": repeat < 0,
                            "worker": f"{host}:{100 + w}",
                            "started": start,
                            "finished": start + TASK_SECONDS,
                            "read_seconds": READ_SECONDS,
                            "analysis_seconds": ANALYSIS_SECONDS,
                            "peak_rss_mb": 350.0 + 10 * w + k,
                            "entry_start": 0,
                            "entry_stop": 100,
                        }
                    )
    runs_df = pd.DataFrame(runs)
    commits = commits or [CLEAN]
    runs_df["git_commit"] = [commits[i % len(commits)] for i in range(len(runs_df))]
    return Records(runs_df, pd.DataFrame(phases), pd.DataFrame(tasks))


def axes_of(drawn: list):
    (fig,) = drawn
    return fig, fig.axes[0]


def assert_talk_figure(rendered) -> None:
    from PIL import Image

    assert isinstance(rendered, rf.Rendered)
    with Image.open(io.BytesIO(rendered.png)) as image:
        assert image.format == "PNG" and round(image.info["dpi"][0]) >= 150
        width, height = image.size
    assert width >= 1000 and 1.3 < width / height < 2.4, image.size  # 16:9-ish, cropped
    assert b"<svg" in rendered.svg


# ---------------------------------------------------------------- style


def test_figures_are_talk_size_png_and_svg_with_one_colour_per_phase(drawn):
    assert rf.FIGSIZE == (8.0, 4.5) and rf.PNG_DPI >= 150
    assert set(rf.PHASE_COLORS) == set(PHASES)
    assert len(set(rf.PHASE_COLORS.values())) == len(PHASES)
    records = _records()
    assert_talk_figure(rf.plot_latency_targets(records))
    assert_talk_figure(rf.plot_phases(records, "backends", "Per backend"))
    for fig in drawn:
        assert tuple(fig.get_size_inches()) == rf.FIGSIZE
        for container in fig.axes[0].containers:
            if isinstance(container, BarContainer) and container.get_label() in rf.PHASE_COLORS:
                color = to_hex(container.patches[0].get_facecolor())
                assert color == rf.PHASE_COLORS[container.get_label()]
        # readable: no text smaller than 7 points
        texts = [t for t in fig.findobj(Text) if t.get_text()]
        assert texts and min(t.get_fontsize() for t in texts) >= 7


# ---------------------------------------------------------------- commits


@pytest.mark.parametrize(
    ("commits", "expected", "unclean"),
    [
        ([CLEAN], f"commit {CLEAN[:12]}", False),
        ([CLEAN + "-dirty"], f"commits: {CLEAN[:12]}-dirty (uncommitted changes)", True),
        (["unknown"], "commits: unknown (unknown: not from a git checkout)", True),
        ([CLEAN, "fedcba9876543210"], f"commits: {CLEAN[:12]}, fedcba987654 (2 commits)", True),
    ],
)
def test_every_figure_carries_the_commit_loudly_when_not_one_clean_commit(
    drawn, commits, expected, unclean
):
    records = _records(commits)
    assert rf.commit_label(records) == (expected, unclean)
    rf.plot_bars(records, "backends", "Backends")
    fig, _ = axes_of(drawn)
    (footer,) = [t for t in fig.texts if t.get_text().replace("\n", " ") == expected]
    assert footer.get_fontsize() >= (10 if unclean else 7)
    assert (to_hex(footer.get_color()) == "#b00020") == unclean


def test_the_before_after_baseline_runs_do_not_make_the_report_unclean():
    records = _records([CLEAN])
    runs = records.runs.copy()
    baseline = np.arange(len(runs)) % 2 == 1  # every other run ran the baseline tree
    runs["code"] = np.where(baseline, "baseline 0f459d5", "current")
    runs["git_commit"] = np.where(baseline, "unknown", CLEAN)
    label = rf.commit_label(Records(runs, records.phases, records.tasks))
    assert label == (f"commit {CLEAN[:12]}", False)


def test_no_runs_no_commit_label_and_no_commit_column_is_unclean():
    assert rf.commit_label(Records(pd.DataFrame(), pd.DataFrame(), pd.DataFrame())) is None
    runs = _records().runs.drop(columns="git_commit")
    label = rf.commit_label(Records(runs, pd.DataFrame(), pd.DataFrame()))
    assert label == ("commit: not recorded", True)


# ---------------------------------------------------------------- labels from the records


def test_single_node_is_derived_from_the_task_hosts_and_stand_ins_keep_their_label(drawn):
    records = _records()
    # slurm ran all its tasks on the client's host; the stand-in's tasks ran elsewhere; a
    # local point is never called single node
    assert rf.single_node_points(records, "backends") == {"slurm"}
    labels = rf.point_labels(records, "backends")
    assert labels["slurm"] == "slurm\n(single node: this machine)"
    assert labels["htcondor (stand-in)"] == "htcondor (stand-in)"
    assert labels["local"] == "local"
    rf.plot_bars(records, "backends", "Backends")
    _, ax = axes_of(drawn)
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == ["local", "slurm\n(single node: this machine)", "htcondor (stand-in)"]


def test_without_task_records_no_point_is_called_single_node():
    records = _records()
    bare = Records(records.runs, records.phases, pd.DataFrame())
    assert rf.single_node_points(bare, "backends") == set()
    no_host = Records(records.runs.drop(columns="machine_hostname"), records.phases, records.tasks)
    assert rf.single_node_points(no_host, "backends") == set()


# ---------------------------------------------------------------- the figures


def test_value_labels_sit_above_the_error_bars(drawn):
    rf.plot_steady_vs_end_to_end(_records(), "workers")
    _, ax = axes_of(drawn)
    tops = []
    for container in [c for c in ax.containers if isinstance(c, BarContainer)]:
        _, _, (bars, *_) = container.errorbar.lines
        tops += [seg[1][1] for seg in bars.get_segments()]
    assert len(ax.texts) == len(tops) == 2 * len(WORKERS)
    for text, top in zip(ax.texts, tops, strict=True):
        assert text.xy[1] == pytest.approx(top) and text.get_va() == "bottom"
        assert text.xyann[1] > 0  # offset upwards
    assert ax.get_ylim()[1] > max(tops)


def test_scaling_efficiency_is_the_steady_rate_over_n_times_the_one_worker_rate(drawn):
    records = _records()
    table = rf.scaling_efficiency(records.measured("workers")).set_index("workers")
    r1 = statistics.median(WORKERS[1][0])
    for n, (steady, _) in WORKERS.items():
        assert table.loc[n, "median"] == pytest.approx(statistics.median(steady) / (n * r1))
        assert table.loc[n, "max"] == pytest.approx(max(steady) / (n * r1))
    assert_talk_figure(rf.plot_efficiency(records))
    _, ax = axes_of(drawn)
    (eb,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert np.asarray(eb.lines[0].get_ydata()) == pytest.approx(table["median"].to_numpy())
    (ideal,) = [line for line in ax.lines if line.get_label().startswith("ideal")]
    assert set(np.asarray(ideal.get_ydata(), float)) == {1.0}


def test_scaling_draws_the_ideal_line_and_old_records_get_the_steady_rate_derived(drawn):
    runs = _records().runs
    old = runs.drop(columns="processing_events_per_second").assign(processing_seconds=2.0)
    records = Records(old, pd.DataFrame(), pd.DataFrame())
    derived = rf.with_steady_rate(records.measured("workers"))
    assert (derived["processing_events_per_second"] == 500.0).all()  # 1000 events / 2 s
    assert rf.plot_efficiency(records) is not None
    _, ax = axes_of(drawn)
    assert "processing phase" in ax.get_title()


def test_steady_state_next_to_end_to_end_per_point(drawn):
    assert_talk_figure(rf.plot_steady_vs_end_to_end(_records(), "workers"))
    _, ax = axes_of(drawn)
    steady, e2e = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [p.get_height() for p in steady.patches] == pytest.approx(
        [statistics.median(s) for s, _ in WORKERS.values()]
    )
    assert [p.get_height() for p in e2e.patches] == pytest.approx(
        [statistics.median(e) for _, e in WORKERS.values()]
    )
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"workers={n}" for n in WORKERS]
    runs = _records().runs.drop(columns="processing_events_per_second")
    assert (
        rf.plot_steady_vs_end_to_end(Records(runs, pd.DataFrame(), pd.DataFrame()), "workers")
        is None
    )


def test_latency_phases_against_the_facility_targets(drawn):
    figure = rf.plot_latency_targets(_records())
    assert_talk_figure(figure)
    assert "HSF analysis-facility targets" in figure.caption
    _, ax = axes_of(drawn)
    rows = [t.get_text() for t in ax.get_yticklabels()]
    assert rows == ["local", "slurm\n(single node: this machine)", "htcondor (stand-in)"]
    bars = {c.get_label(): c for c in ax.containers if isinstance(c, BarContainer)}
    assert list(bars) == [p for p in rf.SEQUENTIAL_PHASES if p in bars]  # in run order
    slurm, before = PHASE_SECONDS["slurm"], 0.0
    for phase in bars:
        patch = bars[phase].patches[1]
        assert patch.get_x() == pytest.approx(before)
        assert patch.get_width() == pytest.approx(slurm.get(phase, 0.0))
        before += slurm.get(phase, 0.0)
    # the targets: a dashed vertical line each, labelled
    lines = {line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == "--"}
    assert lines == {seconds for _, seconds, _ in rf.AF_TARGETS}
    texts = {t.get_text().strip() for t in ax.texts}
    assert {label for _, _, label in rf.AF_TARGETS} <= texts
    # the first result: after preprocessing, cluster start and the first worker
    (first,) = [c for c in ax.collections if c.get_label() == "first result"]
    expected = 0.5 + 1.0 + 20.0 + 2.0
    assert first.get_offsets()[1][0] == pytest.approx(expected)


def test_latency_targets_fall_back_to_every_scenario_and_skip_without_phases():
    records = _records()
    phases = records.phases.assign(scenario="other")
    assert rf.plot_latency_targets(Records(records.runs, phases, records.tasks)) is not None
    assert rf.plot_latency_targets(Records(records.runs, pd.DataFrame(), records.tasks)) is None


def test_peak_memory_per_worker_from_runs_and_tasks(drawn):
    assert_talk_figure(rf.plot_memory(_records(), "backends"))
    _, ax = axes_of(drawn)
    (bars,) = [c for c in ax.containers if isinstance(c, BarContainer)]
    # the stand-in has no runs' peak: only the points that have one
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "local",
        "slurm\n(single node: this machine)",
    ]
    assert [p.get_height() for p in bars.patches] == pytest.approx([410.0, 300.0])
    dots = [c for c in ax.collections if isinstance(c, PathCollection)]
    values = np.concatenate([c.get_offsets()[:, 1] for c in dots])
    # per run and worker the highest task peak: worker 0 -> 352, worker 1 -> 362, 3 runs
    assert sorted(values) == sorted([352.0, 362.0] * 3 * 2)
    peaks = rf.worker_peaks(_records(), "backends")
    assert set(peaks["peak_rss_mb"]) == {352.0, 362.0} and len(peaks) == 3 * 3 * 2


def test_read_rate_is_bytes_over_the_processing_phase(drawn):
    assert_talk_figure(rf.plot_read_rate(_records(), "backends"))
    _, ax = axes_of(drawn)
    (bars,) = [c for c in ax.containers if isinstance(c, BarContainer)]
    # processing 10, 15, 20 s over the repeats: the median is 15 s
    assert [p.get_height() for p in bars.patches] == pytest.approx([MB_READ / 15.0 / 1e6] * 3)
    assert rf.plot_read_rate(_records(), "workers") is None  # no bytes_read recorded


def test_task_timeline_per_backend_with_read_and_analysis_shaded(drawn):
    records = _records()
    chosen = rf.timeline_runs(records)
    assert chosen == [("backends", p, f"{p}-0") for p in BACKENDS]  # first measured run each
    figure = rf.plot_timeline(records, "slurm-0")
    assert_talk_figure(figure)
    assert "6 tasks on 2 workers" in figure.caption
    _, ax = axes_of(drawn)
    assert "slurm (single node: this machine)" in ax.get_title()
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"{CLIENT}:100", f"{CLIENT}:101"]
    whole, read, analysis = ax.collections[:3]  # worker 0: the tasks, their read, analysis
    x = [path.vertices[:, 0].min() for path in whole.get_paths()]
    widths = [np.ptp(path.vertices[:, 0]) for path in whole.get_paths()]
    assert x == pytest.approx([0.0, 1.0, 2.0]) and widths == pytest.approx([TASK_SECONDS] * 3)
    assert [np.ptp(p.vertices[:, 0]) for p in read.get_paths()] == pytest.approx([0.4] * 3)
    assert [p.vertices[:, 0].min() for p in analysis.get_paths()] == pytest.approx([0.4, 1.4, 2.4])
    assert {t.get_text() for t in ax.get_legend().get_texts()} >= {"analysis"}


def test_timeline_without_backends_picks_per_backend_the_point_with_most_workers():
    records = _records()
    runs = records.runs[records.runs["scenario"] == "workers"]
    tasks = pd.DataFrame(
        {
            "run_id": runs["run_id"],
            "worker": "client:1",
            "started": 0.0,
            "finished": 1.0,
        }
    )
    chosen = rf.timeline_runs(Records(runs, pd.DataFrame(), tasks))
    assert chosen == [("workers", "workers=4", "w4-0")]
    assert rf.timeline_runs(Records(runs, pd.DataFrame(), pd.DataFrame())) == []


def test_worker_arrival_of_the_batch_backends(drawn):
    assert_talk_figure(rf.plot_worker_arrival(_records(), "backends"))
    _, ax = axes_of(drawn)
    steps = [line for line in ax.lines if line.get_linestyle() == "-"]
    assert len(steps) == 2 * 3  # slurm and the stand-in, three runs each (local: no arrivals)
    assert list(steps[0].get_xdata()) == [0.0, 1.5, 3.0]
    assert list(steps[0].get_ydata()) == [0, 1, 2]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["slurm (single node: this machine)", "htcondor (stand-in)"]
    old = _records().runs.drop(columns="worker_arrival_seconds")
    assert rf.plot_worker_arrival(Records(old, pd.DataFrame(), pd.DataFrame()), "backends") is None
    assert rf.parse_arrivals("not json") == [] and rf.parse_arrivals(float("nan")) == []


def test_cache_gains_are_annotated_with_the_hit_fraction(drawn):
    rows = []
    for point, hits, misses, wall in (("cold", 0, 40, 5.0), ("partial", 30, 10, 1.0)):
        rows += [
            {
                "scenario": "cache",
                "point": point,
                "warmup": False,
                "wall_seconds": wall,
                "cache_hits": hits,
                "cache_misses": misses,
            }
        ] * 2
    rows.append({**rows[0], "point": "direct", "cache_hits": 0, "cache_misses": 0})
    records = Records(pd.DataFrame(rows), pd.DataFrame(), pd.DataFrame())
    assert rf.cache_hit_fractions(records.runs)["partial"] == pytest.approx(0.75)
    assert_talk_figure(rf.plot_cache(records))
    _, ax = axes_of(drawn)
    assert [t.get_text() for t in ax.texts] == ["5\nhits 0%", "1\nhits 75%", "5\nno lookups"]


# ---------------------------------------------------------------- skipped cleanly


def test_every_figure_of_old_or_sparse_records_is_skipped_or_drawn_without_error():
    records = _records()
    sparse = Records(
        records.runs[["scenario", "point", "warmup", "events", "wall_seconds"]].assign(
            events_per_second=1.0
        ),
        pd.DataFrame(),
        pd.DataFrame(),
    )
    made = {key for key, _, make in rf.figure_entries(sparse) if make(sparse) is not None}
    assert made == {"backends"}  # events/s per point: all these records allow
    full = {key for key, _, make in rf.figure_entries(records) if make(records) is not None}
    assert {
        "scaling",
        "efficiency",
        "backends",
        "backends_latency",
        "latency_targets",
        "steady_vs_end_to_end_workers",
        "steady_vs_end_to_end_backends",
        "memory_backends",
        "read_rate_backends",
        "worker_arrival_backends",
        "timeline_backends_slurm",
        "timeline_backends_htcondor-stand-in",
    } <= full


# ---------------------------------------------------------------- the page


def _write(records: Records, folder) -> None:
    raw = folder / "raw"
    raw.mkdir(parents=True)
    for scenario in ("workers", "backends"):
        records.runs[records.runs["scenario"] == scenario].to_csv(
            raw / f"{scenario}-runs.csv", index=False
        )
    records.phases.to_csv(raw / "backends-phases.csv", index=False)
    records.tasks.to_csv(raw / "backends-tasks.csv", index=False)
    (raw / "backends-meta.json").write_text(json.dumps({"description": "hand-built"}))


def test_the_page_embeds_png_links_svg_and_wraps_tables(tmp_path):
    _write(_records([CLEAN + "-dirty"]), tmp_path)
    page = build_report(tmp_path).read_text()
    readme = (tmp_path / "README.md").read_text()
    for key in ("latency_targets", "memory_backends", "timeline_backends_slurm"):
        assert (tmp_path / "plots" / f"{key}.png").is_file()
        assert (tmp_path / "plots" / f"{key}.svg").read_bytes().lstrip().startswith(b"<?xml")
        assert f"<img alt='{key}' src='data:image/png;base64," in page
        assert f"<a href='plots/{key}.svg'>SVG</a>" in page
        assert f"![{key}](plots/{key}.png)" in readme and f"[SVG](plots/{key}.svg)" in readme
    assert ".tablewrap{overflow-x:auto" in page
    assert page.count("<table>") == page.count('<div class="tablewrap"><table>') > 0
    assert "uncommitted changes" in page and "class='unclean'" in page
