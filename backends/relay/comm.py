"""``relay://``: a Dask comm backend for workers that accept no inbound connection.

Grid and batch worker nodes often sit behind a firewall that lets connections out and drops
new ones coming in. A Dask worker there can reach the scheduler, but the scheduler (gathering
results), the client and other workers (fetching data) cannot connect to it: the run loops on
``Couldn't gather keys ... rescheduling``. With this backend the worker listens on
``relay://BROKER:PORT``: it dials the relay broker (:mod:`backends.relay.broker`, run at the
scheduler's site) once, and every connection addressed to it goes to the broker, which
forwards it over that one established link (:mod:`backends.relay.mux`: many streams over one
TCP connection, with per-stream flow control).

It stays plain Dask: the backend is registered with distributed through the
``distributed.comm.backends`` entry point (scheme ``relay``), so ``dask worker SCHED
--protocol relay --host BROKER:PORT`` works wherever this package is installed, and
``relay://`` addresses work in ``Client``, the scheduler and other workers.

Addresses:

- listen address: ``relay://BROKER_HOST:BROKER_PORT``;
- contact address: ``relay://BROKER_HOST:BROKER_PORT/NODE/PID-TOKEN`` (``NODE``: the worker's
  host name, what :meth:`RelayBackend.get_address_host` returns).

Security: with the usual Dask :class:`distributed.Security` (TLS certificates), each relayed
connection is a TLS session between the two ends (the dialer is the TLS client, the worker
the server, both with their Dask certificates): the broker only copies ciphertext. Without
TLS the relay is plain, like ``tcp://``; ``require_encryption`` refuses that. The comms are
distributed's own :class:`~distributed.comm.tcp.TCP` / :class:`~distributed.comm.tcp.TLS`
classes, on the socket to the broker at the dialer's end and on one end of a socket pair that
the link feeds at the worker's end.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import socket
from typing import Any

from distributed.comm.addressing import parse_host_port, unparse_host_port
from distributed.comm.core import BaseListener, CommClosedError, Connector, FatalCommClosedError
from distributed.comm.registry import Backend
from distributed.comm.tcp import MAX_BUFFER_SIZE, TCP, TLS, convert_stream_closed_error

from backends.relay.broker import MAX_LINE, PROTOCOL
from backends.relay.mux import PING, STREAM_LIMIT, Mux, MuxStream, splice

log = logging.getLogger(__name__)

SCHEME = "relay"
PREFIX = SCHEME + "://"
#: Seconds between two keep-alive frames on a worker's link.
PING_SECONDS = 30.0
#: Longest wait (seconds) between two attempts to get a broken link back.
MAX_BACKOFF = 10.0
#: Socket buffer of the worker's socket pairs (bytes).
SOCKET_BUFFER = 1 << 20


def split_address(loc: str) -> tuple[str, int, str]:
    """``BROKER_HOST:PORT[/WORKER_ID]`` as (host, port, worker id or "")."""
    broker, _, worker_id = loc.partition("/")
    try:
        host, port = parse_host_port(broker)
    except ValueError:
        port = 0
    if not port:
        raise ValueError(
            f"relay address {PREFIX}{loc}: give the broker's HOST:PORT, e.g. "
            f"{PREFIX}broker.example.org:8790 (dask worker --protocol relay --host HOST:PORT)"
        )
    return host, int(port), worker_id


def _node_name() -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()) or "node"


def _ssl_context(connection_args: dict[str, Any], address: str):
    ctx = connection_args.get("ssl_context")
    if ctx is None and connection_args.get("require_encryption"):
        raise RuntimeError(
            "encryption required by Dask configuration, refusing plain communication "
            f"from/to {address!r}: give the relay the Dask TLS settings (Security)"
        )
    return ctx


async def _ask_broker(host: str, port: int, line: str, timeout: float | None = None):
    """Open a connection to the broker and send ``line``; the asyncio streams and its answer."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port, limit=STREAM_LIMIT), timeout
    )
    writer.write(f"{PROTOCOL} {line}\n".encode())
    await writer.drain()
    answer = (await asyncio.wait_for(reader.readline(), timeout)).decode(errors="replace")
    return reader, writer, answer.strip()


