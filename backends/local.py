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
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
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
    """Forked worker processes, each a pool of its own; at most 2 tasks in flight per worker.

    Without ``affinity``, every worker takes the next task in the order given. With
    ``affinity`` (task -> (key, weight), see :class:`AffinityQueues`), the tasks of one key (an
    input file) go to one worker, which then opens the file once for all of them; a worker that
    runs out of its own takes tasks from the one with the most left.

    A worker that dies (killed by the kernel's OOM killer, a signal) breaks its pool: every
    task in flight on it fails with ``BrokenProcessPool``. The executor then starts that
    worker anew and runs again its tasks that had not returned a result, at most
    ``max_restarts`` times per executor (each counted in ``worker_restarts``, the tasks in
    ``tasks_resubmitted``, and logged); one more loss raises :class:`BackendError`.

    The workers die with this process, however it ends (SIGKILL included): see
    :func:`die_with_parent`. The parent-death signal follows the thread that forked them, the
    one that first submits a task (or calls :meth:`wait_for_workers`), which must outlive the
    pool.
    """

    #: Tasks in flight per worker: one running, one waiting, so a worker never idles between them.
    IN_FLIGHT = 2

    def __init__(self, workers: int, max_restarts: int = 3):
        self.workers = workers
        self.max_restarts = max_restarts
        self.worker_restarts = 0
        self.tasks_resubmitted = 0
        self._pools = [self._new_pool() for _ in range(workers)]

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            1,
            mp_context=multiprocessing.get_context("fork"),
            initializer=die_with_parent,
            initargs=(os.getpid(),),
        )

    def _restart(self, worker: int, lost: int) -> None:
        """A new process for ``worker`` after it died; ``lost``: the tasks that will run again."""
        if self.worker_restarts >= self.max_restarts:
            raise BackendError(
                f"process-pool workers keep dying: a worker died {self.worker_restarts + 1} "
                f"times (max_restarts={self.max_restarts}); a worker killed for using too "
                "much memory is the usual reason (see the kernel log, dmesg): try fewer "
                "--workers or a smaller --chunksize"
            )
        self.worker_restarts += 1
        self.tasks_resubmitted += lost
        log.warning(
            "a process-pool worker died; starting a new one and running %d task(s) again "
            "(restart %d of at most %d)",
            lost,
            self.worker_restarts,
            self.max_restarts,
        )
        self._pools[worker].shutdown(wait=True, cancel_futures=True)
        self._pools[worker] = self._new_pool()

    def _submit(self, worker: int, fn: Callable[..., Any], *args: Any) -> Future:
        """``fn(*args)`` on ``worker``, started anew first if it died while idle."""
        try:
            return self._pools[worker].submit(fn, *args)
        except BrokenProcessPool:
            self._restart(worker, 0)
            return self._pools[worker].submit(fn, *args)

    def wait_for_workers(self, n: int = 1) -> None:
        """Start the worker processes (each pool forks its own lazily) and wait for ``n`` to
        answer."""
        answers = [self._submit(w, os.getpid) for w in range(self.workers)]
        for w in range(min(n, self.workers)):
            while True:
                try:
                    answers[w].result()
                    break
                except BrokenProcessPool:
                    self._restart(w, 0)
                    answers[w] = self._submit(w, os.getpid)

    def map_unordered(
        self,
        fn: Callable[[Any], Any],
        tasks: Iterable[Any],
        *,
        affinity: Callable[[Any], tuple[Hashable, float]] | None = None,
    ) -> Iterator[Any]:
        """``fn(task)`` for every task, results in completion order.

        ``affinity``: task -> (key, weight); the tasks of a key run on one worker while the
        others have work of their own (:class:`AffinityQueues`).
        """
        queues = AffinityQueues(tasks, self.workers, affinity)
        pending: dict[Future, tuple[int, Any]] = {}  # future -> (worker, task)
        in_flight = [0] * self.workers
        try:
            while True:
                broken: dict[int, list[Any]] = {}  # worker -> its tasks to run again
                for w in range(self.workers):
                    while in_flight[w] < self.IN_FLIGHT and (task := queues.next(w)) is not _END:
                        try:
                            future = self._pools[w].submit(fn, task)
                        except BrokenProcessPool:
                            broken[w] = [task]
                            break
                        pending[future] = (w, task)
                        in_flight[w] += 1
                if not pending and not broken:
                    return
                done: set[Future] = set()
                if pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                lost = set(broken) | {pending[f][0] for f in done if _broke(f)}
                if lost:
                    # a broken pool fails every task in flight on it at once: wait for all
                    done |= wait([f for f, (w, _) in pending.items() if w in lost])[0]
                # every result that arrived is handed on before a failed task raises
                for future in sorted(done, key=lambda f: f.exception() is not None):
                    w, task = pending.pop(future)
                    in_flight[w] -= 1
                    if _broke(future):
                        broken.setdefault(w, []).append(task)
                    else:
                        yield future.result()
                for w, again in broken.items():
                    self._restart(w, len(again))
                    queues.put_back(w, again)
        finally:
            for future in pending:
                future.cancel()

    def close(self) -> None:
        for pool in self._pools:
            pool.shutdown(wait=True, cancel_futures=True)


