"""The ``dask`` backend on a cluster started outside the harness: a ``dask scheduler`` and two
``dask worker`` processes on loopback, as a facility runs them. Runs give the in-process
histograms to the last bit with either engine; the harness leaves the scheduler, the workers
and a client handed in as it found them; a scheduler that does not answer fails fast, naming
its address."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dask
import pytest
import yaml
from conftest import assert_same_histograms
from distributed import Client

from agc import RunConfig, run
from backends.base import BackendError, available_backends, get_backend
from backends.dask_cluster import DEFAULT_CONNECT_TIMEOUT, DaskClusterBackend

ROOT = Path(__file__).resolve().parents[1]
DASK = str(Path(sys.executable).with_name("dask"))
WORKERS = 2


def _free_port() -> int:
    """A loopback port nothing listens on (bound once, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Processes:
    """Processes started for a test, each in its own session (a worker's nanny and the worker
    process it spawns end together), stopped in reverse order: SIGTERM, then SIGKILL."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.address = ""
        self.started: list[tuple[subprocess.Popen, Path]] = []

    def start(self, name: str, *args: str, first_on_path: str | None = None) -> subprocess.Popen:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [first_on_path, str(ROOT), env.get("PYTHONPATH")])
        )
        logfile = self.directory / f"{name}.log"
        with logfile.open("w") as out:
            proc = subprocess.Popen(
                [DASK, *args],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started.append((proc, logfile))
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}:\n{log.read_text()[-2000:]}" for _, log in self.started)

    def stop(self) -> None:
        for proc, _ in reversed(self.started):
            for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue


def start_scheduler(procs: Processes, *args: str, protocol: str = "tcp") -> str:
    """``dask scheduler`` on a free loopback port; its address once it listens (<= 60 s)."""
    port = _free_port()
    proc = procs.start(
        f"scheduler-{port}", "scheduler", "--host", "127.0.0.1", "--port", str(port),
        "--no-dashboard", "--protocol", protocol, *args,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not _listening(port):
        assert proc.poll() is None, f"the scheduler exited\n{procs.logs()}"
        assert time.monotonic() < deadline, f"the scheduler does not listen\n{procs.logs()}"
        time.sleep(0.2)
    return f"{protocol}://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A scheduler and two single-threaded workers, started as a site would, outside the
    harness; always stopped at the end."""
    directory = tmp_path_factory.mktemp("dask-cluster")
    procs = Processes(directory)
    try:
        address = start_scheduler(procs)
        for i in range(WORKERS):
            procs.start(
                f"worker-{i}", "worker", address, "--nthreads", "1", "--no-dashboard",
                "--host", "127.0.0.1", "--name", f"site-worker-{i}", "--death-timeout", "60",
                "--local-directory", str(directory / f"worker-{i}"),
            )  # fmt: skip
        with Client(address, timeout=30) as client:
            try:
                client.wait_for_workers(WORKERS, timeout=120)
            except TimeoutError:
                pytest.fail(f"the workers did not connect\n{procs.logs()}")
        procs.address = address
        yield procs
    finally:
        procs.stop()


@pytest.fixture(scope="module")
def reference(small_catalog):
    """The in-process run of the small dataset."""
    return run(
        RunConfig(catalog=str(small_catalog), mode="inprocess", fit=False),
        progress=False,
        write=False,
    )


def _connected_workers(address: str) -> list[str]:
    with Client(address, timeout=10) as client:
        return sorted(w["name"] for w in client.scheduler_info()["workers"].values())


def _worker_pids(address: str) -> set[int]:
    with Client(address, timeout=10) as client:
        return set(client.run(os.getpid).values())


def _site_config(small_catalog, address: str, **options) -> RunConfig:
    return RunConfig(
        catalog=str(small_catalog),
        backend="dask",
        scheduler_address=address,
        fit=False,
        **options,
    )


def test_the_dask_backend_is_registered():
    assert available_backends()["dask"] == "backends.dask_cluster:DaskClusterBackend"
    assert get_backend("dask") is DaskClusterBackend


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["chunked", "dask-awkward"])
def test_a_run_on_an_existing_cluster_gives_the_in_process_histograms(
    cluster, small_catalog, reference, engine
):
    """Both engines, to the last bit; the scheduler and both workers are still there after."""
    result = run(
        _site_config(small_catalog, cluster.address, engine=engine), progress=False, write=False
    )
    assert_same_histograms(reference.histograms, result.histograms, rtol=0, what=engine)
    assert result.events == reference.events and result.record.workers == WORKERS
    ran_on = {int(t.worker.rpartition(":")[2]) for t in result.tasks}
    assert ran_on <= _worker_pids(cluster.address) and os.getpid() not in ran_on
    assert all(proc.poll() is None for proc, _ in cluster.started)
    assert _connected_workers(cluster.address) == [f"site-worker-{i}" for i in range(WORKERS)]


