"""What a run measured, as tidy tables (spec §6 "Metrics", §9).

Three tables, all plain pandas DataFrames so reports, notebooks and asv read the same data:

* **runs** — one row per run: configuration, events, bytes, wall/CPU time, throughput, cache
  counters, the latency phases, machine, versions and git commit;
* **phases** — one row per run and phase (``cluster_start``, ``first_worker``, ``preprocessing``,
  ``first_result``, ``processing``, ``merge``, ``write``, ``fit``), in seconds;
* **tasks** — one row per chunk as the executor ran it (start, stop, CPU, worker, bytes).

Phases are measured by :class:`PhaseClock`, owned by :func:`agc.runner.run`; per-task timings come
from the task results the executor returns. Nothing else in the package times anything.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

#: Phases of a run, in order. ``first_result`` is measured from the start of processing.
PHASES = (
    "cluster_start",
    "first_worker",
    "all_workers",
    "preprocessing",
    "first_result",
    "processing",
    "merge",
    "write",
    "fit",
)

#: Packages whose versions are attached to every record (and enter cache keys).
TRACKED_PACKAGES = (
    "agc-harness",
    "numpy",
    "awkward",
    "uproot",
    "hist",
    "boost-histogram",
    "coffea",
    "dask",
    "distributed",
    "dask-awkward",
    "cabinetry",
    "pyhf",
    "pandas",
)


#: Moments of a run, in seconds from its start (one origin for all): when the first worker
#: was there, when all were, when the first chunk result arrived, when processing ended.
MILESTONES = ("first_worker", "all_workers", "first_result", "processing_end")


class PhaseClock:
    """Wall-clock durations of named phases (monotonic clock), and :data:`MILESTONES`: when
    something happened, in seconds from the clock's start."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.durations: dict[str, float] = {}
        self.milestones: dict[str, float] = {}
        self._open: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the ``with`` block as phase ``name`` (added to earlier time of that phase)."""
        self.start(name)
        try:
            yield
        finally:
            self.stop(name)

    def start(self, phase: str) -> None:
        self._open[phase] = time.perf_counter()

    def stop(self, phase: str) -> float:
        elapsed = time.perf_counter() - self._open.pop(phase)
        self.durations[phase] = self.durations.get(phase, 0.0) + elapsed
        return elapsed

    def record(self, phase: str, seconds: float) -> None:
        self.durations[phase] = seconds

    def started(self, phase: str) -> float:
        """When the open phase ``phase`` started, in seconds from the clock's start."""
        return self._open[phase] - self.t0

    def mark(self, milestone: str, at: float | None = None) -> None:
        """Record ``milestone`` now, or ``at`` seconds from the clock's start."""
        self.milestones[milestone] = self.elapsed() if at is None else at

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


@dataclass
class TaskTiming:
    """One chunk as it ran on a worker (epoch seconds)."""

    sample: str
    path: str
    entry_start: int
    entry_stop: int
    started: float
    finished: float
    cpu_seconds: float
    bytes_read: int
    worker: str
    peak_rss_mb: float
    cached: bool = False
    #: of ``finished - started``: opening the file and reading the columns, then the analysis
    read_seconds: float = float("nan")
    analysis_seconds: float = float("nan")
    #: of ``read_seconds``: opening the file (0 when this worker had it open already)
    open_seconds: float = float("nan")
    #: the chunk was left out: its file could not be read (``skip_bad_files``)
    skipped: bool = False
    #: of ``finished - started``: moving the columns to the analysis device (device path)
    transfer_seconds: float = float("nan")
    #: the name of the Dask worker that ran the chunk (batch workers carry their site in it,
    #: e.g. ``DiracCluster-3@LCG.RAL-LCG2.uk``); "" outside Dask workers
    dask_worker: str = ""


