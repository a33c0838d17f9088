"""Reports of benchmark records: plots, a self-contained HTML page and a markdown summary.

:func:`build_report` reads ``RESULTS_DIR/raw/*-{runs,phases,tasks}.csv`` (written by
:mod:`agc.bench`) and writes ``index.html`` (inline CSS, plots embedded as PNG data URIs and linked
as SVG, no network resources), ``README.md`` (tables, links to ``plots/*.png`` and ``*.svg``) and
``summary.csv`` (median and spread per scenario and point). Every number on the page comes from
the records; warm-up runs are left out of every statistic. The figures are drawn by
:mod:`agc.report_figures`.
"""

from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from agc.report_figures import (
    BATCH_BACKENDS,
    commit_label,
    figure_entries,
    single_node_points,
    steady_rate_column,
)

#: What the harness aims for on the realistic layout (measured, never asserted in tests).
TARGETS = {
    "events_per_second_per_core": (">=", 200_000, "full pipeline, events/s per core"),
    "fraction_of_io_ceiling": (">=", 0.5, "full pipeline / I/O-only rate, same branches"),
    "fixed_cost_per_chunk_seconds": ("<=", 0.2, "fixed cost per chunk (s)"),
    "scaling_efficiency_2_workers": (">=", 0.9, "2-worker scaling efficiency (processing phase)"),
    "time_to_first_result_seconds": ("<=", 3.0, "time to first result, local backend (s)"),
}

#: Said of every report: what its numbers are not.
NOT_MEASURED = (
    "The dask-awkward engine's CPU time counts its analysis tasks only (Dask's task stream "
    "gives the read tasks' wall time, not their CPU time), so its CPU efficiency is understated.",
    "Inputs are synthetic NanoAOD (stand-in for the real AGC files) read from local disk; only "
    "the XCache rows of the cache scenario read over XRootD, on loopback (no network latency).",
)


def not_measured(records: Records) -> list[str]:
    """What the report's numbers are not: the fixed notes, plus what this run could not do."""
    notes = []
    ran = set(records.runs["backend"]) if "backend" in records.runs else set()
    if not ran & set(BATCH_BACKENDS):
        used = sorted(str(b) for b in ran if isinstance(b, str))
        notes.append(
            "Batch backends (SLURM, HTCondor, DIRAC): not measured in this report; "
            + (
                f"the runs here use the {', '.join(used)} backend{'s' * (len(used) > 1)} only."
                if used
                else "no run here used one."
            )
        )
    standins = sorted(
        {str(p) for p in records.runs.get("point", pd.Series(dtype=str)) if "stand-in" in str(p)}
    )
    if standins:
        notes.append(
            f"{', '.join(standins)}: the production cluster classes and job "
            "descriptions, submitted through stand-in commands that start each job as a "
            "local process; their latencies are those of a local process start, not of "
            "a site's queue or matching."
        )
    devices = set(run_devices(records.runs))
    if "cuda" not in devices:
        note = "GPU path: not measured here — no run in these records used a CUDA device."
        if "cpu" in devices:
            note += (
                " The runs with device cpu ran the GPU code path on numpy: they check and "
                "time that code on the CPU, and measure no GPU."
            )
        notes.append(note)
    for scenario, meta in records.meta.items():
        for point, reason in (meta.get("skipped") or {}).items():
            notes.append(f"Scenario {scenario}, {point}: not measured ({reason}).")
    return notes + list(NOT_MEASURED)


def run_devices(runs: pd.DataFrame) -> pd.Series:
    """The device of each run: "cuda", "cpu" (the GPU code path on numpy) or "" (the CPU
    path; also every run of records made before runs had a device)."""
    if "device" not in runs:
        return pd.Series("", index=runs.index, dtype=object)
    return runs["device"].astype(object).where(runs["device"].notna(), "").astype(str)


@dataclass
class Records:
    """All records of a results folder (warm-up runs included, flagged)."""

    runs: pd.DataFrame
    phases: pd.DataFrame
    tasks: pd.DataFrame
    meta: dict[str, dict] = field(default_factory=dict)

    def measured(self, scenario: str) -> pd.DataFrame:
        """The runs of a scenario without the warm-ups (none when no run was recorded)."""
        if "scenario" not in self.runs:
            return self.runs
        df = self.runs[self.runs["scenario"] == scenario]
        return df[~df["warmup"].astype(bool)] if "warmup" in df else df


FAULTS_RECORD = "faults.json"


