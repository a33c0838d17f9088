"""The ``dask`` backend: run on a Dask cluster that already exists.

Analysis facilities hand their users a ready scheduler (coffea-casa: ``tls://localhost:8786``,
its TLS files in the Dask configuration); a Python user may hold a ``distributed.Client``
already. This backend connects to that scheduler, or uses that client, and runs the tasks on
whatever workers the scheduler has: it starts no worker, and it never closes a client or
cluster it did not create (a client it made itself, to an address, it closes; the scheduler
and the workers stay up).

Where the scheduler is, first match wins: ``scheduler_address`` (``--backend dask`` with
``backend_options={"scheduler_address": ...}``), ``client``, the profile's
``dask.scheduler_address``, Dask's own ``scheduler-address`` setting
(``DASK_SCHEDULER_ADDRESS``). Example profile::

    backend: dask
    description: the facility's Dask scheduler
    workers: 4                    # wait for 4 workers before processing
    dask:
      scheduler_address: tls://localhost:8786
      connect_timeout: 10
      tls: {ca_file: /etc/secrets/ca.pem, cert: /etc/secrets/user.pem, key: /etc/secrets/user.pem}
"""

from __future__ import annotations

import gc
import logging
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

from agc.config import ConfigError, check_value
from backends.base import BackendError, capped_workers
from backends.local import DaskExecutor

log = logging.getLogger(__name__)

#: Seconds to wait for the scheduler to answer before giving up.
DEFAULT_CONNECT_TIMEOUT = 10.0
#: Seconds to wait for workers (the first one, or ``workers`` of them) before giving up.
DEFAULT_START_TIMEOUT = 600.0

#: Where the address may come from, in the order they are looked at (for error messages).
ADDRESS_OPTIONS = (
    "backend_options={'scheduler_address': 'tls://host:8786'}",
    "client=distributed.Client(...)",
    "a profile with dask.scheduler_address",
    "Dask's scheduler-address setting (DASK_SCHEDULER_ADDRESS)",
)


class DaskClusterExecutor(DaskExecutor):
    """A Dask client on a cluster that someone else runs.

    Attributes:
        workers: the workers this run counts on: ``workers`` when asked for (waited for by
            :meth:`DaskClusterBackend.start`), else those connected at start; no more than
            the tasks, at least 1.
        cores_per_worker: threads of most of the workers connected at start.
        address: the scheduler's address.
    """

    def __init__(
        self,
        client,
        *,
        owns_client: bool,
        workers: int,
        address: str,
        started: float,
        start_timeout: float,
    ):
        super().__init__(client, None, workers, owns_client=owns_client)
        self.address = address
        self._started = started
        self._start_timeout = start_timeout
        self._all_joined: float | None = None

    def connected_workers(self) -> int:
        """Workers the scheduler has now."""
        return len(self.client.nthreads())

    def note_cores(self) -> None:
        """``cores_per_worker``: the threads of most connected workers (1 without any)."""
        threads = Counter(self.client.nthreads().values()).most_common(1)
        self.cores_per_worker = threads[0][0] if threads else 1

    def wait_for_workers(self, n: int = 1) -> None:
        """Block until the scheduler has ``n`` workers, at most ``start_timeout`` seconds."""
        try:
            self.client.wait_for_workers(n, timeout=self._start_timeout)
        except TimeoutError:
            raise BackendError(
                f"--backend dask: {n} worker(s) did not connect to the scheduler at "
                f"{self.address} within {self._start_timeout:g} s (start_timeout; "
                f"{self.connected_workers()} connected)"
            ) from None
        if self._all_joined is None and n >= self.workers:
            self._all_joined = time.perf_counter()

    def time_to_all_workers(self) -> float | None:
        """Seconds from the start of the backend until ``workers`` workers were connected
        (about 0 for a cluster that had them already), None if that was not seen."""
        if self._all_joined is None:
            return None
        return self._all_joined - self._started


