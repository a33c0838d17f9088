"""What the batch backends share: profile -> dask-jobqueue cluster -> Dask executor.

Each batch backend (:mod:`backends.slurm`, :mod:`backends.htcondor`, :mod:`backends.dirac`) is a
:class:`JobQueueBackend` that names its dask-jobqueue ``Job`` class and turns its profile section
into that class's keyword arguments; everything else (scheduler address, worker resources,
containers, port ranges, TLS, timing of worker arrival, cleanup) lives here once.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import threading
import time
from collections.abc import Mapping
from contextlib import suppress
from typing import Any, ClassVar

from dask.utils import parse_bytes
from distributed.core import Status
from distributed.diagnostics.plugin import SchedulerPlugin

from agc.config import ConfigError, check_value
from backends.base import BackendError, capped_workers
from backends.local import DaskExecutor
from backends.profiles import Profile, ProfileError, load_profile

log = logging.getLogger(__name__)

#: Placeholder scheduler address in job scripts rendered without a running scheduler.
SCHEDULER_PLACEHOLDER = "tcp://<scheduler-address>:8786"

DEFAULT_DEATH_TIMEOUT = 60
DEFAULT_START_TIMEOUT = 600
DEFAULT_LOST_TIMEOUT = 120
#: Seconds the scheduler's test connection to a new worker may take (``worker.reach_timeout``).
DEFAULT_REACH_TIMEOUT = 10.0
#: Margin before the walltime at which workers retire by default (adapt), at most.
LIFETIME_MARGIN = 120

#: Job monitoring defaults (``dirac.monitor``): seconds between status polls (0: off),
#: seconds a job may stay queued, replacements per run.
DEFAULT_MONITOR_INTERVAL = 60.0
DEFAULT_MAX_WAITING = 1800.0
DEFAULT_MAX_RESUBMISSIONS = 3
#: DIRAC states of a job that ended without doing its work (when we did not close it).
FAILED_STATES = frozenset({"Failed", "Killed", "Stalled", "Deleted"})
#: DIRAC states of a job that is still queued (no worker node yet).
WAITING_STATES = frozenset({"Waiting", "Received", "Checking", "Matched"})


def job_status(state: str) -> str:
    """The status word of a job's state in words (``Failed (...) at SITE`` -> ``Failed``)."""
    return state.split(" ", 1)[0] if state else state


def job_site(state: str) -> str | None:
    """The site of a job's state in words (``... at LCG.RAL-LCG2.uk``), None if it names none."""
    _, sep, site = state.rpartition(" at ")
    site = site.strip()
    if not sep or not site or " " in site or site.endswith(")"):  # "(stuck at node)"
        return None
    return site


class WorkerArrivals(SchedulerPlugin):
    """Scheduler plugin: when workers join and leave, and the work lost with those that leave.

    Attributes:
        times: the time (``time.perf_counter()``) each worker joined.
        connected: workers connected now.
        alone_since: ``time.monotonic()`` since when no worker is connected (None while one is).
        lost: workers that left without being retired (their job was killed or ended:
            ``scancel``, walltime, a crash).
        retired: workers that left gracefully (``--lifetime``, adapt scaling down).
        tasks_lost: tasks the scheduler had to run again because the worker that was
            running them, or held their result, left: the sum of the ``processing-tasks`` and
            ``lost-computed-tasks`` of its ``remove-worker`` events.
    """

    name = "agc-worker-arrivals"

    def __init__(self) -> None:
        self.times: list[float] = []
        self.connected = 0
        self.alone_since: float | None = time.monotonic()
        self.lost = 0
        self.retired = 0
        self.tasks_lost = 0

    def add_worker(self, scheduler=None, worker=None) -> None:
        self.times.append(time.perf_counter())
        self.connected += 1
        self.alone_since = None

    def remove_worker(self, scheduler=None, worker=None, **kwargs) -> None:
        self.connected = max(self.connected - 1, 0)
        if not self.connected:
            self.alone_since = time.monotonic()

    def log_event(self, topic, msg) -> None:
        if topic != "all" or not isinstance(msg, dict) or msg.get("action") != "remove-worker":
            return
        if msg.get("expected"):
            self.retired += 1
        else:
            self.lost += 1
        self.tasks_lost += len(msg.get("processing-tasks", ())) + len(
            msg.get("lost-computed-tasks", ())
        )


class WorkerReachability(SchedulerPlugin):
    """Scheduler plugin: the scheduler connects to each worker that joins, once.

    A worker dials out to the scheduler, so it joins even where nothing can connect to it
    (a site firewall that drops new inbound connections); but the scheduler gathers results
    from it and other workers fetch data from it over connections to the worker, which would
    then time out and be tried again for ever (``Couldn't gather keys ... rescheduling``). A
    test connection with the scheduler's own connection arguments (TLS included), at most
    ``timeout`` seconds, finds that at once. :attr:`unreachable`: ``{address: error}``.
    """

    name = "agc-worker-reachability"

    def __init__(self, timeout: float = DEFAULT_REACH_TIMEOUT) -> None:
        self.timeout = timeout
        self.reachable: set[str] = set()
        self.unreachable: dict[str, str] = {}
        self.names: dict[str, str] = {}
        self._probes: set[Any] = set()

    def add_worker(self, scheduler=None, worker=None) -> None:
        import asyncio

        if scheduler is None or worker is None or self.timeout <= 0:
            return
        ws = scheduler.workers.get(worker)
        self.names[worker] = str(ws.name) if ws is not None else worker
        task = asyncio.ensure_future(self._probe(scheduler, worker))
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

    async def _probe(self, scheduler, address: str) -> None:
        from distributed.comm import connect

        try:
            comm = await connect(address, timeout=self.timeout, **scheduler.connection_args)
        except Exception as err:  # noqa: BLE001 - every failure is the answer
            if address in scheduler.workers:  # not a worker that left meanwhile
                self.unreachable[address] = f"{type(err).__name__}: {err}"
                log.error("the scheduler cannot connect to worker %s: %s", address, err)
            return
        self.reachable.add(address)
        await comm.close()

    def error(self, who: str) -> BackendError | None:
        """The error of the first unreachable worker, or None."""
        if not self.unreachable:
            return None
        address, problem = next(iter(self.unreachable.items()))
        name = self.names.get(address, address)
        more = len(self.unreachable) - 1
        return BackendError(
            f"{who}: the scheduler cannot connect to worker {address} (name {name}"
            + (f"; and {more} more worker(s)" if more else "")
            + f"): {problem}. The worker connected out to the scheduler, but connections to "
            "it time out or are refused (a firewall at its site?), so its results could never "
            "be fetched. Turn on the relay broker (profile section relay: {broker: HOST:PORT}; "
            "README, 'Workers behind firewalls'), or open worker.port_range to the scheduler "
            "and the other workers"
        )