def reliability_table(results_dir: str | os.PathLike) -> pd.DataFrame | None:
    """The fault suite's outcomes (``raw/faults.json``, written by ``nox -s faults -- DIR``):
    one row per fault, with the outcome the test asserted, what happened to the histograms,
    the events lost, and whether the test passed. None when the folder has no record.

    Rows of one fault (a test run with several parameters) are merged: the fault passed only
    if every one of its tests passed.
    """
    path = Path(results_dir) / "raw" / FAULTS_RECORD
    if not path.exists():
        return None
    rows = json.loads(path.read_text())["faults"]
    if not rows:
        return pd.DataFrame(columns=["fault", "outcome", "histograms", "events lost", "result"])
    df = pd.DataFrame(rows)
    for column in ("events_lost", "events"):
        if column not in df:
            df[column] = np.nan
    merged = df.groupby("fault", sort=False).agg(
        outcome=("outcome", "first"),
        histograms=("histograms", "first"),
        events_lost=("events_lost", "max"),
        events=("events", "max"),
        passed=("passed", "all"),
        tests=("test", "count"),
    )

    def lost(row) -> str:
        if pd.isna(row.events_lost):
            return "0" if row.outcome == "survived" else "-"
        return f"{int(row.events_lost):,} of {int(row.events):,}"

    return pd.DataFrame(
        {
            "fault": merged.index,
            "outcome": merged["outcome"].to_numpy(),
            "histograms": merged["histograms"].to_numpy(),
            "events lost": [lost(r) for r in merged.itertuples()],
            "result": [
                ("passed" if ok else "FAILED") + (f" ({n} tests)" if n > 1 else "")
                for ok, n in zip(merged["passed"], merged["tests"], strict=True)
            ],
        }
    )


def _reliability_note(results_dir: Path) -> str:
    record = json.loads((results_dir / "raw" / FAULTS_RECORD).read_text())
    return (
        "Every fault injected for real by the fault suite (nox -s faults: the tests marked "
        "fault, most in tests/test_faults.py): "
        "damaged input files, full and read-only tmpfs mounts, SIGKILL of the main process "
        "and of pool workers, "
        "two runs on one output, real xrootd daemons stopped mid-run, a store that never "
        "answers. Outcome: what the test asserts -- survived (histograms unaffected), failed "
        "clearly (a message naming the problem, nothing half-written), partial (finished, "
        "marked partial, the events lost counted). Recorded "
        f"{record.get('finished_utc')} at commit {record.get('commit')} on "
        f"{record.get('machine')} (Python {record.get('python')}), on one machine: the "
        "daemons and mounts are local."
    )


def _section(h: list[str], md: list[str], heading: str, text: str, table: pd.DataFrame) -> None:
    """Add a section (heading, a sentence, a table) to the HTML and markdown pages."""
    h += [f"<h2>{html.escape(heading)}</h2>", f"<p>{html.escape(text)}</p>", _table_html(table)]
    md += [f"## {heading}", "", text, "", _table_md(table), ""]


def _reliability_report(results_dir: Path, title: str) -> Path:
    """The page of a folder holding only the fault suite's record."""
    table = reliability_table(results_dir)
    assert table is not None
    text = _reliability_note(results_dir)
    h = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>",
        "<h2>Reliability</h2>",
        f"<p>{html.escape(text)}</p>",
        _table_html(table),
        f"<p>Raw record: <code>raw/{FAULTS_RECORD}</code>.</p></body></html>",
    ]
    md = [f"# {title}", "", "## Reliability", "", text, "", _table_md(table), ""]
    md += [f"Raw record: `raw/{FAULTS_RECORD}`; the same page: `index.html`.", ""]
    page = results_dir / "index.html"
    page.write_text("\n".join(h))
    (results_dir / "README.md").write_text("\n".join(md))
    return page


def load_records(results_dir: str | os.PathLike) -> Records:
    """Read every ``raw/<scenario>-*.csv`` and ``-meta.json`` of a results folder."""
    raw = Path(results_dir) / "raw"
    if not raw.is_dir():
        from agc.errors import UserError

        raise UserError(
            f"{results_dir}: no raw/ folder with records; run 'agc bench SCENARIO "
            f"--results {results_dir}' first"
        )

    def concat(kind: str) -> pd.DataFrame:
        frames = [pd.read_csv(f) for f in sorted(raw.glob(f"*-{kind}.csv"))]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    meta = {
        f.name[: -len("-meta.json")]: json.loads(f.read_text())
        for f in sorted(raw.glob("*-meta.json"))
    }
    return Records(concat("runs"), concat("phases"), concat("tasks"), meta)


