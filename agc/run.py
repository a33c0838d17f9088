"""``run(config) -> RunResult``: catalog -> chunks -> backend -> analysis -> merged histograms.

Only wiring lives here: the physics is in :mod:`agc.analysis`, execution in :mod:`backends`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import hist

from agc import __version__
from agc.analysis import ANALYSIS_BRANCHES, DEFAULT_SEED, process_events
from agc.catalog import Chunk, build_fileset, load_catalog, make_chunks
from agc.histograms import add_pseudodata, merge, write_json, write_root
from agc.reader import read_chunk

log = logging.getLogger(__name__)

DEFAULT_OUTPUT_ROOT = Path("agc-output")


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run. Physics options first, then execution options."""

    catalog: str = "agc"
    n_files: int = -1
    samples: tuple[str, ...] | None = None
    systematics: bool = True
    seed: int = DEFAULT_SEED
    # where the inputs are read from
    eos: bool = False
    xcache: str | None = None
    mirror: str | None = None
    # execution
    backend: str = "local"
    backend_options: Mapping[str, object] = field(default_factory=dict)
    chunksize: int = 100_000
    # outputs
    output_dir: str | None = None


@dataclass(frozen=True)
class ChunkTask:
    """What a worker needs for one chunk (small and picklable)."""

    chunk: Chunk
    systematics: bool
    seed: int


@dataclass
class ChunkResult:
    sample: str
    nevents: int
    bytes_read: int
    histograms: dict[str, hist.Hist]
    started: float
    finished: float
    cpu_seconds: float
    pid: int


def process_chunk(task: ChunkTask) -> ChunkResult:
    """Read one chunk and run the analysis on it (runs on a worker)."""
    started, cpu0 = time.time(), time.process_time()
    c = task.chunk
    events, nbytes = read_chunk(c.path, ANALYSIS_BRANCHES, c.entry_start, c.entry_stop, c.tree)
    histograms = process_events(events, process=c.process, variation=c.variation,
                                weight=c.weight, dataset=c.sample, seed=task.seed,
                                systematics=task.systematics)
    return ChunkResult(c.sample, len(events), nbytes, histograms, started, time.time(),
                       time.process_time() - cpu0, os.getpid())


@dataclass
class RunResult:
    """What a run produced and measured."""

    run_dir: Path | None
    histograms: dict[str, hist.Hist]
    events_per_sample: dict[str, int]
    yields: dict[str, dict[str, float]]
    weights: dict[str, float]
    wall_seconds: float
    workers: int
    chunks: int
    bytes_read: int
    summary: dict = field(default_factory=dict)

    @property
    def events(self) -> int:
        return sum(self.events_per_sample.values())

    @property
    def events_per_second(self) -> float:
        return self.events / self.wall_seconds if self.wall_seconds > 0 else float("nan")


def sample_yields(histograms: Mapping[str, hist.Hist], fileset) -> dict[str, dict[str, float]]:
    """Weighted yield (flow included) per sample and region, from the nominal-pT histograms."""
    out = {}
    for key, sample in fileset.items():
        out[key] = {}
        for region in ("4j1b", "4j2b"):
            name = (f"{region}_{sample.process}" if sample.variation == "nominal"
                    else f"{region}_{sample.process}_{sample.variation}")
            h = histograms.get(name)
            out[key][region] = float(h.sum(flow=True).value) if h is not None else 0.0
    return out


def _new_run_dir(config: RunConfig) -> Path:
    if config.output_dir:
        return Path(config.output_dir)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return DEFAULT_OUTPUT_ROOT / f"run-{stamp}-{config.backend}"


def run(config: RunConfig, *, progress: bool = True, write: bool = True) -> RunResult:
    """Run the analysis over the catalog with the configured backend.

    Outputs (``histograms.root``, ``histograms.json``, ``summary.json``) are staged in a hidden
    ``.<name>.partial`` directory and moved into place only when everything is written, so a
    failed run never leaves a directory that looks complete.
    """
    from backends import get_backend

    catalog, base_dir = load_catalog(config.catalog)
    fileset = build_fileset(catalog, base_dir, n_files=config.n_files, samples=config.samples,
                            eos=config.eos, xcache=config.xcache, mirror=config.mirror)
    chunks = make_chunks(fileset, config.chunksize)
    tasks = [ChunkTask(c, config.systematics, config.seed) for c in chunks]
    backend = get_backend(config.backend)(**dict(config.backend_options))

    t0 = time.perf_counter()
    executor = backend.start()
    parts, events, nbytes = [], dict.fromkeys(fileset, 0), 0
    try:
        bar = _progress(len(tasks), sum(c.nevents for c in chunks), progress)
        for result in executor.map_unordered(process_chunk, tasks):
            parts.append(result.histograms)
            events[result.sample] += result.nevents
            nbytes += result.bytes_read
            bar.update(result.nevents)
        bar.close()
    finally:
        executor.close()
    histograms = add_pseudodata(merge(parts))
    wall = time.perf_counter() - t0

    result = RunResult(
        run_dir=None, histograms=histograms, events_per_sample=events,
        yields=sample_yields(histograms, fileset),
        weights={k: s.weight for k, s in fileset.items()}, wall_seconds=wall,
        workers=executor.workers, chunks=len(chunks), bytes_read=nbytes,
    )
    result.summary = _summary(config, result)
    if write:
        result.run_dir = write_outputs(result, _new_run_dir(config))
    return result


def _progress(total_chunks: int, total_events: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total_events, unit="ev", unit_scale=True, disable=not enabled or None,
                desc=f"{total_chunks} chunks", leave=False)


def _summary(config: RunConfig, result: RunResult) -> dict:
    return {
        "agc_version": __version__,
        "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": {k: (dict(v) if isinstance(v, Mapping) else v)
                   for k, v in dataclasses.asdict(config).items()},
        "events": result.events,
        "events_per_sample": result.events_per_sample,
        "weights": result.weights,
        "yields": result.yields,
        "wall_seconds": result.wall_seconds,
        "events_per_second": result.events_per_second,
        "workers": result.workers,
        "chunks": result.chunks,
        "bytes_read": result.bytes_read,
        "histograms_written": sum(1 for h in result.histograms.values()
                                  if float(h.values().sum()) > 0),
    }


def write_outputs(result: RunResult, run_dir: Path) -> Path:
    """Write histograms.root, histograms.json and summary.json into ``run_dir`` (all or nothing)."""
    run_dir = Path(run_dir)
    staging = run_dir.parent / f".{run_dir.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        write_root(result.histograms, staging / "histograms.root")
        write_json(result.histograms, staging / "histograms.json")
        (staging / "summary.json").write_text(json.dumps(result.summary, indent=1, default=str))
        if run_dir.exists():
            shutil.rmtree(run_dir)
        staging.rename(run_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return run_dir