_END = object()


def _broke(future: Future) -> bool:
    return isinstance(future.exception(), BrokenProcessPool)


def assign_by_weight(weights: dict[Hashable, float], workers: int) -> dict[Hashable, int]:
    """Each key of ``weights`` to one of ``workers`` (0 .. workers-1), the loads balanced:
    heaviest key first, each to the least loaded worker (ties: the lowest number)."""
    load = [0.0] * max(workers, 1)
    owner: dict[Hashable, int] = {}
    for key in sorted(weights, key=lambda k: -weights[k]):  # stable: ties in the given order
        w = min(range(len(load)), key=load.__getitem__)
        owner[key] = w
        load[w] += weights[key]
    return owner


class AffinityQueues:
    """Which task each of ``workers`` runs next.

    Without ``affinity``: one queue, the tasks in the order given (read lazily). With
    ``affinity`` (task -> (key, weight), e.g. (input file, events)): the tasks are grouped by
    key, keys dealt to workers by :func:`assign_by_weight`; a worker runs its groups heaviest
    first, the tasks of a group in the order given. A worker with none left steals from the
    worker with the most weight left: that worker's last group if it has another, else the
    back half of the one it runs, so the thief opens as few new files as it can. Tasks put
    back (their worker died) go first, on the same worker.
    """

    def __init__(
        self,
        tasks: Iterable[Any],
        workers: int,
        affinity: Callable[[Any], tuple[Hashable, float]] | None = None,
    ):
        self._again: list[deque[Any]] = [deque() for _ in range(workers)]
        self._shared: Iterator[Any] | None = None
        #: per worker: its groups, each a deque of (task, weight)
        self._own: list[deque[deque[tuple[Any, float]]]] = [deque() for _ in range(workers)]
        self._left = [0.0] * workers  # weight not yet handed out, per worker
        if affinity is None:
            self._shared = iter(tasks)
            return
        groups: dict[Hashable, deque[tuple[Any, float]]] = {}
        weights: dict[Hashable, float] = {}
        for task in tasks:
            key, weight = affinity(task)
            groups.setdefault(key, deque()).append((task, weight))
            weights[key] = weights.get(key, 0.0) + weight
        owner = assign_by_weight(weights, workers)
        for key in sorted(groups, key=lambda k: -weights[k]):
            self._own[owner[key]].append(groups[key])
            self._left[owner[key]] += weights[key]

    def next(self, worker: int) -> Any:
        """The next task for ``worker``, or ``_END`` when there is none for it."""
        if self._again[worker]:
            return self._again[worker].popleft()
        if self._shared is not None:
            return next(self._shared, _END)
        own = self._own[worker]
        if not own:
            self._steal(worker)
            if not own:
                return _END
        task, weight = own[0].popleft()
        self._left[worker] -= weight
        if not own[0]:
            own.popleft()
        return task

    def _steal(self, thief: int) -> None:
        victims = [w for w in range(len(self._own)) if w != thief and self._own[w]]
        if not victims:
            return
        victim = max(victims, key=self._left.__getitem__)
        theirs = self._own[victim]
        if len(theirs) > 1:
            group = theirs.pop()
        else:
            running = theirs[0]  # the thief takes the back half, the victim keeps the front
            group = deque(running.pop() for _ in range(max(1, len(running) // 2)))
            group.reverse()
            if not running:
                theirs.popleft()
        weight = sum(w for _, w in group)
        self._left[victim] -= weight
        self._left[thief] += weight
        self._own[thief].append(group)

    def put_back(self, worker: int, tasks: Iterable[Any]) -> None:
        """``tasks`` (of a worker that died) run first on ``worker``, in their order."""
        self._again[worker].extendleft(reversed(list(tasks)))


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

    While it waits for results it wakes up every :attr:`poll_seconds` and calls
    :meth:`watch`, which fails the run when no worker has been connected for
    ``lost_timeout`` seconds (None: wait as long as it takes). Tasks of a worker that left
    are run again on the others by the scheduler, at most
    ``distributed.scheduler.allowed-failures`` times each (then ``KilledWorker``).
    """

    #: Seconds between two checks of the workers while waiting.
    poll_seconds: float = 1.0
    #: Seconds a task whose input has replica sites (``map_unordered``'s ``sites``) waits for
    #: a worker of those sites before it may run on any worker; 0: no placement by site. The
    #: DIRAC backend sets it from ``dirac.locality_wait``.
    locality_wait: float = 0.0

    def __init__(
        self,
        client,
        cluster=None,
        workers: int | None = None,
        *,
        owns_client: bool = True,
        lost_timeout: float | None = None,
        stage_resources: dict[str, dict[str, float]] | None = None,
    ):
        self.client = client
        self.cluster = cluster
        self.owns_client = owns_client
        self.workers = workers or max(len(client.nthreads()), 1)
        self.lost_timeout = lost_timeout
        self.stage_resources = stage_resources or None
        self._alone_since: float | None = None
        self._unplaced_since: dict[str, float] = {}
        #: tasks restricted to their sites' workers that ran elsewhere after locality_wait
        self.tasks_moved_off_site = 0
        self._abort_error: Exception | None = None
        self._awaited: list[Any] = []  # the futures whose results are being waited for

    def abort(self, err: Exception) -> None:
        """End the run with ``err`` (from a thread that watches the run): the futures being
        waited for are cancelled, and waiting for them raises ``err``. It also ends a wait
        that :meth:`watch` cannot, such as a result the scheduler tries to gather for ever."""
        self._abort_error = err
        futures = list(self._awaited)
        if futures:
            self.client.cancel(futures)

    def _result(self, future) -> Any:
        """``future.result()``, or the error of :meth:`abort` for a future it cancelled."""
        from concurrent.futures import CancelledError

        if self._abort_error is not None:  # aborted before this wait began
            raise self._abort_error
        try:
            return future.result()
        except CancelledError:
            if self._abort_error is not None:
                raise self._abort_error from None
            raise

    def wait_for_workers(self, n: int = 1) -> None:
        self.client.wait_for_workers(n)

    def watch(self) -> None:
        """Raise :class:`BackendError` when no worker has been connected for
        ``lost_timeout`` seconds."""
        if self.lost_timeout is None:
            return
        if self.client.nthreads():
            self._alone_since = None
            return
        now = time.monotonic()
        if self._alone_since is None:
            self._alone_since = now
        elif now - self._alone_since >= self.lost_timeout:
            raise BackendError(
                f"no Dask worker connected to {self.client.scheduler.address} for "
                f"{now - self._alone_since:.0f} s (lost_timeout {self.lost_timeout:g} s)"
            )

    def map_unordered(
        self,
        fn: Callable[[Any], Any],
        tasks: Iterable[Any],
        affinity: Callable[[Any], tuple[Hashable, float]] | None = None,
        sites: Callable[[Any], Sequence[str]] | None = None,
    ) -> Iterator[Any]:
        """``fn`` of every task on the client's workers, results as they complete.

        ``affinity(task) -> (key, weight)``: tasks of one key go to one worker (keys dealt by
        weight, heaviest first, :func:`assign_by_weight`), which runs its keys heaviest first
        and each key's tasks in the given order (task priorities). The restriction is loose
        (``allow_other_workers``): Dask's work stealing moves tasks to idle workers, and the
        tasks of a lost worker run on the others. While waiting, :meth:`watch` runs every
        ``poll_seconds``.

        ``sites(task) -> site names`` (its input's replicas), with a :attr:`locality_wait`
        above 0: a task with sites runs on the workers of those sites (workers advertising
        the Dask resource ``site-<S>``), see :class:`SitePlacement`; the others as above.
        """
        tasks = list(tasks)
        if sites is not None and self.locality_wait > 0 and any(sites(t) for t in tasks):
            yield from SitePlacement(self, fn, affinity, sites).run(tasks)
            return
        workers = sorted(self.client.nthreads()) if affinity is not None else []
        if len(workers) > 1:
            futures = self._submit_affine(fn, tasks, affinity, workers)
        else:
            futures = self.client.map(fn, tasks, pure=False)
        yield from self._as_completed(futures, futures)

    def map_stages(
        self, stages: Sequence[tuple[str, Callable[[Any], Any]]], tasks: Iterable[Any]
    ) -> Iterator[Any]:
        """Each stage of each task a Dask task of its own, submitted with the resources of
        :attr:`stage_resources` for its name (without them: all stages in one task).

        Dask runs a task that asks for a resource only on a worker that advertises it
        (``dask worker --resources GPU=1``). When no connected worker advertises what a
        stage asks for during ``lost_timeout`` seconds (60 without one), the run fails naming
        the stage and the resource instead of waiting for ever.
        """
        if not self.stage_resources:
            yield from BaseExecutor.map_stages(self, stages, tasks)
            return
        needed = {
            resource: name
            for name, _ in stages
            for resource in (self.stage_resources.get(name) or {})
        }
        submitted, last = [], []
        for task in tasks:
            future = task
            for name, fn in stages:
                future = self.client.submit(
                    fn, future, resources=self.stage_resources.get(name), pure=False
                )
                submitted.append(future)
            last.append(future)

        def watch() -> None:
            self.watch()
            self._check_resources(needed)

        yield from self._as_completed(last, submitted, watch)

    def _check_resources(self, needed: dict[str, str]) -> None:
        """Raise :class:`BackendError` when no worker has advertised a resource a stage needs
        (``needed``: resource -> stage) for ``lost_timeout`` (default 60) seconds."""
        workers = self.client.scheduler_info(n_workers=-1).get("workers", {}).values()
        advertised = {r for w in workers for r, n in (w.get("resources") or {}).items() if n}
        now = time.monotonic()
        limit = self.lost_timeout if self.lost_timeout is not None else 60.0
        for resource, stage in needed.items():
            if resource in advertised:
                self._unplaced_since.pop(resource, None)
                continue
            since = self._unplaced_since.setdefault(resource, now)
            if now - since >= limit:
                raise BackendError(
                    f"the {stage} stage asks for the Dask resource {resource!r}, but no "
                    f"worker of {self.client.scheduler.address} has advertised it for "
                    f"{now - since:.0f} s: start workers with --resources {resource}=N "
                    "(a profile's worker.gpus does it for GPU) or change the profile's stages"
                )

    def _as_completed(self, futures: list[Any], owned: list[Any], watch=None) -> Iterator[Any]:
        """The results of ``futures`` as they complete, :meth:`watch` (or ``watch``) called
        every ``poll_seconds``; ``owned`` (``futures`` and what they depend on) cancelled at
        the end, however it ends."""
        from distributed import as_completed

        watch = watch or self.watch
        self._awaited = owned
        try:
            pending = as_completed(futures, loop=self.client.loop)
            next_watch = time.monotonic() + self.poll_seconds
            while not pending.is_empty():
                batch = pending.next_batch(block=False)
                for future in batch:
                    yield self._result(future)
                    future.release()
                if time.monotonic() >= next_watch:
                    watch()
                    next_watch = time.monotonic() + self.poll_seconds
                if not batch:
                    time.sleep(0.02)
        finally:
            self.client.cancel(owned)

    def _submit_affine(self, fn, tasks: list[Any], affinity, workers: list[str]) -> list[Any]:
        keys = [affinity(task) for task in tasks]
        weights: dict[Hashable, float] = {}
        for key, weight in keys:
            weights[key] = weights.get(key, 0.0) + weight
        owner = assign_by_weight(weights, len(workers))
        order = {key: i for i, key in enumerate(sorted(weights, key=lambda k: -weights[k]))}
        # stable: the given order within a key
        queue = sorted(zip(tasks, keys, strict=True), key=lambda tk: order[tk[1][0]])
        return [
            self.client.submit(
                fn,
                task,
                workers=[workers[owner[key]]],
                allow_other_workers=True,
                pure=False,
                priority=len(queue) - position,
            )
            for position, (task, (key, _)) in enumerate(queue)
        ]

    def close(self) -> None:
        if not self.owns_client:
            return
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


#: The Dask resource a worker at a site advertises is this prefix and the site's name.
SITE_RESOURCE_PREFIX = "site-"


def site_workers(client) -> dict[str, list[str]]:
    """``{site: [worker addresses]}`` of the connected workers that advertise a site (the
    Dask resource ``site-<S>``, as DIRAC jobs do)."""
    out: dict[str, list[str]] = {}
    for address, w in client.scheduler_info(n_workers=-1).get("workers", {}).items():
        for resource, amount in (w.get("resources") or {}).items():
            if resource.startswith(SITE_RESOURCE_PREFIX) and amount:
                out.setdefault(resource[len(SITE_RESOURCE_PREFIX) :], []).append(address)
    return {site: sorted(addresses) for site, addresses in out.items()}


def _not_started(keys: list[str], dask_scheduler=None) -> list[str]:
    """(Runs on the scheduler.) Those of ``keys`` that no worker has begun to run: waiting
    for a valid worker (``no-worker``), or sent to one that has not started them yet (as its
    heartbeats tell: at most a second or so late)."""
    out = []
    for key in keys:
        ts = dask_scheduler.tasks.get(key)
        if ts is None or ts.state in ("memory", "erred", "released", "forgotten"):
            continue
        worker = ts.processing_on
        if worker is not None and ts in worker.executing:
            continue
        out.append(key)
    return out


class SitePlacement:
    """Tasks sent to the workers of their input's sites, with a fallback (delay scheduling).

    A task with sites is submitted with ``workers=[the addresses of those sites' workers]``
    and ``allow_other_workers=False``: Dask runs it only there (tasks of one file together, in
    the order of ``affinity``). A task whose sites have no connected worker is held back and
    submitted so as soon as one connects. After ``locality_wait`` seconds from submission,
    every task with sites that has not started (held back, waiting for a worker of its sites,
    or queued behind others on one) is cancelled and submitted again without a restriction:
    it runs on any worker, once (a task moves at most once), counted in the executor's
    ``tasks_moved_off_site`` and logged. Tasks without sites go as
    :meth:`DaskExecutor.map_unordered` sends them (file affinity).
    """

    def __init__(self, executor: DaskExecutor, fn, affinity, sites):
        self.executor = executor
        self.client = executor.client
        self.fn = fn
        self.affinity = affinity
        self.sites = sites
        self.deadline = 0.0
        self.held: list[tuple[Any, int]] = []  # (task, priority): no worker at its sites yet
        self.restricted: dict[Any, tuple[Any, Any, int]] = {}  # key -> (future, task, priority)
        self.replaced: set[Any] = set()  # keys of futures cancelled for a resubmission
        self.owned: list[Any] = []

    def run(self, tasks: list[Any]) -> Iterator[Any]:
        from distributed import as_completed

        ex = self.executor
        local = [t for t in tasks if self.sites(t)]
        free = [t for t in tasks if not self.sites(t)]
        futures: list[Any] = []
        if free:
            workers = sorted(self.client.nthreads()) if self.affinity is not None else []
            if len(workers) > 1:
                futures += ex._submit_affine(self.fn, free, self.affinity, workers)
            else:
                futures += self.client.map(self.fn, free, pure=False)
        self.deadline = time.monotonic() + ex.locality_wait
        where = site_workers(self.client)
        for task, priority in self._ordered(local):
            future = self._submit_at_sites(task, priority, where)
            if future is not None:
                futures.append(future)
        self.owned += futures
        ex._awaited = self.owned
        pending = as_completed(futures, loop=self.client.loop)
        next_watch = time.monotonic() + ex.poll_seconds
        try:
            while not pending.is_empty() or self.held:
                batch = pending.next_batch(block=False)
                for future in batch:
                    if future.key in self.replaced:
                        continue
                    self.restricted.pop(future.key, None)
                    yield ex._result(future)
                    future.release()
                if time.monotonic() >= next_watch:
                    ex.watch()
                    for future in self._place():
                        pending.add(future)
                    next_watch = time.monotonic() + ex.poll_seconds
                if not batch:
                    time.sleep(0.02)
        finally:
            self.client.cancel(self.owned)

    def _ordered(self, tasks: list[Any]) -> list[tuple[Any, int]]:
        """The tasks with their priorities: a file's tasks together, heaviest file first."""
        if self.affinity is None:
            return [(t, len(tasks) - i) for i, t in enumerate(tasks)]
        keys = [self.affinity(t) for t in tasks]
        weights: dict[Hashable, float] = {}
        for key, weight in keys:
            weights[key] = weights.get(key, 0.0) + weight
        order = {key: i for i, key in enumerate(sorted(weights, key=lambda k: -weights[k]))}
        queue = sorted(zip(tasks, keys, strict=True), key=lambda tk: order[tk[1][0]])
        return [(t, len(queue) - i) for i, (t, _) in enumerate(queue)]

    def _submit_at_sites(self, task, priority: int, where: dict[str, list[str]]):
        """Submit ``task`` restricted to the workers of its sites; None (held back) when
        none of them has a connected worker."""
        addresses = sorted({a for site in self.sites(task) for a in where.get(site, ())})
        if not addresses:
            self.held.append((task, priority))
            return None
        future = self.client.submit(
            self.fn,
            task,
            workers=addresses,
            allow_other_workers=False,
            pure=False,
            priority=priority,
        )
        self.restricted[future.key] = (future, task, priority)
        return future

    def _place(self) -> list[Any]:
        """Every ``poll_seconds``: held-back tasks to their sites' workers that connected
        since; after the wait, the tasks with sites not started yet to any worker."""
        new: list[Any] = []
        if time.monotonic() < self.deadline:
            if self.held:
                where = site_workers(self.client)
                held, self.held = self.held, []
                for task, priority in held:
                    future = self._submit_at_sites(task, priority, where)
                    if future is not None:
                        new.append(future)
        else:
            moving = [(task, priority) for task, priority in self.held]
            self.held = []
            waiting = [k for k, (f, _, _) in self.restricted.items() if not f.done()]
            if waiting:
                for key in self.client.run_on_scheduler(_not_started, waiting):
                    future, task, priority = self.restricted.pop(key)
                    self.replaced.add(key)
                    self.client.cancel([future])
                    moving.append((task, priority))
            for task, priority in moving:
                new.append(self.client.submit(self.fn, task, pure=False, priority=priority))
            if moving:
                self.executor.tasks_moved_off_site += len(moving)
                log.warning(
                    "%d task(s) did not start on a worker of their input's sites within "
                    "%g s (locality_wait): they run on any worker (%d so far)",
                    len(moving),
                    self.executor.locality_wait,
                    self.executor.tasks_moved_off_site,
                )
        self.owned += new
        return new


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
