"""The relay comm backend (backends/relay) on loopback: its link protocol, the broker, real
Dask schedulers, workers and clients talking over ``relay://`` (plain and TLS), a broken link
coming back, the scheduler's reachability test of new workers, and the relay profile keys of
the batch backends, with an AGC run through the DIRAC stand-in. The tests with a real firewall
are in test_firewall.py.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess

import numpy as np
import pytest
import yaml
from conftest import assert_same_histograms
from distributed import Client, Scheduler, Worker
from distributed.security import Security
from slurm_cluster import backend_run, reference_histograms

from backends.dirac import DiracBackend
from backends.jobqueue import WorkerReachability
from backends.profiles import ProfileError
from backends.relay.broker import Broker, BrokerProcess, query_stats
from backends.relay.comm import RelayConnector, RelayListener, split_address
from backends.relay.mux import WINDOW_SIZE, Mux
from backends.standins import bin_dir


def run(coro, timeout: float = 60):
    """Run ``coro`` to the end, at most ``timeout`` seconds."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def until(condition, timeout: float = 20.0, what: str = "") -> None:
    """Wait (bounded) until ``condition()`` is true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await asyncio.sleep(0.05)


def test_addresses_parse():
    assert split_address("broker.example.org:8790/node-1/123-ab") == (
        "broker.example.org",
        8790,
        "node-1/123-ab",
    )
    assert split_address("10.0.0.1:8790") == ("10.0.0.1", 8790, "")
    with pytest.raises(ValueError, match="give the broker's HOST:PORT"):
        split_address("broker.example.org")


def test_stream_window_bounds_bytes_in_flight():
    """A stream whose reader reads nothing holds at most one window; then all bytes arrive in
    order, and a close ends the other side."""

    async def main():
        opened: asyncio.Queue = asyncio.Queue()

        async def handle(reader, writer):
            await Mux(reader, writer, on_open=opened.put).run()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        mux = Mux(reader, writer)
        reading = asyncio.ensure_future(mux.run())
        stream = await mux.open_stream("test")
        remote = await opened.get()
        data = np.random.default_rng(1).integers(0, 256, 3 * WINDOW_SIZE, dtype=np.uint8).tobytes()
        sending = asyncio.ensure_future(stream.send(data))
        await until(lambda: sum(map(len, remote._inbox)) >= WINDOW_SIZE, what="one window")
        await asyncio.sleep(0.3)
        assert not sending.done()  # nobody reads: the sender waits for credit
        assert sum(map(len, remote._inbox)) == WINDOW_SIZE
        got = bytearray()
        while len(got) < len(data):
            got += await remote.recv()
        await sending
        assert bytes(got) == data
        await stream.close()
        assert await remote.recv() == b""
        mux.close()
        await reading
        server.close()

    run(main())


def test_broker_refuses_unknown_workers_and_mixed_modes():
    async def main():
        broker = await Broker().start()
        connector = RelayConnector()
        with pytest.raises(ConnectionRefusedError, match="nobody/1-x is not connected"):
            await connector.connect(f"{broker.address}/nobody/1-x")
        listener = RelayListener(broker.address, lambda comm: None)
        await listener.start()
        try:
            assert listener.contact_address.startswith(f"relay://{broker.address}/")
            assert broker.stats()["workers"] == 1
            import ssl

            with pytest.raises(ConnectionRefusedError, match="expects plain connections"):
                await connector.connect(
                    listener.contact_address.removeprefix("relay://"),
                    ssl_context=ssl.create_default_context(),
                )
            with pytest.raises(ValueError, match="names no worker"):
                await connector.connect(broker.address)
        finally:
            listener.stop()
            await broker.stop()

    run(main())


def test_broker_survives_peers_that_do_not_speak_its_protocol():
    async def main():
        from backends.relay.mux import HEADER

        broker = await Broker().start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
            writer.write(b"GET / HTTP/1.1\r\n\r\n")
            assert (await reader.readline()).startswith(b"ERR not an AGC-RELAY/1 request")
            writer.close()
            # a registered link that then sends a frame of no known kind is closed
            reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
            writer.write(b"AGC-RELAY/1 REGISTER odd/1-x plain\n")
            assert await reader.readline() == b"OK\n"
            assert broker.stats()["workers"] == 1
            writer.write(HEADER.pack(99, 1, 0))
            assert await reader.read() == b""  # closed by the broker
            await until(lambda: broker.stats()["workers"] == 0, what="the link to go")
            host, port = broker.host, broker.port
            stats = await asyncio.get_running_loop().run_in_executor(None, query_stats, host, port)
            assert stats["workers"] == 0  # and the broker still answers
        finally:
            await broker.stop()

    run(main())


def test_encryption_required_refuses_a_plain_relay():
    with pytest.raises(RuntimeError, match="encryption required"):
        RelayListener("127.0.0.1:8790", lambda comm: None, require_encryption=True)


async def _relayed_cluster_checks(security=None):
    """Two relayed workers: a transfer between them and results gathered by the client."""
    broker = await Broker().start()
    kwargs = {"security": security} if security else {}
    protocol = "tls" if security else "tcp"
    try:
        async with Scheduler(
            protocol=protocol, host="127.0.0.1", dashboard_address=":0", **kwargs
        ) as s:
            async with (
                Worker(s.address, protocol="relay", host=broker.address, nthreads=1, **kwargs) as a,
                Worker(s.address, protocol="relay", host=broker.address, nthreads=1, **kwargs) as b,
                Client(s.address, asynchronous=True, **kwargs) as c,
            ):
                assert a.address.startswith(f"relay://{broker.address}/")
                assert a.address != b.address
                x = c.submit(np.arange, 2_000_000, workers=[a.address])
                y = c.submit(lambda v: int(v.sum()), x, workers=[b.address])
                assert await y == 2_000_000 * 1_999_999 // 2  # x went from a to b
                assert (await x)[-1] == 1_999_999  # gathered from a by the scheduler
                assert await c.run(os.getpid) == {a.address: os.getpid(), b.address: os.getpid()}
                stats = broker.stats()
                assert stats["workers"] == 2
                assert stats["relayed_connections"] >= 2
                # at least the array, twice (to b, and to the scheduler)
                assert stats["bytes_from_workers"] >= 2 * 16_000_000
    finally:
        await broker.stop()


def test_dask_over_the_relay():
    run(_relayed_cluster_checks())


def _certificate(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed: no certificate for the TLS test")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=agc-relay-test", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return str(key), str(cert)


def test_dask_over_the_relay_with_tls(tmp_path):
    """With Dask's TLS settings every relayed connection is TLS between the two ends."""
    key, cert = _certificate(tmp_path)
    security = Security(
        tls_ca_file=cert,
        **{f"tls_{role}_{what}": path for role in ("scheduler", "worker", "client")
           for what, path in (("cert", cert), ("key", key))},
        require_encryption=True,
    )  # fmt: skip
    run(_relayed_cluster_checks(security))


