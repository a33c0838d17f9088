"""Execution engines: how chunk tasks become work on an executor.

``chunked`` (the default)
    Each chunk is one task (:func:`agc.run.process_chunk`: open, read, analyse) handed to the
    backend's executor. Works on every backend.

``dask-awkward``
    The inputs are one dask-awkward collection built by :func:`uproot.dask`, one partition per
    chunk (explicit entry ranges, so the partitions are exactly the chunks of the chunked
    engine); the analysis is a task per partition in the same Dask graph, and the graph is
    computed on the backend's Dask client. Reading and analysis are separate tasks, as in a
    coffea dask-awkward workflow; their timings come from Dask's task stream. Needs a Dask
    executor (``--mode dask`` of the local backend, or a batch backend).

Both engines yield the same :class:`agc.run.ChunkResult` objects, so the run merges, caches
and measures them the same way: histograms are identical whichever engine ran.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from agc.errors import UserError

ENGINES = {
    "chunked": "one task per chunk (read + analyse) on any backend's executor",
    "dask-awkward": "uproot.dask collection (a partition per chunk) + analysis tasks in one Dask "
    "graph; needs a Dask executor",
}


class EngineError(UserError, ValueError):
    """An engine that does not exist, or cannot run on the chosen backend."""


def check(engine: str, *, cache: str | None = None) -> None:
    """Refuse an unknown engine, or an option it does not support, before anything starts."""
    if engine not in ENGINES:
        raise EngineError(f"--engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if engine == "dask-awkward" and cache:
        raise EngineError(
            "--engine dask-awkward does not use the result cache; drop --cache "
            "or use --engine chunked"
        )


def wrap(engine: str, executor):
    """The executor that runs tasks the way ``engine`` does."""
    check(engine)
    if engine == "chunked":
        return executor
    if getattr(executor, "client", None) is None:
        raise EngineError(
            "--engine dask-awkward needs a Dask executor: use --mode dask with the "
            "local backend, or a batch backend (slurm, htcondor, dirac)"
        )
    return DaskAwkwardExecutor(executor)


class DaskAwkwardExecutor:
    """Runs chunk tasks as a dask-awkward graph on a Dask executor's client.

    Only the ``map_unordered`` path differs from the wrapped executor; everything else
    (workers, waiting, latency hooks, close) is the wrapped executor's.
    """

    def __init__(self, executor):
        self._executor = executor
        self.client = executor.client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._executor, name)

    def map_unordered(self, fn: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Any]:
        import dask
        import uproot
        from distributed import as_completed, get_task_stream

        tasks = list(tasks)
        if not tasks:
            return
        from agc.run import process_chunk

        if fn is not process_chunk:
            raise EngineError(
                "--engine dask-awkward runs the analysis task only; drop --cache "
                "or use --engine chunked"
            )
        branches = list(tasks[0].branches)
        files: dict[str, dict] = {}
        for task in tasks:
            c = task.chunk
            entry = files.setdefault(c.path, {"object_path": c.tree, "steps": []})
            entry["steps"].append([c.entry_start, c.entry_stop])
        order = {(t.chunk.path, t.chunk.entry_start): t for t in tasks}
        partition_tasks = [
            order[(path, start)] for path, spec in files.items() for start, _ in spec["steps"]
        ]
        nbytes = _compressed_bytes(partition_tasks)  # also checks every file and branch first
        events = uproot.dask(files, filter_name=branches, open_files=False)
        parts = events.to_delayed()
        analyse = dask.delayed(_analyse, pure=True)
        graph = [
            analyse(part, task, nbytes[i], dask_key_name=f"agc-{events.name}-analysis-{i}")
            for i, (part, task) in enumerate(zip(parts, partition_tasks, strict=True))
        ]
        with get_task_stream(self.client) as stream:
            futures = self.client.compute(graph)
            index = {f.key: i for i, f in enumerate(futures)}
            results = {}
            try:
                for future in as_completed(futures):
                    i = index[future.key]
                    try:
                        result = future.result()
                    except Exception as err:
                        c = partition_tasks[i].chunk
                        raise EngineError(
                            f"{c.path}: reading or analysing entries "
                            f"{c.entry_start}-{c.entry_stop} failed "
                            f"({type(err).__name__}: {err})"
                        ) from err
                    results[i] = result
                    yield result
            finally:
                self.client.cancel(futures)
        _add_read_times(results, stream.data, events.name)


def _compressed_bytes(tasks) -> list[int]:
    """Compressed bytes of the baskets each chunk reads (what uproot fetches for it).

    Opens each file once on the client (the preprocessing a dask-awkward workflow does to know
    its inputs), which also turns a missing file, tree or branch into a clear error before any
    task is submitted.
    """
    import numpy as np

    from agc.reader import InputFileError, open_tree

    baskets: dict[str, np.ndarray] = {}  # path -> (entry start, entry stop, bytes) per basket
    out = []
    for task in tasks:
        c = task.chunk
        if c.path not in baskets:
            _, tree, _ = open_tree(c.path, c.tree)
            missing = [b for b in task.branches if b not in tree]
            if missing:
                raise InputFileError(
                    f"{c.path}: tree {c.tree!r} lacks branch(es) "
                    f"{', '.join(missing)} that the analysis reads; is this "
                    "NanoAOD?"
                )
            rows = [
                (*branch.basket_entry_start_stop(i), branch.basket_compressed_bytes(i))
                for branch in (tree[name] for name in task.branches)
                for i in range(branch.num_baskets)
            ]
            baskets[c.path] = np.array(rows, dtype=np.int64).reshape(-1, 3).T
        start, stop, size = baskets[c.path]
        out.append(int(size[(start < c.entry_stop) & (stop > c.entry_start)].sum()))
    return out


def _analyse(events, task, nbytes: int):
    """The analysis task of one partition (runs on a worker; its read was another task)."""
    import awkward as ak

    from agc.run import analyse

    started, cpu0 = time.time(), time.process_time()
    if task.io_only:
        ak.materialize(events)
    return analyse(events, task, nbytes, started=started, cpu0=cpu0)


def _add_read_times(results: dict, stream: list[dict], read_name: str) -> None:
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
