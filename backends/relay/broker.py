"""The relay broker: reachable from the workers' sites, it relays connections to them.

Run it where the scheduler runs (or anywhere both the scheduler and the workers can reach)::

    python -m backends.relay --listen 0.0.0.0:8790

Every TCP connection to the broker starts with one line:

- ``AGC-RELAY/1 REGISTER <worker-id> <plain|tls>``: a worker's link (it dialled out). The
  broker answers ``OK`` and the connection becomes a :class:`~backends.relay.mux.Mux` link; a
  worker that registers again (after its link broke) replaces its old link.
- ``AGC-RELAY/1 CONNECT <worker-id> <plain|tls>``: someone (the scheduler, a client, another
  worker) wants that worker. The broker opens a stream on the worker's link, answers ``OK``
  and copies bytes both ways; ``ERR <reason>`` when the worker is not connected to it or
  expects the other mode. With TLS the bytes are the TLS session between the two ends: the
  broker never sees them in clear.
- ``AGC-RELAY/1 STATS``: one JSON line (workers, streams, connections and bytes relayed since
  it started, CPU seconds, RSS).

This is the role of HTCondor's connection broker (CCB), with one difference: CCB asks the
firewalled daemon to connect back for each new connection, while this broker keeps each
worker's single outbound connection and multiplexes all connections over it, so a worker
makes exactly one connection however many peers talk to it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from backends.relay.mux import STREAM_LIMIT, Mux, splice

log = logging.getLogger(__name__)

PROTOCOL = "AGC-RELAY/1"
#: Longest first line the broker reads (bytes).
MAX_LINE = 1024
#: Seconds a new connection has to send its first line.
HELLO_TIMEOUT = 10.0
MODES = ("plain", "tls")


def _rss_bytes() -> int:
    """This process's resident memory now (bytes), from /proc where there is one."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Broker:
    """An asyncio relay broker on ``host:port`` (port 0: any free port; see :attr:`port`)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.requested_port = port
        self.server: asyncio.Server | None = None
        self.links: dict[str, tuple[Mux, str]] = {}
        self.relayed_connections = 0
        #: DATA bytes of links that are gone (to, from the workers), so the counts cover the
        #: broker's whole life
        self._closed_bytes = [0, 0]
        self._tasks: set[asyncio.Task] = set()

    @property
    def port(self) -> int:
        assert self.server is not None, "broker not started"
        return self.server.sockets[0].getsockname()[1]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> Broker:
        self.server = await asyncio.start_server(
            self._handle, self.host, self.requested_port, limit=STREAM_LIMIT
        )
        log.info("relay broker listening on %s", self.address)
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for mux, _ in list(self.links.values()):
            mux.close()
        for task in list(self._tasks):
            task.cancel()
        self.links.clear()

    def stats(self) -> dict:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "workers": len(self.links),
            "streams": sum(len(mux.streams) for mux, _ in self.links.values()),
            "relayed_connections": self.relayed_connections,
            "bytes_to_workers": self._closed_bytes[0]
            + sum(mux.bytes_sent for mux, _ in self.links.values()),
            "bytes_from_workers": self._closed_bytes[1]
            + sum(mux.bytes_received for mux, _ in self.links.values()),
            "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "rss_bytes": _rss_bytes(),
            "pid": os.getpid(),
        }

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        peer = writer.get_extra_info("peername")
        peer_text = f"{peer[0]}:{peer[1]}" if peer else "?"
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), HELLO_TIMEOUT)
            except (TimeoutError, asyncio.LimitOverrunError, ValueError, ConnectionError):
                writer.close()
                return
            if len(line) > MAX_LINE:
                await self._refuse(writer, f"first line longer than {MAX_LINE} bytes")
                return
            words = line.decode(errors="replace").split()
            if len(words) < 2 or words[0] != PROTOCOL:
                await self._refuse(writer, f"not an {PROTOCOL} request")
                return
            verb = words[1]
            if verb == "STATS":
                writer.write(json.dumps(self.stats()).encode() + b"\n")
                await writer.drain()
                writer.close()
            elif verb == "REGISTER" and len(words) == 4 and words[3] in MODES:
                await self._register(words[2], words[3], reader, writer, peer_text)
            elif verb == "CONNECT" and len(words) == 4 and words[3] in MODES:
                await self._connect(words[2], words[3], reader, writer, peer_text)
            else:
                await self._refuse(writer, f"bad request {line[:80]!r}")
        finally:
            if task is not None:
                self._tasks.discard(task)

    @staticmethod
    async def _refuse(writer: asyncio.StreamWriter, reason: str) -> None:
        try:
            writer.write(f"ERR {reason}\n".encode())
            await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    async def _register(self, worker_id, mode, reader, writer, peer_text) -> None:
        old = self.links.get(worker_id)
        if old is not None:
            log.info(
                "relay worker %s registered again from %s; old link closed", worker_id, peer_text
            )
            old[0].close()
        mux = Mux(reader, writer)
        self.links[worker_id] = (mux, mode)
        writer.write(b"OK\n")
        await writer.drain()
        log.info("relay worker %s connected from %s (%s)", worker_id, peer_text, mode)
        try:
            await mux.run()
        finally:
            self._closed_bytes[0] += mux.bytes_sent
            self._closed_bytes[1] += mux.bytes_received
            if self.links.get(worker_id, (None,))[0] is mux:
                del self.links[worker_id]
                log.info("relay worker %s disconnected", worker_id)

    async def _connect(self, worker_id, mode, reader, writer, peer_text) -> None:
        link = self.links.get(worker_id)
        if link is None:
            await self._refuse(writer, f"worker {worker_id} is not connected to this broker")
            return
        mux, worker_mode = link
        if mode != worker_mode:
            await self._refuse(
                writer,
                f"worker {worker_id} expects {worker_mode} connections, this one is {mode}: "
                "give both sides the same Dask security (TLS) settings",
            )
            return
        try:
            stream = await mux.open_stream(peer_text)
        except ConnectionError:
            await self._refuse(writer, f"the link of worker {worker_id} just closed")
            return
        self.relayed_connections += 1
        writer.write(b"OK\n")
        await writer.drain()
        await splice(reader, writer, stream)


def query_stats(host: str, port: int, timeout: float = 10.0) -> dict:
    """A broker's :meth:`Broker.stats`, asked over the network."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(f"{PROTOCOL} STATS\n".encode())
        with sock.makefile("rb") as f:
            line = f.readline(1 << 16)
    return json.loads(line)