class RecordsSubmitError:
    """Job mixin: keep the error of a failed submission (dask-jobqueue only logs it).

    A job class that submits in its own way overrides :meth:`submit_and_start`, not ``start``.
    """

    submit_error: Exception | None = None

    async def start(self):
        try:
            await self.submit_and_start()
        except Exception as err:
            self.submit_error = err
            self.status = Status.failed  # so that the cluster can still close
            raise

    async def submit_and_start(self):
        """Submit the job and mark it started (dask-jobqueue's ``Job.start``)."""
        await super().start()


class JobQueueExecutor(DaskExecutor):
    """A Dask client on a dask-jobqueue cluster, with the latency hooks of a batch system.

    While it waits (for the first workers, for results) it wakes up every
    :attr:`poll_seconds`: it fails with :class:`BackendError` naming the jobs, their state and
    their logs when no worker connected within ``start_timeout`` or when none has been
    connected for ``lost_timeout`` (every job gone); with ``adaptive`` it submits jobs again
    for those that ended (a worker that retired at the end of its lifetime, a killed job).

    Attributes:
        workers: Dask worker processes requested (jobs x processes per job; with adapt, the
            maximum).
        cores_per_worker: threads per worker process.
        worker_restarts: workers lost during the run (left without being retired).
        workers_retired: workers that retired during the run (``--lifetime``, adapt).
        tasks_resubmitted: tasks run again because their worker left (see
            :class:`WorkerArrivals`).
        jobs_resubmitted: jobs replaced by the job monitor (``monitor``).
        job_records: ``{job id: {"site": ..., "status": ...}}`` of every job the monitor saw
            (last state seen; one last poll at close); empty without ``monitor``.

    With ``monitor`` (``{"interval", "max_waiting", "max_resubmissions"}``, e.g. from
    ``dirac.monitor``) a second thread asks the backend for the jobs' states every
    ``interval`` seconds (0: never; a failing or slow status call is logged and asked again
    at the next interval). A job reported Failed/Killed/Stalled/Deleted while the cluster
    still holds it (or, without adapt, after dask-jobqueue forgot it once its worker left;
    jobs the run closed itself are never taken for failed ones), or queued (Waiting/Received/
    Checking/Matched) for more than ``max_waiting`` seconds, is logged, killed and replaced
    by a new job of the same worker spec (the same site), at most ``max_resubmissions``
    times per run.
    """

    def __init__(
        self,
        client,
        cluster,
        workers: int,
        cores_per_worker: int,
        arrivals: WorkerArrivals,
        started: float,
        start_timeout: float,
        *,
        backend: JobQueueBackend | None = None,
        lost_timeout: float = DEFAULT_LOST_TIMEOUT,
        adaptive: bool = False,
        stage_resources: dict[str, dict[str, float]] | None = None,
        monitor: Mapping[str, float] | None = None,
        reachability: WorkerReachability | None = None,
        relay_broker: Any = None,
    ):
        super().__init__(
            client, cluster, workers, lost_timeout=lost_timeout, stage_resources=stage_resources
        )
        self._reachability = reachability
        #: the relay broker started for this run (:class:`backends.relay.broker.BrokerProcess`)
        self.relay_broker = relay_broker
        #: where the workers reached the broker ("" without a relay), and the started
        #: broker's counts at the end (:meth:`backends.relay.broker.Broker.stats`)
        self.relay_address = backend.relay_broker_address() if backend is not None else None
        self.relay_stats: dict[str, Any] = {}
        self.cores_per_worker = cores_per_worker
        self._arrivals = arrivals
        self._started = started
        self._start_timeout = start_timeout
        self._backend = backend
        self._adaptive = adaptive
        self._jobs_seen: dict[str, None] = {}  # every job id, in submission order
        self._counted = False  # set by close()
        self.worker_restarts = self.workers_retired = self.tasks_resubmitted = 0
        self._lost_error: BackendError | None = None
        self.jobs_resubmitted = 0
        self.job_records: dict[str, dict[str, str | None]] = {}
        self._monitor = dict(monitor) if monitor is not None else None
        self._latest: dict[str, str] = {}  # the cluster's name of a worker -> its last job id
        self._first_seen: dict[str, float] = {}  # job id -> time.monotonic() first seen
        self._handled: set[str] = set()  # job ids already replaced or given up on
        self._remember_jobs()
        self._stop = threading.Event()
        self._watchdog = threading.Thread(target=self._watch_jobs, name="agc-jobs", daemon=True)
        self._watchdog.start()
        self._monitor_thread: threading.Thread | None = None
        if self._monitor is not None and float(self._monitor.get("interval") or 0) > 0:
            self._monitor_thread = threading.Thread(
                target=self._monitor_jobs, name="agc-job-monitor", daemon=True
            )
            self._monitor_thread.start()

    # --- what was lost -------------------------------------------------------------------
    def _count_losses(self) -> None:
        """Copy the plugin's counts (until :meth:`close`: what closing removes is no loss)."""
        if self._counted:
            return
        a = self._arrivals
        self.worker_restarts, self.workers_retired = a.lost, a.retired
        self.tasks_resubmitted = a.tasks_lost

    # --- waiting -------------------------------------------------------------------------
    def wait_for_workers(self, n: int = 1) -> None:
        """Block until ``n`` workers have connected (time to first worker for ``n=1``), at
        most ``start_timeout`` seconds."""
        deadline = time.monotonic() + self._start_timeout
        while True:
            try:
                self.client.wait_for_workers(
                    n, timeout=min(self.poll_seconds, max(deadline - time.monotonic(), 0.01))
                )
                return
            except TimeoutError:
                pass
            if time.monotonic() >= deadline:
                raise BackendError(
                    f"{self._who()}: {n} worker(s) did not connect within "
                    f"{self._start_timeout:g} s (worker.start_timeout); {self._jobs_report()}"
                ) from None

    def watch(self) -> None:
        """Called while waiting for results: raise the error of :meth:`_watch_jobs`, if any,
        or that of a worker the scheduler cannot connect to (:class:`WorkerReachability`)."""
        if self._lost_error is not None:
            raise self._lost_error
        self._check_reachability()

    def _check_reachability(self) -> None:
        """Fail the run (:meth:`abort`, which also ends a result the scheduler would try to
        gather for ever) when the scheduler could not connect to a worker."""
        if self._reachability is None or self._lost_error is not None:
            return
        err = self._reachability.error(self._who())
        if err is not None:
            self._lost_error = err
            log.error("%s", err)
            self.abort(err)
            raise err

    def _watch_jobs(self) -> None:
        """Background thread, every :attr:`poll_seconds`: remember the job ids, replace ended
        jobs (adapt), and once a worker has connected, fail when none has been for
        ``lost_timeout`` seconds. The error also fails the tasks waiting in the scheduler, so
        that whoever waits for their results (not only :meth:`map_unordered`) gets it."""
        while not self._stop.wait(self.poll_seconds):
            try:
                self._count_losses()
                self._remember_jobs()
                self._replace_ended_jobs()
                try:
                    self._check_reachability()
                except BackendError:
                    return
                since = self._arrivals.alone_since
                if self.lost_timeout is None or since is None or not self._arrivals.times:
                    continue
                alone = time.monotonic() - since
                if alone < self.lost_timeout:
                    continue
                self._lost_error = BackendError(
                    f"{self._who()}: no Dask worker connected for {alone:.0f} s "
                    f"(worker.lost_timeout {self.lost_timeout:g} s): every job ended or lost "
                    f"its connection; {self._jobs_report()}"
                )
                log.error("%s", self._lost_error)
                self._fail_waiting_tasks(self._lost_error)
                return
            except Exception:  # the cluster closing under it
                if self._stop.is_set():
                    return
                log.debug("job watch failed", exc_info=True)

    def _fail_waiting_tasks(self, err: Exception) -> None:
        """Mark every task waiting for a worker as failed with ``err``."""
        from distributed.protocol import pickle

        scheduler = getattr(self.cluster, "scheduler", None)
        if scheduler is None or not hasattr(scheduler, "queued"):
            return
        exception = pickle.dumps(err)

        def fail() -> None:
            stimulus_id = f"agc-lost-timeout-{time.time()}"
            recommendations: dict = {}
            for ts in [*scheduler.queued, *scheduler.unrunnable]:
                recommendations.update(
                    scheduler.transition(
                        ts.key, "erred", exception=exception, cause=ts.key, stimulus_id=stimulus_id
                    )
                )
            scheduler.transitions(recommendations, stimulus_id=stimulus_id)

        self.cluster.loop.add_callback(fail)

    def _who(self) -> str:
        if self._backend is None:
            return "batch backend"
        return f"--backend {self._backend.name} (profile {self._backend.profile.source})"

    def _jobs_report(self) -> str:
        """The jobs, their state in the batch system where it can be asked, and their logs."""
        ids = list(self._jobs_seen)
        if not ids:
            return "no job was submitted"
        text = f"jobs {', '.join(ids)}"
        if self._backend is not None:
            states = self._backend.job_states(ids)
            if states is not None:
                listed = (f"{i}: {states.get(i, 'not in the queue')}" for i in ids)
                text += f" ({', '.join(listed)})"
            text += f"; their logs: {self._backend.log_locations(ids)}"
        return text

    def _remember_jobs(self) -> None:
        for name, job in list(self.cluster.workers.items()):
            job_id = getattr(job, "job_id", None)
            if not job_id:
                continue
            self._jobs_seen.setdefault(job_id, None)
            if job_id not in self._first_seen:
                self._latest[name] = job_id
                self._first_seen[job_id] = time.monotonic()
            if self._monitor is not None and job_id not in self.job_records:
                self.job_records[job_id] = {"site": getattr(job, "site", None), "status": None}

    # --- job monitoring ------------------------------------------------------------------
    def _monitor_jobs(self) -> None:
        """Background thread, every ``monitor["interval"]`` seconds: :meth:`poll_jobs`."""
        assert self._monitor is not None
        interval = float(self._monitor["interval"])
        while not self._stop.wait(interval):
            try:
                self.poll_jobs()
            except Exception:  # the cluster closing under it, a status call that broke
                if self._stop.is_set():
                    return
                log.warning(
                    "job monitor: polling the jobs failed; again in %g s", interval, exc_info=True
                )

    def _ask_states(self) -> dict[str, str] | None:
        """The backend's state of every job seen (recorded in :attr:`job_records`), or None
        where it cannot be asked now."""
        ids = list(self._jobs_seen)
        if not ids or self._backend is None:
            return {}
        states = self._backend.job_states(ids)
        if states is None:
            return None
        for job_id, state in states.items():
            record = self.job_records.setdefault(job_id, {"site": None, "status": None})
            record["status"] = job_status(state)
            record["site"] = job_site(state) or record["site"]
        return states

    def poll_jobs(self) -> None:
        """Ask the jobs' states once; replace those that failed or wait too long."""
        if self._monitor is None or self.cluster is None:
            return
        self._remember_jobs()
        states = self._ask_states()
        if states is None:
            log.warning(
                "job monitor: %s could not be asked for the jobs' states; again in %g s",
                self._who(),
                float(self._monitor.get("interval") or 0),
            )
            return
        max_waiting = float(self._monitor.get("max_waiting", DEFAULT_MAX_WAITING))
        now = time.monotonic()
        for name, job_id in list(self._latest.items()):
            if job_id in self._handled or job_id not in states:
                continue
            if name not in self.cluster.worker_spec:  # being closed (adapt scaling down)
                continue
            job = self.cluster.workers.get(name)
            held = job is not None and getattr(job, "job_id", None) == job_id
            if job is not None and not held:  # a newer job of that worker already
                continue
            if not held and self._adaptive:  # adapt starts forgotten jobs again itself
                continue
            state = states[job_id]
            status = job_status(state)
            if status in FAILED_STATES:
                # held: DIRAC ended it under a worker the cluster still counts on; not held:
                # dask-jobqueue forgot it after its worker left (lost-worker-timeout) and,
                # without adapt, would not start it again
                why, kill = f"reported {state}" + ("" if held else " (its worker left)"), False
            elif held and status in WAITING_STATES and now - self._first_seen[job_id] > max_waiting:
                waited = now - self._first_seen[job_id]
                why = (
                    f"still {state} after {waited:.0f} s "
                    f"(dirac.monitor.max_waiting {max_waiting:g} s)"
                )
                kill = True
            else:
                continue
            self._handled.add(job_id)
            self._replace_job(name, job_id, job, why, kill)

    def _replace_job(self, name: str, job_id: str, job: Any, why: str, kill: bool) -> None:
        """Kill and forget ``job``, then let the cluster start its worker spec again (as
        dask-jobqueue does for a missing worker): a new job at the same site. ``kill``: the
        job was still queued (said so in the log)."""
        assert self._monitor is not None
        site = self.job_records.get(job_id, {}).get("site") or "any site"
        limit = int(self._monitor.get("max_resubmissions", DEFAULT_MAX_RESUBMISSIONS))
        if self.jobs_resubmitted >= limit:
            log.error(
                "job monitor: job %s (%s) at %s %s; not replaced: dirac.monitor."
                "max_resubmissions %d reached (the run goes on with the other jobs)",
                job_id,
                name,
                site,
                why,
                limit,
            )
            return
        cluster = self.cluster

        async def swap() -> None:
            # a Failed/Stalled job is killed too: a stalled one may still run its worker,
            # which would hold the worker's name; killing an ended job is no error
            if job is not None:
                await job.close()
            if job is not None and cluster.workers.get(name) is job:
                del cluster.workers[name]
            if name in cluster.worker_spec:
                await cluster._correct_state()

        cluster.sync(swap)
        self.jobs_resubmitted += 1
        new = cluster.workers.get(name)
        new_id = getattr(new, "job_id", None)
        log.warning(
            "job monitor: job %s (%s) at %s %s; %sreplaced by job %s (%d of at most %d)",
            job_id,
            name,
            site,
            why,
            "killed and " if kill else "",
            new_id or f"(submission failed: {getattr(new, 'submit_error', None)})",
            self.jobs_resubmitted,
            limit,
        )
        self._remember_jobs()

    def job_list(self) -> list[dict[str, str | None]]:
        """Every job the monitor saw, in submission order: ``{"id", "site", "status"}``."""
        return [{"id": job_id, **record} for job_id, record in self.job_records.items()]

    def _replace_ended_jobs(self) -> None:
        """With adapt: submit again the jobs the cluster still plans but no longer holds.

        dask-jobqueue forgets a job some seconds after its worker left
        (``distributed.deploy.lost-worker-timeout``) but keeps it in its plan, so adapt, which
        compares its target with the plan, would not replace it.
        """
        if not self._adaptive or self.cluster is None:
            return
        if set(self.cluster.worker_spec) - set(self.cluster.workers):
            self.cluster.sync(self.cluster._correct_state)

    def time_to_all_workers(self) -> float | None:
        """Seconds from cluster start until all requested workers had joined (None if not)."""
        times = sorted(self._arrivals.times)
        if len(times) < self.workers:
            return None
        return times[self.workers - 1] - self._started

    def worker_arrival_seconds(self) -> list[float]:
        """Seconds from cluster start at which each worker joined, in order."""
        return [t - self._started for t in sorted(self._arrivals.times)]

    def job_ids(self) -> list[str]:
        """Batch-system ids of the jobs currently held by the cluster."""
        return [
            job.job_id
            for job in list(self.cluster.workers.values())
            if getattr(job, "job_id", None)
        ]

    def close(self) -> None:
        self._stop.set()
        self._count_losses()
        self._counted = True
        if self._monitor_thread is not None:
            self._monitor_thread.join(timeout=60)
        if self.cluster is not None and getattr(self.cluster, "_adaptive", None) is not None:
            self.cluster._adaptive.stop()
        if self._monitor is not None and self.cluster is not None:
            with suppress(Exception):
                self._remember_jobs()
        try:
            super().close()
        finally:
            if self.relay_broker is not None:
                try:
                    self.relay_stats = self.relay_broker.stats()
                except (OSError, ValueError) as err:
                    log.warning("relay broker: its counts could not be asked: %s", err)
                self.relay_broker.stop()
        if self._monitor is not None:  # the jobs' final states, once the cluster closed them
            try:
                if self._ask_states() is None:
                    log.warning("job monitor: the jobs' final states could not be asked")
            except Exception:
                log.warning("job monitor: the jobs' final states could not be asked", exc_info=True)


