"""``run(config) -> RunResult``: the AGC analysis as a row of stages.

::

    plan      catalog -> fileset -> chunks -> tasks; the backend and engine made (checked; a
              remote cache store probed)
    execute   the engine runs the tasks on the backend's executor (the cache wraps the engine)
    merge     chunk results, in plan order -> histograms and pseudodata
    write     histograms.root / histograms.json into the run's staging directory
    fit       cabinetry/pyhf fit of the in-memory histograms, and the plots
    record    run record, summary.json and metrics/, then the staging directory moves into place
    publish   a copy of the run directory in the data lake (when configured)

Each stage is a function of plain data that a test can call alone; the phases of the run
record are timed at the stage boundaries. The physics is in :mod:`agc.analysis`, the worker
side in :mod:`agc.chunks`, execution in :mod:`agc.engines` and :mod:`backends`, caching in
:mod:`agc.cache`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import hist

from agc import vocabulary
from agc._version import __version__
from agc.cache import CachingEngine, ResultStore, lake_store, publish_run, staging_dir
from agc.catalog import Chunk, Sample, build_fileset, is_synthetic, load_catalog, make_chunks
from agc.chunks import ChunkResult, ChunkTask, worker_name
from agc.config import SYNTHETIC_CATALOG, ConfigError, RunConfig
from agc.constants import sample_weight
from agc.engines import Engine, get_engine
from agc.errors import UserError
from agc.histograms import (
    add_ml_pseudodata,
    add_pseudodata,
    is_written,
    merge,
    split_ml_histograms,
)
from agc.metrics import PhaseClock, RunRecord, TaskTiming, task_totals
from agc.outputs import (
    OutputLock,
    StagedRunDirectory,
    check_output_dir,
    write_histograms,
    write_ml_histograms,
    write_record,
)
from backends.base import (
    Backend,
    Executor,
    get_backend,
    prepare_workers,
    start_backend,
)

log = logging.getLogger(__name__)

DEFAULT_OUTPUT_ROOT = Path("agc-output")

__all__ = ["RunConfig", "RunResult", "Plan", "run"]


@dataclass(frozen=True)
class Plan:
    """What a run will do: its inputs, chunks and tasks, and where its outputs go."""

    run_id: str
    fileset: dict[str, Sample]
    chunks: list[Chunk]
    tasks: list[ChunkTask]
    #: The run directory (None: nothing is written).
    run_dir: Path | None
    synthetic: bool


@dataclass(frozen=True)
class Execution:
    """The chunk results (in completion order) and the executor they ran on."""

    results: list[ChunkResult]
    workers: int
    cores_per_worker: int
    #: workers lost and replaced, and the tasks run again because of it (executor counts);
    #: workers retired on purpose (a lifetime before the walltime, adapt scaling down)
    worker_restarts: int = 0
    tasks_resubmitted: int = 0
    workers_retired: int = 0
    #: seconds from the cluster's start at which each worker joined (batch executors)
    worker_arrivals: tuple[float, ...] = ()
    #: chunks that waited locality_wait for a worker at their file's sites, then ran elsewhere
    tasks_moved_off_site: int = 0
    #: every batch job of the run, ``{"id", "site", "status"}`` (its final status; DIRAC's job
    #: monitor), and the jobs the monitor replaced
    jobs: tuple[dict[str, Any], ...] = ()
    jobs_resubmitted: int = 0
    #: the relay broker the workers reached ("" without one) and the connections it relayed
    relay: str = ""
    relayed_connections: int = 0
    relayed_bytes: int = 0


@dataclass(frozen=True)
class FitSummary:
    """The fit's outcome as ``summary.json`` keeps it: the POI, or why there is no fit."""

    poi: str | None = None
    bestfit: float | None = None
    uncertainty: float | None = None
    strategy: int | None = None
    error: str | None = None
    #: With the ML step: the ML workspace's channels and plots drawn, or why there are none.
    ml: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"error": self.error}
        out: dict[str, Any] = {
            "poi": self.poi,
            "bestfit": self.bestfit,
            "uncertainty": self.uncertainty,
            "strategy": self.strategy,
        }
        if self.ml is not None:
            out["ml"] = self.ml
        return out


