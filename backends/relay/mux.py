"""Many byte streams over one TCP connection: the link between a relayed worker and the broker.

A worker behind a firewall dials the broker once; every connection addressed to it (the
scheduler's, the client's, other workers') is a *stream* of that link. Frames are a 9-byte
header, ``kind`` (1 byte), ``stream`` (4 bytes) and ``length`` (4 bytes), then ``length``
bytes of payload for :data:`OPEN` and :data:`DATA`:

- ``OPEN``: the broker opens a stream (its payload: who dialled, for the worker's log);
- ``DATA``: bytes of a stream, at most :data:`MAX_FRAME` per frame;
- ``WINDOW``: the receiver read ``length`` bytes of a stream; the sender may send that much
  more (credit-based flow control: at most :data:`WINDOW` bytes of a stream are in flight, so
  one slow reader holds up neither the link nor the other streams, and the broker buffers at
  most :data:`WINDOW` per stream and direction);
- ``CLOSE``: the sender closed the stream;
- ``PING``: keeps the link's state alive in firewalls and NATs between the two (no answer).

Only the broker opens streams, so stream ids never collide. Closing a stream is final in both
directions (Dask comms never half-close).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

HEADER = struct.Struct("!BII")
OPEN, DATA, WINDOW, CLOSE, PING = 1, 2, 3, 4, 5
#: Largest DATA payload (bytes).
MAX_FRAME = 256 * 1024
#: Bytes of one stream that may be sent and not yet read (per direction).
WINDOW_SIZE = 4 * 1024 * 1024
#: Read buffer of the asyncio streams of a link and of the sockets spliced to it: above
#: asyncio's 64 KiB default, so that a DATA frame is read whole and not in small pieces.
STREAM_LIMIT = 2 * MAX_FRAME


class LinkClosed(ConnectionResetError):
    """The link a stream ran over is gone."""


class MuxStream:
    """One stream of a :class:`Mux`: ``await send(data)``, ``await recv()`` (``b""`` at the
    end), ``await close()``."""

    def __init__(self, mux: Mux, sid: int, peer: str = "") -> None:
        self.mux = mux
        self.sid = sid
        self.peer = peer
        self._inbox: deque[bytes] = deque()
        self._readable = asyncio.Event()
        self._eof = False
        self._credit = WINDOW_SIZE
        self._writable = asyncio.Event()
        self._writable.set()
        self.closed = False

    # called by the mux's reader
    def _feed(self, data: bytes) -> None:
        self._inbox.append(data)
        self._readable.set()

    def _feed_eof(self) -> None:
        self._eof = True
        self._readable.set()
        self._writable.set()

    def _grant(self, n: int) -> None:
        self._credit += n
        self._writable.set()

    async def recv(self) -> bytes:
        while not self._inbox:
            if self._eof or self.closed:
                return b""
            self._readable.clear()
            await self._readable.wait()
        data = self._inbox.popleft()
        if not self.closed:
            await self.mux.send_frame(WINDOW, self.sid, length=len(data))
        return data

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        while view.nbytes:
            while self._credit <= 0:
                if self._eof or self.closed:
                    raise LinkClosed(f"relay stream {self.sid} is closed")
                self._writable.clear()
                await self._writable.wait()
            if self._eof or self.closed:
                raise LinkClosed(f"relay stream {self.sid} is closed")
            n = min(view.nbytes, self._credit, MAX_FRAME)
            self._credit -= n
            await self.mux.send_frame(DATA, self.sid, view[:n])
            view = view[n:]

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._readable.set()
        self._writable.set()
        self.mux.streams.pop(self.sid, None)
        if not self._eof:
            try:
                await self.mux.send_frame(CLOSE, self.sid)
            except (ConnectionError, RuntimeError):
                pass


class Mux:
    """The streams of one link (``reader``/``writer``: asyncio streams of the TCP connection).

    ``on_open(stream)`` is called (as a task) for each stream the other end opens. :meth:`run`
    reads frames until the link ends; then every stream ends.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_open: Callable[[MuxStream], Awaitable[None]] | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.on_open = on_open
        self.streams: dict[int, MuxStream] = {}
        self._next_sid = 1
        self.closed = False
        self._tasks: set[asyncio.Task] = set()
        #: bytes of DATA frames sent and received (both directions, all streams)
        self.bytes_sent = 0
        self.bytes_received = 0

    async def send_frame(
        self, kind: int, sid: int, payload: bytes | memoryview = b"", length: int | None = None
    ) -> None:
        if self.closed:
            raise LinkClosed("relay link is closed")
        n = len(payload) if length is None else length
        # header and payload written with no await between them: frames never interleave
        self.writer.write(HEADER.pack(kind, sid, n))
        if payload:
            self.writer.write(payload)
            if kind == DATA:
                self.bytes_sent += len(payload)
        await self.writer.drain()

    async def open_stream(self, peer: str = "") -> MuxStream:
        sid = self._next_sid
        self._next_sid += 1
        stream = self.streams[sid] = MuxStream(self, sid, peer)
        await self.send_frame(OPEN, sid, peer.encode())
        return stream

    async def run(self) -> None:
        """Read frames until the link closes (or breaks); then end every stream."""
        try:
            while True:
                kind, sid, n = HEADER.unpack(await self.reader.readexactly(HEADER.size))
                if kind in (OPEN, DATA):
                    payload = await self.reader.readexactly(n) if n else b""
                if kind == DATA:
                    self.bytes_received += n
                    stream = self.streams.get(sid)
                    if stream is not None:
                        stream._feed(payload)
                elif kind == WINDOW:
                    stream = self.streams.get(sid)
                    if stream is not None:
                        stream._grant(n)
                elif kind == CLOSE:
                    stream = self.streams.pop(sid, None)
                    if stream is not None:
                        stream._feed_eof()
                elif kind == OPEN:
                    stream = self.streams[sid] = MuxStream(
                        self, sid, payload.decode(errors="replace")
                    )
                    if self.on_open is not None:
                        task = asyncio.ensure_future(self.on_open(stream))
                        self._tasks.add(task)
                        task.add_done_callback(self._tasks.discard)
                elif kind != PING:
                    raise ValueError(f"relay link: unknown frame kind {kind}")
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except ValueError as err:  # a peer that does not speak this protocol
            log.warning("relay link closed: %s", err)
        finally:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for stream in list(self.streams.values()):
            stream._feed_eof()
        self.streams.clear()
        self.writer.close()


async def splice(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stream: MuxStream
) -> None:
    """Copy bytes both ways between a socket (``reader``/``writer``) and a stream until either
    side ends; then close both."""

    async def up() -> None:
        try:
            while data := await reader.read(MAX_FRAME):
                await stream.send(data)
        except (ConnectionError, OSError):
            pass
        finally:
            await stream.close()
            writer.close()

    async def down() -> None:
        try:
            while data := await stream.recv():
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            await stream.close()

    await asyncio.gather(up(), down())