class JobQueueBackend:
    """Base of the batch backends: a validated profile and a dask-jobqueue cluster class.

    Args:
        profile: ``--profile`` (file or shipped name) or a mapping; required.
        workers: ``--workers``: number of jobs; overrides the profile.
        mode: only ``dask`` (or unset): batch backends always run Dask workers.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: The dask-jobqueue ``JobQueueCluster`` subclass this backend starts.
    cluster_cls: ClassVar[Any]
    #: Shipped profile suggested when ``--profile`` is missing.
    example_profile: ClassVar[str] = ""
    #: where the workers reach the broker started for the run (set by its start)
    _relay_address: str | None = None

    def __init__(
        self,
        profile: str | Mapping[str, Any] | None = None,
        workers: int | None = None,
        mode: str | None = None,
    ):
        if mode not in (None, "dask"):
            raise BackendError(
                f"--mode {mode!r}: the {self.name} backend always runs Dask "
                "workers; leave --mode unset"
            )
        if profile is None:
            raise BackendError(
                f"--backend {self.name} needs --profile FILE_OR_NAME describing "
                f"the site, e.g. --profile {self.example_profile} "
                "(see 'agc profiles list')"
            )
        try:
            check_value("workers", workers)
        except ConfigError as err:
            raise BackendError(f"--workers {workers}: {err.problem}") from None
        self.profile: Profile = load_profile(profile, backend=self.name)
        self.jobs = workers or self.profile.workers
        self.check()
        self.check_stage_resources()
        self.check_relay()

    # --- what a subclass provides -------------------------------------------------------
    def check(self) -> None:
        """Backend-specific checks of the profile beyond the schema (raise ProfileError)."""

    def job_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the backend's ``Job`` class from its profile section."""
        return {}

    def walltime_seconds(self) -> float | None:
        """The jobs' time limit in seconds (None: the profile sets none)."""
        return None

    def job_states(self, job_ids: list[str]) -> dict[str, str] | None:
        """The batch system's state of each job (ids it no longer lists are left out); None
        where the backend cannot ask."""
        return None

    def monitor_settings(self) -> dict[str, float] | None:
        """``{interval, max_waiting, max_resubmissions}`` of the executor's job monitor, or
        None where the backend's jobs are not monitored (see :class:`JobQueueExecutor`)."""
        return None

    def log_locations(self, job_ids: list[str]) -> str:
        """Where the stdout/stderr of the jobs are, in words."""
        log_dir = self.profile.data.get("log_directory")
        if log_dir:
            return f"{os.path.abspath(log_dir)}/ (one .out/.err per job)"
        return "the batch system's default place for job output"

    # --- shared ---------------------------------------------------------------------------
    @property
    def processes(self) -> int:
        return int(self.profile.worker.get("processes", 1))

    @property
    def cores_per_worker(self) -> int:
        return max(int(self.profile.worker["cores"]) // self.processes, 1)

    @property
    def adapt(self) -> dict[str, int] | None:
        """``{minimum, maximum}`` jobs of adaptive scaling (``worker.adapt``), else None."""
        adapt = self.profile.worker.get("adapt")
        if adapt is None:
            return None
        minimum = int(adapt.get("minimum", 1))
        maximum = int(adapt.get("maximum", max(self.jobs, minimum)))
        return {"minimum": min(minimum, maximum), "maximum": maximum}

    @property
    def lost_timeout(self) -> float:
        return float(self.profile.worker.get("lost_timeout", DEFAULT_LOST_TIMEOUT))

    def lifetime_args(self) -> list[str]:
        """``dask worker`` options that retire a worker before its job's walltime.

        ``worker.lifetime`` / ``lifetime_stagger`` / ``lifetime_restart`` when set; otherwise,
        with adapt and a walltime, a lifetime of the walltime less a margin (``min(2 min, a
        quarter of it)``) and a stagger of half that margin, the pattern dask-jobqueue
        recommends: the retiring worker hands on its work, its job ends, and adapt submits a
        new one.
        """
        w = self.profile.worker
        lifetime = _seconds(w.get("lifetime"))
        stagger = _seconds(w.get("lifetime_stagger"))
        walltime = self.walltime_seconds()
        if lifetime is None and walltime and self.adapt is not None:
            margin = min(LIFETIME_MARGIN, walltime / 4)
            lifetime = walltime - margin
            stagger = margin / 2 if stagger is None else stagger
        if lifetime is None:
            return []
        if walltime and lifetime + (stagger or 0) >= walltime:
            raise BackendError(
                f"profile {self.profile.source}: worker.lifetime {lifetime:g} s"
                + (f" + lifetime_stagger {stagger:g} s" if stagger else "")
                + f" does not end before the walltime ({walltime:g} s): the batch system would "
                "kill the workers before they retire"
            )
        args = ["--lifetime", f"{lifetime:g}s"]
        if stagger:
            args += ["--lifetime-stagger", f"{stagger:g}s"]
        if w.get("lifetime_restart"):
            args.append("--lifetime-restart")
        return args

    def common_job_kwargs(self) -> dict[str, Any]:
        """Worker resources, command, environment and logs, common to every batch system."""
        w = self.profile.worker
        kwargs: dict[str, Any] = {
            "cores": int(w["cores"]),
            "memory": w["memory"],
            "processes": self.processes,
            "death_timeout": w.get(
                "death_timeout", self.site_config("death-timeout") or DEFAULT_DEATH_TIMEOUT
            ),
            "python": self.worker_python(),
            "job_script_prologue": self.with_site("job-script-prologue", w.get("setup", [])),
            "worker_extra_args": self.with_site("worker-extra-args", self.worker_extra_args()),
        }
        if w.get("local_directory"):
            kwargs["local_directory"] = w["local_directory"]
        if self.profile.data.get("log_directory"):
            kwargs["log_directory"] = self.profile.data["log_directory"]
        return kwargs

    def site_config(self, key: str, default: Any = None) -> Any:
        """The site's dask-jobqueue setting ``jobqueue.<batch system>.<key>`` (its
        ``jobqueue.yaml``, ``DASK_CONFIG``, ``DASK_JOBQUEUE__...`` variables), or ``default``."""
        import dask

        name = getattr(getattr(self.cluster_cls, "job_cls", None), "config_name", None)
        if not name:
            return default
        value = dask.config.get(f"jobqueue.{name}.{key}", default=None)
        return default if value is None else value

    def with_site(self, key: str, ours: Any) -> Any:
        """The site's ``key`` (a list or mapping of dask-jobqueue's config) followed by the
        profile's: a profile adds to the site's job settings and overrides only what it
        sets."""
        site = self.site_config(key)
        if isinstance(ours, dict):
            return {**(site if isinstance(site, dict) else {}), **ours}
        return [*(site if isinstance(site, list | tuple) else []), *ours]

    def worker_python(self) -> str:
        """The python that starts the worker (the profile's, the site's dask-jobqueue one, or
        this one), wrapped in ``apptainer exec`` for a container."""
        w = self.profile.worker
        container = w.get("container")
        if not container:
            return w.get("python") or self.site_config("python") or sys.executable
        python = w.get("python", "python3")
        runtime = container.get("runtime", "apptainer")
        if runtime == "docker":  # HTCondor's docker universe starts the container itself
            return python
        binds = ",".join(container.get("binds", ["/cvmfs"]))
        bind = f" --bind {shlex.quote(binds)}" if binds else ""
        gpu = " --nv" if w.get("gpus") else ""  # the host's NVIDIA driver in the container
        return f"{runtime} exec{gpu}{bind} {shlex.quote(container['image'])} {python}"

    # --- workers behind firewalls: the relay broker ----------------------------------------
    def relay(self) -> dict[str, Any] | None:
        """The profile's ``relay`` section with its defaults (``start`` true, ``listen``
        0.0.0.0 and the broker's port), or None without one."""
        r = self.profile.section("relay")
        if not r:
            return None
        port = str(r["broker"]).rpartition(":")[2]
        return {
            "broker": str(r["broker"]),
            "start": bool(r.get("start", True)),
            "listen": str(r.get("listen") or f"0.0.0.0:{port}"),
        }

    def check_relay(self) -> None:
        """Refuse a ``relay`` with settings that contradict it."""
        relay = self.relay()
        if relay is None:
            return
        w = self.profile.worker
        where = f"profile {self.profile.source}"
        if w.get("port_range"):
            raise ProfileError(
                f"{where}: relay and worker.port_range: relayed workers listen on no port (every "
                "connection to them comes over their link to the broker); drop one of them"
            )
        if w.get("interface") or self.site_config("interface"):
            raise ProfileError(
                f"{where}: relay and a worker interface (jobqueue interface): relayed workers "
                "listen on no interface; drop the interface setting"
            )
        if not relay["start"] and relay["broker"].endswith(":0"):
            raise ProfileError(
                f"{where}: relay.broker {relay['broker']!r}: port 0 means a free port of a "
                "broker started for the run (relay.start true); give the port of the site's "
                "broker"
            )

    def relay_broker_address(self) -> str | None:
        """Where the workers reach the broker: ``relay.broker``, with the port the started
        broker took when it is 0 (after :meth:`start`)."""
        relay = self.relay()
        if relay is None:
            return None
        return self._relay_address or relay["broker"]

    def reach_timeout(self) -> float:
        return float(self.profile.worker.get("reach_timeout", DEFAULT_REACH_TIMEOUT))

    def worker_extra_args(self) -> list[str]:
        """The job's extra ``dask worker`` arguments: the profile's, the resources its workers
        advertise (:meth:`worker_resources`, unless the profile or the site gives its own
        ``--resources``), the nanny preload that gives batch workers the allocator behaviour of
        local ones (:mod:`backends.worker_setup`), and the port range."""
        w = self.profile.worker
        args = list(w.get("extra_args", []))
        if self.own_resources() is None:
            resources = self.worker_resources()
            if resources:
                args += ["--resources", ",".join(f"{k}={v}" for k, v in resources.items())]
        args += ["--preload-nanny", "backends.worker_setup"]
        args += self.lifetime_args()
        if w.get("port_range"):
            args += ["--worker-port", w["port_range"], "--nanny-port", w["port_range"]]
        broker = self.relay_broker_address()
        if broker is not None:  # the protocol (relay://) comes with the cluster's options
            args += ["--host", broker]
        return args

    # --- stages and the resources of the workers -------------------------------------------
    def stage_resources(self) -> dict[str, dict[str, float]] | None:
        """The profile's ``stages`` (``{"read": {"CPU": 1.0}, "analysis": {"GPU": 1.0}}``) as a
        plain dict, or None: the Dask resources each stage of a chunk asks for."""
        stages = self.profile.data.get("stages")
        if not stages:
            return None
        return {
            str(stage): {str(r): float(n) for r, n in asked.items()}
            for stage, asked in stages.items()
        }

    def own_resources(self) -> dict[str, float] | None:
        """The resources given by a ``--resources`` of the profile's ``worker.extra_args`` (or
        of the site's dask-jobqueue ``worker-extra-args``), as ``dask worker`` reads them; None
        where neither has one (the last one counts, as for ``dask worker``)."""
        args = [
            str(a)
            for a in self.with_site("worker-extra-args", self.profile.worker.get("extra_args", []))
        ]
        try:  # the worker gets the arguments through a shell
            words = shlex.split(" ".join(args))
        except ValueError:
            words = args
        value = None
        for i, word in enumerate(words):
            if word == "--resources":
                value = words[i + 1] if i + 1 < len(words) else ""
            elif word.startswith("--resources="):
                value = word.partition("=")[2]
        if value is None:
            return None
        resources: dict[str, float] = {}
        for pair in value.replace(",", " ").split():
            name, _, amount = pair.partition("=")
            try:
                if not name:
                    raise ValueError(pair)
                resources[name] = float(amount)
            except ValueError:
                raise ProfileError(
                    f"profile {self.profile.source}: worker.extra_args: --resources {value!r} is "
                    "not NAME=AMOUNT pairs such as 'GPU=1,CPU=4'"
                ) from None
        return resources

    def worker_resources(self) -> dict[str, float]:
        """The Dask resources each worker process of a job advertises (``dask worker
        --resources``; dask applies them to each of the job's ``worker.processes``).

        The profile's own ``--resources`` (:meth:`own_resources`) when it has one; else, for a
        GPU job (``worker.gpus``), ``GPU=`` its GPUs divided among its worker processes; else,
        with ``stages``, ``CPU=`` the threads of a worker process (cores // processes); else
        none (no stage asks for any). With ``stages``, GPUs that do not divide among the
        processes raise :class:`BackendError`; without, such a job advertises nothing (no task
        asks for a resource).
        """
        own = self.own_resources()
        if own is not None:
            return own
        w = self.profile.worker
        gpus = int(w.get("gpus") or 0)
        stages = self.stage_resources()
        if gpus:
            if gpus % self.processes == 0:
                return {"GPU": gpus // self.processes}
            if stages:
                raise BackendError(
                    f"profile {self.profile.source}: worker.gpus {gpus} is not divisible by "
                    f"worker.processes {self.processes}: each Dask worker process of a job must "
                    "advertise a whole number of GPUs (--resources GPU=N) for the stages to be "
                    "placed; change one of them, or give worker.extra_args its own --resources"
                )
            return {}
        if stages:
            return {"CPU": self.cores_per_worker}
        return {}

    def check_stage_resources(self) -> None:
        """Refuse (:class:`ProfileError`) ``stages`` that ask for a resource, or an amount of
        it, that the profile's workers do not advertise (:meth:`worker_resources`): such a
        stage would never run and the run would wait. A profile has one kind of job, so its
        workers advertise one kind of resource (GPU for GPU jobs, else CPU) unless
        ``worker.extra_args`` gives its own ``--resources``."""
        stages = self.stage_resources()
        if not stages:
            return
        advertised = self.worker_resources()
        offered = (
            ", ".join(f"{r}={n:g}" for r, n in advertised.items()) if advertised else "nothing"
        )
        for stage, asked in stages.items():
            for resource, amount in asked.items():
                has = advertised.get(resource, 0)
                if has >= amount:
                    continue
                if has:
                    problem = f"each worker process of its jobs advertises only {resource}={has:g}"
                else:
                    problem = (
                        f"no worker of the profile advertises {resource} (each worker process "
                        f"advertises {offered})"
                    )
                hint = (
                    "set worker.gpus for GPU jobs, "
                    if resource == "GPU" and not self.profile.worker.get("gpus")
                    else ""
                )
                raise ProfileError(
                    f"profile {self.profile.source}: stages.{stage}: the {stage} stage asks for "
                    f"the Dask resource {resource}: {amount:g}, but {problem}, so it would never "
                    f"run; {hint}ask only for what the workers advertise, give worker.extra_args "
                    "its own --resources (e.g. [--resources, 'GPU=1,CPU=4'] for a GPU job that "
                    "also runs the read stage), or leave stages out (every stage of a chunk in "
                    "one task, on any worker)"
                )

    def security(self):
        """A ``distributed.Security`` from the profile's ``tls`` section (None without TLS)."""
        tls = self.profile.section("tls")
        if not tls:
            return None
        from distributed.security import Security

        if tls.get("temporary"):
            return Security.temporary()
        return Security(
            tls_ca_file=tls.get("ca_file"),
            tls_scheduler_cert=tls.get("cert"),
            tls_scheduler_key=tls.get("key"),
            tls_client_cert=tls.get("cert"),
            tls_client_key=tls.get("key"),
            tls_worker_cert=tls.get("worker_cert", tls.get("cert")),
            tls_worker_key=tls.get("worker_key", tls.get("key")),
            require_encryption=True,
        )

    def protocol_kwargs(self) -> dict[str, Any]:
        """The cluster's ``protocol`` (dask-jobqueue gives it to the workers as ``dask worker
        --protocol``): ``relay://`` with a relay (the scheduler's own protocol stays in
        :meth:`scheduler_options`), else dask-jobqueue's default."""
        if self.relay() is None:
            return {}
        return {"protocol": "relay://"}

    def scheduler_options(self) -> dict[str, Any]:
        s = self.profile.section("scheduler")
        options: dict[str, Any] = {"dashboard_address": s.get("dashboard_address")}
        if self.relay() is not None:  # the workers' protocol is relay://, the scheduler's not
            options["protocol"] = "tls://" if self.profile.section("tls") else "tcp://"
        if s.get("interface"):
            options["interface"] = s["interface"]
        else:
            options["host"] = s.get("host", "127.0.0.1")
        if s.get("port") is not None:
            options["port"] = s["port"]
        if s.get("contact_address"):
            options["contact_address"] = s["contact_address"]
        return options

    def all_job_kwargs(self) -> dict[str, Any]:
        return {**self.common_job_kwargs(), **self.job_kwargs()}

    def job_script(
        self, scheduler: str | None = None, name: str = "worker-0", **job_options: Any
    ) -> str:
        """The job script / submit description / JDL one job would be submitted with.

        Renders without starting a scheduler or submitting anything; the scheduler address
        is ``scheduler``, else ``scheduler.contact_address``, else a placeholder.
        """
        if scheduler is None:
            scheduler = self.profile.section("scheduler").get(
                "contact_address", SCHEDULER_PLACEHOLDER
            )
        from unittest import mock

        job_cls = self.cluster_cls.job_cls
        security = self.security()
        # dask-jobqueue creates log_directory when a job is built; rendering must not
        with mock.patch("dask_jobqueue.core.os.makedirs"):
            job = job_cls(
                scheduler,
                name=name,
                security=security,
                protocol="relay://" if self.relay() else ("tls://" if security else None),
                **{**self.all_job_kwargs(), **job_options},
            )
        return job.job_script()

    def make_cluster(self):
        """The (not yet scaled) dask-jobqueue cluster; its scheduler runs in this process."""
        try:
            return self.cluster_cls(
                scheduler_options=self.scheduler_options(),
                security=self.security(),
                **self.protocol_kwargs(),
                **self.all_job_kwargs(),
            )
        except ValueError as err:  # dask-jobqueue's own checks of sizes and options
            raise BackendError(f"profile {self.profile.source}: {err}") from None

    def start(self, tasks: int | None = None) -> JobQueueExecutor:
        """Start the scheduler, submit ``jobs`` jobs (no more than ``tasks`` needs), and return
        the executor (no waiting)."""
        from distributed import Client

        if tasks is not None:
            self.jobs = capped_workers(self.jobs, -(-tasks // self.processes), "jobs")

        started = time.perf_counter()
        broker = self.start_relay_broker()
        try:
            cluster = self.make_cluster()
        except BaseException:
            if broker is not None:
                broker.stop()
            raise
        try:
            arrivals = WorkerArrivals()
            cluster.scheduler.add_plugin(arrivals, name=arrivals.name)
            reachability = WorkerReachability(self.reach_timeout())
            cluster.scheduler.add_plugin(reachability, name=reachability.name)
            adapt = self.adapt
            if adapt is not None:
                if tasks is not None:
                    adapt["maximum"] = capped_workers(
                        adapt["maximum"], -(-tasks // self.processes), "jobs (adapt maximum)"
                    )
                adapt["minimum"] = min(adapt["minimum"], adapt["maximum"])
                self.jobs = adapt["maximum"]
            cluster.scale(jobs=adapt["minimum"] if adapt else self.jobs)
            # wait for the submit commands (not the jobs) so that a refused submission fails
            # here, with the batch system's message, instead of as a worker that never comes
            cluster.sync(cluster._correct_state)
            errors = [
                job.submit_error
                for job in cluster.workers.values()
                if getattr(job, "submit_error", None)
            ]
            if errors:
                raise BackendError(
                    f"--backend {self.name} (profile {self.profile.source}): "
                    f"job submission failed: {_one_line(errors[0])}"
                )
            if adapt is not None:
                cluster.adapt(minimum_jobs=adapt["minimum"], maximum_jobs=adapt["maximum"])
            client = Client(cluster)
        except BaseException:
            cluster.close()
            if broker is not None:
                broker.stop()
            raise
        if adapt is not None:
            log.info(
                "%s: adaptive, %d to %d job(s), scheduler %s",
                self.name,
                adapt["minimum"],
                adapt["maximum"],
                cluster.scheduler_address,
            )
        else:
            log.info(
                "%s: %d job(s) submitted, scheduler %s",
                self.name,
                self.jobs,
                cluster.scheduler_address,
            )
        timeout = float(self.profile.worker.get("start_timeout", DEFAULT_START_TIMEOUT))
        return JobQueueExecutor(
            client,
            cluster,
            self.jobs * self.processes,
            self.cores_per_worker,
            arrivals,
            started,
            timeout,
            backend=self,
            lost_timeout=self.lost_timeout,
            adaptive=adapt is not None,
            stage_resources=self.stage_resources(),
            monitor=self.monitor_settings(),
            reachability=reachability,
            relay_broker=broker,
        )

    def start_relay_broker(self):
        """With ``relay.start``: the broker for this run, started (else None). Its log goes
        to ``log_directory``/relay-broker.log when the profile has one."""
        relay = self.relay()
        if relay is None or not relay["start"]:
            return None
        from backends.relay.broker import BrokerProcess

        log_dir = self.profile.data.get("log_directory")
        log_file = None
        if log_dir:
            os.makedirs(log_dir, exist_ok=True)
            log_file = os.path.join(log_dir, "relay-broker.log")
        broker = BrokerProcess(relay["listen"], log_file=log_file)
        try:
            listening = broker.start()
        except RuntimeError as err:
            raise BackendError(
                f"--backend {self.name} (profile {self.profile.source}): {err}"
            ) from None
        host = relay["broker"].rpartition(":")[0]
        port = listening.rpartition(":")[2]
        self._relay_address = f"{host}:{port}"
        log.info(
            "%s: relay broker listening on %s (workers dial %s)",
            self.name,
            listening,
            self._relay_address,
        )
        return broker


def _seconds(value: str | float | None) -> float | None:
    """A profile duration (seconds, or ``30s`` / ``55m`` / ``2h``) in seconds."""
    if value is None:
        return None
    from dask.utils import parse_timedelta

    return float(parse_timedelta(value if not isinstance(value, str) else value.strip()))


def size_in_bytes(size: str) -> int:
    return parse_bytes(size.replace(" ", ""))


def _one_line(err: Exception) -> str:
    """dask-jobqueue's multi-line command error as one line."""
    return " | ".join(line.strip() for line in str(err).splitlines() if line.strip())
