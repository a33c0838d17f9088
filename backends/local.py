"""The ``local`` backend: in-process, a process pool, or a Dask ``LocalCluster`` on this machine."""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from agc.config import ConfigError, check_value
from backends.base import BackendError, BaseExecutor, capped_workers

log = logging.getLogger(__name__)


class InProcessExecutor(BaseExecutor):
    """Runs every task in this process, one after the other (debugging, profiling)."""

    def map_unordered(self, fn: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Any]:
        for task in tasks:
            yield fn(task)


class ProcessPoolTaskExecutor(BaseExecutor):
    """A pool of forked worker processes; at most ``2 * workers`` tasks are in flight."""

    def __init__(self, workers: int):
        self.workers = workers
        self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))

    def wait_for_workers(self, n: int = 1) -> None:
        """Start the worker processes (the pool forks them lazily) and wait for ``n`` to answer."""
        for future in [self._pool.submit(os.getpid) for _ in range(n)]:
            future.result()

    def map_unordered(self, fn: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Any]:
        pending: set[Future] = set()
        todo = iter(tasks)
        try:
            while True:
                while len(pending) < 2 * self.workers:
                    task = next(todo, None)
                    if task is None:
                        break
                    pending.add(self._pool.submit(fn, task))
                if not pending:
                    return
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                # every result that arrived is handed on before a failed task raises
                for future in sorted(done, key=lambda f: f.exception() is not None):
                    yield future.result()
        finally:
            for future in pending:
                future.cancel()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class DaskExecutor(BaseExecutor):
    """Tasks submitted to a Dask client; results gathered as they complete."""

    def __init__(self, client, cluster=None, workers: int | None = None):
        self.client = client
        self.cluster = cluster
        self.workers = workers or max(len(client.scheduler_info().get("workers", {})), 1)

    def wait_for_workers(self, n: int = 1) -> None:
        self.client.wait_for_workers(n)

    def map_unordered(self, fn: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Any]:
        from distributed import as_completed

        futures = self.client.map(fn, list(tasks), pure=False)
        try:
            for future in as_completed(futures):
                yield future.result()
                future.release()
        finally:
            self.client.cancel(futures)

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


@dataclass
class LocalBackend:
    """Run on this machine: ``mode`` is inprocess, processes (default) or dask (LocalCluster).

    A ``profile`` (``backend: local``) may set ``workers``, ``local.mode`` and
    ``worker.memory`` (each Dask worker's memory limit); its other keys are batch-job settings
    that the local backend does not use, and a warning names them.
    """

    workers: int | None = None
    mode: str | None = None
    profile: str | None = None
    #: memory limit of each Dask worker (``worker.memory`` of a profile; dask mode only)
    memory: str | None = None

    name = "local"
    description = "this machine: in-process, a process pool, or a Dask LocalCluster"

    def __post_init__(self) -> None:
        if self.profile is not None:  # --workers / --mode win over the profile
            from backends.profiles import load_profile

            p = load_profile(self.profile, backend="local")
            self.workers = self.workers or p.data.get("workers")
            self.mode = self.mode or p.section("local").get("mode")
            self.memory = p.worker.get("memory")
            top = set(p.data) - {"backend", "description", "workers", "worker", "local"}
            ignored = sorted(top | {f"worker.{k}" for k in set(p.worker) - {"cores", "memory"}})
            if ignored:
                log.warning(
                    "profile %s: the local backend does not use %s (batch-job settings)",
                    p.source,
                    ", ".join(ignored),
                )
        self.mode = self.mode or "processes"
        try:
            check_value("mode", self.mode)
            check_value("workers", self.workers)
        except ConfigError as err:
            raise BackendError(f"--{err.key} {err.value}: {err.problem}") from None

    def start(self, tasks: int | None = None) -> BaseExecutor:
        """The executor of ``mode``, with no more workers than ``tasks``."""
        workers = capped_workers(self.workers or os.cpu_count() or 1, tasks)
        if self.mode == "inprocess":
            return InProcessExecutor()
        if self.mode == "processes":
            return ProcessPoolTaskExecutor(workers)
        import dask
        from distributed import Client, LocalCluster

        with dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environment()}):
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                memory_limit=self.memory or "auto",
            )
        return DaskExecutor(Client(cluster), cluster, workers)


def worker_environment() -> dict:
    """Dask's environment for new worker processes, without ``MALLOC_TRIM_THRESHOLD_``.

    distributed sets ``MALLOC_TRIM_THRESHOLD_=65536`` in its workers to return memory to the
    OS sooner. Setting it switches off glibc's dynamic mmap threshold, so every large buffer
    uproot allocates while opening and reading files is mmap-ed and unmapped again: the same
    tasks took 2-3x the CPU time in a Dask worker as in a process-pool worker (opening a
    realistic NanoAOD file: ~0.8 s instead of ~0.3 s). Other settings are kept.
    """
    import dask

    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    return env