def summarize(records: Records) -> pd.DataFrame:
    """Median and spread (min, max) per scenario and point, warm-ups excluded."""
    runs = records.runs
    if runs.empty:
        return pd.DataFrame(columns=["scenario", "point"])
    runs = runs[~runs["warmup"].astype(bool)]
    rows = []
    for (scenario, point), g in runs.groupby(["scenario", "point"], sort=False):
        eps = g["events_per_second"]
        row = {
            "scenario": scenario,
            "point": point,
            "runs": len(g),
            "events": int(g["events"].median()),
            "workers": int(g["workers"].median()) if "workers" in g else 1,
            "wall_s_median": g["wall_seconds"].median(),
            "events_per_s_median": eps.median(),
            "events_per_s_min": eps.min(),
            "events_per_s_max": eps.max(),
        }
        # a column only some scenarios record is NaN in the others' rows
        if _recorded(g, "events_per_second_per_core"):
            row["events_per_s_per_core_median"] = g["events_per_second_per_core"].median()
        if _recorded(g, "processing_events_per_second"):
            # the steady state: events over the processing phase alone
            row["processing_events_per_s_median"] = g["processing_events_per_second"].median()
        if _recorded(g, "cpu_seconds"):
            row["cpu_s_median"] = g["cpu_seconds"].median()
        if _recorded(g, "cpu_efficiency"):
            row["cpu_efficiency_median"] = g["cpu_efficiency"].median()
        if _recorded(g, "first_result_seconds"):
            row["first_result_s_median"] = g["first_result_seconds"].median()
        if _recorded(g, "cache_hits"):
            row["cache_hits"] = int(g["cache_hits"].median())
        rows.append(row)
    return pd.DataFrame(rows)


def _recorded(g: pd.DataFrame, column: str) -> bool:
    """Whether the runs ``g`` recorded ``column`` (present, and not NaN in all of them)."""
    return column in g and bool(g[column].notna().any())


def fixed_cost_per_chunk(tasks: pd.DataFrame) -> tuple[float, float]:
    """(seconds per chunk, seconds per event) from a straight-line fit of task time vs events.

    The intercept is the cost a chunk pays whatever its size (scheduling, opening, reading
    metadata, Python overheads); the slope is the cost per event.
    """
    if tasks.empty:
        return float("nan"), float("nan")
    n = (tasks["entry_stop"] - tasks["entry_start"]).to_numpy(float)
    t = (tasks["finished"] - tasks["started"]).to_numpy(float)
    if len(np.unique(n)) < 2:
        return float("nan"), float("nan")
    slope, intercept = np.polyfit(n, t, 1)
    return float(intercept), float(slope)


def targets(records: Records) -> pd.DataFrame:
    """The performance targets with the measured value of each (NaN: not measured)."""
    measured: dict[str, float] = dict.fromkeys(TARGETS, float("nan"))
    full = records.measured("io")
    if not full.empty:
        pipeline = full[~full["io_only"].astype(bool)]
        ceiling = full[full["io_only"].astype(bool) & (full["point"].str.contains("analysis"))]
        measured["events_per_second_per_core"] = pipeline["events_per_second_per_core"].median()
        if len(ceiling):
            measured["fraction_of_io_ceiling"] = (
                pipeline["events_per_second"].median() / ceiling["events_per_second"].median()
            )
    tasks = records.tasks
    if not tasks.empty and "chunksize" in records.meta:
        chunk_tasks = tasks[(tasks["scenario"] == "chunksize") & ~tasks["warmup"].astype(bool)]
        measured["fixed_cost_per_chunk_seconds"] = fixed_cost_per_chunk(chunk_tasks)[0]
    w = records.measured("workers")
    if not w.empty and {1, 2} <= set(w["workers"]):
        rate = steady_rate_column(w)  # the processing phase: cluster start-up left out
        r1 = w[w["workers"] == 1][rate].median()
        r2 = w[w["workers"] == 2][rate].median()
        measured["scaling_efficiency_2_workers"] = r2 / (2 * r1)
    lat = records.measured("latency")
    if not lat.empty:
        measured["time_to_first_result_seconds"] = _time_to_first_result(lat).median()
    info = {}
    if not full.empty:
        pipeline = full[~full["io_only"].astype(bool)]
        info[
            "full pipeline, events per CPU second (all processes; what a core gives when it "
            "is not shared)"
        ] = (pipeline["events"] / pipeline["cpu_seconds"]).median()
    if not tasks.empty and "open_seconds" in tasks:
        # tasks that opened their file (records before the open flag show microseconds else)
        opened = tasks[(tasks["open_seconds"] > 1e-3) & ~tasks["warmup"].astype(bool)]
        info["opening one input file (s, median; metadata of every branch)"] = (
            opened["open_seconds"].median() if len(opened) else float("nan")
        )
    rows = []
    for key, (op, goal, what) in TARGETS.items():
        value = measured[key]
        met = (value >= goal if op == ">=" else value <= goal) if np.isfinite(value) else None
        rows.append(
            {
                "target": what,
                "goal": f"{op} {goal:g}",
                "measured": value,
                "met": {True: "yes", False: "no", None: "not measured"}[met],
            }
        )
    rows += [
        {"target": what, "goal": "—", "measured": value, "met": "for information"}
        for what, value in info.items()
    ]
    return pd.DataFrame(rows)


