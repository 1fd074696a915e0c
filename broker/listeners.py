"""The two ways in: MQTT over TCP (an asyncio protocol) and MQTT over WebSocket (``websockets``).

Each turns its transport into the ``Link`` a ``Connection`` writes to, and hands it the bytes it
reads. TCP needs no task per connection: the event loop calls the protocol. A WebSocket
connection has the one task the ``websockets`` server gives it, reading messages. The WebSocket
server sends no pings of its own (MQTT has its keep-alive, and some clients answer a transport
ping with a frame the server must reject), takes the broker's packet limit as its message limit,
and logs a refused handshake as one line, not a traceback.

Either listener serves TLS when given an ``ssl.SSLContext`` (mqtts, wss): the handshake must end
within the broker's connect timeout, and a connection becomes a ``Connection`` only once it has.
A client that does not speak TLS (or distrusts the certificate) fails its handshake, is dropped,
and costs the broker nothing more; asyncio reports such failures only in debug mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Final, cast

import websockets
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from radio.broker.connection import Connection, Link
from radio.wire.framing import Violation

log = logging.getLogger(__name__)

FRAME_HEADROOM: Final = 5
"""An MQTT packet's fixed header, which the packet limit (a remaining length) leaves out."""
BACKLOG: Final = 1024
"""Connections the kernel may hold before accepting them: a burst of listeners is not refused."""

Opener = Callable[[Link, str, tuple[str, int]], Connection | None]