class BrokerProcess:
    """A broker started for a run (``python -m backends.relay`` in a process of its own, so
    that its CPU and memory are its own), stopped with it.

    ``listen``: ``HOST:PORT`` (port 0: a free port; :meth:`start` returns the one taken).
    """

    def __init__(self, listen: str, log_file: str | os.PathLike | None = None) -> None:
        self.listen = listen
        self.log_file = log_file
        self.process: subprocess.Popen | None = None
        self.address: str | None = None

    def start(self, timeout: float = 30.0) -> str:
        with tempfile.TemporaryDirectory(prefix="agc-relay-") as tmp:
            ready = Path(tmp) / "ready"
            out: Any = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
            try:
                self.process = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "backends.relay",
                        "--listen",
                        self.listen,
                        "--ready-file",
                        str(ready),
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            finally:
                if out is not subprocess.DEVNULL:
                    out.close()
            deadline = time.monotonic() + timeout
            while not ready.exists():
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"the relay broker (--listen {self.listen}) exited with status "
                        f"{self.process.returncode} before listening"
                        + (f"; see {self.log_file}" if self.log_file else "")
                    )
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the relay broker did not listen within {timeout:g} s")
                time.sleep(0.02)
            self.address = ready.read_text().strip()
        return self.address

    def stats(self) -> dict:
        assert self.address, "broker not started"
        host, _, port = self.address.rpartition(":")
        return query_stats(host, int(port))

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m backends.relay",
        description="Relay broker for Dask workers behind firewalls (relay:// addresses).",
    )
    parser.add_argument(
        "--listen", default="0.0.0.0:8790", help="HOST:PORT to listen on (default %(default)s)"
    )
    parser.add_argument(
        "--ready-file",
        help="write HOST:PORT here once listening (for scripts that start the broker)",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    host, sep, port_text = args.listen.rpartition(":")
    if not sep or not port_text.isdigit():
        parser.error(f"--listen {args.listen!r}: give HOST:PORT, e.g. 0.0.0.0:8790")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )

    async def serve() -> None:
        broker = await Broker(host.strip("[]") or "0.0.0.0", int(port_text)).start()
        if args.ready_file:
            tmp = f"{args.ready_file}.tmp"
            with open(tmp, "w") as f:
                f.write(f"{broker.host}:{broker.port}\n")
            os.replace(tmp, args.ready_file)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        started = time.monotonic()
        await stop.wait()
        log.info(
            "relay broker stopping after %.0f s: %s", time.monotonic() - started, broker.stats()
        )
        await broker.stop()

    asyncio.run(serve())
    return 0
