"""``run(config) -> RunResult``: catalog -> chunks -> backend -> analysis -> merged histograms.

Only wiring lives here: the physics is in :mod:`agc.analysis`, execution in :mod:`backends`,
measurement in :mod:`agc.metrics`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import awkward as ak
import hist

from agc import __version__, engines
from agc.analysis import ANALYSIS_BRANCHES, DEFAULT_SEED, IO_BRANCH_SETS, process_events
from agc.cache import ChunkCache, NoWorkExecutor, lake_store, save_run, staging_dir
from agc.catalog import Chunk, build_fileset, is_synthetic, load_catalog, make_chunks
from agc.errors import UserError
from agc.histograms import add_pseudodata, is_written, merge, write_json, write_root
from agc.metrics import (
    PhaseClock,
    RunRecord,
    TaskTiming,
    peak_rss_mb,
    phases_frame,
    runs_frame,
    task_totals,
)
from agc.reader import open_tree, read_chunk

log = logging.getLogger(__name__)

DEFAULT_OUTPUT_ROOT = Path("agc-output")


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run. Physics options first, then inputs, execution, outputs."""

    catalog: str = "agc"
    n_files: int = -1
    samples: tuple[str, ...] | None = None
    systematics: bool = True
    seed: int = DEFAULT_SEED
    # where the inputs are read from
    eos: bool = False
    xcache: str | None = None
    mirror: str | None = None
    # I/O-only mode (spec §9 DISABLE_PROCESSING / IO_FILE_PERCENT): read, do nothing else.
    # io_branches: "analysis" (the branches the analysis reads) or a key of IO_BRANCH_SETS.
    io_only: bool = False
    io_branches: str = "analysis"
    # execution
    backend: str = "local"
    backend_options: Mapping[str, object] = field(default_factory=dict)
    engine: str = "chunked"  # see agc.engines.ENGINES
    chunksize: int = 100_000
    # step-level cache store URL (None: no caching)
    cache: str | None = None
    # data lake: "copy" (outputs also in the cache store), "only" (only there), "off"
    data_lake: str = "copy"
    # outputs
    fit: bool = True  # cabinetry/pyhf fit and plots at the end (needs a full set of samples)
    output_dir: str | None = None
    label: str = ""

    def branches(self) -> tuple[str, ...]:
        if not self.io_only or self.io_branches == "analysis":
            return ANALYSIS_BRANCHES
        if self.io_branches not in IO_BRANCH_SETS:
            raise UserError(
                f"--io-branches {self.io_branches!r}: choose 'analysis' or one of "
                f"{', '.join(IO_BRANCH_SETS)}"
            )
        return IO_BRANCH_SETS[self.io_branches]


@dataclass(frozen=True)
class ChunkTask:
    """What a worker needs for one chunk (small and picklable)."""

    chunk: Chunk
    branches: tuple[str, ...]
    systematics: bool
    seed: int
    io_only: bool = False


@dataclass
class ChunkResult:
    nevents: int
    histograms: dict[str, hist.Hist]
    timing: TaskTiming


def process_chunk(task: ChunkTask) -> ChunkResult:
    """Read one chunk and run the analysis on it (runs on a worker)."""
    started, cpu0 = time.time(), time.process_time()
    c = task.chunk
    fresh = open_tree(c.path, c.tree)[2]  # kept open per worker; timed apart from reading
    opened = time.time() if fresh else started
    events, nbytes = read_chunk(c.path, task.branches, c.entry_start, c.entry_stop, c.tree)
    if task.io_only:
        ak.materialize(events)  # the I/O ceiling: columns decompressed and deserialised only
    return analyse(
        events,
        task,
        nbytes,
        started=started,
        cpu0=cpu0,
        read_seconds=time.time() - started,
        open_seconds=opened - started,
    )