def _done() -> Awaitable[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


LINGER: Final = 2.0
"""Seconds a TCP socket stays open for reading after the broker's DISCONNECT (``TcpLink.close``)."""


def _unread(data: bytes) -> None:
    """What a link does with bytes read before it has a connection: nothing (none are read then)."""
    del data


class TcpLink(asyncio.BaseProtocol):
    """One MQTT/TCP connection: the event loop calls it, it calls its ``Connection``.

    The bytes it reads go to the connection's ``data_received`` itself, not through a method of
    the link: the event loop looks ``data_received`` up once, when the protocol is set, and a
    call through the link for each read (one per PUBACK of a QoS 1 listener) costs about as much
    as acting on the PUBACK.
    """

    __slots__ = ("_drain", "_listener", "_open", "connection", "data_received", "transport")

    def __init__(self, opener: Opener, listener: str) -> None:
        self._open = opener
        self._listener = listener
        self.transport: asyncio.Transport | None = None
        """The socket's transport: the connection writes to it and reads its buffer size directly
        (``Link.transport``), as this link would, without a call through it for each delivery."""
        self._drain: asyncio.Future[None] | None = None
        self.connection: Connection | None = None
        self.data_received: Callable[[bytes], None] = _unread
        """Where the bytes read go: the connection's own ``data_received`` once it is open."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """A client connected: open its connection, or close it at once if over the limit."""
        self.transport = cast("asyncio.Transport", transport)  # a stream server's (uvloop's too)
        peer = transport.get_extra_info("peername") or ("?", 0)
        self.connection = self._open(self, self._listener, (str(peer[0]), int(peer[1])))
        if self.connection is None:
            self.transport.abort()
            return
        self.data_received = self.connection.data_received
        self.transport.set_protocol(self)  # the loop looks up ``data_received`` again

    def eof_received(self) -> bool:
        """The client half-closed: treat it as gone."""
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """The socket is closed, by either side."""
        del exc
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        if self.connection is not None:
            self.connection.connection_lost()

    def pause_writing(self) -> None:
        """The transport's buffer is full: the connection's ``drained()`` now waits."""
        if self._drain is None or self._drain.done():
            self._drain = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        """The buffer drained."""
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # Link.
    def write(self, data: bytes) -> None:
        """Send bytes."""
        if self.transport is not None:
            self.transport.write(data)

    def buffered(self) -> int:
        """Bytes not yet sent."""
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def pause_reading(self) -> None:
        """Stop reading."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        """Read again."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def drained(self) -> Awaitable[None]:
        """Completes when the buffer has drained (at once if it is not full)."""
        if self._drain is None or self._drain.done():
            return _done()
        return asyncio.shield(self._drain)

    def close(self, linger: bool = False) -> None:
        """Send what is buffered, then close.

        ``linger``: the client was just told why (an MQTT 5 DISCONNECT), and may still be writing
        (a PUBREL for each PUBREC it reads before that DISCONNECT): the socket is shut for writing
        and closed once the client closes it, or after ``LINGER`` seconds, so that what the client
        sends meanwhile is read and dropped instead of making it fail on a reset.
        """
        transport = self.transport
        if transport is None:
            return
        if linger and transport.can_write_eof() and not transport.is_closing():
            transport.resume_reading()
            transport.write_eof()
            asyncio.get_running_loop().call_later(LINGER, transport.close)
            return
        transport.close()


class WebSocketLink:
    """One MQTT-over-WebSocket connection: MQTT packets in binary messages, any split allowed."""

    __slots__ = ("_reading", "_ws")

    transport: Final = None
    """Bytes are framed as WebSocket messages: the connection writes through ``write``."""

    def __init__(self, ws: ServerConnection) -> None:
        self._ws = ws
        self._reading = asyncio.Event()
        self._reading.set()

    def write(self, data: bytes) -> None:
        """Send bytes as one binary message, without a task: websockets' own sending path, synchronous."""
        ws = self._ws
        if ws.protocol.state is State.OPEN:
            ws.protocol.send_binary(data)
            ws.send_data()

    def buffered(self) -> int:
        """Bytes not yet sent."""
        transport = self._ws.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    def pause_reading(self) -> None:
        """Stop taking messages (the CONNECT is being authenticated)."""
        self._reading.clear()

    def resume_reading(self) -> None:
        """Take messages again."""
        self._reading.set()

    def drained(self) -> Awaitable[None]:
        """Completes when the socket's buffer has drained."""
        return self._drain()

    async def _drain(self) -> None:
        with contextlib.suppress(Exception):
            await self._ws.drain()

    def close(self, linger: bool = False) -> None:
        """Close the WebSocket (a close frame, then the socket: the close handshake lingers already)."""
        del linger
        self._reading.set()  # the reading loop ends, even if it was paused
        task = asyncio.get_running_loop().create_task(self._ws.close())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def serve(self, connection: Connection) -> None:
        """Read messages until the connection ends."""
        ws = self._ws
        try:
            while not connection.closed:
                if not self._reading.is_set():
                    await self._reading.wait()
                message = await ws.recv()
                if isinstance(message, str):
                    connection.violated(Violation("an MQTT packet in a WebSocket text frame [MQTT-6.0.0-1]"))
                    break
                connection.data_received(message)
        except ConnectionClosed:
            pass
        finally:
            connection.connection_lost()


class QuietHandshakeLog(logging.LoggerAdapter[logging.Logger]):
    """The WebSocket server's logger: a failed handshake or handler is one line, never a traceback."""

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        """Turn the server's two tracebacks into one warning line naming the cause."""
        if level >= logging.ERROR and msg in ("opening handshake failed", "connection handler failed"):
            cause = sys.exc_info()[1]
            reason = f"{type(cause).__name__}: {cause}" if cause is not None else "no reason given"
            log.warning("WebSocket %s: %s", str(msg).replace(" failed", " refused"), reason)
            return
        super().log(level, msg, *args, **kwargs)


async def serve_tcp(
    opener: Opener,
    name: str,
    host: str,
    port: int,
    *,
    tls: ssl.SSLContext | None = None,
    handshake_timeout: float = 10.0,
) -> asyncio.Server:
    """Listen for MQTT over TCP, or over TLS (mqtts) with a server context."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: TcpLink(opener, name),
        host,
        port,
        reuse_address=True,
        backlog=BACKLOG,
        ssl=tls,
        ssl_handshake_timeout=handshake_timeout if tls is not None else None,
    )


async def serve_websocket(
    opener: Opener,
    name: str,
    host: str,
    port: int,
    max_packet: int,
    *,
    tls: ssl.SSLContext | None = None,
    handshake_timeout: float = 10.0,
) -> Any:
    """Listen for MQTT over WebSocket (subprotocol ``mqtt``; any path, ``/mqtt`` by convention), or wss."""

    async def handler(ws: ServerConnection) -> None:
        link = WebSocketLink(ws)
        peer = ws.remote_address or ("?", 0)
        connection = opener(link, name, (str(peer[0]), int(peer[1])))
        if connection is None:
            await ws.close()
            return
        await link.serve(connection)

    return await websockets.serve(
        handler,
        host,
        port,
        subprotocols=[websockets.Subprotocol("mqtt")],
        max_size=max_packet + FRAME_HEADROOM,
        ping_interval=None,
        logger=QuietHandshakeLog(logging.getLogger("websockets.server")),
        backlog=BACKLOG,
        ssl=tls,
        ssl_handshake_timeout=handshake_timeout if tls is not None else None,
        open_timeout=handshake_timeout,
    )