def time_split(records: Records) -> pd.DataFrame:
    """Where the task time goes, per scenario and point (medians over runs, in seconds summed
    over a run's tasks): opening files, reading columns, the analysis."""
    t = records.tasks
    if t.empty or "read_seconds" not in t:
        return pd.DataFrame()
    t = t[~t["warmup"].astype(bool)].copy()
    t["task"] = t["finished"] - t["started"]
    for column in ("open_seconds", "cpu_seconds", "analysis_seconds"):
        if column not in t:  # records made before it, or hand-made ones
            t[column] = np.nan
    t["columns"] = t["read_seconds"] - t["open_seconds"].fillna(0.0)
    per_run = t.groupby(["scenario", "point", "run_id"], sort=False).agg(
        tasks=("task", "size"),
        task_s=("task", "sum"),
        cpu_s=("cpu_seconds", lambda x: x.sum(min_count=1)),
        open_s=("open_seconds", lambda x: x.sum(min_count=1)),
        read_columns_s=("columns", "sum"),
        analysis_s=("analysis_seconds", lambda x: x.sum(min_count=1)),
    )
    return per_run.groupby(["scenario", "point"], sort=False).median().reset_index()


def ml_cost(records: Records) -> pd.DataFrame:
    """The ML step's cost (scenario ``ml``): events/s per core without and with it (medians
    over the repeats), their ratio, and the ML share of the summed task time,
    1 - task time without / task time with. Empty without that scenario."""
    runs = records.measured("ml")
    split = time_split(records)
    if runs.empty or split.empty or "ml" not in runs:
        return pd.DataFrame()
    rate = runs.groupby("point", sort=False)["events_per_second_per_core"].median()
    tasks = split[split["scenario"] == "ml"].set_index("point")["task_s"]
    without = [p for p in rate.index if not bool(runs.loc[runs["point"] == p, "ml"].iloc[0])]
    if not without:
        return pd.DataFrame()
    base = without[0]
    return pd.DataFrame(
        {
            "point": rate.index,
            "events/s per core": rate.to_numpy(),
            "vs without ML": (rate / rate[base]).to_numpy(),
            "ML share of task time": [
                1 - tasks[base] / tasks[p] if p in tasks and p != base else 0.0 for p in rate.index
            ],
        }
    )


def many_workers_table(records: Records) -> pd.DataFrame:
    """Scheduling overhead vs worker count (scenario ``many-workers``), medians over repeats:
    seconds until all workers had joined, the processing and merge phases, and the idle
    worker-seconds per task, (processing x workers - summed task time) / tasks: what
    dispatching a task costs besides running it (on a machine with fewer cores than workers
    this includes waiting for a core)."""
    runs = records.measured("many-workers")
    split = time_split(records)
    if runs.empty or split.empty:
        return pd.DataFrame()
    tasks = split[split["scenario"] == "many-workers"].set_index("point")
    rows = []
    for point, g in runs.groupby("point", sort=False):
        workers = int(g["workers"].median())
        processing = g["processing_seconds"].median()
        n_tasks = g["chunks"].median()
        busy = tasks["task_s"].get(point, np.nan)
        rows.append(
            {
                "workers": workers,
                "tasks": int(n_tasks),
                "all workers after (s)": g.get(
                    "all_workers_at_seconds", pd.Series(np.nan)
                ).median(),
                "processing (s)": processing,
                "merge (s)": g["merge_seconds"].median(),
                "idle worker-s per task": (processing * workers - busy) / n_tasks,
            }
        )
    return pd.DataFrame(rows).sort_values("workers")