def analyse(
    events: ak.Array,
    task: ChunkTask,
    nbytes: int,
    *,
    started: float,
    cpu0: float,
    read_seconds: float = float("nan"),
    open_seconds: float = float("nan"),
) -> ChunkResult:
    """Run the analysis on the events of one chunk (nothing in I/O-only mode) and time it.

    ``started`` / ``cpu0``: wall and process CPU time when the task began (reading included).
    """
    c = task.chunk
    analysis_started = time.time()
    if task.io_only:
        histograms = {}
    else:
        histograms = process_events(
            events,
            process=c.process,
            variation=c.variation,
            weight=c.weight,
            dataset=c.sample,
            seed=task.seed,
            systematics=task.systematics,
        )
    finished = time.time()
    timing = TaskTiming(
        c.sample,
        c.path,
        c.entry_start,
        c.entry_stop,
        started,
        finished,
        time.process_time() - cpu0,
        nbytes,
        f"{socket.gethostname()}:{os.getpid()}",
        peak_rss_mb(),
        read_seconds=read_seconds,
        analysis_seconds=finished - analysis_started,
        open_seconds=open_seconds,
    )
    return ChunkResult(len(events), histograms, timing)


@dataclass
class RunResult:
    """What a run produced and measured."""

    run_id: str
    run_dir: Path | None
    histograms: dict[str, hist.Hist]
    events_per_sample: dict[str, int]
    yields: dict[str, dict[str, float]]
    weights: dict[str, float]
    record: RunRecord
    tasks: list[TaskTiming]
    summary: dict = field(default_factory=dict)

    @property
    def events(self) -> int:
        return sum(self.events_per_sample.values())

    @property
    def wall_seconds(self) -> float:
        return self.record.wall_seconds

    @property
    def events_per_second(self) -> float:
        return self.record.events_per_second

    @property
    def workers(self) -> int:
        return self.record.workers

    @property
    def chunks(self) -> int:
        return self.record.chunks

    @property
    def bytes_read(self) -> int:
        return self.record.bytes_read


def sample_yields(histograms: Mapping[str, hist.Hist], fileset) -> dict[str, dict[str, float]]:
    """Weighted yield (flow included) per sample and region, from the nominal-pT histograms."""
    out = {}
    for key, sample in fileset.items():
        out[key] = {}
        for region in ("4j1b", "4j2b"):
            name = (
                f"{region}_{sample.process}"
                if sample.variation == "nominal"
                else f"{region}_{sample.process}_{sample.variation}"
            )
            h = histograms.get(name)
            out[key][region] = float(h.sum(flow=True).value) if h is not None else 0.0
    return out


def new_run_id(config: RunConfig) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return f"{stamp}-{config.backend}-{os.getpid()}"


