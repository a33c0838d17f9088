"""Execution engines: how the chunk tasks of a run become work on an executor.

An engine takes the tasks and a started executor (:class:`backends.base.Executor`) and yields
one :class:`agc.chunks.ChunkResult` per task, in completion order. Both engines yield the same
results, so the run merges, caches and measures them the same way, and the histograms are
identical whichever engine ran.

``chunked`` (the default, :class:`ChunkedEngine`)
    Each chunk is one task (:func:`agc.chunks.process_chunk`: open, read, analyse) handed to
    the executor. Works on every backend.

``dask-awkward`` (:class:`DaskAwkwardEngine`)
    The inputs are one dask-awkward collection built by :func:`uproot.dask`, one partition per
    chunk (explicit entry ranges, so the partitions are exactly the chunks of the chunked
    engine); the analysis is a task per partition in the same Dask graph, computed on the
    executor's Dask client. Reading and analysis are separate tasks, as in a coffea
    dask-awkward workflow; their timings come from Dask's task stream. With an executor's
    ``stage_resources``, the read layer and the analysis tasks carry the resources of their
    stage as Dask annotations.

The result cache (:class:`agc.cache.CachingEngine`) wraps either of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import awkward as ak
import numpy as np

from agc.chunks import (
    ChunkResult,
    ChunkTask,
    analyse,
    analysis_stage,
    process_chunk,
    read_stage,
    skipped_result,
)
from agc.config import ENGINES
from agc.errors import UserError
from agc.reader import check_tree, open_tree
from backends.base import Executor


class EngineError(UserError, ValueError):
    """An engine that cannot run on the chosen backend."""


class Engine(Protocol):
    """How tasks become results on an executor."""

    #: The ``engine`` option that selects it (a key of :data:`agc.config.ENGINES`).
    name: str

    def check(self, executor: Executor) -> None:
        """Raise :class:`EngineError` if this engine cannot run on ``executor``."""
        ...

    def pending(self, tasks: Sequence[ChunkTask]) -> list[ChunkTask]:
        """The tasks that need workers (all of them, unless results are kept somewhere)."""
        ...

    def run(self, tasks: Sequence[ChunkTask], executor: Executor | None) -> Iterator[ChunkResult]:
        """One result per task, in completion order. ``executor`` may be None only when
        :meth:`pending` returned no task."""
        ...


class _EngineBase:
    name = ""

    def check(self, executor: Executor) -> None:
        return None

    def pending(self, tasks: Sequence[ChunkTask]) -> list[ChunkTask]:
        return list(tasks)


def _require(executor: Executor | None, tasks: Sequence[ChunkTask]) -> Executor:
    if executor is None:
        raise RuntimeError(f"{len(tasks)} task(s) to run but no executor was started")
    return executor


class ChunkedEngine(_EngineBase):
    """One read-and-analyse task per chunk, on any executor.

    The chunks of one file go to one worker, which keeps the file open for all of them
    (:mod:`agc.reader`; opening a NanoAOD file costs more than reading a chunk of it): files
    are dealt to the workers by events, heaviest first to the least loaded, and a worker
    without files of its own left takes chunks of another's. Executors whose
    ``map_unordered`` takes ``affinity`` do this: the process pool with a queue per worker, the
    Dask executors with loose worker restrictions (Dask's work stealing balances the load, and
    a lost worker's chunks run elsewhere). Other executors get the tasks in plan order.

    A chunk whose file has replica sites (catalog ``sites``, :func:`chunk_sites`) goes, on a
    Dask executor with a ``locality_wait`` (DIRAC: ``dirac.locality_wait``), to the workers
    of those sites only, and to any worker once it has waited that long without starting
    (:class:`backends.local.SitePlacement`).

    An executor with ``stage_resources`` (a GPU cluster, a profile's ``stages``) gets each
    chunk as two tasks, :func:`agc.chunks.read_stage` and :func:`agc.chunks.analysis_stage`,
    each with the Dask resources of its stage (:meth:`backends.base.Executor.map_stages`).
    """

    name = "chunked"

    def run(self, tasks: Sequence[ChunkTask], executor: Executor | None) -> Iterator[ChunkResult]:
        if not tasks:
            return
        executor = _require(executor, tasks)
        if getattr(executor, "stage_resources", None):
            # read and analysis as separate tasks, each placed by its Dask resources
            yield from executor.map_stages(
                [("read", read_stage), ("analysis", analysis_stage)], tasks
            )
        elif _takes(executor, "sites"):
            yield from executor.map_unordered(  # type: ignore[call-arg]
                process_chunk, tasks, affinity=file_affinity, sites=chunk_sites
            )
        elif _takes(executor, "affinity"):
            yield from executor.map_unordered(  # type: ignore[call-arg]
                process_chunk, tasks, affinity=file_affinity
            )
        else:
            yield from executor.map_unordered(process_chunk, tasks)


def file_affinity(task: ChunkTask) -> tuple[str, float]:
    """What keeps chunks together on a worker (their file) and their weight (events)."""
    return task.chunk.path, float(task.chunk.entry_stop - task.chunk.entry_start)


def chunk_sites(task: ChunkTask) -> tuple[str, ...]:
    """The sites holding the chunk's file (catalog ``sites``): where it is best run."""
    return task.chunk.sites


def _takes(executor: Executor, option: str) -> bool:
    """Whether the executor's ``map_unordered`` takes ``option`` (affinity, sites)."""
    import inspect

    try:
        return option in inspect.signature(executor.map_unordered).parameters
    except (TypeError, ValueError):
        return False


class DaskAwkwardEngine(_EngineBase):
    """An ``uproot.dask`` collection (a partition per chunk) and analysis tasks in one graph."""

    name = "dask-awkward"

    def check(self, executor: Executor) -> None:
        if executor.client is None:
            raise EngineError(
                "--engine dask-awkward needs a Dask executor: use --mode dask with the local "
                "backend, or a batch backend (slurm, htcondor, dirac)"
            )

    def run(self, tasks: Sequence[ChunkTask], executor: Executor | None) -> Iterator[ChunkResult]:
        import dask
        import uproot
        from distributed import as_completed, get_task_stream

        if not tasks:
            return
        client = _require(executor, tasks).client
        skipped, readable = _split_unreadable(tasks)  # also checks every file and branch first
        yield from skipped
        if not readable:
            return
        files: dict[str, dict[str, Any]] = {}
        for task in readable:
            c = task.chunk
            entry = files.setdefault(c.path, {"object_path": c.tree, "steps": []})
            entry["steps"].append([c.entry_start, c.entry_stop])
        # uproot.dask makes the partitions file by file, steps in the order given
        file_order = {path: i for i, path in enumerate(files)}
        partition_tasks = sorted(readable, key=lambda t: file_order[t.chunk.path])
        nbytes = _compressed_bytes(partition_tasks)
        stages = getattr(executor, "stage_resources", None) or {}
        with _annotated(stages.get("read")):
            events = uproot.dask(files, filter_name=list(tasks[0].branches), open_files=False)
        analyse_partition = dask.delayed(_analyse_partition, pure=True)
        # optimising the collection fuses its read layer into one without annotations
        partitions = events.to_delayed(optimize_graph=not stages)
        with _annotated(stages.get("analysis")):
            graph = [
                analyse_partition(
                    part, task, nbytes[i], dask_key_name=f"agc-{events.name}-analysis-{i}"
                )
                for i, (part, task) in enumerate(zip(partitions, partition_tasks, strict=True))
            ]
        with get_task_stream(client) as stream:
            # a failed read (remote: a lost connection) is run again by Dask itself
            futures = client.compute(graph, retries=max(t.read_retries for t in tasks))
            position = {f.key: i for i, f in enumerate(futures)}
            results: dict[int, ChunkResult] = {}
            try:
                for future in as_completed(futures):
                    i = position[future.key]
                    task = partition_tasks[i]
                    try:
                        result = future.result()
                    except Exception as err:
                        # an error of the analysis task itself is never skipped
                        if task.skip_bad_files and not isinstance(err, _AnalysisError):
                            yield _skipped(task, err)
                            continue
                        c = task.chunk
                        raise EngineError(
                            f"{c.path}: reading or analysing entries {c.entry_start}-"
                            f"{c.entry_stop} failed ({type(err).__name__}: {err})"
                        ) from err
                    results[i] = result
                    yield result
            finally:
                client.cancel(futures)
        _add_read_times(results, stream.data, events.name)


def _annotated(resources: dict[str, float] | None):
    """``dask.annotate(resources=...)`` for the layers made inside, or nothing."""
    import contextlib

    import dask

    return dask.annotate(resources=resources) if resources else contextlib.nullcontext()


class _AnalysisError(RuntimeError):
    """An analysis task that failed on events that were read (not an input problem)."""


def _skipped(task: ChunkTask, err: BaseException) -> ChunkResult:
    return skipped_result(task, err, started=time.time(), cpu0=time.process_time())


def _split_unreadable(
    tasks: Sequence[ChunkTask],
) -> tuple[list[ChunkResult], list[ChunkTask]]:
    """(the skipped results of the chunks whose file cannot be read, the other tasks); see
    :func:`_unreadable_files` (without ``skip_bad_files`` the first bad file raises)."""
    unreadable = _unreadable_files(tasks)
    skipped = [_skipped(t, unreadable[t.chunk.path]) for t in tasks if t.chunk.path in unreadable]
    return skipped, [t for t in tasks if t.chunk.path not in unreadable]


def _unreadable_files(tasks: Sequence[ChunkTask]) -> dict[str, Exception]:
    """The files of ``tasks`` that cannot be opened or lack what the tasks read, with why.

    Without ``skip_bad_files`` the first such file raises its error instead.
    """
    out: dict[str, Exception] = {}
    last: dict[str, int] = {}  # path -> the last entry any task reads
    first: dict[str, ChunkTask] = {}
    for task in tasks:
        first.setdefault(task.chunk.path, task)
        last[task.chunk.path] = max(last.get(task.chunk.path, 0), task.chunk.entry_stop)
    for path, task in first.items():
        c = task.chunk
        try:
            _, tree, _ = open_tree(c.path, c.tree)
            check_tree(c.path, tree, task.branches, last[path], c.file_entries)
        except MemoryError:
            raise
        except Exception as err:
            if not task.skip_bad_files:
                raise
            out[c.path] = err
    return out


class CoffeaEngine(_EngineBase):
    """coffea's ``processor.Runner``: the plan's chunks as its work items, on NanoEvents.

    The harness's analysis (:func:`agc.chunks.analyse`) runs inside a coffea processor
    (:class:`agc.coffea_processor.HarnessProcessor`) on the NanoEvents coffea makes of each
    chunk, so that the histograms are the harness's (identical to the other engines') and the
    executor is coffea's own: ``IterativeExecutor`` on an in-process executor,
    ``FuturesExecutor`` with the pool's workers on the process pool, ``DaskExecutor`` on the
    executor's Dask client (local Dask, batch backends, an existing cluster). coffea reads
    the columns lazily while the analysis runs, so a chunk's time is all analysis (its read
    time is not known apart); its bytes are the compressed baskets it reads, as for the
    dask-awkward engine. coffea returns everything at the end: the results come all at once,
    after the last chunk.
    """

    name = "coffea"

    def run(self, tasks: Sequence[ChunkTask], executor: Executor | None) -> Iterator[ChunkResult]:
        from coffea import processor
        from coffea.nanoevents import NanoAODSchema
        from coffea.processor.executor import WorkItem

        from agc.coffea_processor import HarnessProcessor

        if not tasks:
            return
        executor = _require(executor, tasks)
        skipped, readable = _split_unreadable(tasks)  # opens every file: its uuid, baskets
        yield from skipped
        if not readable:
            return
        nbytes = dict(zip((t.index for t in readable), _compressed_bytes(readable), strict=True))
        items = [
            WorkItem(
                dataset=t.chunk.sample,
                filename=t.chunk.path,
                treename=t.chunk.tree,
                entrystart=t.chunk.entry_start,
                entrystop=t.chunk.entry_stop,
                fileuuid=open_tree(t.chunk.path, t.chunk.tree)[0].file.uuid.bytes,
                usermeta={"agc_index": t.index},
            )
            for t in readable
        ]
        runner = processor.Runner(
            executor=_coffea_executor(executor),
            schema=NanoAODSchema,
            skipbadfiles=any(t.skip_bad_files for t in readable),
        )
        NanoAODSchema.warn_missing_crossrefs = False  # synthetic files carry no cross-refs
        output = runner(items, processor_instance=HarnessProcessor(readable, nbytes))
        done = output.get("chunks", {})
        for task in readable:
            if task.index in done:
                yield done[task.index]
            else:  # coffea's skipbadfiles left it out
                yield _skipped(task, RuntimeError("coffea's Runner skipped it (skipbadfiles)"))


def _coffea_executor(executor: Executor):
    """coffea's executor for the harness's: Dask client, process pool, or this process."""
    from coffea import processor

    from backends.local import ProcessPoolTaskExecutor

    if executor.client is not None:
        return processor.DaskExecutor(client=executor.client, status=False)
    if isinstance(executor, ProcessPoolTaskExecutor):
        return processor.FuturesExecutor(workers=executor.workers, status=False)
    return processor.IterativeExecutor(status=False)


#: The engines, by the ``engine`` option.
ENGINE_CLASSES: dict[str, Callable[[], Engine]] = {
    ChunkedEngine.name: ChunkedEngine,
    DaskAwkwardEngine.name: DaskAwkwardEngine,
    CoffeaEngine.name: CoffeaEngine,
}


def get_engine(name: str) -> Engine:
    """The engine of the ``engine`` option (one of :data:`agc.config.ENGINES`)."""
    if name not in ENGINE_CLASSES:
        raise EngineError(f"--engine {name!r}: choose one of {', '.join(ENGINES)}")
    return ENGINE_CLASSES[name]()


def _compressed_bytes(tasks: Sequence[ChunkTask]) -> list[int]:
    """Compressed bytes of the baskets each chunk reads (what uproot fetches for it).

    Uses the files as :func:`_unreadable_files` opened them on the client (the preprocessing a
    dask-awkward workflow does to know its inputs).
    """
    baskets: dict[str, np.ndarray] = {}  # path -> (entry start, entry stop, bytes) per basket
    out = []
    for task in tasks:
        c = task.chunk
        if c.path not in baskets:
            _, tree, _ = open_tree(c.path, c.tree)
            rows = [
                (*branch.basket_entry_start_stop(i), branch.basket_compressed_bytes(i))
                for branch in (tree[name] for name in task.branches)
                for i in range(branch.num_baskets)
            ]
            baskets[c.path] = np.array(rows, dtype=np.int64).reshape(-1, 3).T
        start, stop, size = baskets[c.path]
        out.append(int(size[(start < c.entry_stop) & (stop > c.entry_start)].sum()))
    return out


def _analyse_partition(events: ak.Array, task: ChunkTask, nbytes: int) -> ChunkResult:
    """The analysis task of one partition (runs on a worker; its read was another task)."""
    started, cpu0 = time.time(), time.process_time()
    if task.io_only:
        ak.materialize(events)
    try:
        return analyse(events, task, nbytes, started=started, cpu0=cpu0)
    except Exception as err:
        raise _AnalysisError(f"the analysis failed ({type(err).__name__}: {err})") from err


def _add_read_times(results: dict[int, ChunkResult], stream: list[dict], read_name: str) -> None:
    """Fill each result's read time (and start) from the read task of its partition."""
    for entry in stream:
        key = entry.get("key")
        if not (isinstance(key, tuple) and key[0] == read_name and key[1] in results):
            continue
        compute = [s for s in entry.get("startstops", ()) if s.get("action") == "compute"]
        if not compute:
            continue
        timing = results[key[1]].timing
        start, stop = compute[0]["start"], compute[-1]["stop"]
        timing.read_seconds = stop - start
        timing.started = min(timing.started, start)