@dataclass
class RunResult:
    """What a run produced and measured."""

    run_id: str
    histograms: dict[str, hist.Hist]
    events_per_sample: dict[str, int]
    yields: dict[str, dict[str, float]]
    weights: dict[str, float]
    record: RunRecord
    tasks: list[TaskTiming]
    summary: dict[str, Any]
    fit: FitSummary | None = None
    #: The run directory (None when nothing was written or the outputs are only in the lake).
    run_dir: Path | None = None
    #: URL of the run in the data lake, when it was published there.
    stored_run: str | None = None
    #: The ML step's feature histograms (with their pseudodata; empty without ``ml``), as
    #: filled: ``histograms_ml.root`` holds them with 1e-6 added per bin.
    ml_histograms: dict[str, hist.Hist] = field(default_factory=dict)

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


def run(
    config: RunConfig | None = None,
    *,
    progress: bool = True,
    write: bool = True,
    client: Any = None,
) -> RunResult:
    """Run the analysis as ``config`` says (default: ``RunConfig()``, as ``agc run``).

    Args:
        config: the run; its default catalog is the synthetic dataset, generated once.
        progress: show progress bars (tqdm; in a notebook, its widget).
        write: write the run directory (histograms, summary, metrics, fit and plots). Without
            it nothing is written and no fit is made: the processing is measured alone.
        client: a ``distributed.Client`` of an existing cluster to run on (with
            ``backend="dask"``); it is left open.

    Outputs are staged in a hidden directory and moved into place only when everything is
    written, so a failed run never leaves a directory that looks complete.
    """
    config = RunConfig() if config is None else config
    # first: a backend that cannot run here (no GPU, a bad profile) fails before any work
    backend = make_backend(config, client)
    catalog = resolve_catalog(config.catalog, progress=progress)
    clock, cpu0 = PhaseClock(), time.process_time()
    with clock.phase("preprocessing"):
        plan = make_plan(config, catalog, write=write)
        engine = make_engine(config)
    with claim_output(plan), staged_outputs(plan) as outputs:
        execution = execute(plan, engine, backend, clock, progress=progress)
        with clock.phase("merge"):
            histograms, ml_histograms = split_ml_histograms(merge_results(plan, execution.results))
            if ml_histograms:
                ml_histograms = add_ml_pseudodata(ml_histograms)
        # the processing, end to end (wall and this process's CPU): writing, fit not included
        wall_seconds, cpu_seconds = clock.elapsed(), time.process_time() - cpu0
        fit = None
        if outputs is not None:
            with clock.phase("write"), outputs.writing():
                write_histograms(outputs.staging, histograms)
                if ml_histograms:
                    write_ml_histograms(outputs.staging, ml_histograms)
            if config.fit and not config.io_only:
                with clock.phase("fit"), outputs.writing():
                    lost = sum(s["events_lost"] for s in skipped_chunks(plan, execution.results))
                    fit = fit_and_plot(
                        histograms,
                        outputs.staging,
                        synthetic=plan.synthetic,
                        events_lost=lost,
                        ml_histograms=ml_histograms,
                    )
        result = record(
            config,
            plan,
            execution,
            histograms,
            fit,
            clock,
            wall_seconds,
            cpu_seconds,
            ml_histograms=ml_histograms,
        )
        if outputs is not None:
            with outputs.writing():
                write_record(outputs.staging, result.summary, result.record, result.tasks)
                result.run_dir = outputs.commit()
    if result.run_dir is not None:
        result.stored_run, result.run_dir = publish(config, result.run_id, result.run_dir)
    return result