@pytest.mark.slow
def test_a_client_handed_in_is_still_open_after_the_run(cluster, small_catalog, reference):
    with Client(cluster.address, timeout=10) as client:
        result = run(
            RunConfig(catalog=str(small_catalog), backend="dask", fit=False),
            progress=False,
            write=False,
            client=client,
        )
        assert_same_histograms(reference.histograms, result.histograms, rtol=0)
        assert client.status == "running"
        assert client.submit(sum, [1, 2]).result(timeout=30) == 3
        # and a second run on the same client
        again = run(
            RunConfig(
                catalog=str(small_catalog), backend="dask", fit=False, samples=("wjets__nominal",)
            ),
            progress=False,
            write=False,
            client=client,
        )
        assert again.events == 4000 and client.status == "running"


def test_a_closed_client_handed_in_is_refused(cluster):
    client = Client(cluster.address, timeout=10)
    client.close()
    with pytest.raises(BackendError, match="client handed in is closed"):
        DaskClusterBackend(client=client).start()


def test_a_client_the_backend_made_is_closed_but_the_cluster_stays(cluster):
    executor = DaskClusterBackend(scheduler_address=cluster.address).start(tasks=10)
    assert executor.owns_client and (executor.workers, executor.cores_per_worker) == (WORKERS, 1)
    assert executor.time_to_all_workers() is not None
    assert sorted(executor.map_unordered(abs, [-3, 1, -2])) == [1, 2, 3]
    executor.close()
    assert executor.client.status == "closed"
    assert len(_connected_workers(cluster.address)) == WORKERS


def test_workers_asked_for_are_waited_for_within_the_start_timeout(cluster):
    executor = DaskClusterBackend(scheduler_address=cluster.address, workers=2).start(tasks=10)
    assert executor.workers == 2 and executor.time_to_all_workers() is not None
    executor.close()
    # no more workers than tasks
    executor = DaskClusterBackend(scheduler_address=cluster.address, workers=2).start(tasks=1)
    assert executor.workers == 1
    executor.close()
    started = time.monotonic()
    with pytest.raises(BackendError, match=r"5 worker\(s\) did not connect .* within 1 s"):
        DaskClusterBackend(scheduler_address=cluster.address, workers=5, start_timeout=1).start()
    assert time.monotonic() - started < 15


def test_the_address_may_come_from_dasks_configuration(cluster):
    with dask.config.set({"scheduler-address": cluster.address}):
        backend = DaskClusterBackend()
    assert backend.scheduler_address == cluster.address
    executor = backend.start()
    assert executor.workers == WORKERS
    executor.close()


def test_the_address_may_come_from_a_profile(tmp_path):
    profile = tmp_path / "site.yaml"
    profile.write_text(
        yaml.safe_dump(
            {
                "backend": "dask",
                "description": "the facility's scheduler",
                "workers": 3,
                "dask": {"scheduler_address": "tls://localhost:8786", "connect_timeout": 5},
            }
        )
    )
    backend = get_backend("dask")(profile=str(profile))
    assert (backend.scheduler_address, backend.workers) == ("tls://localhost:8786", 3)
    assert backend.connect_timeout == 5 and backend.security() is None
    backend = get_backend("dask")(
        profile=str(profile), scheduler_address="tcp://127.0.0.1:1", workers=1
    )
    assert (backend.scheduler_address, backend.workers) == ("tcp://127.0.0.1:1", 1)


def test_no_address_anywhere_names_the_options():
    with (
        dask.config.set({"scheduler-address": None}),
        pytest.raises(BackendError, match="scheduler_address.*client=.*DASK_SCHEDULER_ADDRESS"),
    ):
        DaskClusterBackend()


