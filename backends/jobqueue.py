"""What the batch backends share: profile -> dask-jobqueue cluster -> Dask executor.

Each batch backend (:mod:`backends.slurm`, :mod:`backends.htcondor`, :mod:`backends.dirac`) is a
:class:`JobQueueBackend` that names its dask-jobqueue ``Job`` class and turns its profile section
into that class's keyword arguments; everything else (scheduler address, worker resources,
containers, port ranges, TLS, timing of worker arrival, cleanup) lives here once.
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from dask.utils import parse_bytes
from distributed.core import Status
from distributed.diagnostics.plugin import SchedulerPlugin

from agc.config import ConfigError, check_value
from backends.base import BackendError, capped_workers
from backends.local import DaskExecutor
from backends.profiles import Profile, load_profile

log = logging.getLogger(__name__)

#: Placeholder scheduler address in job scripts rendered without a running scheduler.
SCHEDULER_PLACEHOLDER = "tcp://<scheduler-address>:8786"

DEFAULT_DEATH_TIMEOUT = 60
DEFAULT_START_TIMEOUT = 600


class WorkerArrivals(SchedulerPlugin):
    """Scheduler plugin: the time (``time.perf_counter()``) each worker joined."""

    name = "agc-worker-arrivals"

    def __init__(self) -> None:
        self.times: list[float] = []

    def add_worker(self, scheduler=None, worker=None) -> None:
        self.times.append(time.perf_counter())


class RecordsSubmitError:
    """Job mixin: keep the error of a failed submission (dask-jobqueue only logs it)."""

    submit_error: Exception | None = None

    async def start(self):
        try:
            await super().start()
        except Exception as err:
            self.submit_error = err
            self.status = Status.failed  # so that the cluster can still close
            raise


class JobQueueExecutor(DaskExecutor):
    """A Dask client on a dask-jobqueue cluster, with the latency hooks of a batch system.

    Attributes:
        workers: Dask worker processes requested (jobs x processes per job).
        cores_per_worker: threads per worker process.
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
    ):
        super().__init__(client, cluster, workers)
        self.cores_per_worker = cores_per_worker
        self._arrivals = arrivals
        self._started = started
        self._start_timeout = start_timeout

    def wait_for_workers(self, n: int = 1) -> None:
        """Block until ``n`` workers have connected (time to first worker for ``n=1``)."""
        try:
            self.client.wait_for_workers(n, timeout=self._start_timeout)
        except TimeoutError:
            logs = getattr(self.cluster._dummy_job, "log_directory", None) or "the job logs"
            raise RuntimeError(
                f"{n} worker(s) did not connect within {self._start_timeout:.0f} s "
                f"(worker.start_timeout); jobs: {self.job_ids()}; see {logs}"
            ) from None

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
        return [job.job_id for job in self.cluster.workers.values() if getattr(job, "job_id", None)]


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

    # --- what a subclass provides -------------------------------------------------------
    def check(self) -> None:
        """Backend-specific checks of the profile beyond the schema (raise ProfileError)."""

    def job_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the backend's ``Job`` class from its profile section."""
        return {}

    # --- shared ---------------------------------------------------------------------------
    @property
    def processes(self) -> int:
        return int(self.profile.worker.get("processes", 1))

    @property
    def cores_per_worker(self) -> int:
        return max(int(self.profile.worker["cores"]) // self.processes, 1)

    def common_job_kwargs(self) -> dict[str, Any]:
        """Worker resources, command, environment and logs, common to every batch system."""
        w = self.profile.worker
        kwargs: dict[str, Any] = {
            "cores": int(w["cores"]),
            "memory": w["memory"],
            "processes": self.processes,
            "death_timeout": w.get("death_timeout", DEFAULT_DEATH_TIMEOUT),
            "python": self.worker_python(),
            "job_script_prologue": list(w.get("setup", [])),
            "worker_extra_args": self.worker_extra_args(),
        }
        if w.get("local_directory"):
            kwargs["local_directory"] = w["local_directory"]
        if self.profile.data.get("log_directory"):
            kwargs["log_directory"] = self.profile.data["log_directory"]
        return kwargs

    def worker_python(self) -> str:
        """The python that starts the worker, wrapped in ``apptainer exec`` for a container."""
        w = self.profile.worker
        container = w.get("container")
        if not container:
            return w.get("python", sys.executable)
        python = w.get("python", "python3")
        runtime = container.get("runtime", "apptainer")
        if runtime == "docker":  # HTCondor's docker universe starts the container itself
            return python
        binds = ",".join(container.get("binds", ["/cvmfs"]))
        bind = f" --bind {shlex.quote(binds)}" if binds else ""
        gpu = " --nv" if w.get("gpus") else ""  # the host's NVIDIA driver in the container
        return f"{runtime} exec{gpu}{bind} {shlex.quote(container['image'])} {python}"

    def worker_extra_args(self) -> list[str]:
        """The job's extra ``dask worker`` arguments: the profile's, the nanny preload that
        gives batch workers the allocator behaviour of local ones (:mod:`backends.worker_setup`),
        and the port range."""
        w = self.profile.worker
        args = list(w.get("extra_args", []))
        args += ["--preload-nanny", "backends.worker_setup"]
        if w.get("port_range"):
            args += ["--worker-port", w["port_range"], "--nanny-port", w["port_range"]]
        return args

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

    def scheduler_options(self) -> dict[str, Any]:
        s = self.profile.section("scheduler")
        options: dict[str, Any] = {"dashboard_address": s.get("dashboard_address")}
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
                protocol="tls://" if security else None,
                **{**self.all_job_kwargs(), **job_options},
            )
        return job.job_script()

    def make_cluster(self):
        """The (not yet scaled) dask-jobqueue cluster; its scheduler runs in this process."""
        try:
            return self.cluster_cls(
                scheduler_options=self.scheduler_options(),
                security=self.security(),
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
        cluster = self.make_cluster()
        try:
            arrivals = WorkerArrivals()
            cluster.scheduler.add_plugin(arrivals, name=arrivals.name)
            cluster.scale(jobs=self.jobs)
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
            client = Client(cluster)
        except BaseException:
            cluster.close()
            raise
        log.info(
            "%s: %d job(s) submitted, scheduler %s", self.name, self.jobs, cluster.scheduler_address
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
        )


def size_in_bytes(size: str) -> int:
    return parse_bytes(size.replace(" ", ""))


def _one_line(err: Exception) -> str:
    """dask-jobqueue's multi-line command error as one line."""
    return " | ".join(line.strip() for line in str(err).splitlines() if line.strip())