def _many_workers_note(records: Records) -> str:
    """The sentence of the many-workers table; where the workers ran, from the records."""
    text = "Scheduling overhead vs the number of workers (scenario many-workers)"
    runs = records.measured("many-workers")
    points = {str(p) for p in runs.get("point", pd.Series(dtype=str))}
    single = single_node_points(records, "many-workers")
    if points and single == points:
        backends = ", ".join(sorted({str(b) for b in runs["backend"]}))
        text += (
            f": every {backends} worker ran on this machine (single node), so they share its "
            "cores: the harness's and Dask's costs under contention, not a site's"
        )
    return text + "."


IMPLEMENTATIONS_SCENARIO = "implementations"


def implementations_table(records: Records) -> pd.DataFrame:
    """Scenario ``implementations``: per point (the harness's engines, the AGC's own
    implementations), medians over its measured runs of the whole-process and event-loop
    seconds, the event-loop rate per core and its ratio to the first point's, and the
    bin-for-bin check of its histograms against the harness's (from the scenario's
    records). Empty without that scenario."""
    runs = records.measured(IMPLEMENTATIONS_SCENARIO)
    if runs.empty or "processing_seconds" not in runs:
        return pd.DataFrame()
    checks = records.meta.get(IMPLEMENTATIONS_SCENARIO, {}).get("checks", {})
    rows = []
    for point, g in runs.groupby("point", sort=False):
        check = checks.get(point)
        if check is None:
            agreement = "the reference of the checks"
        else:
            agreement = f"{check['identical']} of {check['compared']} identical"
            if check["identical"] < check["compared"]:
                agreement += f", max relative difference {check['max_rel_diff']:.1e}"
            if check.get("missing"):
                agreement += f", {len(check['missing'])} missing"
        rows.append(
            {
                "point": point,
                "workers": int(g["workers"].median()),
                "whole process s": g["wall_seconds"].median(),
                "event loop s": g["processing_seconds"].median(),
                "event-loop events/s per core": g["processing_events_per_second_per_core"].median(),
                "histograms vs harness": agreement,
            }
        )
    table = pd.DataFrame(rows)
    first = table["event-loop events/s per core"].iloc[0]
    table.insert(5, "vs first", table["event-loop events/s per core"] / first)
    return table


def implementations_note(records: Records) -> str:
    """The sentence of the implementations table, from the scenario's records."""
    meta = records.meta.get(IMPLEMENTATIONS_SCENARIO, {})
    checks = meta.get("checks", {})
    against = {c.get("against") for c in checks.values()} - {None}
    excluded = {c.get("excluded") for c in checks.values()} - {None}
    text = (
        "The same files and workers for every point, each run a fresh Python process: the "
        "whole process (interpreter start to histograms, imports included) and its event loop "
        "alone (medians over the repeats)."
    )
    if against:
        text += " Histograms checked bin for bin (values and variances, flow bins) against "
        text += f"{', '.join(sorted(against))}"
        text += (
            f", {', '.join(sorted(excluded))} left out (unseeded in the references)."
            if excluded
            else "."
        )
    without = [p for p, c in checks.items() if c.get("without_variances")]
    if without:
        text += f" {', '.join(without)}: variances not stored, values compared."
    return text


GPU_SCENARIO = "gpu"


