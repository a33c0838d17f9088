"""The report's plots (agc.report_figures.plot_*, PLOTS) from hand-made records with known
values: a rendered figure (PNG and SVG) when the scenario's records are there, None when not,
the medians of the measured runs (warm-ups left out) as the drawn values, and no pyplot figure
left open."""

from __future__ import annotations

import io
import statistics
from collections.abc import Callable

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.container import BarContainer, ErrorbarContainer

from agc.metrics import PHASES
from agc.report import Records
from agc.report_figures import (
    PHASE_COLORS,
    PLOTS,
    PNG_DPI,
    Rendered,
    plot_bars,
    plot_cache,
    plot_chunksize,
    plot_phases,
    plot_scaling,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: A warm-up run's value: far off, so that a statistic that took it in would show.
WARMUP_VALUE = 1e9

# hand-made measurements: group (point, worker count, chunk size) -> the measured repeats
WORKERS = {4: [310e3, 250e3, 290e3], 1: [98e3, 105e3, 101e3], 2: [160e3, 199e3, 181e3]}
CHUNKSIZES = {200_000: [82e3, 95e3, 91e3], 10_000: [40e3, 52e3, 47e3], 50_000: [70e3, 66e3, 75e3]}
IO = {"full pipeline": [61e3, 58e3, 66e3], "I/O only (analysis)": [150e3, 171e3, 163e3]}
BEFORE_AFTER = {"baseline HEAD": [30e3, 33e3, 35e3], "current 1234abcd": [55e3, 49e3, 52e3]}
ENGINES = {"dask-awkward": [21e3, 24e3, 22e3], "chunked": [48e3, 51e3, 45e3]}
BACKENDS = {"local": [50e3, 47e3, 52e3], "htcondor (stand-in)": [12e3, 15e3, 13e3]}
ML = {"without ML": [48e3, 51e3, 45e3], "with ML": [20e3, 22e3, 21e3]}
CACHE_WALL = {"cold": [4.2, 3.9, 4.4], "warm": [0.31, 0.29, 0.35], "code changed": [4.0, 4.1, 3.8]}
LATENCY = {  # point -> phase -> seconds of the measured repeats
    "processes": {
        "cluster_start": [0.05, 0.07, 0.06],
        "first_worker": [0.2, 0.25, 0.22],
        "preprocessing": [0.4, 0.41, 0.45],
        "first_result": [0.9, 1.1, 1.0],
        "processing": [3.0, 3.3, 3.1],
        "merge": [0.01, 0.012, 0.011],
        "write": [0.5, 0.6, 0.55],
    },
    "inprocess": {
        "cluster_start": [0.001, 0.002, 0.0015],
        "preprocessing": [0.38, 0.4, 0.39],
        "first_result": [0.3, 0.35, 0.32],
        "processing": [5.0, 5.2, 5.1],
        "merge": [0.009, 0.011, 0.01],
        "write": [0.4, 0.45, 0.5],
    },
}
BACKEND_PHASES = {
    "local": {"cluster_start": [0.1, 0.12, 0.11], "processing": [2.0, 2.2, 2.1]},
    "htcondor (stand-in)": {"cluster_start": [1.5, 1.7, 1.6], "processing": [6.0, 6.6, 6.3]},
}


def run_rows(scenario: str, groups: dict, key: str = "point", value: str = "events_per_second"):
    """One warm-up row (first, as bench records them) and the measured rows of each group."""
    rows = [
        {"scenario": scenario, key: k, value: WARMUP_VALUE, "warmup": True, "repeat": 0}
        for k in groups
    ]
    for k, values in groups.items():
        rows += [
            {"scenario": scenario, key: k, value: v, "warmup": False, "repeat": i}
            for i, v in enumerate(values)
        ]
    for row in rows:
        row.setdefault("point", f"{key}={row[key]}")
        row.setdefault("events", 100_000)
        row.setdefault("wall_seconds", 1.0)
        row.setdefault("events_per_second", 100_000.0)
    return rows


def phase_rows(scenario: str, points: dict) -> list[dict]:
    rows = []
    for point, phases in points.items():
        for phase, values in phases.items():
            rows.append(
                {"scenario": scenario, "point": point, "phase": phase, "seconds": WARMUP_VALUE}
                | {"warmup": True, "repeat": 0}
            )
            rows += [
                {"scenario": scenario, "point": point, "phase": phase, "seconds": v}
                | {"warmup": False, "repeat": i}
                for i, v in enumerate(values)
            ]
    return rows


def records(runs: list[dict] = (), phases: list[dict] = ()) -> Records:
    return Records(pd.DataFrame(list(runs)), pd.DataFrame(list(phases)), pd.DataFrame())


#: scenario -> (its run rows, its phase rows)
SCENARIOS = {
    "workers": (run_rows("workers", WORKERS, key="workers"), []),
    "chunksize": (run_rows("chunksize", CHUNKSIZES, key="chunksize"), []),
    "io": (run_rows("io", IO), []),
    "before-after": (run_rows("before-after", BEFORE_AFTER), []),
    "engines": (run_rows("engines", ENGINES), []),
    "backends": (run_rows("backends", BACKENDS), phase_rows("backends", BACKEND_PHASES)),
    "cache": (run_rows("cache", CACHE_WALL, value="wall_seconds"), []),
    "ml": (run_rows("ml", ML), []),
    # its runs are recorded too, but only its phases are plotted
    "latency": (run_rows("latency", {p: [1.0] for p in LATENCY}), phase_rows("latency", LATENCY)),
}

#: The PLOTS entries each scenario's records make.
PLOTS_OF = {
    "workers": {"scaling", "efficiency"},
    "chunksize": {"chunksize"},
    "io": {"io"},
    "before-after": {"before_after"},
    "engines": {"engines"},
    "backends": {"backends", "backends_latency", "latency_targets"},
    "cache": {"cache"},
    "ml": {"ml"},
    "latency": {"latency", "latency_targets"},
}


def all_records() -> Records:
    runs = [r for rows, _ in SCENARIOS.values() for r in rows]
    phases = [p for _, rows in SCENARIOS.values() for p in rows]
    return records(runs, phases)


def only(*names: str) -> Records:
    return records(
        [r for n in names for r in SCENARIOS[n][0]], [p for n in names for p in SCENARIOS[n][1]]
    )


def medians(groups: dict) -> dict:
    return {k: statistics.median(v) for k, v in groups.items()}


@pytest.fixture(autouse=True)
def no_open_figures():
    plt.close("all")
    yield
    plt.close("all")


def assert_png(rendered: Rendered | None) -> None:
    """A talk-size figure: PNG at 150 dpi (8 x 4.5 in, cropped to its content) and SVG."""
    from PIL import Image

    assert isinstance(rendered, Rendered)
    png = rendered.png
    assert isinstance(png, bytes) and png.startswith(PNG_MAGIC)
    with Image.open(io.BytesIO(png)) as image:
        image.load()
        assert image.format == "PNG"
        width, height = image.size
        dpi = image.info.get("dpi", (0, 0))[0]
        gray = np.asarray(image.convert("L"), dtype=float)
    assert round(dpi) == PNG_DPI >= 150
    assert 900 <= width <= 1400 and 500 <= height <= 1100, image.size
    assert gray.std() > 10 and (gray < 100).mean() > 0.002  # ink: axes, text, bars
    assert rendered.svg.lstrip().startswith(b"<?xml") and b"<svg" in rendered.svg
    assert plt.get_fignums() == []


def one_figure(drawn: list):
    assert len(drawn) == 1
    (fig,) = drawn
    assert len(fig.axes) == 1
    return fig.axes[0]


def containers(ax, kind: type) -> list:
    return [c for c in ax.containers if isinstance(c, kind)]


def errorbar_data(ax) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x, y and the lower and upper ends of the error bars of the axes' one errorbar."""
    (eb,) = containers(ax, ErrorbarContainer)
    line, _, (bars, *_) = eb.lines
    segments = np.asarray(bars.get_segments())
    return (
        np.asarray(line.get_xdata(), float),
        np.asarray(line.get_ydata(), float),
        segments[:, 0, 1],
        segments[:, 1, 1],
    )


def bar_data(ax) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Tick labels, heights and the error bars' lower / upper ends of a ``_median_bars`` plot."""
    (bc,) = containers(ax, BarContainer)
    heights = np.array([p.get_height() for p in bc.patches])
    _, _, (bars, *_) = bc.errorbar.lines
    segments = np.asarray(bars.get_segments())
    labels = [t.get_text() for t in ax.get_xticklabels()]
    return labels, heights, segments[:, 0, 1], segments[:, 1, 1]


# ------------------------------------------------------------------------------- the plots


def assert_median_and_spread(ax, groups: dict) -> None:
    """Points at the sorted group keys: the median, with error bars from min to max."""
    x, y, lo, hi = errorbar_data(ax)
    keys = sorted(groups)
    assert x.tolist() == keys
    assert y == pytest.approx([statistics.median(groups[k]) for k in keys])
    assert lo == pytest.approx([min(groups[k]) for k in keys])
    assert hi == pytest.approx([max(groups[k]) for k in keys])


def test_plot_scaling_draws_median_and_spread_per_worker_count(drawn):
    assert_png(plot_scaling(all_records()))
    ax = one_figure(drawn)
    assert_median_and_spread(ax, WORKERS)
    workers = sorted(WORKERS)
    (ideal,) = [line for line in ax.lines if line.get_label().startswith("ideal")]
    first = statistics.median(WORKERS[workers[0]]) / workers[0]
    assert np.asarray(ideal.get_ydata()) == pytest.approx([first * w for w in workers])
    assert [t for t in ax.get_xticks()] == workers and ax.get_ylim()[0] == 0


def test_plot_chunksize_draws_median_and_spread_per_chunk_size(drawn):
    assert_png(plot_chunksize(all_records()))
    ax = one_figure(drawn)
    assert_median_and_spread(ax, CHUNKSIZES)
    assert ax.get_xscale() == "log" and ax.get_ylim()[0] == 0


@pytest.mark.parametrize(
    ("scenario", "groups"),
    [("io", IO), ("engines", ENGINES), ("backends", BACKENDS), ("before-after", BEFORE_AFTER)],
)
def test_plot_bars_draws_median_and_spread_per_point(drawn, scenario, groups):
    assert_png(plot_bars(all_records(), scenario, f"Scenario {scenario}"))
    ax = one_figure(drawn)
    labels, heights, lo, hi = bar_data(ax)
    assert labels == list(groups)  # in the order of the records
    assert heights == pytest.approx(list(medians(groups).values()))
    assert lo == pytest.approx([min(v) for v in groups.values()])
    assert hi == pytest.approx([max(v) for v in groups.values()])
    assert [t.get_text() for t in ax.texts] == [f"{m:,.0f}" for m in medians(groups).values()]
    # each value label sits above its error bar's top, never on it
    for text, top in zip(ax.texts, hi, strict=True):
        assert text.xy[1] == pytest.approx(top) and text.get_va() == "bottom"
    assert ax.get_title() == f"Scenario {scenario}" and ax.get_ylabel() == "events / s"


def test_plot_bars_of_another_column(drawn):
    rows = run_rows("engines", {"a": [1.5, 2.5, 2.0], "b": [0.25, 0.5, 0.75]}, value="cpu_s")
    png = plot_bars(records(rows), "engines", "CPU", value="cpu_s", ylabel="CPU seconds")
    assert_png(png)
    ax = one_figure(drawn)
    _, heights, _, _ = bar_data(ax)
    assert heights == pytest.approx([2.0, 0.5])
    assert [t.get_text() for t in ax.texts] == ["2", "0.5"]  # small values: 3 significant digits
    assert ax.get_ylabel() == "CPU seconds"
    assert plot_bars(records(rows), "engines", "CPU", value="missing_column") is None


def test_plot_cache_draws_the_wall_time_per_point(drawn):
    assert_png(plot_cache(all_records()))
    ax = one_figure(drawn)
    labels, heights, lo, hi = bar_data(ax)
    assert labels == list(CACHE_WALL)
    assert heights == pytest.approx(list(medians(CACHE_WALL).values()))
    assert lo == pytest.approx([min(v) for v in CACHE_WALL.values()])
    assert hi == pytest.approx([max(v) for v in CACHE_WALL.values()])
    assert ax.get_ylabel() == "wall time (s)"


@pytest.mark.parametrize(
    ("scenario", "points", "title"),
    [("latency", LATENCY, "Latency phases"), ("backends", BACKEND_PHASES, "Per backend")],
)
def test_plot_phases_draws_the_median_of_each_phase_per_point(drawn, scenario, points, title):
    if scenario == "latency":
        png = plot_phases(all_records())  # the defaults
    else:
        png = plot_phases(all_records(), scenario, title)
    assert_png(png)
    ax = one_figure(drawn)
    assert ax.get_title() == title
    bars = containers(ax, BarContainer)
    measured = {p for phases in points.values() for p in phases}
    order = [p for p in PHASES if p in measured and p != "write"]  # write is not shown
    assert [c.get_label() for c in bars] == order
    from matplotlib.colors import to_hex

    for container in bars:  # one colour per phase, the same in every figure
        assert to_hex(container.patches[0].get_facecolor()) == PHASE_COLORS[container.get_label()]
    ticks = [t.get_text() for t in ax.get_yticklabels()]
    assert sorted(ticks) == sorted(points)
    for container in bars:
        phase = container.get_label()
        drawn_widths = {
            tick: patch.get_width() for tick, patch in zip(ticks, container.patches, strict=True)
        }
        for point, phases in points.items():
            expected = statistics.median(phases[phase]) if phase in phases else np.nan
            assert drawn_widths[point] == pytest.approx(expected, nan_ok=True), (phase, point)


# -------------------------------------------------------------------------- without records


ALL_PLOTS: dict[str, Callable[[Records], bytes | None]] = {
    "plot_scaling": plot_scaling,
    "plot_chunksize": plot_chunksize,
    "plot_cache": plot_cache,
    "plot_bars(io)": lambda r: plot_bars(r, "io", "I/O"),
    "plot_phases": plot_phases,
    "plot_phases(backends)": lambda r: plot_phases(r, "backends", "Backends"),
}
#: The scenarios each of ALL_PLOTS draws from.
NEEDS = {
    "plot_scaling": "workers",
    "plot_chunksize": "chunksize",
    "plot_cache": "cache",
    "plot_bars(io)": "io",
    "plot_phases": "latency",
    "plot_phases(backends)": "backends",
}


@pytest.mark.parametrize("name", ALL_PLOTS)
def test_plots_are_none_without_their_scenario(name, drawn):
    others = [s for s in SCENARIOS if s != NEEDS[name]]
    assert ALL_PLOTS[name](only(*others)) is None
    assert drawn == [] and plt.get_fignums() == []
    assert_png(ALL_PLOTS[name](only(NEEDS[name])))


@pytest.mark.parametrize("name", [n for n in ALL_PLOTS if not n.startswith("plot_phases")])
def test_warmup_runs_alone_make_no_plot(name, drawn):
    runs, _ = SCENARIOS[NEEDS[name]]
    assert ALL_PLOTS[name](records([r for r in runs if r["warmup"]])) is None
    assert drawn == [] and plt.get_fignums() == []


def test_warmup_phases_alone_make_no_plot():
    _, phases = SCENARIOS["latency"]
    try:
        assert plot_phases(records(phases=[p for p in phases if p["warmup"]])) is None
    finally:
        assert plt.get_fignums() == []


@pytest.mark.parametrize("name", [n for n in ALL_PLOTS if not n.startswith("plot_phases")])
def test_no_runs_table_makes_no_plot(name):
    assert ALL_PLOTS[name](records()) is None


def test_plot_phases_without_a_phases_table_is_none():
    assert plot_phases(records(SCENARIOS["workers"][0])) is None
    assert plot_phases(records()) is None
    assert plt.get_fignums() == []


# ------------------------------------------------------------------------------ PLOTS table


def test_plots_table_names_each_file_once_and_every_entry_draws():
    keys = [key for key, _, _ in PLOTS]
    assert len(keys) == len(set(keys)) == len(set.union(*PLOTS_OF.values()))
    assert set(keys) == set.union(*PLOTS_OF.values())
    everything = all_records()
    for key, heading, make in PLOTS:
        assert heading, key
        assert_png(make(everything))


@pytest.mark.parametrize("scenario", PLOTS_OF)
def test_each_plots_entry_draws_its_own_scenario_only(scenario):
    alone = only(scenario)
    made = set()
    for key, _, make in PLOTS:
        figure = make(alone)
        assert plt.get_fignums() == []
        if figure is not None:
            assert figure.png.startswith(PNG_MAGIC)
            made.add(key)
    assert made == PLOTS_OF[scenario]