# -- plan ---------------------------------------------------------------------------------
def resolve_catalog(catalog: str, *, progress: bool = False) -> str:
    """The catalog to load: the default synthetic dataset's (generated the first time) for
    ``"synthetic"``, else ``catalog`` itself."""
    if catalog != SYNTHETIC_CATALOG:
        return catalog
    from agc import synth

    return str(synth.ensure_default_dataset(progress=progress))


def make_plan(config: RunConfig, catalog: str, *, write: bool = True) -> Plan:
    """Catalog -> fileset -> chunks -> tasks, and the run directory (checked, nothing made)."""
    catalog_data, base_dir = load_catalog(catalog)
    fileset = build_fileset(
        catalog_data,
        base_dir,
        n_files=config.n_files,
        samples=config.samples,
        eos=config.eos,
        xcache=config.xcache,
        mirror=config.mirror,
    )
    chunks = make_chunks(fileset, config.chunksize)
    ml_dir, ml_fingerprint = ml_models(config)
    tasks = [
        ChunkTask(
            i,
            c,
            config.branches,
            config.systematics,
            config.seed,
            config.io_only,
            skip_bad_files=config.skip_bad_files,
            read_retries=config.read_retries,
            ml=ml_dir,
            ml_fingerprint=ml_fingerprint,
            device=config.device,
        )
        for i, c in enumerate(chunks)
    ]
    run_id = new_run_id(config)
    run_dir = None
    if write:
        if config.data_lake == "only":
            run_dir = staging_dir(run_id)
        else:
            run_dir = Path(config.output_dir) if config.output_dir else DEFAULT_OUTPUT_ROOT / run_id
            check_output_dir(run_dir)
    return Plan(run_id, fileset, chunks, tasks, run_dir, is_synthetic(fileset))


def ml_models(config: RunConfig) -> tuple[str | None, str | None]:
    """The ML step's models directory (absolute, as workers see it) and their fingerprint;
    (None, None) without it. Missing or unreadable models, or no XGBoost, fail here."""
    if config.ml is None:
        return None, None
    from agc.analysis import check_models

    directory = os.path.abspath(config.ml)
    return directory, check_models(directory)  # checked before any work, not loaded here


def new_run_id(config: RunConfig) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return f"{stamp}-{config.backend}-{os.getpid()}"


def make_backend(config: RunConfig, client: Any = None) -> Backend:
    """The configured backend, its options (and site profile) checked; nothing started.

    ``client``: an existing Dask client for the ``dask`` backend (never closed by the run).
    """
    if client is None:
        return get_backend(config.backend)(**config.backend_kwargs())
    if config.backend != "dask":
        raise ConfigError(
            "backend", config.backend, "run(client=...) runs on that client: give backend='dask'"
        )
    dask_backend: Any = get_backend("dask")  # a class whose arguments include client=
    return cast(Backend, dask_backend(client=client, **config.backend_kwargs()))


def make_engine(config: RunConfig) -> Engine:
    """The configured engine, wrapped by the result cache when ``config.cache`` is set."""
    engine = get_engine(config.engine)
    if config.cache is None:
        return engine
    store = ResultStore(config.cache)
    store.probe()  # a remote store that does not answer fails the run now, before any work
    return CachingEngine(engine, store)


def claim_output(plan: Plan) -> contextlib.AbstractContextManager:
    """The run directory's lock for the run (one run at a time writes it), if it writes one."""
    if plan.run_dir is None:
        return contextlib.nullcontext()
    return OutputLock(plan.run_dir, plan.run_id)


@contextlib.contextmanager
def staged_outputs(plan: Plan) -> Iterator[StagedRunDirectory | None]:
    """The run's staging directory (None when nothing is written), removed if the run fails."""
    if plan.run_dir is None:
        yield None
        return
    outputs = StagedRunDirectory(plan.run_dir, plan.run_id)
    try:
        yield outputs
    except BaseException:
        outputs.discard()
        raise