class RelayConnector(Connector):
    """Connects to ``relay://BROKER/WORKER_ID`` through the broker."""

    async def connect(self, address: str, deserialize: bool = True, **connection_args):
        from tornado.iostream import StreamClosedError
        from tornado.tcpclient import TCPClient

        host, port, worker_id = split_address(address)
        if not worker_id:
            raise ValueError(
                f"relay address {PREFIX}{address} names no worker: a worker's contact "
                f"address is {PREFIX}BROKER:PORT/NODE/ID"
            )
        ctx = _ssl_context(connection_args, PREFIX + address)
        mode = "tls" if ctx is not None else "plain"
        try:
            stream = await TCPClient().connect(host, port, max_buffer_size=int(MAX_BUFFER_SIZE))
            await stream.write(f"{PROTOCOL} CONNECT {worker_id} {mode}\n".encode())
            answer = (await stream.read_until(b"\n", max_bytes=MAX_LINE)).decode(errors="replace")
            if not answer.startswith("OK"):
                stream.close()
                reason = answer.removeprefix("ERR").strip() or "connection refused"
                # an OSError: distributed's connect() tries again until its timeout (the
                # worker may be getting its link back)
                raise ConnectionRefusedError(f"relay broker {host}:{port}: {reason}")
            if ctx is not None:
                kwargs: dict[str, Any] = {"ssl_options": ctx}
                if connection_args.get("server_hostname"):
                    kwargs["server_hostname"] = connection_args["server_hostname"]
                stream = await stream.start_tls(False, **kwargs)
        except StreamClosedError as err:
            convert_stream_closed_error(self, err)
        except ConnectionRefusedError:
            raise
        except OSError as err:
            import ssl

            if isinstance(err, ssl.SSLCertVerificationError):
                raise FatalCommClosedError(
                    f"TLS certificate of relayed worker {PREFIX}{address} does not match; "
                    "check the Dask security settings"
                ) from err
            raise
        sock = stream.socket
        local = unparse_host_port(*sock.getsockname()[:2]) if sock is not None else "?"
        comm_class = TLS if ctx is not None else TCP
        return comm_class(stream, "tcp://" + local, PREFIX + address, deserialize)


