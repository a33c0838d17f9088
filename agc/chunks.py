"""The worker layer: one chunk task, its result, and the function that reads and analyses it.

This is what runs on a worker, whatever the backend: :func:`process_chunk` opens the file
(kept open per process, :mod:`agc.reader`), reads the chunk's branches and runs
:func:`agc.analysis.process_events` on them, timing each part. The two stages are also
functions of their own (:func:`read_stage`, :func:`analysis_stage`), so that an executor can
run them on different workers (reading on CPU workers, the analysis on a GPU one: the stages
of :data:`CHUNK_STAGES`, placed by Dask resources). It imports only the catalog,
reader, analysis and the metrics record type; engines, cache and the runner import it.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import awkward as ak
import hist

from agc.analysis import MLModels, ModelFilesError, load_models, process_events, to_device
from agc.catalog import Chunk
from agc.metrics import TaskTiming, peak_rss_mb
from agc.reader import InputFileError, open_tree, read_chunk, with_retries


@dataclass(frozen=True)
class ChunkTask:
    """What a worker needs for one chunk (small and picklable).

    ``index`` is the chunk's place in the run's plan: results are merged in that order, so
    histograms are bit-identical whatever the workers, backend, engine or cache hits.
    """

    index: int
    chunk: Chunk
    branches: tuple[str, ...]
    systematics: bool
    seed: int
    io_only: bool = False
    #: A chunk whose file cannot be opened or read gives a skipped result instead of an error.
    skip_bad_files: bool = False
    #: Retries of a remote read that failed for access reasons (with back-off).
    read_retries: int = 0
    #: The ML step: the models directory (absolute) and the fingerprint of its two models
    #: (:func:`agc.analysis.ml.models_fingerprint`), which the worker checks it sees.
    ml: str | None = None
    ml_fingerprint: str | None = None
    #: The device path of the analysis (:func:`agc.analysis.process_events`): "cuda" moves
    #: the columns to the GPU first, "cpu" runs the same code on numpy; None: the CPU path.
    device: str | None = None


@dataclass
class ChunkResult:
    """What one chunk gave: its events, its partial histograms and how it ran.

    ``skipped``: why the chunk was left out (its file could not be read and the run skips bad
    files); such a result has no events and no histograms.
    """

    index: int
    nevents: int
    histograms: dict[str, hist.Hist]
    timing: TaskTiming
    skipped: str | None = None


def process_chunk(task: ChunkTask) -> ChunkResult:
    """Read one chunk and run the analysis on it (runs on a worker): both stages in one process.

    With ``task.skip_bad_files``, a failure to open or read the file (the read stage only: an
    error in the analysis is never skipped) gives :func:`skipped_result`.
    """
    return analysis_stage(read_stage(task))


#: The stages of a chunk, by the names that site profiles give resources to (``stages:``).
CHUNK_STAGES = ("read", "analysis")


@dataclass
class ReadChunk:
    """What the read stage of a chunk hands to its analysis stage (maybe on another worker)."""

    task: ChunkTask
    events: ak.Array
    nbytes: int
    #: epoch seconds when the read began; its wall, opening and CPU seconds
    started: float
    read_seconds: float
    open_seconds: float
    cpu_seconds: float


def read_stage(task: ChunkTask) -> ReadChunk | ChunkResult:
    """The read stage of a chunk: open the file (kept open per process) and read the columns.

    With ``task.skip_bad_files``, a file that cannot be opened or read gives the chunk's
    :func:`skipped_result` instead of an error.
    """
    started, cpu0 = time.time(), time.process_time()
    c = task.chunk

    def read() -> tuple[float, ak.Array, int]:
        fresh = open_tree(c.path, c.tree)[2]  # kept open per worker; timed apart from reading
        opened = time.time() if fresh else started
        events, nbytes = read_chunk(
            c.path, task.branches, c.entry_start, c.entry_stop, c.tree, c.file_entries
        )
        return opened, events, nbytes

    try:
        opened, events, nbytes = with_retries(c.path, task.read_retries, read, c.tree)
        if task.io_only:
            ak.materialize(events)  # the I/O ceiling: columns decompressed and deserialised only
    except MemoryError:
        raise
    except Exception as err:
        if not task.skip_bad_files:
            raise
        return skipped_result(task, err, started=started, cpu0=cpu0)
    return ReadChunk(
        task,
        events,
        nbytes,
        started,
        read_seconds=time.time() - started,
        open_seconds=opened - started,
        cpu_seconds=time.process_time() - cpu0,
    )


def analysis_stage(read: ReadChunk | ChunkResult) -> ChunkResult:
    """The analysis stage of a chunk from what its read stage gave (a skipped result passes)."""
    if isinstance(read, ChunkResult):
        return read
    return analyse(
        read.events,
        read.task,
        read.nbytes,
        started=read.started,
        cpu0=time.process_time() - read.cpu_seconds,  # the read's CPU counted in the chunk's
        read_seconds=read.read_seconds,
        open_seconds=read.open_seconds,
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
    models = worker_models(task)  # loaded once per process, before the analysis is timed
    transfer_started = time.time()
    if not task.io_only:
        events = to_device(events, task.device)
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
            ml=models,
            device=task.device,
        )
    finished = time.time()
    timing = chunk_timing(
        c,
        started=started,
        cpu0=cpu0,
        bytes_read=nbytes,
        peak_rss=peak_rss_mb(),
        read_seconds=read_seconds,
        analysis_seconds=finished - analysis_started,
        open_seconds=open_seconds,
        transfer_seconds=analysis_started - transfer_started if task.device else float("nan"),
    )
    return ChunkResult(task.index, len(events), histograms, timing)


_models: dict[str, MLModels] = {}  # fingerprint -> the models this process loaded


def worker_models(task: ChunkTask) -> MLModels | None:
    """The ML models of ``task`` (None without the ML step), loaded once per process.

    A worker that finds other models at the directory than the plan fingerprinted (a site
    where the path holds another copy) refuses, naming both.
    """
    if task.ml is None:
        return None
    if task.ml_fingerprint in _models:
        return _models[task.ml_fingerprint]
    # one XGBoost thread per worker process: the workers are the parallelism
    models = load_models(task.ml, n_threads=1)
    if task.ml_fingerprint is not None and models.fingerprint != task.ml_fingerprint:
        raise ModelFilesError(
            f"--ml {task.ml}: the models on {socket.gethostname()} (sha256 "
            f"{models.fingerprint[:12]}) are not those of the run ({task.ml_fingerprint[:12]}); "
            "give workers the same files"
        )
    _models[models.fingerprint] = models
    return models


def skipped_result(
    task: ChunkTask, err: BaseException, *, started: float, cpu0: float
) -> ChunkResult:
    """The result of a chunk left out because its file could not be read (``err``)."""
    timing = chunk_timing(
        task.chunk, started=started, cpu0=cpu0, bytes_read=0, peak_rss=peak_rss_mb(), skipped=True
    )
    reason = str(err) if isinstance(err, InputFileError) else f"{type(err).__name__}: {err}"
    return ChunkResult(task.index, 0, {}, timing, skipped=reason)


def chunk_timing(
    chunk: Chunk, *, started: float, cpu0: float, bytes_read: int, peak_rss: float, **split: Any
) -> TaskTiming:
    """How one chunk ran in this process, from ``started`` / ``cpu0`` (wall and CPU) to now.

    ``split``: the other :class:`agc.metrics.TaskTiming` fields (read, open and analysis
    seconds, ``cached``).
    """
    return TaskTiming(
        chunk.sample,
        chunk.path,
        chunk.entry_start,
        chunk.entry_stop,
        started,
        time.time(),
        time.process_time() - cpu0,
        bytes_read,
        worker_name(),
        peak_rss,
        **{"dask_worker": dask_worker_name(), **split},
    )


def dask_worker_name() -> str:
    """The name of the Dask worker this runs in (e.g. ``DiracCluster-3@LCG.RAL-LCG2.uk``),
    "" outside one. distributed is not imported for it where nothing has imported it."""
    import sys

    if "distributed" not in sys.modules:
        return ""
    from distributed import get_worker

    try:
        return str(get_worker().name)
    except ValueError:  # not in a Dask worker (in-process, a process pool, the client)
        return ""


def worker_name() -> str:
    """``host:pid`` of this process, as task timings name their worker."""
    return f"{socket.gethostname()}:{os.getpid()}"