def gpu_table(records: Records) -> pd.DataFrame:
    """The analysis stage per point of scenario ``gpu``, medians over its measured runs: the
    events, the read, transfer and analysis seconds summed over a run's tasks, the analysis
    rate (a run's events / its analysis seconds) and that rate over the CPU path's (the first
    point whose runs have no device). Empty without that scenario or its task records."""
    runs = records.measured(GPU_SCENARIO)
    tasks = records.tasks
    if runs.empty or tasks.empty or "analysis_seconds" not in tasks or "scenario" not in tasks:
        return pd.DataFrame()
    runs = runs.assign(device=run_devices(runs))
    t = tasks[(tasks["scenario"] == GPU_SCENARIO) & tasks["run_id"].isin(runs["run_id"])].copy()
    if t.empty:
        return pd.DataFrame()
    if "transfer_seconds" not in t:  # records made before the device path
        t["transfer_seconds"] = np.nan
    per_run = t.groupby("run_id", sort=False).agg(
        read_s=("read_seconds", lambda x: x.sum(min_count=1)),
        transfer_s=("transfer_seconds", lambda x: x.sum(min_count=1)),
        analysis_s=("analysis_seconds", lambda x: x.sum(min_count=1)),
    )
    joined = runs.set_index("run_id")[["point", "device", "events"]].join(per_run, how="inner")
    joined["rate"] = joined["events"] / joined["analysis_s"].where(joined["analysis_s"] > 0)
    rows = []
    for point, g in joined.groupby("point", sort=False):
        rows.append(
            {
                "point": point,
                "device": g["device"].iloc[0] or "— (CPU path)",
                "runs": len(g),
                "events": int(g["events"].median()),
                "read_s": g["read_s"].median(),
                "transfer_s": g["transfer_s"].median(),
                "analysis_s": g["analysis_s"].median(),
                "analysis events/s": g["rate"].median(),
                "cpu_path": g["device"].iloc[0] == "",
            }
        )
    table = pd.DataFrame(rows)
    base = table[table["cpu_path"]]
    reference = base["analysis events/s"].iloc[0] if len(base) else np.nan
    table["vs CPU path"] = table["analysis events/s"] / reference
    return table.drop(columns="cpu_path")


def gpu_note(records: Records) -> str:
    """The sentence of the GPU-path table: what it holds, and which devices ran."""
    runs = records.measured(GPU_SCENARIO)
    device = run_devices(runs)
    devices = set(device)
    text = (
        "The analysis stage of scenario gpu per point (medians over the runs): read, transfer "
        "to the device and analysis seconds summed over a run's chunks, the analysis rate "
        "(events / analysis seconds; the histogram fill included, and on the device path its "
        "one copy to the host) and its ratio to the CPU path's."
    )
    if "cuda" in devices:
        points = sorted({str(p) for p in runs.loc[device == "cuda", "point"]})
        text += f" {', '.join(points)}: on a CUDA GPU."
    else:
        text += " No run here used a CUDA device."
    if "cpu" in devices:
        text += " Device cpu: the GPU code path on numpy, which measures no GPU."
    return text


def _time_to_first_result(runs: pd.DataFrame) -> pd.Series:
    """From the start of the run to the first chunk result: every phase before it, plus it."""
    parts = ["preprocessing", "cluster_start", "first_worker", "first_result"]
    return sum(runs[f"{p}_seconds"].fillna(0.0) for p in parts if f"{p}_seconds" in runs)


# ---------------------------------------------------------------- page

CSS = """
body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}
td,th{border:1px solid #ccc;padding:.25em .5em;text-align:right}th{background:#f2f2f2}
td:first-child,th:first-child{text-align:left}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.5em 1em}
.unclean{background:#fdecea;border-left:4px solid #b00020;padding:.5em 1em}
.tablewrap{overflow-x:auto;max-width:100%}
img{max-width:100%;border:1px solid #eee}
figure{margin:0}figcaption{font-size:.9em;color:#444}
"""


def _fmt(v) -> str:
    if isinstance(v, float | np.floating):
        x = float(v)
        if not np.isfinite(x):
            return "—"
        return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"
    return str(v)


def _table_html(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
        for row in df.itertuples(index=False)
    )
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="tablewrap">{table}</div>'


