"""Step-level caching of chunk results, and the data lake of run outputs.

The cache is one wrapper around the run's engine (:class:`CachingEngine`)::

    engine = CachingEngine(get_engine("chunked"), ResultStore(url))
    todo = engine.pending(tasks)              # every task looked up; the hits are loaded
    executor = start_backend(backend, len(todo)) if todo else None  # no work: no cluster
    for result in engine.run(tasks, executor):     # the hits, then the computed misses
        ...

It yields the hits, forwards the misses to the engine it wraps (either engine), and stores
each computed result as it arrives on the client, so results outlive the cluster and a run
killed half-way recomputes only what is missing. It deals in keys and bytes: keys
(:mod:`agc.cache.keys`) hash the analysis code, the physics configuration of the chunk, the
input file's identity and the result-changing library versions; the payload is
:mod:`agc.cache.codec`'s encoding of the chunk result. Backend, worker count, engine,
scheduling and output options are not part of the key.

Stores (:mod:`agc.cache.store`) are fsspec URLs with atomic writes and checksummed entries. A
run can also publish its written outputs to the store (:func:`publish_run`, the data lake;
``agc fetch RUN_ID`` brings them back).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from agc.cache import codec
from agc.cache.keys import chunk_key, chunk_key_parts, code_fingerprint, input_identity
from agc.cache.store import CacheStoreError, ResultStore, default_url
from agc.chunks import ChunkResult, ChunkTask, chunk_timing
from agc.engines import Engine
from backends.base import Executor

log = logging.getLogger(__name__)

__all__ = [
    "CachingEngine",
    "ResultStore",
    "CacheStoreError",
    "default_url",
    "code_fingerprint",
    "lake_store",
    "publish_run",
    "fetch_run",
]


class CachingEngine:
    """An engine whose results come from the store when it has them (see the module doc).

    Args:
        inner: the engine that computes the misses.
        store: where results are looked up and stored.
    """

    def __init__(self, inner: Engine, store: ResultStore) -> None:
        self.inner, self.store = inner, store
        self.name = inner.name
        self._code = code_fingerprint()
        self._identities: dict[str, dict | None] = {}
        self._keys: dict[int, tuple[str | None, dict]] = {}
        self._hits: dict[int, ChunkResult] = {}

    def check(self, executor: Executor) -> None:
        self.inner.check(executor)

    def key(self, task: ChunkTask) -> tuple[str | None, dict]:
        """The store key of a task (None: its input has no identity) and its readable parts."""
        path = task.chunk.path
        if path not in self._identities:
            self._identities[path] = input_identity(path)
        identity = self._identities[path]
        if identity is None:
            return None, {}
        parts = chunk_key_parts(task, code=self._code, identity=identity)
        return chunk_key(parts), {"sample": task.chunk.sample, "path": path, **parts["input"]}

    def pending(self, tasks: Sequence[ChunkTask]) -> list[ChunkTask]:
        """Look every task up; the hits are loaded now (and yielded by :meth:`run`), the misses
        returned."""
        todo = []
        for task in tasks:
            if task.index not in self._keys:
                self._keys[task.index] = self.key(task)
            key, _ = self._keys[task.index]
            hit = self._hits.get(task.index) or (self._load(key, task) if key else None)
            if hit is None:
                todo.append(task)
            else:
                self._hits[task.index] = hit
        log.info(
            "cache %s: %d of %d chunks cached", self.store.url, len(tasks) - len(todo), len(tasks)
        )
        return todo

    def run(self, tasks: Sequence[ChunkTask], executor: Executor | None) -> Iterator[ChunkResult]:
        if any(task.index not in self._keys for task in tasks):
            self.pending(tasks)
        todo = [task for task in tasks if task.index not in self._hits]
        try:
            for task in tasks:
                if task.index in self._hits:
                    yield self._hits.pop(task.index)
            for result in self.inner.run(todo, executor):
                self._store(result)
                yield result
        finally:
            self._hits.clear()
            try:
                self.store.evict()
            except Exception as err:  # the run's results do not depend on it
                log.warning("cache %s: eviction failed (%s)", self.store.url, err)

    def _load(self, key: str, task: ChunkTask) -> ChunkResult | None:
        started, cpu0 = time.time(), time.process_time()
        found = self.store.get(key)
        if found is None:
            return None
        try:
            nevents, histograms, _ = codec.decode(found[0])
        except Exception as err:
            log.warning(
                "cache %s: entry %s unreadable (%s): recomputed", self.store.url, key[:12], err
            )
            self.store.delete(key)
            return None
        timing = chunk_timing(
            task.chunk, started=started, cpu0=cpu0, bytes_read=0, peak_rss=0.0, cached=True
        )
        return ChunkResult(task.index, nevents, histograms, timing)

    def _store(self, result: ChunkResult) -> None:
        key, meta = self._keys.get(result.index, (None, {}))
        if key is None or result.skipped is not None:  # a skipped chunk is retried next time
            return
        try:
            payload = codec.encode(result.nevents, result.histograms, result.timing.bytes_read)
            self.store.put(key, payload, meta)
        except Exception as err:  # a full or unreachable store must not fail the analysis
            log.warning("cache %s: could not store chunk %s (%s)", self.store.url, key[:12], err)


# -- data lake --------------------------------------------------------------------------
def lake_store(cache_url: str | None, mode: str) -> ResultStore | None:
    """The store a run's outputs go to under ``mode`` (:data:`agc.config.DATA_LAKE_MODES`)."""
    if mode == "off" or (mode == "copy" and cache_url is None):
        return None
    return ResultStore(cache_url)


def staging_dir(run_id: str) -> Path:
    """Where a run writes outputs that are kept only in the store (made when written)."""
    return Path(tempfile.gettempdir()) / f"agc-lake-{run_id}" / run_id


def publish_run(store: ResultStore, run_id: str, run_dir: Path, *, move: bool) -> str | None:
    """Put a written run directory into the store; its URL there.

    With ``move`` (``--data-lake only``) the local copy is removed once stored, and a failure
    raises (the local copy then stays, and the message says where). Without it the copy is
    best effort: a store that cannot take the run is logged and the local outputs kept.
    """
    try:
        url = store.put_run(run_id, run_dir)
    except Exception as err:
        if move:
            raise CacheStoreError(
                f"--data-lake only: run {run_id} could not be stored in {store.url} ({err}); "
                f"its outputs are in {run_dir}"
            ) from err
        log.warning(
            "run %s: not copied to the data lake %s (%s); the outputs are in %s",
            run_id,
            store.url,
            err,
            run_dir,
        )
        return None
    if move:
        shutil.rmtree(run_dir.parent if run_dir.parent.name.startswith("agc-lake-") else run_dir)
    log.info("run %s stored in %s", run_id, url)
    return url


def fetch_run(run_id: str, to: str | os.PathLike | None = None, url: str | None = None) -> Path:
    """Copy run ``run_id`` from the store at ``url`` (default store) into ``to`` (./RUN_ID)."""
    return ResultStore(url).fetch_run(run_id, to if to is not None else Path(run_id))