def test_a_broken_link_comes_back():
    async def main():
        broker = await Broker().start()
        try:
            async with (
                Scheduler(host="127.0.0.1", dashboard_address=":0") as s,
                Worker(s.address, protocol="relay", host=broker.address, nthreads=1) as w,
                Client(s.address, asynchronous=True) as c,
            ):
                listener = w.listeners[0]
                assert await c.submit(lambda: 1, workers=[w.address], pure=False) == 1
                (worker_id,) = broker.links
                broker.links[worker_id][0].close()  # the broker's end of the link
                await until(lambda: listener.reconnects == 1, what="the worker to register again")
                await until(lambda: worker_id in broker.links, what="the new link")
                assert await c.submit(np.ones, 1000, workers=[w.address], pure=False) is not None
                assert w.address == listener.contact_address  # same address as before
        finally:
            await broker.stop()

    run(main())


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_scheduler_reports_a_worker_it_cannot_reach():
    """A worker that joins with an address nothing listens on is found at once."""

    async def main():
        plugin = WorkerReachability(timeout=2)
        async with Scheduler(host="127.0.0.1", dashboard_address=":0") as s:
            s.add_plugin(plugin)
            bad = f"tcp://127.0.0.1:{_closed_port()}"
            async with (
                Worker(s.address, nthreads=1, name="good") as good,
                Worker(s.address, nthreads=1, name="behind-fw", contact_address=bad),
            ):
                await until(lambda: plugin.unreachable, what="the probe")
                await until(lambda: good.address in plugin.reachable, what="the good worker")
        assert list(plugin.unreachable) == [bad]
        err = plugin.error("--backend dirac (profile p.yaml)")
        assert err is not None
        text = str(err)
        assert f"cannot connect to worker {bad} (name behind-fw)" in text
        assert "relay" in text and "worker.port_range" in text

    run(main())