def _table_md(df: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _environment(records: Records) -> pd.DataFrame:
    cols = [
        c
        for c in records.runs.columns
        if c.startswith(("machine_", "version_")) or c == "git_commit"
    ]
    env = records.runs[cols].drop_duplicates()
    return pd.DataFrame(
        {"item": cols, "value": [", ".join(sorted({str(v) for v in env[c]})) for c in cols]}
    )


def build_report(
    results_dir: str | os.PathLike,
    title: str | None = None,
    asv_results: str | os.PathLike | None = None,
) -> Path:
    """Write ``index.html``, ``README.md``, ``summary.csv`` and ``plots/`` into ``results_dir``.

    With ``asv_results`` (asv's ``results_dir``) the page gains the asv micro-benchmarks, and
    ``asv.csv`` holds them.
    """
    results_dir = Path(results_dir)
    records = load_records(results_dir)
    if records.runs.empty and (results_dir / "raw" / FAULTS_RECORD).exists():
        return _reliability_report(results_dir, title or f"AGC reliability: {results_dir.name}")
    title = title or f"AGC benchmark report: {results_dir.name}"
    summary = summarize(records)
    goal = targets(records)
    env = _environment(records) if not records.runs.empty else pd.DataFrame()
    summary.to_csv(results_dir / "summary.csv", index=False)
    plots_dir = results_dir / "plots"
    plots_dir.mkdir(exist_ok=True)

    figures = []
    for key, heading, make in figure_entries(records):
        figure = make(records)
        if figure is not None:
            (plots_dir / f"{key}.png").write_bytes(figure.png)
            (plots_dir / f"{key}.svg").write_bytes(figure.svg)
            figures.append((key, heading, figure))

    intro = (
        f"{len(records.runs)} runs recorded in {len(records.meta)} scenario(s); warm-up runs "
        "(flagged in the records) are left out of every median and spread. Spread = min-max "
        "over the repeats."
    )
    machine = _machine_note(records)
    commit = commit_label(records)
    h = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>",
        f"<p>{html.escape(intro)}</p><p class='note'>{html.escape(machine)}</p>",
    ]
    md = [f"# {title}", "", intro, "", f"> {machine}", ""]
    if commit is not None:
        text, unclean = commit
        note = (
            f"Records {text}: not from one clean commit; every figure carries this label."
            if unclean
            else f"Records of {text}."
        )
        h.append(f"<p class='{'unclean' if unclean else 'note'}'>{html.escape(note)}</p>")
        md += [f"> {note}", ""]
    h += ["<h2>Targets</h2>", _table_html(goal)]
    md += ["## Targets", "", _table_md(goal), ""]
    for key, heading, figure in figures:
        data = base64.b64encode(figure.png).decode()
        caption = f"{html.escape(figure.caption)} " if figure.caption else ""
        h.append(
            f"<h2>{html.escape(heading)}</h2><figure><img alt='{key}' "
            f"src='data:image/png;base64,{data}'><figcaption>{caption}"
            f"<a href='plots/{key}.svg'>SVG</a> · <a href='plots/{key}.png'>PNG</a>"
            "</figcaption></figure>"
        )
        md += [f"## {heading}", "", f"![{key}](plots/{key}.png)", ""]
        if figure.caption:
            md += [figure.caption, ""]
        md += [f"[PNG](plots/{key}.png) · [SVG](plots/{key}.svg)", ""]
    tables = (
        (
            "Where the time goes",
            "Task time summed over a run's chunks (median over runs): opening input files "
            "(metadata of every branch), reading and decompressing the columns, the "
            "analysis; cpu_s is the tasks' CPU time. Wall time above cpu_s is waiting "
            "(for the disk, or for a core on a busy machine).",
            time_split(records),
        ),
        (
            "Many workers",
            _many_workers_note(records),
            many_workers_table(records),
        ),
        (
            "ML step cost",
            "The ML step (spec 5) on the same files and workers: events/s per core (medians "
            "over the repeats) and its share of the summed task time.",
            ml_cost(records),
        ),
        (
            "Implementations side by side",
            implementations_note(records),
            implementations_table(records),
        ),
        ("GPU path", gpu_note(records), gpu_table(records)),
    )
    for heading, text, table in tables:
        if not table.empty:
            _section(h, md, heading, text, table)
    h += ["<h2>Scenarios</h2>"]
    md += ["## Scenarios", ""]
    for name, meta in records.meta.items():
        part = summary[summary["scenario"] == name].drop(columns="scenario")
        text = (
            f"{meta.get('description', '')} Dataset {meta.get('dataset')} "
            f"({meta.get('dataset_events', 0):,} events), {meta.get('repeats')} repeats after "
            f"{meta.get('warmup')} warm-up(s), finished {meta.get('finished_utc')}."
        )
        h += [f"<h3>{html.escape(name)}</h3><p>{html.escape(text)}</p>", _table_html(part)]
        md += [f"### {name}", "", text, "", _table_md(part), ""]
    if asv_results is not None:
        micro = asv_table(asv_results)
        micro.to_csv(results_dir / "asv.csv", index=False)
        text = (
            "asv micro-benchmarks of the hot functions (asv's own statistics over its "
            "repeats; --quick runs once)."
        )
        h += [
            "<h2>asv micro-benchmarks</h2>",
            f"<p>{html.escape(text)}</p>",
            _table_html(_asv_readable(micro)),
        ]
        md += ["## asv micro-benchmarks", "", text, "", _table_md(_asv_readable(micro)), ""]
    reliability = reliability_table(results_dir)
    if reliability is not None:
        text = _reliability_note(results_dir)
        _section(h, md, "Reliability", text, reliability)
    caveats = not_measured(records)
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in caveats)
    h += [
        f"<h2>Not measured</h2><ul>{notes}</ul>",
        "<h2>Machine, versions, commit</h2>",
        _table_html(env),
        "<p>Raw records: <code>raw/*.csv</code>; per-point statistics: "
        "<code>summary.csv</code>.</p></body></html>",
    ]
    md += (
        ["## Not measured", ""]
        + [f"- {n}" for n in caveats]
        + [
            "",
            "## Machine, versions, commit",
            "",
            _table_md(env),
            "",
            "Raw records: `raw/*.csv`; per-point statistics: `summary.csv`; the same page with "
            "embedded plots: `index.html`.",
            "",
        ]
    )
    page = results_dir / "index.html"
    page.write_text("\n".join(h))
    (results_dir / "README.md").write_text("\n".join(md))
    return page