# -- execute ------------------------------------------------------------------------------
def execute(
    plan: Plan, engine: Engine, backend: Backend, clock: PhaseClock, *, progress: bool = True
) -> Execution:
    """Run the plan's tasks; the backend is started only if the engine has work for it.

    Phases: ``cluster_start``, ``first_worker``, ``processing`` (with ``first_result``, from
    its start) and, when the executor knows it, ``all_workers`` (from the cluster's start).
    The same moments from the run's start are the clock's milestones.
    """
    todo = engine.pending(plan.tasks)
    executor: Executor | None = None
    with clock.phase("cluster_start"):
        cluster_started = clock.started("cluster_start")
        if todo:
            executor = start_backend(backend, len(todo))
    try:
        if executor is not None:
            engine.check(executor)
            with clock.phase("first_worker"):
                executor.wait_for_workers(1)
            clock.mark("first_worker")
            if executor.client is not None:  # Dask workers: this harness, the same libraries
                prepare_workers(executor.client)
        results: list[ChunkResult] = []
        bar = _progress(plan, progress)
        with clock.phase("processing"):
            started = time.perf_counter()
            for result in engine.run(plan.tasks, executor):
                if not results:
                    clock.record("first_result", time.perf_counter() - started)
                    clock.mark("first_result")
                results.append(result)
                bar.update(result.nevents)
        clock.mark("processing_end")
        bar.close()
    finally:
        if executor is not None:
            # batch executors time each worker's arrival (seconds from the cluster's start)
            arrivals = getattr(executor, "worker_arrival_seconds", None)
            worker_arrivals = tuple(arrivals()) if callable(arrivals) else ()
            if (seconds := executor.time_to_all_workers()) is not None:
                clock.record("all_workers", seconds)  # from the cluster's start, as a phase
                clock.mark("all_workers", cluster_started + seconds)
            executor.close()
    if executor is None:
        return Execution(results, workers=1, cores_per_worker=1)
    job_list = getattr(executor, "job_list", None)  # after close: the jobs' final states
    relay_stats = getattr(executor, "relay_stats", None) or {}  # the started broker's counts
    jobs = tuple(job_list()) if callable(job_list) else ()
    return Execution(
        results,
        executor.workers,
        executor.cores_per_worker,
        worker_restarts=getattr(executor, "worker_restarts", 0),
        tasks_resubmitted=getattr(executor, "tasks_resubmitted", 0),
        workers_retired=getattr(executor, "workers_retired", 0),
        worker_arrivals=worker_arrivals,
        tasks_moved_off_site=getattr(executor, "tasks_moved_off_site", 0),
        jobs=jobs,
        jobs_resubmitted=getattr(executor, "jobs_resubmitted", 0),
        relay=getattr(executor, "relay_address", None) or "",
        relayed_connections=int(relay_stats.get("relayed_connections", 0)),
        relayed_bytes=int(
            relay_stats.get("bytes_to_workers", 0) + relay_stats.get("bytes_from_workers", 0)
        ),
    )


def _progress(plan: Plan, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=sum(c.nevents for c in plan.chunks),
        unit="ev",
        unit_scale=True,
        disable=not enabled or None,
        desc=f"{len(plan.tasks)} chunks",
        leave=False,
    )


# -- merge --------------------------------------------------------------------------------
def merge_results(plan: Plan, results: Iterable[ChunkResult]) -> dict[str, hist.Hist]:
    """The run's histograms: chunk results summed in plan order, then the pseudodata.

    Plan order, not completion order: float sums depend on the order, so the histograms are
    bit-identical whatever the workers, backend, engine or cache hits.

    Skipped chunks (``skip_bad_files``) are left out, and the histograms of a sample that lost
    events are normalised to the events actually processed (w = sigma L / N with N the events
    processed, spec §1.3): its chunk histograms, filled with the planned weight, are scaled by
    w(processed) / w(planned) (values by the factor, variances by its square).
    """
    by_index = {r.index: r for r in results}
    missing = len(plan.tasks) - len(by_index)
    if missing:
        raise RuntimeError(f"{missing} of {len(plan.tasks)} chunks gave no result")
    factors = renormalisation(plan, by_index.values())
    parts = []
    for i in sorted(by_index):
        r = by_index[i]
        if r.skipped is not None:
            continue
        factor = factors.get(plan.tasks[i].chunk.sample)
        parts.append(
            r.histograms if factor is None else {k: h * factor for k, h in r.histograms.items()}
        )
    return add_pseudodata(merge(parts))