def run(config: RunConfig, *, progress: bool = True, write: bool = True) -> RunResult:
    """Run the analysis over the catalog with the configured backend.

    Outputs (``histograms.root``, ``histograms.json``, ``summary.json``, ``metrics/``) are
    staged in a hidden ``.<name>.partial`` directory and moved into place only when everything
    is written, so a failed run never leaves a directory that looks complete.
    """
    from backends import get_backend

    clock = PhaseClock()
    run_id = new_run_id(config)
    cpu0 = time.process_time()

    clock.start("preprocessing")
    catalog, base_dir = load_catalog(config.catalog)
    fileset = build_fileset(
        catalog,
        base_dir,
        n_files=config.n_files,
        samples=config.samples,
        eos=config.eos,
        xcache=config.xcache,
        mirror=config.mirror,
    )
    chunks = make_chunks(fileset, config.chunksize)
    branches = config.branches()
    engines.check(config.engine, cache=config.cache)
    tasks = [
        ChunkTask(c, branches, config.systematics, config.seed, config.io_only) for c in chunks
    ]
    backend = get_backend(config.backend)(**dict(config.backend_options))
    lake = lake_store(config.cache, config.data_lake) if write else None
    cache = ChunkCache.open(config.cache) if config.cache else None
    fn, todo, cached = (
        (process_chunk, tasks, []) if cache is None else cache.split(process_chunk, tasks)
    )
    clock.stop("preprocessing")

    clock.start("cluster_start")
    executor = backend.start() if todo or cache is None else NoWorkExecutor()
    if todo or cache is None:
        try:
            executor = engines.wrap(config.engine, executor)
        except BaseException:
            executor.close()
            raise
    if cache is not None:
        cache.attach(executor)
    clock.stop("cluster_start")
    timings: list[TaskTiming] = []
    events = dict.fromkeys(fileset, 0)
    # results are summed in chunk order at the end, not in completion order, so histograms are
    # bit-identical whatever the workers, backend or cache hits (float sums depend on order)
    position = {(c.path, c.entry_start, c.entry_stop): i for i, c in enumerate(chunks)}
    partial: dict[int, dict[str, hist.Hist]] = {}
    try:
        clock.start("first_worker")
        executor.wait_for_workers(1)
        clock.stop("first_worker")
        bar = _progress(len(tasks), sum(c.nevents for c in chunks), progress)
        clock.start("processing")
        processing_t0 = time.perf_counter()
        for result in itertools.chain(cached, executor.map_unordered(fn, todo)):
            t = result.timing
            partial[position[(t.path, t.entry_start, t.entry_stop)]] = result.histograms
            if not timings:
                clock.record("first_result", time.perf_counter() - processing_t0)
            timings.append(result.timing)
            events[result.timing.sample] += result.nevents
            bar.update(result.nevents)
        clock.stop("processing")
        bar.close()
    finally:
        all_workers = getattr(executor, "time_to_all_workers", None)
        if all_workers is not None and (seconds := all_workers()) is not None:
            clock.record("all_workers", seconds)  # from backend start to the last worker joining
        executor.close()
        if cache is not None:
            cache.finish()
    clock.start("merge")
    histograms = add_pseudodata(merge(partial[i] for i in sorted(partial)))
    clock.stop("merge")

    worker_peaks: dict[str, float] = {}
    for t in timings:
        worker_peaks[t.worker] = max(worker_peaks.get(t.worker, 0.0), t.peak_rss_mb)
    record = RunRecord(
        run_id=run_id,
        backend=config.backend,
        engine=_engine_label(config),
        workers=executor.workers,
        cores_per_worker=getattr(executor, "cores_per_worker", 1),
        chunksize=config.chunksize,
        n_files=config.n_files,
        io_only=config.io_only,
        systematics=config.systematics,
        events=sum(events.values()),
        chunks=len(chunks),
        bytes_read=sum(t.bytes_read for t in timings),
        wall_seconds=clock.elapsed(),
        cpu_seconds=_cpu_seconds(time.process_time() - cpu0, timings),
        peak_rss_mb_per_worker=max(worker_peaks.values(), default=0.0),
        cache_hits=sum(t.cached for t in timings),
        cache_misses=sum(not t.cached for t in timings) if cache is not None else 0,
        phases=clock.durations,
        label=config.label,
        **task_totals(timings),
    )
    result = RunResult(
        run_id=run_id,
        run_dir=None,
        histograms=histograms,
        events_per_sample=events,
        yields=sample_yields(histograms, fileset),
        weights={k: s.weight for k, s in fileset.items()},
        record=record,
        tasks=timings,
    )
    result.summary = _summary(config, result)
    if write:
        run_dir = Path(config.output_dir) if config.output_dir else DEFAULT_OUTPUT_ROOT / run_id
        only_in_lake = lake is not None and config.data_lake == "only"
        finish = None
        if config.fit and not config.io_only:
            synthetic = is_synthetic(fileset)
            finish = lambda staging: _fit_and_plot(staging, result, clock, synthetic)  # noqa: E731
        clock.start("write")
        result.run_dir = write_outputs(
            result, staging_dir(run_id) if only_in_lake else run_dir, finish=finish
        )
        if lake is not None:
            result.summary["stored_run"] = save_run(lake, run_id, result.run_dir, move=only_in_lake)
            result.run_dir = None if only_in_lake else result.run_dir
        clock.stop("write")
        # the fit runs inside the write step (into the staging directory); count it once
        clock.durations["write"] -= clock.durations.get("fit", 0.0)
    return result


def _engine_label(config: RunConfig) -> str:
    """``dask-awkward``, or for the chunked engine the executor it ran on (e.g. ``processes``)."""
    if config.engine != "chunked":
        return config.engine
    return str(dict(config.backend_options).get("mode", "")) or config.backend