def asv_table(asv_results: str | os.PathLike) -> pd.DataFrame:
    """One row per asv benchmark (and parameter) result in an asv ``results_dir``.

    Reads asv's own JSON (``<machine>/<commit>-<env>.json`` and ``benchmarks.json``), so the
    micro-benchmarks appear on the offline report page instead of asv's CDN-based site.
    """
    import itertools

    root = Path(asv_results)
    units: dict[str, str] = {}
    if (root / "benchmarks.json").exists():
        units = {
            k: v.get("unit", "")
            for k, v in json.loads((root / "benchmarks.json").read_text()).items()
            if isinstance(v, dict)
        }
    rows = []
    for path in sorted(root.glob("*/*.json")):
        if path.name == "machine.json":
            continue
        data = json.loads(path.read_text())
        columns = data.get("result_columns", [])
        for name, values in data.get("results", {}).items():
            entry = dict(zip(columns, values, strict=False))
            result, params = entry.get("result"), entry.get("params") or []
            if result is None:
                continue
            combos = [", ".join(c) for c in itertools.product(*params)] if params else [""]
            values = result if params else [result[0] if isinstance(result, list) else result]
            for combo, value in zip(combos, values, strict=False):
                rows.append(
                    {
                        "benchmark": name,
                        "params": combo,
                        "value": value,
                        "unit": units.get(name, ""),
                        "commit": data.get("commit_hash", "")[:12],
                        "machine": data.get("params", {}).get("machine", ""),
                        "cpus": data.get("params", {}).get("num_cpu", ""),
                    }
                )
    return pd.DataFrame(
        rows, columns=["benchmark", "params", "value", "unit", "commit", "machine", "cpus"]
    )


def _asv_readable(df: pd.DataFrame) -> pd.DataFrame:
    """Values with their unit in words (seconds as ms, bytes as MB)."""

    def show(row):
        v = row["value"]
        if v is None or (isinstance(v, float) and not np.isfinite(v)):
            return "failed"
        if row["unit"] == "seconds":
            return f"{v * 1e3:.3g} ms"
        if row["unit"] == "bytes":
            return f"{v / 1e6:.0f} MB"
        return f"{v:,.0f} {row['unit']}"

    out = df.copy()
    out["value"] = [show(r) for _, r in df.iterrows()]
    return out.drop(columns="unit")


def _machine_note(records: Records) -> str:
    runs = records.runs
    if runs.empty or "machine_cpu_count" not in runs:
        return "No runs recorded."
    cores = sorted({int(c) for c in runs["machine_cpu_count"].dropna()})
    cpu = ", ".join(sorted({str(c) for c in runs["machine_cpu_model"].dropna()}))
    mem = ", ".join(sorted({f"{m:g}" for m in runs["machine_memory_gb"].dropna()}))
    load = ""
    if "load_average_1min" in runs and runs["load_average_1min"].notna().any():
        la = runs["load_average_1min"]
        load = (
            f" The 1-minute load average at the end of the runs was {la.median():.1f} "
            f"(median; {la.min():.1f} to {la.max():.1f}) on {max(cores)} cores"
        )
        # what the records say of the machine: busier than its cores, or not
        load += (
            ": more runnable processes than cores at the end of some runs, so rates are noisy."
            if cores and la.max() > max(cores)
            else "."
        )
    return (
        f"Machine: {cpu}, {'/'.join(map(str, cores))} logical core(s), {mem} GB memory.{load} "
        "Read the spreads, not only the medians."
    )