@dataclass
class RunRecord:
    """One row of the runs table."""

    run_id: str
    backend: str
    engine: str
    workers: int
    cores_per_worker: int
    chunksize: int
    n_files: int
    io_only: bool
    systematics: bool
    events: int
    chunks: int
    bytes_read: int
    #: from the start of planning to the merged histograms (not the write and fit phases)
    wall_seconds: float
    cpu_seconds: float
    peak_rss_mb_per_worker: float
    cache_hits: int = 0
    cache_misses: int = 0
    phases: dict[str, float] = field(default_factory=dict)
    label: str = ""
    #: input files touched, and the task-time split summed over tasks (see :func:`task_totals`)
    files: int = 0
    task_seconds: float = float("nan")
    read_seconds: float = float("nan")
    open_seconds: float = float("nan")
    analysis_seconds: float = float("nan")
    #: :data:`MILESTONES` of the run, seconds from its start
    milestones: dict[str, float] = field(default_factory=dict)
    #: the run had the ML step (spec §5)
    ml: bool = False
    #: workers lost and replaced during the run, and the tasks run again because of it
    worker_restarts: int = 0
    tasks_resubmitted: int = 0
    #: workers retired on purpose: a lifetime before the walltime, adapt scaling down
    workers_retired: int = 0
    #: a partial result: chunks left out (``skip_bad_files``) and the events they held
    partial: bool = False
    chunks_skipped: int = 0
    events_lost: int = 0
    #: the device path's device ("cuda", or "cpu": the GPU code path on numpy); "": CPU path
    device: str = ""
    #: summed over tasks: moving columns to the device (device path)
    transfer_seconds: float = float("nan")
    #: when each worker joined, seconds from the cluster's start, as a JSON list (batch
    #: backends; "[]" where the executor does not time arrivals)
    worker_arrival_seconds: str = "[]"
    #: chunks that waited ``locality_wait`` for a worker at their file's sites and then ran on
    #: another (data locality, see :class:`backends.local.SitePlacement`)
    tasks_moved_off_site: int = 0
    #: every batch job of the run with its site and final status, as a JSON list of
    #: ``{"id", "site", "status"}`` (DIRAC's job monitor; "[]" for other backends), and the
    #: jobs the monitor replaced (failed, or queued past ``dirac.monitor.max_waiting``)
    jobs: str = "[]"
    jobs_resubmitted: int = 0
    #: the relay broker the workers were reached through (``relay.broker``; "" without one)
    #: and the connections and bytes (both ways) it relayed to them (backends/relay)
    relay: str = ""
    relayed_connections: int = 0
    relayed_bytes: int = 0

    @property
    def cores(self) -> int:
        return max(self.workers * self.cores_per_worker, 1)

    @property
    def events_per_second(self) -> float:
        return self.events / self.wall_seconds if self.wall_seconds > 0 else float("nan")

    @property
    def events_per_second_per_core(self) -> float:
        return self.events_per_second / self.cores

    @property
    def processing_events_per_second(self) -> float:
        """The steady-state rate: events over the processing phase alone (the workers were
        there; no planning, cluster start, merge). ``events_per_second`` is end to end."""
        seconds = self.phases.get("processing", float("nan"))
        return self.events / seconds if seconds > 0 else float("nan")

    @property
    def cpu_efficiency(self) -> float:
        """CPU time of all processes over (wall time x cores)."""
        denom = self.wall_seconds * self.cores
        return self.cpu_seconds / denom if denom > 0 else float("nan")

    def row(self) -> dict:
        """The flat runs-table row, with derived rates, machine, versions and commit."""
        row = {k: v for k, v in asdict(self).items() if k not in ("phases", "milestones")}
        row.update(
            events_per_second=self.events_per_second,
            events_per_second_per_core=self.events_per_second_per_core,
            processing_events_per_second=self.processing_events_per_second,
            processing_events_per_second_per_core=self.processing_events_per_second / self.cores,
            cpu_efficiency=self.cpu_efficiency,
        )
        row.update({f"{p}_seconds": self.phases.get(p, float("nan")) for p in PHASES})
        row.update({f"{m}_at_seconds": self.milestones.get(m, float("nan")) for m in MILESTONES})
        row["load_average_1min"] = load_average()
        row.update(environment())
        return row


def task_totals(tasks: Iterable[TaskTiming]) -> dict:
    """Per-run sums over the executor's task timings: files, task, read, analysis and transfer
    seconds."""
    tasks = [t for t in tasks if not t.cached]
    return {
        "files": len({t.path for t in tasks}),
        "task_seconds": sum(t.finished - t.started for t in tasks),
        "read_seconds": sum(t.read_seconds for t in tasks),
        "open_seconds": sum(t.open_seconds for t in tasks),
        "analysis_seconds": sum(t.analysis_seconds for t in tasks),
        "transfer_seconds": sum(t.transfer_seconds for t in tasks),
    }


def runs_frame(records: Iterable[RunRecord]):
    import pandas as pd

    return pd.DataFrame([r.row() for r in records])


def phases_frame(records: Iterable[RunRecord]):
    """Tidy: one row per run and measured phase."""
    import pandas as pd

    rows = [
        {
            "run_id": r.run_id,
            "label": r.label,
            "backend": r.backend,
            "workers": r.workers,
            "phase": p,
            "seconds": r.phases[p],
        }
        for r in records
        for p in PHASES
        if p in r.phases
    ]
    return pd.DataFrame(rows, columns=["run_id", "label", "backend", "workers", "phase", "seconds"])


def tasks_frame(run_id: str, tasks: Iterable[TaskTiming]):
    import pandas as pd

    df = pd.DataFrame([asdict(t) for t in tasks])
    df.insert(0, "run_id", run_id)
    return df


def load_average() -> float:
    """The machine's 1-minute load average now (how busy a shared machine was), or NaN."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@functools.cache
def machine_info() -> dict:
    """CPU model, logical cores and memory of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError):
        mem_gb = float("nan")
    return {
        "hostname": platform.node(),
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "memory_gb": round(mem_gb, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


@functools.cache
def package_versions() -> dict[str, str]:
    out = {}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


@functools.cache
def git_commit() -> str:
    """The commit of the harness source tree, with ``-dirty`` if it has local changes."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment() -> dict:
    """Machine, versions and commit, flattened for a table row."""
    env = {f"machine_{k}": v for k, v in machine_info().items()}
    env.update({f"version_{k}": v for k, v in package_versions().items()})
    env["git_commit"] = git_commit()
    return env
