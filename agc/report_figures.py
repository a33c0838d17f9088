"""The figures of ``agc report``: talk-size plots of benchmark records, as PNG and SVG.

Every plot function takes the :class:`agc.report.Records` of a results folder and returns a
:class:`Rendered` figure (PNG at :data:`PNG_DPI`, SVG, an optional caption) or None when the
records it draws from are absent. Figures are :class:`matplotlib.figure.Figure` objects, drawn
under :data:`TALK_RC` (no pyplot state is touched), :data:`FIGSIZE` inches (16:9) unless a
figure needs more rows.

What a figure says comes from the records: values, point labels (a stand-in point keeps its
"stand-in"), "single node: this machine" on a batch point whose tasks all ran on the client's
own host (:func:`single_node_points`), and the commit footer (:func:`commit_label`), loud when
the records are not from one clean commit. One colour per latency phase everywhere
(:data:`PHASE_COLORS`).
"""

from __future__ import annotations

import functools
import io
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from agc.metrics import PHASES

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from agc.report import Records

BATCH_BACKENDS = ("slurm", "htcondor", "dirac")

#: Talk size: 16:9 inches; PNG resolution.
FIGSIZE = (8.0, 4.5)
PNG_DPI = 150
#: Fonts readable on a projected slide; SVG text kept as text.
TALK_RC = {
    "font.size": 11,
    "axes.titlesize": 13,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 9,
    "svg.fonttype": "none",
    "svg.hashsalt": "agc-report",
}

#: One colour per latency phase, the same in every figure (Paul Tol's bright and muted).
PHASE_COLORS: dict[str, str] = dict(
    zip(
        PHASES,
        (
            "#4477aa",  # cluster_start
            "#ee6677",  # first_worker
            "#aa3377",  # all_workers
            "#ccbb44",  # preprocessing
            "#228833",  # first_result
            "#66ccee",  # processing
            "#bbbbbb",  # merge
            "#332288",  # write
            "#882255",  # fit
        ),
        strict=True,
    )
)
#: The parts of a task in the timelines.
TASK_COLORS = {"read": "#ddaa33", "analysis": "#004488", "rest": "#cccccc"}
BAR_COLOR = "#4c72b0"
END_TO_END_COLOR = "#4c72b0"
SINGLE_NODE = "single node: this machine"

#: The HSF analysis-facility targets the latency figure draws, as read here: the time to the
#: first result within seconds, the first worker within minutes, the whole analysis within
#: 30 minutes. (moment, seconds, the line's label)
AF_TARGETS = (
    ("first result", 10.0, "first result ≤ 10 s"),
    ("first worker", 300.0, "first worker ≤ 5 min"),
    ("finished", 1800.0, "finished ≤ 30 min"),
)
#: The phases of a run one after the other (write and fit come after the measured wall time).
SEQUENTIAL_PHASES = ("preprocessing", "cluster_start", "first_worker", "processing", "merge")


@dataclass(frozen=True)
class Rendered:
    """One figure: PNG and SVG bytes, and a caption derived from the records ("" if none)."""

    png: bytes
    svg: bytes
    caption: str = ""


# ---------------------------------------------------------------- what the records say


def measured_runs(records: Records) -> pd.DataFrame:
    """Every run without the warm-ups."""
    runs = records.runs
    if "warmup" in runs:
        return runs[~runs["warmup"].astype(bool)]
    return runs


def steady_rate_column(runs: pd.DataFrame) -> str:
    """The steady-state rate column (events over the processing phase) where the records have
    it, else the end-to-end one (records made before it existed)."""
    column = "processing_events_per_second"
    has = column in runs and runs[column].notna().any()
    return column if has else "events_per_second"