def _cpu_seconds(own: float, timings: list[TaskTiming]) -> float:
    """CPU time of all processes: ours plus that of tasks run elsewhere (not counted twice)."""
    me = f"{socket.gethostname()}:{os.getpid()}"
    return own + sum(t.cpu_seconds for t in timings if t.worker != me)


def _progress(total_chunks: int, total_events: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total_events,
        unit="ev",
        unit_scale=True,
        disable=not enabled or None,
        desc=f"{total_chunks} chunks",
        leave=False,
    )


def _summary(config: RunConfig, result: RunResult) -> dict:
    r = result.record
    return {
        "run_id": result.run_id,
        "agc_version": __version__,
        "finished_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": {
            k: (dict(v) if isinstance(v, Mapping) else v)
            for k, v in dataclasses.asdict(config).items()
        },
        "events": result.events,
        "events_per_sample": result.events_per_sample,
        "weights": result.weights,
        "yields": result.yields,
        "wall_seconds": r.wall_seconds,
        "events_per_second": r.events_per_second,
        "events_per_second_per_core": r.events_per_second_per_core,
        "workers": r.workers,
        "chunks": r.chunks,
        "bytes_read": r.bytes_read,
        "phases_seconds": r.phases,
        "histograms_written": sum(1 for h in result.histograms.values() if is_written(h)),
    }


def _fit_and_plot(staging: Path, result: RunResult, clock: PhaseClock, synthetic: bool) -> None:
    """Fit the run's histograms and draw the plots into ``staging``; the summary gains the fit.

    A fit that cannot run (a sample missing from the run) or does not converge is reported
    in the summary and on the log; the histograms of the run are kept either way.
    """
    from agc import inference, plots

    clock.start("fit")
    try:
        fit_result = inference.fit_run(staging)
        result.summary["fit"] = {
            "poi": fit_result.poi,
            "bestfit": fit_result.bestfit,
            "uncertainty": fit_result.uncertainty,
            "strategy": fit_result.strategy,
        }
        label, experiment = (
            (plots.SYNTHETIC_LABEL, "AGC") if synthetic else (plots.OPEN_DATA_LABEL, "CMS")
        )
        plots.plot_run(staging, label=label, experiment=experiment)
    except (UserError, inference.FitError) as err:
        log.warning("no fit for this run: %s", err)
        result.summary["fit"] = {"error": str(err)}
    finally:
        clock.stop("fit")
        result.summary["phases_seconds"] = dict(clock.durations)


def write_outputs(result: RunResult, run_dir: Path, finish=None) -> Path:
    """Write the outputs into ``run_dir``, all or nothing.

    ``finish(staging_dir)``, if given, runs after the histograms are written and before the
    metrics and summary (the fit and plots).

    ``run_dir`` may be new, or a previous run directory (it has a summary.json), which is
    replaced; any other existing directory is refused so that nothing of the user's is lost.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()) and not (run_dir / "summary.json").exists():
        raise UserError(
            f"--output {run_dir}: exists and is not a run directory; "
            "choose a new or empty directory"
        )
    staging = run_dir.parent / f".{run_dir.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "metrics").mkdir(parents=True)
    try:
        write_root(result.histograms, staging / "histograms.root")
        write_json(result.histograms, staging / "histograms.json")
        (staging / "summary.json").write_text(json.dumps(result.summary, indent=1, default=str))
        if finish is not None:
            finish(staging)
        runs_frame([result.record]).to_csv(staging / "metrics" / "runs.csv", index=False)
        phases_frame([result.record]).to_csv(staging / "metrics" / "phases.csv", index=False)
        if result.tasks:
            from agc.metrics import tasks_frame

            tasks_frame(result.run_id, result.tasks).to_csv(
                staging / "metrics" / "tasks.csv", index=False
            )
        (staging / "summary.json").write_text(json.dumps(result.summary, indent=1, default=str))
        if run_dir.exists():
            shutil.rmtree(run_dir)
        staging.rename(run_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return run_dir