def _relay_profile(tmp_path, **relay) -> str:
    profile = {
        "backend": "dirac",
        "worker": {"cores": 1, "memory": "1GB", "death_timeout": 60, "start_timeout": 120},
        "scheduler": {"host": "127.0.0.1"},
        "relay": {"broker": "127.0.0.1:0", "listen": "127.0.0.1:0", **relay},
        "dirac": {"owner_group": "agc_user", "sites": {"LCG.SITE-A.uk": 1, "LCG.SITE-B.uk": 1}},
    }
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(profile))
    return str(path)


def test_relay_profile_makes_relayed_jobs(tmp_path):
    backend = DiracBackend(profile=_relay_profile(tmp_path, broker="agc.example.ac.uk:8790"))
    script = backend.job_script()
    assert "--protocol relay://" in script
    assert "--host agc.example.ac.uk:8790" in script
    assert "--protocol tcp://" not in script
    # the scheduler keeps its own protocol; only the workers listen on relay://
    assert backend.scheduler_options()["protocol"] == "tcp://"
    assert backend.protocol_kwargs() == {"protocol": "relay://"}
    assert backend.relay() == {
        "broker": "agc.example.ac.uk:8790",
        "start": True,
        "listen": "127.0.0.1:0",
    }


@pytest.mark.parametrize(
    ("backend", "shipped"), [("slurm", "slurm-local"), ("htcondor", "htcondor-standin")]
)
def test_relay_profile_works_for_every_batch_backend(backend, shipped):
    """The relay section is the batch layer's, not DIRAC's: SLURM and HTCondor jobs get it."""
    from backends.base import get_backend
    from backends.profiles import load_profile

    data = dict(load_profile(shipped, backend=backend).data)
    data["relay"] = {"broker": "login.example.org:8790"}
    batch = get_backend(backend)(profile=data)
    script = batch.job_script()
    assert "--protocol relay://" in script and "--host login.example.org:8790" in script
    assert batch.relay()["listen"] == "0.0.0.0:8790"
    tls = {**data, "tls": {"ca_file": "ca.pem", "cert": "c.pem", "key": "k.pem"}}
    assert get_backend(backend)(profile=tls).scheduler_options()["protocol"] == "tls://"


def test_relay_profile_refuses_contradictions(tmp_path):
    path = _relay_profile(tmp_path)
    data = yaml.safe_load(open(path))
    data["worker"]["port_range"] = "40000:40100"
    (tmp_path / "both.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ProfileError, match="relay and worker.port_range"):
        DiracBackend(profile=str(tmp_path / "both.yaml"))
    with pytest.raises(ProfileError, match="port 0 means a free port"):
        DiracBackend(profile=_relay_profile(tmp_path, start=False))


def test_broker_process_reports_and_stops():
    broker = BrokerProcess("127.0.0.1:0")
    address = broker.start()
    try:
        host, _, port = address.rpartition(":")
        stats = query_stats(host, int(port))
        assert stats["workers"] == 0 and stats["pid"] == broker.process.pid
        assert stats["rss_bytes"] > 0
    finally:
        broker.stop()
    assert broker.process is None


@pytest.mark.slow
def test_run_through_relayed_standin_dirac_matches_local(tmp_path, monkeypatch, small_catalog):
    """The AGC run on DIRAC stand-in jobs whose workers are reached only through the relay
    broker the backend starts: identical histograms; the run record names the broker."""
    monkeypatch.setenv("PATH", f"{bin_dir()}:{os.environ['PATH']}")
    monkeypatch.setenv("AGC_STANDIN_STATE", str(tmp_path / "standin-state"))
    result = backend_run(str(small_catalog), "dirac", profile=_relay_profile(tmp_path))
    assert_same_histograms(reference_histograms(str(small_catalog)), result.histograms, rtol=0)
    assert result.workers == 2
    record = result.record
    assert record.relay.startswith("127.0.0.1:") and not record.relay.endswith(":0")
    # the scheduler's test connections, gathers and the client's calls went through it
    assert record.relayed_connections >= 2
    assert record.relayed_bytes > 0  # the chunks' results came through the broker