def processed_events(plan: Plan, results: Iterable[ChunkResult]) -> dict[str, int]:
    """Events processed per sample (skipped chunks count none)."""
    events = dict.fromkeys(plan.fileset, 0)
    for r in results:
        events[plan.tasks[r.index].chunk.sample] += r.nevents
    return events


def processed_weights(plan: Plan, results: Iterable[ChunkResult]) -> dict[str, float]:
    """The weight w = sigma L / N per sample, N the events processed; a sample that lost all
    its events has none."""
    return {
        key: sample_weight(plan.fileset[key].process, n)
        for key, n in processed_events(plan, results).items()
        if n > 0
    }


def renormalisation(plan: Plan, results: Iterable[ChunkResult]) -> dict[str, float]:
    """Per sample that lost events (and kept some): w(processed) / w(planned)."""
    results = list(results)
    lost = {plan.tasks[r.index].chunk.sample for r in results if r.skipped is not None}
    weights = processed_weights(plan, results)
    return {k: weights[k] / plan.fileset[k].weight for k in lost if k in weights}


def skipped_chunks(plan: Plan, results: Iterable[ChunkResult]) -> list[dict[str, Any]]:
    """The chunks left out (in plan order): sample, file, entries, events lost and why."""
    out = []
    for r in sorted(results, key=lambda r: r.index):
        if r.skipped is None:
            continue
        c = plan.tasks[r.index].chunk
        out.append(
            {
                "sample": c.sample,
                "path": c.path,
                "entry_start": c.entry_start,
                "entry_stop": c.entry_stop,
                "events_lost": c.nevents,
                "reason": r.skipped,
            }
        )
    return out


# -- fit ----------------------------------------------------------------------------------
def fit_and_plot(
    histograms: Mapping[str, hist.Hist],
    directory: Path,
    *,
    synthetic: bool,
    events_lost: int = 0,
    ml_histograms: Mapping[str, hist.Hist] | None = None,
) -> FitSummary:
    """Fit the histograms as written (empty ones are not) and draw the plots into ``directory``.

    ``events_lost``: events of skipped chunks; the plots of a partial result say so.
    ``ml_histograms``: the ML step's; their workspace gets the main fit's parameters and its
    plots (:func:`agc.ml_fit.fit_ml`; no second fit).

    A fit that cannot run (a sample missing from the run) or does not converge is reported
    in the summary and on the log; the run's histograms are kept either way.
    """
    from agc import inference, plots

    written = {name: h for name, h in histograms.items() if is_written(h)}
    try:
        result = inference.fit_histograms(written, output_dir=directory, source="this run")
    except (UserError, inference.FitError) as err:
        log.warning("no fit for this run: %s", err)
        return FitSummary(error=str(err))
    label, experiment = (
        (plots.SYNTHETIC_LABEL, "AGC") if synthetic else (plots.OPEN_DATA_LABEL, "CMS")
    )
    if events_lost:
        label += f", PARTIAL: {events_lost:,} events lost"
    plots.make_plots(written, directory, result, label=label, experiment=experiment)
    ml = None
    if ml_histograms:
        ml = ml_fit_and_plot(ml_histograms, result, directory, label=label, experiment=experiment)
    return FitSummary(result.poi, result.bestfit, result.uncertainty, result.strategy, ml=ml)


