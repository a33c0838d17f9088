"""The ``Backend`` protocol and the backend registry.

A backend turns site settings into an :class:`Executor` that runs a picklable function over a
list of tasks and yields results as they complete. Backends never import the analysis: they
run whatever function they are given.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

from agc.errors import UserError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "agc.backends"

#: Backends of this package, also used when it runs from a source tree without being installed.
BUILTIN_BACKENDS = {
    "local": "backends.local:LocalBackend",
    "dask": "backends.dask_cluster:DaskClusterBackend",
    "slurm": "backends.slurm:SlurmBackend",
    "htcondor": "backends.htcondor:HTCondorBackend",
    "dirac": "backends.dirac:DiracBackend",
    "gpu": "backends.gpu:GpuBackend",
}


@runtime_checkable
class Executor(Protocol):
    """A started backend: runs a picklable function over tasks on its workers.

    Every member is part of the protocol; :class:`BaseExecutor` gives the defaults of those
    that only some executors need (a Dask client, several cores per worker, timed worker
    arrival, recovery from lost workers), so callers never probe for them.
    ``worker_restarts`` and ``tasks_resubmitted`` count what the executor did itself to
    survive workers that died; both stay 0 for an executor that never loses one (or leaves
    the recovery to its scheduler), and the run records them once the executor is done.
    """

    #: Number of worker processes (or threads) that run tasks in parallel.
    workers: int
    #: Cores (threads) of each worker.
    cores_per_worker: int
    #: The ``distributed.Client`` of a Dask executor, else None.
    client: Any
    #: Times the executor replaced workers that died (a process pool made anew), so far.
    worker_restarts: int
    #: Tasks run again because the worker running them died, so far.
    tasks_resubmitted: int
    #: Dask resources of each stage of a task (``{"read": {"CPU": 1}, "analysis": {"GPU": 1}}``)
    #: when the executor places stages on workers by what they advertise, else None.
    stage_resources: dict[str, dict[str, float]] | None

    def map_unordered(self, fn: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Any]:
        """Run ``fn(task)`` for every task; yield the results in completion order."""
        ...

    def map_stages(
        self, stages: Sequence[tuple[str, Callable[[Any], Any]]], tasks: Iterable[Any]
    ) -> Iterator[Any]:
        """Run each task through ``stages`` (``(name, fn)`` pairs: the first ``fn`` takes the
        task, each next one the result of the one before); yield the last results in
        completion order. A Dask executor runs every stage as a task of its own, with the
        resources :attr:`stage_resources` gives its name."""
        ...

    def wait_for_workers(self, n: int = 1) -> None:
        """Block until ``n`` workers are up (the "time to first worker" of a batch system)."""
        ...

    def time_to_all_workers(self) -> float | None:
        """Seconds from the start of the backend until all its workers had joined, if known."""
        ...

    def close(self) -> None:
        """Stop the workers and release every resource (jobs, clusters, processes)."""
        ...


class BaseExecutor:
    """Defaults of the :class:`Executor` protocol: no Dask client, one core per worker, no
    waiting and no arrival times (workers that exist as soon as the executor does), no worker
    ever restarted."""

    workers: int = 1
    cores_per_worker: int = 1
    client: Any = None
    worker_restarts: int = 0
    tasks_resubmitted: int = 0
    stage_resources: dict[str, dict[str, float]] | None = None

    def map_unordered(self, fn: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Any]:
        raise NotImplementedError

    def map_stages(
        self, stages: Sequence[tuple[str, Callable[[Any], Any]]], tasks: Iterable[Any]
    ) -> Iterator[Any]:
        """The stages one after the other in one task (where the executor runs it)."""
        return self.map_unordered(partial(run_stages, tuple(fn for _, fn in stages)), tasks)

    def wait_for_workers(self, n: int = 1) -> None:
        return None

    def time_to_all_workers(self) -> float | None:
        return None

    def close(self) -> None:
        return None


def run_stages(fns: Sequence[Callable[[Any], Any]], task: Any) -> Any:
    """``fns[-1](... fns[1](fns[0](task)))``: a task's stages in one process."""
    for fn in fns:
        task = fn(task)
    return task


class Backend(Protocol):
    """What a backend class provides. ``name`` and ``description`` are shown by ``agc backends``;
    the class is called with the run's backend keyword arguments
    (:meth:`agc.config.RunConfig.backend_kwargs`)."""

    name: str
    description: str

    def start(self, tasks: int | None = None) -> Executor:
        """Start the workers. ``tasks``: how many tasks the run has for them; a backend starts
        no more workers than that. (A site backend whose ``start`` takes no argument is called
        without it.)"""
        ...


def start_backend(backend: Backend, tasks: int | None = None) -> Executor:
    """``backend.start(tasks=tasks)``, or ``backend.start()`` for a backend that takes none."""
    import inspect

    if "tasks" in inspect.signature(backend.start).parameters:
        return backend.start(tasks=tasks)
    return backend.start()