def with_steady_rate(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs with ``processing_events_per_second`` (events over the processing phase);
    records made before that column get it from their ``events`` and ``processing_seconds``."""
    column = "processing_events_per_second"
    if column in runs and runs[column].notna().any():
        return runs
    if not {"events", "processing_seconds"} <= set(runs.columns):
        return runs
    seconds = runs["processing_seconds"].where(runs["processing_seconds"] > 0)
    return runs.assign(**{column: runs["events"] / seconds})


def commit_label(records: Records) -> tuple[str, bool] | None:
    """The footer of every figure: (text, unclean). Unclean when the runs carry more than one
    commit, a ``-dirty`` one (uncommitted changes) or an unknown one. None without runs.

    The baseline runs of the before-after scenario are left out: they run an earlier source
    tree on purpose (extracted from git, so its commit reads "unknown"), named in their
    ``code`` column and on that scenario's figure."""
    runs = records.runs
    if runs.empty:
        return None
    if "code" in runs:
        runs = runs[~runs["code"].astype(str).str.startswith("baseline")]
    values = runs["git_commit"].dropna() if "git_commit" in runs else pd.Series(dtype=object)
    commits = list(dict.fromkeys(str(c) for c in values if str(c).strip()))
    if not commits:
        return "commit: not recorded", True

    dirty = [c for c in commits if c.endswith("-dirty")]
    unknown = "unknown" in commits
    unclean = len(commits) > 1 or bool(dirty) or unknown
    shown = [c if c == "unknown" else c[:12] + "-dirty" * (c in dirty) for c in commits[:4]]
    if len(commits) > 4:
        shown.append(f"and {len(commits) - 4} more")
    if not unclean:
        return f"commit {shown[0]}", False
    notes = [f"{len(commits)} commits"] * (len(commits) > 1)
    notes += ["-dirty: uncommitted changes" if len(commits) > 1 else "uncommitted changes"] * (
        bool(dirty)
    )
    notes += ["unknown: not from a git checkout"] * unknown
    return f"commits: {', '.join(shown)} ({'; '.join(notes)})", True


def _host(worker) -> str:
    return str(worker).rsplit(":", 1)[0]


def single_node_points(records: Records, scenario: str) -> set[str]:
    """The batch-backend points (slurm, htcondor, dirac) of a scenario whose tasks all ran on
    the client's own host: the tasks' worker host is the runs' ``machine_hostname``."""
    runs = records.measured(scenario)
    tasks = records.tasks
    needed = {"backend", "machine_hostname", "run_id", "point"}
    if runs.empty or not needed <= set(runs.columns) or tasks.empty:
        return set()
    if not {"worker", "run_id"} <= set(tasks.columns):
        return set()
    single = set()
    for point, g in runs.groupby("point", sort=False):
        if not set(g["backend"].astype(str)) & set(BATCH_BACKENDS):
            continue
        hosts = {_host(w) for w in tasks.loc[tasks["run_id"].isin(g["run_id"]), "worker"].dropna()}
        own = {str(h) for h in g["machine_hostname"].dropna()}
        if hosts and hosts <= own:
            single.add(str(point))
    return single


def point_labels(records: Records, scenario: str, sep: str = "\n") -> dict[str, str]:
    """How a figure names each point of a scenario: the point label (stand-ins keep theirs),
    plus "single node: this machine" where :func:`single_node_points` says so."""
    runs = records.measured(scenario)
    if runs.empty or "point" not in runs:
        return {}
    single = single_node_points(records, scenario)
    return {
        str(p): str(p) + (f"{sep}({SINGLE_NODE})" if str(p) in single else "")
        for p in dict.fromkeys(runs["point"])
    }


def scenarios_of(records: Records) -> list[str]:
    """The scenarios of the runs, in the order of the records."""
    if records.runs.empty or "scenario" not in records.runs:
        return []
    return [str(s) for s in dict.fromkeys(records.runs["scenario"])]


def parse_arrivals(value) -> list[float]:
    """``worker_arrival_seconds`` of a run: a JSON list of seconds ([] if none or unreadable)."""
    if not isinstance(value, str):
        return []
    try:
        parsed = json.loads(value)
    except ValueError:
        return []
    if not isinstance(parsed, list):
        return []
    return sorted(float(v) for v in parsed if isinstance(v, int | float))


# ---------------------------------------------------------------- drawing


def _talk(make: Callable) -> Callable:
    """Draw (and save) under the talk style; matplotlib's rc left as it was."""

    @functools.wraps(make)
    def wrapper(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context(TALK_RC):
            return make(*args, **kwargs)

    return wrapper


def _figure(height: float = FIGSIZE[1], **subplots) -> tuple[Figure, Axes]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(FIGSIZE[0], height))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(**subplots)


def _render(fig: Figure, records: Records, caption: str = "") -> Rendered:
    """Lay out, add the commit footer below everything drawn, save as PNG and SVG."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # tight_layout on crowded legends
        fig.tight_layout()
    label = commit_label(records)
    if label is not None:
        import textwrap

        text, unclean = label
        text = textwrap.fill(text, 90 if unclean else 130)
        width, height = fig.get_size_inches()
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
        drawn = fig.get_tightbbox(canvas.get_renderer())  # inches, legends included
        fig.text(
            max(drawn.x0, 0.0) / width,
            (drawn.y0 - 0.06) / height,
            text,
            ha="left",
            va="top",
            fontsize=10 if unclean else 7,
            color="#b00020" if unclean else "#777777",
            fontweight="bold" if unclean else "normal",
        )
    png, svg = io.BytesIO(), io.BytesIO()
    fig.savefig(png, format="png", dpi=PNG_DPI, bbox_inches="tight")
    fig.savefig(svg, format="svg", bbox_inches="tight", metadata={"Date": None})
    return Rendered(png.getvalue(), svg.getvalue(), caption)


def _value_text(v: float, compact: bool = False) -> str:
    if not np.isfinite(v):
        return "—"
    if compact and abs(v) >= 1e9:
        return f"{v / 1e9:.3g}G"
    if compact and abs(v) >= 1e6:
        return f"{v / 1e6:.3g}M"
    if compact and abs(v) >= 1e4:
        return f"{v / 1e3:.3g}k"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _label_above(ax: Axes, x: float, top: float, text: str, fontsize: float = 9) -> None:
    """A value label just above ``top`` (the error bar's upper end): never struck through."""
    ax.annotate(
        text,
        (x, top),
        ha="center",
        va="bottom",
        fontsize=fontsize,
        xytext=(0, 3),
        textcoords="offset points",
    )


def _thousands(axis) -> None:
    """Tick labels with thousands separators (600,000 rather than 600000 or 6e5)."""
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(
        FuncFormatter(lambda v, _: f"{v:,.0f}" if abs(v) >= 1000 else f"{v:g}")
    )


def _point_ticks(ax: Axes, x, names: list[str]) -> None:
    """Point names under the bars, wrapped to the width of a bar's slot; slanted only when a
    word is longer than that."""
    import textwrap

    slot = max(8, 84 // max(len(names), 1))  # characters of a 10-point label per slot
    wrapped = [
        "\n".join(
            textwrap.fill(line, slot, break_long_words=False, break_on_hyphens=False)
            for line in n.split("\n")
        )
        for n in names
    ]
    longest = max((len(line) for n in wrapped for line in n.split("\n")), default=0)
    angle = 0 if longest <= slot else 30
    ax.set_xticks(x, wrapped, rotation=angle, ha="right" if angle else "center")


#: How the latency figure marks a milestone on each backend's bar: marker, size, label.
_MILESTONES = {
    "first_result": ("D", 36, "first result"),
    "all_workers": ("^", 44, "all workers joined"),
}


def _milestone(ax: Axes, x, y, phase: str) -> None:
    """Mark the milestone ``phase`` at ``x`` on the bars at ``y`` (its phase colour)."""
    marker, size, label = _MILESTONES[phase]
    ax.scatter(
        x, y, marker=marker, s=size, color=PHASE_COLORS[phase], edgecolor="black", zorder=3,
        label=label,
    )  # fmt: skip


def _legend_above(ax: Axes, ncol: int = 2) -> None:
    """The legend between the title and the axes: it never covers a bar or its label."""
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=ncol, frameon=False)
    ax.set_title(ax.get_title(), pad=24)


def _headroom(ax: Axes, top: float, lines: int = 1) -> None:
    """y from 0 to above the highest label."""
    top = float(top) if np.isfinite(top) and top > 0 else 1.0
    ax.set_ylim(0, top * (1.12 + 0.08 * lines))


def _spread(df: pd.DataFrame, value: str, by: str = "point"):
    g = df.groupby(by, sort=False)[value]
    return g.median(), g.min(), g.max()


def _median_bars(
    ax: Axes,
    df: pd.DataFrame,
    value: str,
    label_col: str = "point",
    labels: Mapping[str, str] | None = None,
    extra: Mapping[str, str] | None = None,
    above: Mapping[str, float] | None = None,
) -> None:
    """Bars of the median per group with min-max error bars, each labelled with its value
    above the error bar's top (and a line of ``extra`` text where given)."""
    med, lo, hi = _spread(df, value, label_col)
    x = np.arange(len(med))
    ax.bar(
        x,
        med.values,
        yerr=[med.values - lo.values, hi.values - med.values],
        capsize=4,
        color=BAR_COLOR,
    )
    labels = labels or {}
    _point_ticks(ax, x, [labels.get(str(i), str(i)) for i in med.index])
    _thousands(ax.yaxis)
    extra, above = extra or {}, above or {}
    tops = []
    for xi, key, v, h in zip(x, med.index, med.values, hi.values, strict=True):
        top = max(float(h), above.get(str(key), -np.inf))
        text = _value_text(v) + (f"\n{extra[str(key)]}" if str(key) in extra else "")
        _label_above(ax, float(xi), top, text, fontsize=9 if len(med) <= 6 else 8)
        tops.append(top)
    _headroom(ax, max(tops, default=1.0), lines=2 if extra else 1)


# ---------------------------------------------------------------- the figures


@_talk
def plot_scaling(records: Records) -> Rendered | None:
    """Events/s vs workers (scenario ``workers``): the steady-state rate and the end-to-end
    one, median and min-max, with the ideal line (linear from the first point)."""
    w = with_steady_rate(records.measured("workers"))
    if w.empty or "workers" not in w:
        return None
    fig, ax = _figure()
    steady = steady_rate_column(w)
    series = [(steady, "steady state: processing phase (median, min-max)", "o")]
    if steady != "events_per_second":
        series.append(("events_per_second", "end to end: planning to merged (median)", "s"))
    med = None
    for column, label, marker in series:
        m, lo, hi = _spread(w, column, "workers")
        m, lo, hi = m.sort_index(), lo.sort_index(), hi.sort_index()
        ax.errorbar(m.index, m.values, yerr=[m - lo, hi - m], marker=marker, capsize=4, label=label)
        med = m if med is None else med
    assert med is not None
    ideal = med.iloc[0] / med.index[0] * np.array(med.index)
    ax.plot(med.index, ideal, "--", color="grey", label="ideal (linear from the first point)")
    ax.set_xlabel("workers")
    ax.set_ylabel("events / s")
    ax.set_xticks(list(med.index))
    ax.set_ylim(0, None)
    _thousands(ax.yaxis)
    ax.legend()
    ax.set_title("Throughput vs workers")
    return _render(fig, records)


def scaling_efficiency(runs: pd.DataFrame) -> pd.DataFrame:
    """Per worker count: the median, min and max over the runs of rate / (n / n0 x the median
    rate at n0 workers), n0 the fewest workers measured (1 when measured: rate(n) / (n
    rate(1))), on the steady-state rate where the records have it."""
    rate = steady_rate_column(runs)
    runs = runs[runs["workers"].notna() & runs[rate].notna()]
    if runs.empty:
        return pd.DataFrame(columns=["workers", "median", "min", "max"])
    n0 = runs["workers"].min()
    base = runs.loc[runs["workers"] == n0, rate].median()
    eff = runs[rate] / (runs["workers"] / n0 * base)
    g = eff.groupby(runs["workers"])
    out = pd.DataFrame({"median": g.median(), "min": g.min(), "max": g.max()}).sort_index()
    return out.rename_axis("workers").reset_index()


@_talk
def plot_efficiency(records: Records) -> Rendered | None:
    """Scaling efficiency vs workers (scenario ``workers``), with the ideal line at 1."""
    w = with_steady_rate(records.measured("workers"))
    if w.empty or "workers" not in w:
        return None
    eff = scaling_efficiency(w)
    if eff.empty:
        return None
    n0 = int(eff["workers"].iloc[0])
    steady = steady_rate_column(w) != "events_per_second"
    fig, ax = _figure()
    x, m = eff["workers"].to_numpy(float), eff["median"].to_numpy(float)
    ax.errorbar(
        x,
        m,
        yerr=[m - eff["min"].to_numpy(float), eff["max"].to_numpy(float) - m],
        marker="o",
        capsize=4,
        label=("steady state" if steady else "end to end") + " (median, min-max)",
    )
    ax.axhline(1.0, ls="--", color="grey", label="ideal (efficiency 1)")
    for xi, v, top in zip(x, m, eff["max"].to_numpy(float), strict=True):
        _label_above(ax, xi, top, f"{v:.2f}")
    ax.set_xticks(list(x))
    ax.set_xlabel("workers")
    base = "rate(1)" if n0 == 1 else f"rate({n0}) / {n0}"
    ax.set_ylabel(f"rate(n) / (n · {base})")
    _headroom(ax, max(1.0, float(np.nanmax(eff["max"]))))
    ax.legend(loc="lower left")
    ax.set_title(
        "Scaling efficiency vs workers (" + ("processing phase" if steady else "end to end") + ")"
    )
    return _render(fig, records)


@_talk
def plot_steady_vs_end_to_end(records: Records, scenario: str) -> Rendered | None:
    """Per point: the steady-state rate (processing phase) next to the end-to-end one."""
    runs = with_steady_rate(records.measured(scenario))
    steady, e2e = "processing_events_per_second", "events_per_second"
    if runs.empty or steady not in runs or e2e not in runs:
        return None
    runs = runs[runs[steady].notna() & runs[e2e].notna()]
    if runs.empty:
        return None
    labels = point_labels(records, scenario)
    crowded = runs["point"].nunique() > 5
    fig, ax = _figure()
    width = 0.38
    tops = []
    for offset, column, name, color in (
        (-width / 2, steady, "steady state (processing phase)", PHASE_COLORS["processing"]),
        (width / 2, e2e, "end to end", END_TO_END_COLOR),
    ):
        med, lo, hi = _spread(runs, column)
        x = np.arange(len(med)) + offset
        ax.bar(
            x,
            med.values,
            width,
            yerr=[med.values - lo.values, hi.values - med.values],
            capsize=3,
            color=color,
            label=name + " (median, min-max)",
        )
        for xi, v, h in zip(x, med.values, hi.values, strict=True):
            _label_above(ax, xi, h, _value_text(v, compact=True), fontsize=8 if crowded else 9)
            tops.append(h)
    points = list(dict.fromkeys(runs["point"]))
    names = [labels.get(str(p), str(p)) for p in points]
    _point_ticks(ax, np.arange(len(points)), names)
    _thousands(ax.yaxis)
    ax.set_ylabel("events / s")
    _headroom(ax, max(tops))
    ax.set_title(f"Steady state vs end to end: {scenario}")
    _legend_above(ax)
    return _render(fig, records)


def _phase_table(records: Records) -> tuple[str, pd.DataFrame] | None:
    """(source, the median seconds per row and phase) for the latency figures: the points of
    scenario ``backends``, else of ``latency``, else every scenario's points."""
    ph = records.phases
    if ph.empty or not {"scenario", "point", "phase", "seconds"} <= set(ph.columns):
        return None
    if "warmup" in ph:
        ph = ph[~ph["warmup"].astype(bool)]
    for scenario in ("backends", "latency"):
        part = ph[ph["scenario"] == scenario]
        if len(part):
            table = part.pivot_table(
                index="point", columns="phase", values="seconds", aggfunc="median", sort=False
            )
            labels = point_labels(records, scenario)
            table.index = [labels.get(str(p), str(p)) for p in table.index]
            return scenario, table
    if ph.empty:
        return None
    table = ph.pivot_table(
        index=["scenario", "point"], columns="phase", values="seconds", aggfunc="median", sort=False
    )
    names = []
    for scenario, point in table.index:
        names.append(f"{scenario}: {point_labels(records, scenario).get(str(point), point)}")
    table.index = names
    return "every scenario", table


@_talk
def plot_phases(
    records: Records, scenario: str = "latency", title: str = "Latency phases"
) -> Rendered | None:
    """The median seconds of each phase per point of a scenario (write left out)."""
    ph = records.phases
    if ph.empty or scenario not in set(ph["scenario"]):
        return None
    ph = ph[(ph["scenario"] == scenario) & ~ph["warmup"].astype(bool)]
    table = ph.pivot_table(index="point", columns="phase", values="seconds", aggfunc="median")
    order = [p for p in PHASES if p in table.columns and p != "write"]
    if not order:  # warm-ups only
        return None
    table = table[order]
    labels = point_labels(records, scenario, sep=" ")
    fig, ax = _figure()
    y = np.arange(len(table.index))
    height = 0.8 / len(order)
    for i, phase in enumerate(order):
        ax.barh(y + i * height, table[phase].values, height, label=phase, color=PHASE_COLORS[phase])
    ax.set_yticks(
        y + 0.4 - height / 2, [labels.get(str(p), str(p)) for p in table.index], fontsize=9
    )
    ax.set_xlabel("seconds (median)")
    ax.set_xscale("symlog", linthresh=0.01)
    ax.legend(ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    ax.set_title(title)
    return _render(fig, records)


@_talk
def plot_latency_targets(records: Records) -> Rendered | None:
    """Per backend (the points of ``backends``, else of ``latency``, else of every scenario):
    the phases one after the other as a horizontal bar (medians), the moments of the first
    result and of all workers marked, against the analysis-facility targets
    (:data:`AF_TARGETS`) as labelled vertical lines."""
    found = _phase_table(records)
    if found is None:
        return None
    source, table = found
    order = [p for p in SEQUENTIAL_PHASES if p in table.columns]
    if not order:
        return None
    rows = len(table.index)
    fig, ax = _figure(height=max(FIGSIZE[1], 1.6 + 0.32 * rows))
    y = np.arange(rows)
    left = np.zeros(rows)
    for phase in order:
        width = table[phase].fillna(0.0).to_numpy(float)
        ax.barh(y, width, 0.6, left=left, color=PHASE_COLORS[phase], label=phase)
        left = left + width
    finished = left
    if "processing" in order and "first_result" in table:
        # the first result: from the start of processing, after every phase before it
        before = np.zeros(rows)
        for phase in order[: order.index("processing")]:
            before += table[phase].fillna(0.0).to_numpy(float)
        _milestone(ax, before + table["first_result"].to_numpy(float), y, "first_result")
    if "all_workers" in table and table["all_workers"].notna().any():
        start = (
            table["preprocessing"].fillna(0.0).to_numpy(float) if "preprocessing" in table else 0
        )
        _milestone(ax, start + table["all_workers"].to_numpy(float), y, "all_workers")
    for _, seconds, label in AF_TARGETS:
        ax.axvline(seconds, color="#444444", ls="--", lw=1.2)
        ax.text(
            seconds,
            0.98,
            f" {label}",
            transform=ax.get_xaxis_transform(),
            rotation=90,
            ha="right",
            va="top",
            fontsize=9,
            color="#444444",
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1},
        )
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlim(0, max(AF_TARGETS[-1][1], float(np.nanmax(finished))) * 2.5)
    ax.set_yticks(y, list(table.index), fontsize=9 if rows <= 8 else 8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds from the start of the run (median phases; symlog axis)")
    ax.legend(ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    ax.set_title("Latency phases vs analysis-facility targets")
    caption = (
        "Dashed lines: the HSF analysis-facility targets (first result within seconds, first "
        "worker within minutes, the analysis within 30 minutes). Rows: "
        + ("the points of scenario " + source if source != "every scenario" else "every point")
        + "."
    )
    return _render(fig, records, caption)


@_talk
def plot_bars(
    records: Records,
    scenario: str,
    title: str,
    value: str = "events_per_second",
    ylabel: str = "events / s",
) -> Rendered | None:
    """The median of ``value`` per point with its min-max spread."""
    df = records.measured(scenario)
    if df.empty or value not in df:
        return None
    fig, ax = _figure()
    _median_bars(ax, df, value, labels=point_labels(records, scenario))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _render(fig, records)


@_talk
def plot_chunksize(records: Records) -> Rendered | None:
    df = records.measured("chunksize")
    if df.empty:
        return None
    fig, ax = _figure()
    med, lo, hi = _spread(df, "events_per_second", "chunksize")
    med, lo, hi = med.sort_index(), lo.sort_index(), hi.sort_index()
    ax.errorbar(med.index, med.values, yerr=[med - lo, hi - med], marker="o", capsize=4)
    ax.set_xscale("log")
    ax.set_xlabel("chunk size (events)")
    ax.set_ylabel("events / s")
    ax.set_ylim(0, None)
    _thousands(ax.yaxis)
    ax.set_title("Throughput vs chunk size")
    return _render(fig, records)


def cache_hit_fractions(runs: pd.DataFrame) -> dict[str, float]:
    """Per point: cache_hits / (cache_hits + cache_misses) summed over its runs (NaN: no
    lookups)."""
    if not {"cache_hits", "cache_misses"} <= set(runs.columns):
        return {}
    out = {}
    for point, g in runs.groupby("point", sort=False):
        hits, misses = g["cache_hits"].sum(), g["cache_misses"].sum()
        out[str(point)] = hits / (hits + misses) if hits + misses > 0 else float("nan")
    return out


@_talk
def plot_cache(records: Records) -> Rendered | None:
    """Wall time per point of scenario ``cache``, each bar annotated with its hit fraction."""
    df = records.measured("cache")
    if df.empty or "wall_seconds" not in df:
        return None
    fractions = cache_hit_fractions(df)
    extra = {p: f"hits {f:.0%}" if np.isfinite(f) else "no lookups" for p, f in fractions.items()}
    fig, ax = _figure()
    _median_bars(ax, df, "wall_seconds", labels=point_labels(records, "cache"), extra=extra)
    ax.set_ylabel("wall time (s)")
    ax.set_title("Result cache and XCache: wall time per run, result-cache hit fraction")
    return _render(fig, records)


def worker_peaks(records: Records, scenario: str) -> pd.DataFrame:
    """The tasks' peak RSS per run and worker (the highest of its tasks), with the point:
    columns point, run_id, worker, peak_rss_mb. Empty without task records of it."""
    tasks = records.tasks
    runs = records.measured(scenario)
    cols = ["point", "run_id", "worker", "peak_rss_mb"]
    if tasks.empty or runs.empty or not {"run_id", "worker", "peak_rss_mb"} <= set(tasks.columns):
        return pd.DataFrame(columns=cols)
    t = tasks[tasks["run_id"].isin(runs["run_id"])] if "run_id" in runs else tasks.iloc[:0]
    t = t[t["peak_rss_mb"].notna()]
    if t.empty:
        return pd.DataFrame(columns=cols)
    peaks = t.groupby(["run_id", "worker"], sort=False)["peak_rss_mb"].max().reset_index()
    return peaks.merge(runs[["run_id", "point"]], on="run_id")[cols]


@_talk
def plot_memory(records: Records, scenario: str) -> Rendered | None:
    """Peak memory per worker per point: the runs' ``peak_rss_mb_per_worker`` (median bars,
    min-max) and, where tasks were recorded, each worker's peak over its tasks (dots)."""
    runs = records.measured(scenario)
    column = "peak_rss_mb_per_worker"
    if runs.empty or column not in runs or not runs[column].notna().any():
        return None
    runs = runs[runs[column].notna()]
    peaks = worker_peaks(records, scenario)
    points = [str(p) for p in dict.fromkeys(runs["point"])]
    fig, ax = _figure()
    above = peaks.groupby("point")["peak_rss_mb"].max().to_dict() if len(peaks) else {}
    _median_bars(ax, runs, column, labels=point_labels(records, scenario), above=above)
    label: str | None = "one worker: the peak over its tasks"
    for i, point in enumerate(points):
        values = peaks.loc[peaks["point"] == point, "peak_rss_mb"].to_numpy(float)
        if len(values):
            x = i + np.linspace(-0.25, 0.25, len(values)) if len(values) > 1 else [i]
            ax.scatter(x, values, s=14, color="#222222", zorder=3, label=label)
            label = None  # once in the legend
    ax.set_ylabel("peak RSS per worker (MB)")
    ax.set_title(f"Peak memory per worker: {scenario}")
    if len(peaks):
        _legend_above(ax)
    return _render(fig, records)


def read_rates(runs: pd.DataFrame) -> pd.Series:
    """MB/s read per run: bytes_read / processing_seconds / 1e6 (NaN where not measured)."""
    if not {"bytes_read", "processing_seconds"} <= set(runs.columns):
        return pd.Series(np.nan, index=runs.index)
    seconds = runs["processing_seconds"].where(runs["processing_seconds"] > 0)
    return runs["bytes_read"] / seconds / 1e6


@_talk
def plot_read_rate(records: Records, scenario: str) -> Rendered | None:
    """MB/s read over the processing phase per point (median, min-max)."""
    runs = records.measured(scenario)
    if runs.empty:
        return None
    runs = runs.assign(read_mb_per_s=read_rates(runs))
    runs = runs[np.isfinite(runs["read_mb_per_s"].to_numpy(float))]
    if runs.empty or not (runs["read_mb_per_s"] > 0).any():
        return None
    fig, ax = _figure()
    _median_bars(ax, runs, "read_mb_per_s", labels=point_labels(records, scenario))
    ax.set_ylabel("MB/s read (bytes read / processing s)")
    ax.set_title(f"Read rate: {scenario}")
    return _render(fig, records)


def timeline_runs(records: Records) -> list[tuple[str, str, str]]:
    """The runs the task timelines show, as (scenario, point, run_id): one measured run (the
    first) per point of scenario ``backends``; without it, per backend the first measured run
    of its point with the most workers, of several."""
    runs, tasks = measured_runs(records), records.tasks
    needed = {"run_id", "started", "finished", "worker"}
    if runs.empty or tasks.empty or not needed <= set(tasks.columns):
        return []
    if not {"scenario", "point", "run_id"} <= set(runs.columns):
        return []
    runs = runs[runs["run_id"].isin(set(tasks["run_id"]))]
    if "repeat" in runs:
        runs = runs.sort_values("repeat", kind="stable")
    chosen = runs[runs["scenario"] == "backends"]
    if len(chosen):
        firsts = chosen.groupby("point", sort=False).head(1)
        order = {p: i for i, p in enumerate(dict.fromkeys(records.runs["point"]))}
        firsts = firsts.sort_values("point", key=lambda s: s.map(order), kind="stable")
        return [(r.scenario, str(r.point), r.run_id) for r in firsts.itertuples()]
    if "workers" not in runs:
        return []
    several = runs[runs["workers"] > 1]
    out = []
    groups = several.groupby("backend", sort=False) if "backend" in several else [("", several)]
    for _, g in groups:
        if len(g):
            first = g[g["workers"] == g["workers"].max()].iloc[0]
            out.append((str(first["scenario"]), str(first["point"]), str(first["run_id"])))
    return out


@_talk
def plot_timeline(records: Records, run_id: str) -> Rendered | None:
    """The tasks of one run as horizontal segments per worker, from ``started`` to
    ``finished`` relative to the run's first task; the read and analysis parts shaded where
    the tasks recorded them."""
    tasks = records.tasks
    if tasks.empty or "run_id" not in tasks:
        return None
    t = tasks[tasks["run_id"] == run_id]
    if "skipped" in t:
        t = t[~t["skipped"].fillna(False).astype(bool)]
    t = t[t["started"].notna() & t["finished"].notna()]
    if t.empty:
        return None
    run = records.runs[records.runs["run_id"] == run_id].iloc[0]
    scenario, point = str(run.get("scenario", "")), str(run.get("point", ""))
    t0 = float(t["started"].min())
    first = t.groupby("worker")["started"].min().sort_values()
    workers = list(first.index)
    rows = len(workers)
    fig, ax = _figure()
    parts = "read_seconds" in t and t["read_seconds"].notna().any()
    for i, worker in enumerate(workers):
        g = t[t["worker"] == worker]
        start = g["started"].to_numpy(float) - t0
        length = (g["finished"] - g["started"]).to_numpy(float)
        band = (i - 0.4, 0.8)
        ax.broken_barh(
            list(zip(start, length, strict=True)),
            band,
            facecolors=TASK_COLORS["rest"] if parts else BAR_COLOR,
            edgecolors="white",
            linewidth=0.3,
        )
        if parts:
            read = np.clip(g["read_seconds"].fillna(0.0).to_numpy(float), 0, length)
            ax.broken_barh(
                list(zip(start, read, strict=True)), band, facecolors=TASK_COLORS["read"]
            )
            if "analysis_seconds" in g:
                analysis = np.clip(
                    g["analysis_seconds"].fillna(0.0).to_numpy(float), 0, length - read
                )
                ax.broken_barh(
                    list(zip(start + read, analysis, strict=True)),
                    band,
                    facecolors=TASK_COLORS["analysis"],
                )
    if rows <= 16:
        ax.set_yticks(range(rows), [str(w) for w in workers], fontsize=9 if rows <= 8 else 7)
        ax.set_ylabel("worker (host:pid)")
    else:
        ticks = np.unique(np.linspace(0, rows - 1, 9).round().astype(int))
        ax.set_yticks(ticks, [str(k + 1) for k in ticks])
        ax.set_ylabel(f"worker (1 to {rows})")
    ax.set_ylim(rows - 0.5, -0.5)
    ax.set_xlim(0, None)
    ax.set_xlabel("seconds from the run's first task")
    if parts:
        from matplotlib.patches import Patch

        names = {"read": "read (open + columns)", "analysis": "analysis", "rest": "rest of task"}
        ax.legend(
            handles=[Patch(color=TASK_COLORS[k], label=v) for k, v in names.items()],
            ncol=3,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.16),
        )
    label = point_labels(records, scenario, sep=" ").get(point, point)
    ax.set_title(f"Task timeline: {scenario}, {label}")
    backend = str(run.get("backend", ""))
    caption = (
        f"Run {run_id}" + (f" ({backend} backend)" if backend else "") + f": {len(t)} tasks on "
        f"{rows} worker{'s' * (rows != 1)}."
    )
    return _render(fig, records, caption)


@_talk
def plot_worker_arrival(records: Records, scenario: str) -> Rendered | None:
    """Batch backends: workers joined vs seconds from the cluster's start, one step line per
    measured run (``worker_arrival_seconds``), a colour per point; dotted: workers asked for."""
    runs = records.measured(scenario)
    if runs.empty or not {"worker_arrival_seconds", "backend"} <= set(runs.columns):
        return None
    runs = runs[runs["backend"].astype(str).isin(BATCH_BACKENDS)]
    arrivals = [
        (str(r["point"]), parse_arrivals(r["worker_arrival_seconds"]), r)
        for _, r in runs.iterrows()
    ]
    arrivals = [a for a in arrivals if a[1]]
    if not arrivals:
        return None
    labels = point_labels(records, scenario, sep=" ")
    colors = {p: f"C{i % 10}" for i, p in enumerate(dict.fromkeys(p for p, _, _ in arrivals))}
    fig, ax = _figure()
    seen = set()
    for point, times, run in arrivals:
        n = np.arange(1, len(times) + 1)
        ax.step(
            [0.0, *times],
            [0, *n],
            where="post",
            color=colors[point],
            label=None if point in seen else labels.get(point, point),
        )
        seen.add(point)
        if "workers" in run and pd.notna(run["workers"]):
            ax.axhline(float(run["workers"]), color=colors[point], ls=":", lw=1)
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("seconds from the cluster's start")
    ax.set_ylabel("workers joined")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0, None)
    ax.set_ylim(0, None)
    ax.legend(loc="lower right")
    ax.set_title(f"Worker arrival: {scenario}")
    return _render(fig, records, "Dotted lines: the workers each point asked for.")


# ---------------------------------------------------------------- the figures of a report

#: (file name, heading, plot function) of the scenarios with figures of their own.
PLOTS: tuple[tuple[str, str, Callable[[Records], Rendered | None]], ...] = (
    ("scaling", "Throughput vs workers", plot_scaling),
    ("efficiency", "Scaling efficiency vs workers", plot_efficiency),
    (
        "io",
        "I/O ceiling vs full pipeline",
        lambda r: plot_bars(r, "io", "I/O-only vs full pipeline (same files, same session)"),
    ),
    (
        "before_after",
        "Before / after the optimisations",
        lambda r: plot_bars(r, "before-after", "Baseline vs current code"),
    ),
    ("chunksize", "Chunk-size curve", plot_chunksize),
    ("latency", "Latency phases", plot_phases),
    ("latency_targets", "Latency vs analysis-facility targets", plot_latency_targets),
    ("engines", "Engines", lambda r: plot_bars(r, "engines", "Execution engines")),
    ("backends", "Backends", lambda r: plot_bars(r, "backends", "Backends")),
    (
        "backends_latency",
        "Backend latency phases",
        lambda r: plot_phases(r, "backends", "Latency phases per backend"),
    ),
    ("cache", "Cache gains", plot_cache),
    ("ml", "ML step", lambda r: plot_bars(r, "ml", "Without and with the ML step")),
)
#: Scenarios with a figure in PLOTS (or a table): no generic bar chart of events/s.
SHOWN = frozenset(
    {
        "workers",
        "io",
        "before-after",
        "chunksize",
        "latency",
        "engines",
        "backends",
        "cache",
        "ml",
        "many-workers",
    }
)
#: (file-name prefix, heading, plot function) drawn for every scenario whose records allow
#: (but the steady state of scenario cache, whose cached points process nothing).
PER_SCENARIO: tuple[tuple[str, str, Callable[..., Rendered | None]], ...] = (
    ("steady_vs_end_to_end", "Steady state vs end to end", plot_steady_vs_end_to_end),
    ("memory", "Peak memory per worker", plot_memory),
    ("read_rate", "Read rate", plot_read_rate),
    ("worker_arrival", "Worker arrival", plot_worker_arrival),
)


#: (PER_SCENARIO prefix, scenario) pairs not drawn: the result cache's warm points have no
#: steady state to speak of (their processing phase returns cached results).
NOT_DRAWN = frozenset({("steady_vs_end_to_end", "cache")})


def slug(text: str) -> str:
    """A file-name part: letters, digits and dashes."""
    return re.sub(r"[^A-Za-z0-9]+", "-", str(text)).strip("-").lower() or "x"


def figure_entries(records: Records) -> list[tuple[str, str, Callable[[Records], Rendered | None]]]:
    """Every figure a report of these records may have: (file name, heading, plot function);
    a function returns None where its records are absent."""
    entries = list(PLOTS)
    names = list(dict.fromkeys([*records.meta, *scenarios_of(records)]))
    entries += [
        (
            name,
            f"Scenario {name}",
            functools.partial(plot_bars, scenario=name, title=f"Scenario {name}"),
        )
        for name in names
        if name not in SHOWN
    ]
    scenarios = scenarios_of(records)
    for prefix, heading, make in PER_SCENARIO:
        entries += [
            (f"{prefix}_{slug(s)}", f"{heading}: {s}", functools.partial(make, scenario=s))
            for s in scenarios
            if (prefix, s) not in NOT_DRAWN
        ]
    for scenario, point, run_id in timeline_runs(records):
        entries.append(
            (
                f"timeline_{slug(scenario)}_{slug(point)}",
                f"Task timeline: {scenario}, {point}",
                functools.partial(plot_timeline, run_id=run_id),
            )
        )
    return entries