def ml_fit_and_plot(
    ml_histograms: Mapping[str, hist.Hist],
    fit: Any,
    directory: Path,
    *,
    label: str,
    experiment: str,
) -> dict[str, Any]:
    """The ML workspace with the main fit's parameters, and the ML plots (summary form).

    An ML workspace that cannot be built (a sample missing from the run) is reported, not
    raised: the run's histograms and main fit stand.
    """
    from agc import ml_fit

    try:  # every histogram, as written: the offset of 1e-6 per bin fills the empty ones
        summary = ml_fit.fit_ml(ml_histograms, fit, directory, label=label, experiment=experiment)
    except (UserError, ValueError) as err:
        log.warning("no ML workspace for this run: %s", err)
        return {"error": str(err)}
    return {
        "channels": summary.channels,
        "parameters_from_main_fit": len(summary.from_main_fit),
        "plots": sorted({p.stem for p in summary.plots}),
    }


# -- record -------------------------------------------------------------------------------
def record(
    config: RunConfig,
    plan: Plan,
    execution: Execution,
    histograms: dict[str, hist.Hist],
    fit: FitSummary | None,
    clock: PhaseClock,
    wall_seconds: float,
    cpu_seconds: float,
    *,
    ml_histograms: dict[str, hist.Hist] | None = None,
) -> RunResult:
    """The run record (one row of the runs table), the summary, and the result.

    ``wall_seconds`` / ``cpu_seconds``: wall time and this process's CPU time from the start
    of planning to the merged histograms (events/s are events over that wall time; the write
    and fit phases are recorded apart).
    """
    timings = [r.timing for r in execution.results]
    events = processed_events(plan, execution.results)
    skipped = skipped_chunks(plan, execution.results)
    worker_peaks: dict[str, float] = {}
    for t in timings:
        worker_peaks[t.worker] = max(worker_peaks.get(t.worker, 0.0), t.peak_rss_mb)
    run_record = RunRecord(
        run_id=plan.run_id,
        backend=config.backend,
        engine=config.engine if config.engine != "chunked" else (config.mode or config.backend),
        workers=execution.workers,
        cores_per_worker=execution.cores_per_worker,
        chunksize=config.chunksize,
        n_files=config.n_files,
        io_only=config.io_only,
        systematics=config.systematics,
        events=sum(events.values()),
        chunks=len(plan.chunks),
        bytes_read=sum(t.bytes_read for t in timings),
        wall_seconds=wall_seconds,
        cpu_seconds=_cpu_seconds(cpu_seconds, timings),
        peak_rss_mb_per_worker=max(worker_peaks.values(), default=0.0),
        cache_hits=sum(t.cached for t in timings),
        cache_misses=sum(not t.cached for t in timings) if config.cache is not None else 0,
        phases=dict(clock.durations),
        milestones=dict(clock.milestones),
        label=config.label,
        ml=config.ml is not None,
        worker_restarts=execution.worker_restarts,
        tasks_resubmitted=execution.tasks_resubmitted,
        workers_retired=execution.workers_retired,
        partial=bool(skipped),
        chunks_skipped=len(skipped),
        events_lost=sum(s["events_lost"] for s in skipped),
        device=config.device or "",
        worker_arrival_seconds=json.dumps([round(t, 3) for t in execution.worker_arrivals]),
        tasks_moved_off_site=execution.tasks_moved_off_site,
        jobs=json.dumps(list(execution.jobs)),
        jobs_resubmitted=execution.jobs_resubmitted,
        relay=execution.relay,
        relayed_connections=execution.relayed_connections,
        relayed_bytes=execution.relayed_bytes,
        **task_totals(timings),
    )
    weights = processed_weights(plan, execution.results)
    yields = sample_yields(histograms, plan.fileset)
    summary = {
        "run_id": plan.run_id,
        "agc_version": __version__,
        "finished_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": config.to_dict(),
        "synthetic": plan.synthetic,
        "events": run_record.events,
        "events_per_sample": events,
        "weights": weights,
        "yields": yields,
        "wall_seconds": run_record.wall_seconds,
        "events_per_second": run_record.events_per_second,
        "events_per_second_per_core": run_record.events_per_second_per_core,
        "processing_events_per_second": run_record.processing_events_per_second,
        "milestones_seconds": run_record.milestones,
        "workers": run_record.workers,
        "chunks": run_record.chunks,
        "bytes_read": run_record.bytes_read,
        "phases_seconds": run_record.phases,
        "histograms_written": sum(1 for h in histograms.values() if is_written(h)),
        "partial": run_record.partial,
        "worker_restarts": run_record.worker_restarts,
        "tasks_resubmitted": run_record.tasks_resubmitted,
        "workers_retired": run_record.workers_retired,
        "tasks_moved_off_site": run_record.tasks_moved_off_site,
        "jobs_resubmitted": run_record.jobs_resubmitted,
        "jobs": list(execution.jobs),
        "relay": {
            "broker": run_record.relay,
            "relayed_connections": run_record.relayed_connections,
            "relayed_bytes": run_record.relayed_bytes,
        }
        if run_record.relay
        else None,
    }
    if config.device is not None:
        summary["device"] = {
            "device": config.device,
            "what": "a CUDA GPU (cupy)"
            if config.device == "cuda"
            else "the GPU code path on numpy (no GPU involved)",
            "transfer_seconds": run_record.transfer_seconds,
        }
    if config.ml is not None:
        summary["ml"] = {
            "models": plan.tasks[0].ml if plan.tasks else config.ml,
            "models_sha256": plan.tasks[0].ml_fingerprint if plan.tasks else None,
            "histograms": len(ml_histograms or {}),
            "histograms_filled": sum(1 for h in (ml_histograms or {}).values() if is_written(h)),
            "offset_per_bin_in_files": 1e-6,
        }
    if skipped:
        summary["events_lost"] = run_record.events_lost
        lost_per_sample: dict[str, int] = {}
        for chunk in skipped:
            lost_per_sample[chunk["sample"]] = lost_per_sample.get(chunk["sample"], 0)
            lost_per_sample[chunk["sample"]] += chunk["events_lost"]
        summary["events_lost_per_sample"] = lost_per_sample
        summary["skipped_chunks"] = skipped
    if fit is not None:
        summary["fit"] = fit.to_dict()
    return RunResult(
        plan.run_id,
        histograms,
        events,
        yields,
        weights,
        run_record,
        timings,
        summary,
        fit,
        ml_histograms=dict(ml_histograms or {}),
    )