@pytest.mark.parametrize(
    "options, message",
    [
        ({"mode": "processes"}, "--mode 'processes'.* leave --mode unset"),
        ({"scheduler_address": "tcp://a:1", "client": object()}, "not both"),
        ({"scheduler_address": "tcp://a:1", "workers": 0}, "--workers 0"),
        ({"scheduler_address": "tcp://a:1", "connect_timeout": 0}, "connect_timeout=0"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(BackendError, match=message):
        DaskClusterBackend(**options)


@pytest.mark.slow
def test_an_unreachable_scheduler_fails_within_the_connect_timeout_naming_it(small_catalog):
    """Nothing listens on the port: the run fails after the default 10 s, not later."""
    address = f"tcp://127.0.0.1:{_free_port()}"
    started = time.monotonic()
    with pytest.raises(BackendError, match=f"cannot connect to the Dask scheduler at {address}"):
        run(_site_config(small_catalog, address), progress=False, write=False)
    assert time.monotonic() - started < DEFAULT_CONNECT_TIMEOUT + 10


_RETRIES = """
import sys, time
from backends.base import BackendError
from backends.dask_cluster import DaskClusterBackend

for address in ["foo:bar", "nonsense", sys.argv[1], "foo:bar", sys.argv[1]]:
    started = time.monotonic()
    try:
        DaskClusterBackend(scheduler_address=address, connect_timeout=2).start()
    except BackendError:
        print(f"{time.monotonic() - started:.2f}")
executor = DaskClusterBackend(scheduler_address=sys.argv[2]).start()
print(executor.workers)
executor.close()
"""


def test_failed_connections_in_a_row_never_stall(cluster):
    """A notebook user retrying with other addresses: each attempt fails within its timeout or
    connects (the half-made client of a failed attempt, closed late, stalled the next one for
    seconds, at worst for ever)."""
    closed = f"tcp://127.0.0.1:{_free_port()}"
    done = subprocess.run(
        [sys.executable, "-c", _RETRIES, closed, cluster.address],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    *seconds, workers = done.stdout.split()
    assert len(seconds) == 5 and max(map(float, seconds)) < 2 + 3, seconds
    assert workers == str(WORKERS)


def test_a_tls_scheduler_with_the_profiles_credentials(tmp_path):
    """A tls:// scheduler (self-signed credentials): the profile's dask.tls files connect;
    without them, a clear failure naming the address."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make the test's self-signed certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    files = ["--tls-ca-file", str(cert), "--tls-cert", str(cert), "--tls-key", str(key)]
    procs = Processes(tmp_path)
    try:
        address = start_scheduler(procs, *files, protocol="tls")
        profile = {
            "backend": "dask",
            "dask": {
                "scheduler_address": address,
                "connect_timeout": 5,
                "tls": {"ca_file": str(cert), "cert": str(cert), "key": str(key)},
            },
        }
        executor = DaskClusterBackend(profile=profile).start()
        assert executor.address == address and executor.workers == 1  # no worker yet
        executor.close()
        with pytest.raises(BackendError, match=re.escape(f"scheduler at {address} ")):
            DaskClusterBackend(scheduler_address=address, connect_timeout=2).start()
    finally:
        procs.stop()


@pytest.mark.slow
def test_agc_run_scheduler_address_joins_the_cluster(cluster, small_catalog, tmp_path):
    """``--scheduler-address`` alone selects the dask backend; the cluster stays up."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "agc", "run", "--catalog", str(small_catalog), "--scheduler-address",
         cluster.address, "--no-fit", "--quiet", "--output", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"on {WORKERS} worker(s)" in done.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["config"]["backend"] == "dask"
    assert _connected_workers(cluster.address) == [f"site-worker-{i}" for i in range(WORKERS)]


def test_a_scheduler_address_needs_the_dask_backend():
    from agc.config import ConfigError

    with pytest.raises(ConfigError, match="give backend='dask'"):
        RunConfig(scheduler_address="tcp://127.0.0.1:8786")
    with pytest.raises(ConfigError, match="run\\(client=...\\) runs on that client"):
        run(RunConfig(), client=object(), write=False, progress=False)


@pytest.mark.slow
@pytest.mark.fault(
    "workers without the harness, or with another version of it",
    "survived",
    histograms="identical to an in-process run: the harness is sent to the workers",
)
@pytest.mark.parametrize(
    "package", ["raise ImportError('not installed here')", "__version__ = '0.0.1'"]
)
def test_workers_without_this_harness_get_it_and_give_the_same_histograms(
    small_catalog, reference, tmp_path, package, caplog
):
    """A real ``dask worker`` whose ``import agc`` finds nothing or an old copy (a site image
    without the harness): the harness is uploaded to it and the run is that of a local run."""
    fake = tmp_path / "site-packages"
    (fake / "agc").mkdir(parents=True)
    (fake / "agc" / "__init__.py").write_text(package + "\n")
    procs = Processes(tmp_path)
    try:
        address = start_scheduler(procs)
        procs.start(
            "worker", "worker", address, "--nthreads", "1", "--no-dashboard", "--host",
            "127.0.0.1", "--local-directory", str(tmp_path / "worker"), first_on_path=str(fake),
        )  # fmt: skip
        with caplog.at_level(logging.WARNING, logger="backends.base"):
            result = run(_site_config(small_catalog, address, workers=1), progress=False,
                         write=False)  # fmt: skip
        assert "1 worker(s) lack this harness" in caplog.text
        assert_same_histograms(reference.histograms, result.histograms, rtol=0)
        assert list((tmp_path / "worker").rglob("agc-harness-*/agc/runner.py"))
    finally:
        procs.stop()


@pytest.mark.slow
@pytest.mark.fault(
    "workers with another version of a library that fills the histograms",
    "failed clearly",
    histograms="none computed; the message names the worker, the library and the versions",
)
def test_workers_with_another_library_version_are_refused_naming_it(small_catalog, tmp_path):
    fake = tmp_path / "site-packages"
    (fake / "hist").mkdir(parents=True)
    (fake / "hist" / "__init__.py").write_text("__version__ = '0.0.1'\n")
    procs = Processes(tmp_path)
    try:
        address = start_scheduler(procs)
        procs.start(
            "worker", "worker", address, "--nthreads", "1", "--no-dashboard", "--host",
            "127.0.0.1", "--local-directory", str(tmp_path / "worker"), first_on_path=str(fake),
        )  # fmt: skip
        with pytest.raises(BackendError, match="environment differs.*has hist 0.0.1, this process"):
            run(_site_config(small_catalog, address, workers=1), progress=False, write=False)
    finally:
        procs.stop()
