"""The ``local`` backend: in-process, a process pool, or a Dask ``LocalCluster`` on this machine."""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
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
    """A pool of forked worker processes; at most ``2 * workers`` tasks are in flight.

    A worker that dies (killed by the kernel's OOM killer, a signal) breaks the whole pool:
    every task in flight fails with ``BrokenProcessPool``. The executor then starts a new
    pool and runs again the tasks that had not returned a result, at most ``max_restarts``
    times per executor (each counted in ``worker_restarts``, the tasks in
    ``tasks_resubmitted``, and logged); one more loss raises :class:`BackendError`.

    The workers die with this process, however it ends (SIGKILL included): see
    :func:`die_with_parent`. The parent-death signal follows the thread that forked them, the
    one that first submits a task (or calls :meth:`wait_for_workers`), which must outlive the
    pool.
    """

    def __init__(self, workers: int, max_restarts: int = 3):
        self.workers = workers
        self.max_restarts = max_restarts
        self.worker_restarts = 0
        self.tasks_resubmitted = 0
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("fork"),
            initializer=die_with_parent,
            initargs=(os.getpid(),),
        )

    def _restart(self, lost: int) -> None:
        """A new pool after the old one broke; ``lost``: the tasks that will be run again."""
        if self.worker_restarts >= self.max_restarts:
            raise BackendError(
                f"process-pool workers keep dying: the pool broke {self.worker_restarts + 1} "
                f"times (max_restarts={self.max_restarts}); a worker killed for using too "
                "much memory is the usual reason (see the kernel log, dmesg): try fewer "
                "--workers or a smaller --chunksize"
            )
        self.worker_restarts += 1
        self.tasks_resubmitted += lost
        log.warning(
            "a process-pool worker died; starting a new pool and running %d task(s) again "
            "(restart %d of at most %d)",
            lost,
            self.worker_restarts,
            self.max_restarts,
        )
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = self._new_pool()

    def wait_for_workers(self, n: int = 1) -> None:
        """Start the worker processes (the pool forks them lazily) and wait for ``n`` to answer."""
        while True:
            try:
                for future in [self._pool.submit(os.getpid) for _ in range(n)]:
                    future.result()
                return
            except BrokenProcessPool:
                self._restart(0)

    def map_unordered(self, fn: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Any]:
        pending: dict[Future, Any] = {}  # future -> its task
        again: deque[Any] = deque()  # tasks of a broken pool, submitted before the others
        todo = iter(tasks)
        try:
            while True:
                broken: list[Any] = []
                while len(pending) < 2 * self.workers:
                    if again:
                        task = again.popleft()
                    elif (task := next(todo, _END)) is _END:
                        break
                    try:
                        pending[self._pool.submit(fn, task)] = task
                    except BrokenProcessPool:
                        broken.append(task)
                        break
                if not pending and not broken:
                    return
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                if broken or any(_broke(f) for f in done):
                    # the pool fails every task in flight at once: wait for all of them
                    done, _ = wait(pending)
                # every result that arrived is handed on before a failed task raises
                for future in sorted(done, key=lambda f: f.exception() is not None):
                    task = pending.pop(future)
                    if _broke(future):
                        broken.append(task)
                    else:
                        yield future.result()
                if broken:
                    self._restart(len(broken))
                    again.extend(broken)
        finally:
            for future in pending:
                future.cancel()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


_END = object()


def _broke(future: Future) -> bool:
    return isinstance(future.exception(), BrokenProcessPool)


#: ``prctl`` option: the signal a process gets when its parent dies (linux/prctl.h).
PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int, poll_seconds: float = 1.0) -> None:
    """Pool-worker initializer: end this process when ``parent`` (the pool's owner) ends.

    On Linux the kernel sends SIGKILL when the parent dies (``prctl(PR_SET_PDEATHSIG)``), so a
    SIGKILL or SIGTERM of the main process leaves no worker behind; elsewhere a daemon thread
    polls :func:`os.getppid` every ``poll_seconds``. A parent that died before this ran (the
    worker was already handed to init) ends the worker at once.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
        if armed:
            if os.getppid() != parent:
                os._exit(1)
            return
        log.warning("prctl(PR_SET_PDEATHSIG) failed: polling the parent process instead")

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os._exit(1)

    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=watch, name="agc-parent-watch", daemon=True).start()


class DaskExecutor(BaseExecutor):
    """Tasks submitted to a Dask client; results gathered as they complete.

    ``owns_client``: :meth:`close` closes the client (and ``cluster``, when given). An
    executor on a client or cluster that someone else made (a scheduler the site runs, a
    client handed in) leaves them open: it was not its to close.
    """

    def __init__(
        self, client, cluster=None, workers: int | None = None, *, owns_client: bool = True
    ):
        self.client = client
        self.cluster = cluster
        self.owns_client = owns_client
        self.workers = workers or max(len(client.nthreads()), 1)

    def wait_for_workers(self, n: int = 1) -> None:
        self.client.wait_for_workers(n)

    def map_unordered(self, fn: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Any]:
        from distributed import as_completed

        futures = self.client.map(fn, list(tasks), pure=False)
        try:
            for future in as_completed(futures, loop=self.client.loop):
                yield future.result()
                future.release()
        finally:
            self.client.cancel(futures)

    def close(self) -> None:
        if not self.owns_client:
            return
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