def sample_yields(
    histograms: Mapping[str, hist.Hist], fileset: Mapping[str, Sample]
) -> dict[str, dict[str, float]]:
    """Weighted yield (flow included) per sample and region, from the nominal-pT histograms."""
    out: dict[str, dict[str, float]] = {}
    for key, sample in fileset.items():
        out[key] = {}
        for region in vocabulary.REGIONS:
            h = histograms.get(vocabulary.histogram_name(region, sample.process, sample.variation))
            out[key][region] = float(cast(Any, h).sum(flow=True).value) if h is not None else 0.0
    return out


def _cpu_seconds(own: float, timings: list[TaskTiming]) -> float:
    """CPU time of all processes: ours plus that of tasks run elsewhere (not counted twice)."""
    me = worker_name()
    return own + sum(t.cpu_seconds for t in timings if t.worker != me)


# -- publish ------------------------------------------------------------------------------
def publish(config: RunConfig, run_id: str, run_dir: Path) -> tuple[str | None, Path | None]:
    """Copy (or, with ``--data-lake only``, move) the run directory to the data lake.

    Returns the run's URL in the lake (None if not published) and its local directory (None
    if it is only in the lake now).
    """
    store = lake_store(config.cache, config.data_lake)
    if store is None:
        return None, run_dir
    only = config.data_lake == "only"
    url = publish_run(store, run_id, run_dir, move=only)
    return url, None if only else run_dir