class RelayListener(BaseListener):
    """A worker's listener: one outbound link to the broker, a comm per relayed stream."""

    prefix = PREFIX

    def __init__(
        self,
        address: str,
        comm_handler,
        deserialize: bool = True,
        allow_offload: bool = True,
        **connection_args,
    ) -> None:
        super().__init__()
        self.broker_host, self.broker_port, _ = split_address(address)
        self.comm_handler = comm_handler
        self.deserialize = deserialize
        self.allow_offload = allow_offload
        self.ssl_context = _ssl_context(connection_args, PREFIX + address)
        self.mode = "tls" if self.ssl_context is not None else "plain"
        self.worker_id = f"{_node_name()}/{os.getpid()}-{secrets.token_hex(8)}"
        self.mux: Mux | None = None
        self._stopped = False
        self._tasks: set[asyncio.Task] = set()
        #: times the link was lost and got back
        self.reconnects = 0

    @property
    def broker(self) -> str:
        return unparse_host_port(self.broker_host, self.broker_port)

    @property
    def listen_address(self) -> str:
        return f"{PREFIX}{self.broker}/{self.worker_id}"

    @property
    def contact_address(self) -> str:
        return self.listen_address

    async def start(self) -> None:
        import dask
        from dask.utils import parse_timedelta

        timeout = parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), "s")
        self.mux = await self._register(timeout)
        self._spawn(self._keep_link())
        self._spawn(self._ping())

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _register(self, timeout: float) -> Mux:
        """Dial the broker and register, trying again for up to ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        backoff = 0.05
        while True:
            try:
                reader, writer, answer = await _ask_broker(
                    self.broker_host,
                    self.broker_port,
                    f"REGISTER {self.worker_id} {self.mode}",
                    timeout=max(deadline - loop.time(), 0.1),
                )
            except (OSError, TimeoutError) as err:
                if loop.time() + backoff >= deadline:
                    raise OSError(
                        f"relay: could not reach the broker {self.broker} within {timeout:g} s "
                        f"({type(err).__name__}: {err}); is it running and reachable from "
                        f"this node ({_node_name()})?"
                    ) from err
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            if answer != "OK":
                writer.close()
                raise OSError(f"relay broker {self.broker} refused worker registration: {answer}")
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            log.info("relay: %s registered at broker %s", self.listen_address, self.broker)
            return Mux(reader, writer, on_open=self._on_open)

    async def _keep_link(self) -> None:
        """Run the link; when it breaks, get it back (same address) until stopped."""
        while not self._stopped and self.mux is not None:
            await self.mux.run()
            if self._stopped:
                return
            log.warning(
                "relay: link of %s to broker %s lost; reconnecting", self.worker_id, self.broker
            )
            backoff = 0.5
            while not self._stopped:
                try:
                    self.mux = await self._register(timeout=MAX_BACKOFF)
                    self.reconnects += 1
                    break
                except OSError as err:
                    log.warning("relay: %s", err)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)

    async def _ping(self) -> None:
        while not self._stopped:
            await asyncio.sleep(PING_SECONDS)
            mux = self.mux
            if mux is not None and not mux.closed:
                try:
                    await mux.send_frame(PING, 0)
                except ConnectionError:
                    pass

    async def _on_open(self, stream: MuxStream) -> None:
        """A relayed connection: a socket pair, one end fed by the stream, the other a comm."""
        from tornado.iostream import IOStream, StreamClosedError

        ours, theirs = socket.socketpair()
        for sock in (ours, theirs):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        reader, writer = await asyncio.open_connection(sock=ours, limit=STREAM_LIMIT)
        self._spawn(splice(reader, writer, stream))
        peer = "tcp://" + (stream.peer or "relayed")
        theirs.setblocking(False)
        iostream = IOStream(theirs, max_buffer_size=MAX_BUFFER_SIZE)
        comm_class = TCP
        if self.ssl_context is not None:
            comm_class = TLS
            try:
                iostream = await iostream.start_tls(True, ssl_options=self.ssl_context)
            except (OSError, StreamClosedError) as err:
                log.warning(
                    "relay listener %s: TLS handshake failed with %s: %s",
                    self.listen_address,
                    peer,
                    getattr(err, "real_error", None) or err,
                )
                iostream.close()
                return
        comm = _pair_comm(comm_class, iostream, self.listen_address, peer, self.deserialize)
        comm.allow_offload = self.allow_offload
        try:
            await self.on_connection(comm)
        except CommClosedError:
            log.info("relayed connection from %s closed before its handshake", peer)
            return
        await self.comm_handler(comm)

    def stop(self) -> None:
        self._stopped = True
        for task in list(self._tasks):
            task.cancel()
        if self.mux is not None:
            self.mux.close()


def _pair_comm(comm_class, iostream, local: str, peer: str, deserialize: bool):
    """distributed's TCP/TLS comm on one end of a (Unix) socket pair.

    Its constructor sets TCP keep-alive options, which a Unix socket does not have (it logs
    an error for each comm); they belong to the worker's link to the broker, which has
    keep-alive and :data:`PING` frames, so they are skipped here. The constructor is
    synchronous: nothing else runs while ``set_tcp_timeout`` is replaced.
    """
    import distributed.comm.tcp as tcp

    set_tcp_timeout = tcp.set_tcp_timeout
    tcp.set_tcp_timeout = lambda stream: None
    try:
        return comm_class(iostream, local, peer, deserialize)
    finally:
        tcp.set_tcp_timeout = set_tcp_timeout


class RelayBackend(Backend):
    """The ``relay`` scheme (entry point ``distributed.comm.backends``)."""

    def get_connector(self):
        return RelayConnector()

    def get_listener(self, loc, handle_comm, deserialize, **connection_args):
        connection_args.pop("default_host", None)
        connection_args.pop("default_port", None)
        return RelayListener(loc, handle_comm, deserialize, **connection_args)

    def get_address_host(self, loc):
        host, _, worker_id = split_address(loc)
        return worker_id.split("/", 1)[0] if worker_id else host

    def get_address_host_port(self, loc):
        host, port, _ = split_address(loc)
        return host, port

    def resolve_address(self, loc):
        return loc

    def get_local_address_for(self, loc):
        host, port, _ = split_address(loc)
        return unparse_host_port(host, port)