class DaskClusterBackend:
    """An existing Dask scheduler and its workers (nothing is started, nothing is stopped).

    Args:
        scheduler_address: the scheduler, e.g. ``tls://localhost:8786`` or
            ``tcp://10.0.0.5:8786``; overrides the profile.
        client: a ``distributed.Client`` to use instead (it stays open after the run).
        workers: wait for this many workers before processing (default: those connected,
            at least one); overrides the profile's ``workers``.
        profile: a profile (``backend: dask``) with a ``dask`` section: ``scheduler_address``,
            ``connect_timeout``, ``start_timeout`` and ``tls`` (``ca_file``, ``cert``,
            ``key``: this client's credentials).
        mode: only ``dask`` (or unset): the workers are the cluster's.
        security: a ``distributed.security.Security`` for the connection (overrides the
            profile's ``tls``; default: Dask's configuration, as ``Client`` does).
        connect_timeout: seconds to wait for the scheduler to answer (default 10).
        start_timeout: seconds to wait for the workers (default 600).

    Raises:
        BackendError: no address from any of the places above, both ``scheduler_address`` and
            ``client``, a bad option; when started, a scheduler that does not answer within
            ``connect_timeout`` (naming its address) or workers that do not come.
    """

    name = "dask"
    description = "an existing Dask cluster: its scheduler address (tcp://, tls://) or a Client"

    def __init__(
        self,
        scheduler_address: str | None = None,
        client: Any = None,
        workers: int | None = None,
        profile: str | Mapping[str, Any] | None = None,
        mode: str | None = None,
        security: Any = None,
        connect_timeout: float | None = None,
        start_timeout: float | None = None,
    ):
        if mode not in (None, "dask"):
            raise BackendError(
                f"--mode {mode!r}: the dask backend runs on the workers of an existing Dask "
                "cluster; leave --mode unset (--mode is for --backend local)"
            )
        if scheduler_address is not None and client is not None:
            raise BackendError(
                "--backend dask: give scheduler_address or client, not both "
                f"(scheduler_address={scheduler_address!r})"
            )
        try:
            check_value("workers", workers)
        except ConfigError as err:
            raise BackendError(f"--workers {workers}: {err.problem}") from None
        section: Mapping[str, Any] = {}
        if profile is not None:
            from backends.profiles import load_profile

            p = load_profile(profile, backend=self.name)
            section = p.section("dask")
            workers = workers or p.data.get("workers")
            unused = sorted(set(p.data) - {"backend", "description", "workers", "dask"})
            if unused:
                log.warning(
                    "profile %s: the dask backend starts no workers and does not use %s",
                    p.source,
                    ", ".join(unused),
                )
        self.client = client
        self.workers = workers
        self.scheduler_address = scheduler_address or (
            None if client is not None else section.get("scheduler_address")
        )
        self.tls: Mapping[str, Any] = section.get("tls") or {}
        self._security = security
        self.connect_timeout = _seconds(
            "connect_timeout", connect_timeout, section, DEFAULT_CONNECT_TIMEOUT
        )
        self.start_timeout = _seconds(
            "start_timeout", start_timeout, section, DEFAULT_START_TIMEOUT
        )
        if self.client is None and self.scheduler_address is None:
            import dask

            self.scheduler_address = dask.config.get("scheduler-address", None)
        if self.client is None and not self.scheduler_address:
            raise BackendError(
                "--backend dask needs the address of a running Dask scheduler; give one of: "
                + "; ".join(ADDRESS_OPTIONS)
            )

    def security(self) -> Any:
        """The connection's ``distributed.Security``: ``security``, else one from the
        profile's ``dask.tls``, else None (Dask's configuration)."""
        if self._security is not None or not self.tls:
            return self._security
        from distributed.security import Security

        return Security(
            tls_ca_file=self.tls.get("ca_file"),
            tls_client_cert=self.tls.get("cert"),
            tls_client_key=self.tls.get("key"),
            require_encryption=True,
        )

    def connect(self) -> tuple[Any, bool]:
        """The client and whether this backend made it (and so closes it)."""
        if self.client is not None:
            if getattr(self.client, "asynchronous", False):
                raise BackendError("--backend dask: the client handed in must not be asynchronous")
            if self.client.status != "running":
                raise BackendError(
                    f"--backend dask: the client handed in is {self.client.status}, not running"
                )
            return self.client, False
        from distributed import Client

        address = str(self.scheduler_address)
        problem = ""
        try:
            client = Client(address, security=self.security(), timeout=self.connect_timeout)
        except Exception as err:  # refused, timed out, bad TLS files, malformed address
            problem = f"{type(err).__name__}: {err}"
        if problem:
            # The half-made client is only reachable through the error's traceback: collect it
            # now, or it closes its event loop whenever the garbage collector runs, possibly
            # inside the next Client(), which then stalls for seconds or for ever.
            gc.collect()
            raise BackendError(
                f"--backend dask: cannot connect to the Dask scheduler at {address} "
                f"(connect_timeout {self.connect_timeout:g} s): {problem}; check the address, "
                "that the scheduler is running and, for tls://, the TLS files"
            )
        return client, True

    def start(self, tasks: int | None = None) -> DaskClusterExecutor:
        """Connect (or take the client handed in), wait for ``workers`` workers if asked for
        (no more than ``tasks`` need), and return the executor."""
        started = time.perf_counter()
        client, owns = self.connect()
        try:
            address = client.scheduler.address
            executor = DaskClusterExecutor(
                client,
                owns_client=owns,
                workers=1,
                address=address,
                started=started,
                start_timeout=self.start_timeout,
            )
            if self.workers:
                executor.workers = capped_workers(self.workers, tasks)
                executor.wait_for_workers(executor.workers)
            elif connected := executor.connected_workers():
                executor.workers = min(connected, tasks or connected)
                executor.wait_for_workers(executor.workers)  # there already: the time is noted
            executor.note_cores()
        except BaseException:
            if owns:
                client.close()
            raise
        log.info(
            "dask: scheduler %s, %d worker(s) connected, counting on %d",
            address,
            executor.connected_workers(),
            executor.workers,
        )
        return executor


def _seconds(key: str, value: float | None, section: Mapping[str, Any], default: float) -> float:
    seconds = value if value is not None else section.get(key, default)
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
        raise BackendError(f"--backend dask: {key}={seconds!r}: expected a number of seconds > 0")
    return float(seconds)
