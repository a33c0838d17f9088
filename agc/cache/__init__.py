"""Step-level caching of chunk results, and the data lake of run outputs.

How a run uses it (:func:`agc.run.run`)::

    cache = ChunkCache.open(config.cache)         # store URL: directory, root://, s3://
    fn, todo, cached = cache.split(process_chunk, tasks)
    # cached: results found in the store (loaded here, never sent to a worker)
    # todo:   the missing chunks; fn computes one and stores it on the worker right away,
    #         so a crashed or interrupted run keeps every chunk that finished
    cache.attach(executor)                        # Dask: worker/scheduler plugins
    for result in chain(cached, executor.map_unordered(fn, todo)): ...
    cache.finish()                                # size limit and expiry

Keys (:mod:`agc.cache.keys`) hash the analysis code, the physics configuration of the chunk,
the input file's identity and the result-changing library versions; backend, worker count,
scheduling and output options are not part of them. Stores (:mod:`agc.cache.store`) are fsspec
URLs with atomic writes and checksummed entries. A run can also keep its outputs in the store
(:func:`save_run`, ``agc fetch RUN_ID``).
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agc.cache import codec
from agc.cache.keys import chunk_key, chunk_key_parts, code_fingerprint, input_identity
from agc.cache.store import CacheStoreError, ResultStore, default_url

log = logging.getLogger(__name__)

__all__ = [
    "ChunkCache",
    "ComputeAndStore",
    "KeyedTask",
    "ResultStore",
    "CacheStoreError",
    "DATA_LAKE_MODES",
    "default_url",
    "code_fingerprint",
    "lake_store",
    "save_run",
    "fetch_run",
    "NoWorkExecutor",
]

#: ``RunConfig.data_lake``: "copy" keeps outputs locally and in the store (when a store is
#: configured); "only" keeps them only in the store (default store if none is configured);
#: "off" never stores them.
DATA_LAKE_MODES = ("copy", "only", "off")

_STORES: dict[str, ResultStore] = {}
#: Store URLs whose results the Dask worker plugin of this process stores as tasks finish.
_PLUGIN_URLS: set[str] = set()


def worker_store(url: str) -> ResultStore:
    """One store handle per process and URL (connections to root:// and s3:// are reused)."""
    if url not in _STORES:
        _STORES[url] = ResultStore(url)
    return _STORES[url]


@dataclass(frozen=True)
class KeyedTask:
    """A chunk task and its cache key (None: not cacheable, e.g. the input has no identity)."""

    key: str | None
    task: Any
    meta: dict = field(default_factory=dict, compare=False)


def _store_result(store: ResultStore, key: str, result, meta: dict) -> None:
    try:
        store.put(
            key, codec.encode(result.nevents, result.histograms, result.timing.bytes_read), meta
        )
    except Exception as err:  # a full or unreachable store must not fail the analysis
        log.warning("cache %s: could not store chunk %s (%s)", store.url, key[:12], err)


def load_result(store: ResultStore, key: str, task):
    """The cached :class:`agc.run.ChunkResult` of ``task``, or None (absent or corrupt)."""
    from agc.metrics import TaskTiming
    from agc.run import ChunkResult

    started, cpu0 = time.time(), time.process_time()
    found = store.get(key)
    if found is None:
        return None
    try:
        nevents, histograms, _ = codec.decode(found[0])
    except Exception as err:
        log.warning("cache %s: entry %s unreadable (%s): recomputed", store.url, key[:12], err)
        store.delete(key)
        return None
    c = task.chunk
    timing = TaskTiming(
        c.sample,
        c.path,
        c.entry_start,
        c.entry_stop,
        started,
        time.time(),
        time.process_time() - cpu0,
        0,
        f"{socket.gethostname()}:{os.getpid()}",
        0.0,
        cached=True,
    )
    return ChunkResult(nevents, histograms, timing)


class ComputeAndStore:
    """The worker side: skip a chunk already stored, else compute it and store it at once.

    Picklable (module-level class holding a function and a URL), so every executor can ship it.
    Under Dask with :class:`agc.cache.dask.CacheWorkerPlugin` the plugin stores the result as
    the task finishes; everywhere else it is stored here, before the result is returned.
    """

    def __init__(self, fn: Callable, url: str) -> None:
        self.fn, self.url = fn, url

    def __call__(self, keyed: KeyedTask):
        if keyed.key is None:
            return self.fn(keyed.task)
        store = worker_store(self.url)
        hit = load_result(store, keyed.key, keyed.task)  # stored meanwhile (retry, other run)
        if hit is not None:
            return hit
        result = self.fn(keyed.task)
        if self.url in _PLUGIN_URLS:
            result.cache_pending = (keyed.key, keyed.meta)
        else:
            _store_result(store, keyed.key, result, keyed.meta)
        return result


class NoWorkExecutor:
    """Stands in for a backend when every chunk is cached: no cluster is started."""

    workers = 1

    def wait_for_workers(self, n: int = 1) -> None:
        pass

    def map_unordered(self, fn: Callable, tasks: Iterable) -> Iterator:
        for task in tasks:
            yield fn(task)

    def close(self) -> None:
        pass


class ChunkCache:
    """The driver side of the chunk cache of one run."""

    def __init__(self, store: ResultStore) -> None:
        self.store = store
        self.code = code_fingerprint()
        self._identities: dict[str, dict | None] = {}

    @classmethod
    def open(cls, url: str | None) -> ChunkCache:
        return cls(ResultStore(url))

    def key(self, task) -> tuple[str | None, dict]:
        """The key of a :class:`agc.run.ChunkTask` and the parts it was made of."""
        path = task.chunk.path
        if path not in self._identities:
            self._identities[path] = input_identity(path)
        identity = self._identities[path]
        if identity is None:
            return None, {}
        parts = chunk_key_parts(task, code=self.code, identity=identity)
        return chunk_key(parts), {"sample": task.chunk.sample, "path": path, **parts["input"]}

    def split(self, fn: Callable, tasks: list) -> tuple[Callable, list[KeyedTask], list]:
        """(worker function, tasks still to compute, results loaded from the store)."""
        todo, cached = [], []
        for task in tasks:
            key, meta = self.key(task)
            hit = load_result(self.store, key, task) if key else None
            if hit is not None:
                cached.append(hit)
            else:
                todo.append(KeyedTask(key, task, meta))
        log.info("cache %s: %d of %d chunks cached", self.store.url, len(cached), len(tasks))
        return ComputeAndStore(fn, self.store.url), todo, cached

    def attach(self, executor) -> None:
        """Install the Dask plugins when the executor is a Dask client."""
        client = getattr(executor, "client", None)
        if client is not None:
            from agc.cache.dask import install_plugins

            install_plugins(client, self.store.url)

    def finish(self) -> None:
        """Apply the store's size limit and expiry."""
        try:
            self.store.evict()
        except Exception as err:
            log.warning("cache %s: eviction failed (%s)", self.store.url, err)


# -- data lake --------------------------------------------------------------------------
def lake_store(cache_url: str | None, mode: str) -> ResultStore | None:
    """The store a run's outputs go to under ``mode`` (see :data:`DATA_LAKE_MODES`)."""
    if mode not in DATA_LAKE_MODES:
        raise CacheStoreError(f"--data-lake {mode!r}: choose one of {', '.join(DATA_LAKE_MODES)}")
    if mode == "off" or (mode == "copy" and cache_url is None):
        return None
    return ResultStore(cache_url)


def staging_dir(run_id: str) -> Path:
    """A local directory to write outputs that are kept only in the store."""
    return Path(tempfile.mkdtemp(prefix="agc-lake-")) / run_id


def save_run(store: ResultStore, run_id: str, run_dir: Path, *, move: bool) -> str:
    """Put a written run directory into the store (and remove it with ``move``); its URL."""
    import shutil

    url = store.put_run(run_id, run_dir)
    if move:
        shutil.rmtree(run_dir.parent if run_dir.parent.name.startswith("agc-lake-") else run_dir)
    log.info("run %s stored in %s", run_id, url)
    return url


def fetch_run(run_id: str, to: str | os.PathLike | None = None, url: str | None = None) -> Path:
    """Copy run ``run_id`` from the store at ``url`` (default store) into ``to`` (./RUN_ID)."""
    return ResultStore(url).fetch_run(run_id, to if to is not None else Path(run_id))