def capped_workers(requested: int, tasks: int | None, what: str = "workers") -> int:
    """``requested`` workers, but no more than there are ``tasks`` (logged when capped)."""
    if tasks is None or requested <= max(tasks, 1):
        return requested
    capped = max(tasks, 1)
    log.warning("%d %s requested for %d task(s): starting %d", requested, what, tasks, capped)
    return capped


class BackendError(UserError, ValueError):
    """Unknown backend or bad backend option."""


def _load(target: str):
    module, _, attr = target.partition(":")
    mod = __import__(module, fromlist=[attr])
    return getattr(mod, attr)


def available_backends() -> dict[str, str]:
    """Backend name -> ``module:Class`` from the entry points, plus the built-in ones."""
    found = dict(BUILTIN_BACKENDS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found[ep.name] = ep.value
    return found


def get_backend(name: str) -> type[Backend]:
    """The backend class registered under ``name``."""
    backends = available_backends()
    if name not in backends:
        raise BackendError(
            f"--backend {name!r}: unknown backend; available: "
            f"{', '.join(sorted(backends))} (see 'agc backends')"
        )
    try:
        return _load(backends[name])
    except ImportError as err:  # e.g. dask-jobqueue missing for the batch backends
        raise BackendError(
            f"--backend {name}: cannot load {backends[name]}: {err}; install "
            "the package that provides it"
        ) from None


#: What a worker must have as this process has it for histograms bit-identical to a local run
#: (and for the tasks to unpickle at all): the harness, and the libraries that fill them.
WORKER_PACKAGES: tuple[str, ...] = ("agc", "numpy", "awkward", "uproot", "hist", "distributed")


def environment_differences(
    client: Any, packages: tuple[str, ...] = WORKER_PACKAGES
) -> dict[str, dict[str, tuple[str | None, str | None]]]:
    """Per connected worker: ``{package: (theirs, ours)}`` where its Python (major.minor) or
    one of ``packages`` differs from this process's (distributed's own version report)."""
    import importlib
    import sys

    from distributed.versions import version_of_package

    mine: dict[str, str | None] = {"python": f"{sys.version_info[0]}.{sys.version_info[1]}"}
    for name in packages:
        try:
            mine[name] = version_of_package(importlib.import_module(name))
        except ImportError:
            mine[name] = None
    reported = client.get_versions(packages=list(packages)).get("workers", {})
    out: dict[str, dict[str, tuple[str | None, str | None]]] = {}
    for address, info in sorted(reported.items()):
        theirs = dict(info.get("packages", {}))
        theirs["python"] = ".".join(str(theirs.get("python", "")).split(".")[:2])
        differs = {n: (theirs.get(n), v) for n, v in mine.items() if theirs.get(n) != v}
        if differs:
            out[address] = differs
    return out


def ship_harness(client: Any) -> None:
    """Give every worker (those that join later too) this process's ``agc`` and ``backends``
    packages: distributed's ``UploadDirectory`` nanny plugin unpacks them into each worker's
    local directory, puts it first on the path, and restarts the worker process."""
    import shutil
    import tempfile
    from pathlib import Path

    from distributed.diagnostics.plugin import UploadDirectory

    from agc._version import __version__

    source = Path(__file__).resolve().parents[1]  # agc/ and backends/ are installed together
    with tempfile.TemporaryDirectory(prefix="agc-ship-") as tmp:
        bundle = Path(tmp) / f"agc-harness-{__version__}"
        for package in ("agc", "backends"):
            shutil.copytree(
                source / package,
                bundle / package,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
            )
        plugin = UploadDirectory(str(bundle), restart_workers=True, update_path=True)
        client.register_plugin(plugin)


def prepare_workers(client: Any, packages: tuple[str, ...] = WORKER_PACKAGES) -> None:
    """Make sure the connected Dask workers run what this process runs, before any task.

    Workers that lack the harness, or have another version of it (a site image without it,
    an old copy), get this one (:func:`ship_harness`). Any other difference -- Python or a
    library that fills the histograms -- raises :class:`BackendError` naming each worker,
    package and both versions: their histograms would not be those of a local run.
    """
    differences = environment_differences(client, packages)
    if differences and all(set(d) == {"agc"} for d in differences.values()):
        log.warning(
            "%d worker(s) lack this harness (agc %s): sending it to them",
            len(differences),
            next(iter(differences.values()))["agc"][1],
        )
        workers = len(client.nthreads())
        ship_harness(client)
        client.wait_for_workers(max(workers, 1), timeout=120)
        differences = environment_differences(client, packages)
    problems = []
    for address, differs in differences.items():
        for name, (theirs, ours) in differs.items():
            if name == "agc" and theirs is None:
                problems.append(
                    f"{address} has no agc (the harness) even after it was sent: install "
                    f"this version ({ours}) in the workers' environment or give the profile a "
                    "container with it"
                )
            else:
                problems.append(f"{address} has {name} {theirs}, this process {ours}")
    if problems:
        raise BackendError(
            "the workers' environment differs from this one (their histograms would not be "
            "those of a local run, or their tasks would not load): " + "; ".join(problems)
        )
