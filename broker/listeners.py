"""The two ways in: MQTT over TCP (an asyncio protocol) and MQTT over WebSocket (``websockets``).

Every listener's server accepts plain TCP and hands each socket first to ``Accepting``, the one
place sockets are counted: from its TCP accept a socket counts against its listener's
``max_connections`` and its address's ``max_connecting_per_address``, and one past either is
closed at once, before any TLS or HTTP work. Counted, it goes to its listener's protocol (after
the TLS handshake, on mqtts and wss), which turns it into the ``Link`` a ``Connection`` writes
to: a ``Connection`` goes on counting as the socket did; a socket that closes first (a failed or
timed-out TLS handshake or WebSocket upgrade) stops counting.

TCP needs no task per connection: the event loop calls the protocol. A WebSocket connection has
the one task the ``websockets`` server gives it, reading messages. The WebSocket server sends no
pings of its own (MQTT has its keep-alive, and some clients answer a transport ping with a frame
the server must reject), takes the broker's packet limit as its message limit, and logs a refused
handshake as one line, not a traceback.

Either listener serves TLS when given an ``ssl.SSLContext`` (mqtts, wss): the handshake must end
within the broker's connect timeout, and a connection becomes a ``Connection`` only once it has.
A client that does not speak TLS (or distrusts the certificate) fails its handshake, is dropped
without a log line, and costs the broker nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol, cast

from websockets.asyncio.server import Server, ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import enable_server_permessage_deflate
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from radio.broker.connection import Connection, Link
from radio.tls import feed_handshake
from radio.urls import WEBSOCKET_PATH
from radio.wire.framing import Violation

log = logging.getLogger(__name__)

FRAME_HEADROOM: Final = 5
"""An MQTT packet's fixed header, which the packet limit (a remaining length) leaves out."""
BACKLOG: Final = 1024
"""Connections the kernel may hold before accepting them: a burst of listeners is not refused."""

CLOSE_TIMEOUT: Final = 10.0
"""Seconds a closing WebSocket (and its TLS, on wss) waits for the client's side of the close, and
a closing TCP socket for its client to take what was left for it (then it is dropped)."""
STOP_GRACE: Final = 2.0
"""Seconds a stopping broker gives sockets still closing (a TLS close_notify or a WebSocket close
awaited from the client, a linger) before it cuts them: one client that never answers must not
hold the stop, and with uvloop a socket still open keeps the event loop from closing at all."""


class Door(Protocol):
    """The broker, as its listeners see it: it counts sockets and opens their connections."""

    def admit(self, listener: str, address: str) -> bool:
        """A socket was accepted: count it (True), or refuse it (False: it is closed at once)."""

    def release(self, listener: str, address: str) -> None:
        """A counted socket closed before it became a connection: it counts no more."""

    def connection(
        self, link: Link, listener: str, peer: tuple[str, int], accepted: float | None = None
    ) -> Connection:
        """A counted socket is ready for MQTT: its connection, which goes on counting as it did.

        ``accepted``: when the socket was accepted (the event loop's clock), from which its CONNECT
        is awaited.
        """


class Admitted:
    """A socket its door counted at its TCP accept, until it becomes a connection or closes first.

    A socket has ``connect_timeout`` from its accept to its CONNECT, whatever lies between (a TLS
    handshake, a WebSocket upgrade): each step's own timeout would add up to several times it.
    """

    __slots__ = ("_deadline", "_door", "_held", "accepted", "listener", "peer")

    def __init__(self, door: Door, listener: str, peer: tuple[str, int]) -> None:
        self._door = door
        self.listener = listener
        self.peer = peer
        self._held = True
        self.accepted = asyncio.get_running_loop().time()
        """When the socket was accepted, by the event loop's clock."""
        self._deadline: asyncio.TimerHandle | None = None

    def watch(self, transport: asyncio.Transport, seconds: float) -> None:
        """Close the socket ``seconds`` after its accept if it has not become a connection by then."""
        if self._held:
            loop = asyncio.get_running_loop()
            self._deadline = loop.call_at(self.accepted + seconds, self._expire, transport)

    def _expire(self, transport: asyncio.Transport) -> None:
        self._deadline = None
        if self._held:
            transport.abort()  # the socket itself: whatever TLS or WebSocket runs above it ends too

    def open(self, link: Link) -> Connection | None:
        """The socket's connection, which takes its count over; None if the socket closed first."""
        if not self._held:
            return None
        self._held = False
        self._unwatch()
        return self._door.connection(link, self.listener, self.peer, self.accepted)

    def release(self) -> None:
        """The socket closed: it counts no more, unless its connection took the count over."""
        if self._held:
            self._held = False
            self._unwatch()
            self._door.release(self.listener, self.peer[0])

    def _unwatch(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


def _done() -> Awaitable[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


LINGER: Final = 2.0
"""Seconds a TCP socket stays open for reading after the broker's DISCONNECT (``TcpLink.close``)."""


def _unread(data: bytes) -> None:
    """What a link does with bytes read before it has a connection: nothing (none are read then)."""
    del data


class OpenLinks:
    """A listener's TCP links whose sockets are not closed yet: what a stop must end (``end``)."""

    __slots__ = ("_emptied", "links")

    def __init__(self) -> None:
        self.links: set[TcpLink] = set()
        self._emptied: asyncio.Future[None] | None = None

    def lost(self, link: TcpLink) -> None:
        """A link's socket is closed."""
        self.links.discard(link)
        emptied = self._emptied
        if not self.links and emptied is not None and not emptied.done():
            emptied.set_result(None)

    async def end(self, grace: float) -> None:
        """Give the sockets still closing ``grace`` seconds, then cut those left."""
        if self.links:
            self._emptied = asyncio.get_running_loop().create_future()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._emptied), grace)
        for link in list(self.links):
            link.abort()


class TcpLink(asyncio.BaseProtocol):
    """One MQTT/TCP connection: the event loop calls it, it calls its ``Connection``.

    The bytes it reads go to the connection's ``data_received`` itself, not through a method of
    the link: the event loop looks ``data_received`` up once, when the protocol is set, and a
    call through the link for each read (one per PUBACK of a QoS 1 listener) costs about as much
    as acting on the PUBACK.
    """

    __slots__ = ("_admitted", "_drain", "_open", "connection", "data_received", "transport")

    def __init__(self, admitted: Admitted, open_links: OpenLinks) -> None:
        self._admitted = admitted
        self._open = open_links
        self.transport: asyncio.Transport | None = None
        """The socket's transport: the connection writes to it and reads its buffer size directly
        (``Link.transport``), as this link would, without a call through it for each delivery."""
        self._drain: asyncio.Future[None] | None = None
        self.connection: Connection | None = None
        self.data_received: Callable[[bytes], None] = _unread
        """Where the bytes read go: the connection's own ``data_received`` once it is open."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """The socket is ready for MQTT (its TLS handshake done, on mqtts): open its connection."""
        self.transport = cast("asyncio.Transport", transport)  # a stream server's (uvloop's too)
        self._open.links.add(self)
        self.connection = self._admitted.open(self)
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
        self._open.lost(self)
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        if self.connection is not None:
            self.connection.connection_lost()
        else:
            self._admitted.release()

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
        loop = asyncio.get_running_loop()
        if linger and transport.can_write_eof() and not transport.is_closing():
            transport.resume_reading()
            transport.write_eof()
            loop.call_later(LINGER, transport.close)
            loop.call_later(LINGER + CLOSE_TIMEOUT, _drop_if_stuck, transport)
            return
        transport.close()
        if transport.get_write_buffer_size():
            loop.call_later(CLOSE_TIMEOUT, _drop_if_stuck, transport)

    def abort(self) -> None:
        """Close the socket now, whatever is unsent or awaited from the client."""
        if self.transport is not None:
            self.transport.abort()


def _drop_if_stuck(transport: asyncio.Transport) -> None:
    """Drop a socket the broker closed whose client never took what was left for it.

    A transport closes once its buffer is written (a WebSocket's close waits for it to drain
    first), and a client that reads nothing never lets it be: the socket and the bytes would
    stay for as long as that client keeps its end open, out of every count (the connection is
    gone), and a client closed that way again and again would hold more each time. A transport
    that has closed already holds nothing, and is left alone.
    """
    with contextlib.suppress(Exception):
        if transport.get_write_buffer_size():
            transport.abort()


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
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._ws.close())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        transport = self._ws.transport
        if transport is not None and transport.get_write_buffer_size():
            loop.call_later(CLOSE_TIMEOUT, _drop_if_stuck, transport)

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


class WebSocketConnection(ServerConnection):
    """A WebSocket of the server: the socket it was accepted as stops counting if it closes unopened."""

    def __init__(self, admitted: Admitted, protocol: ServerProtocol, server: Server) -> None:
        super().__init__(protocol, server, ping_interval=None, close_timeout=CLOSE_TIMEOUT)
        self.admitted = admitted

    def connection_lost(self, exc: Exception | None) -> None:
        """The socket is closed: if its upgrade never opened a connection, it counts no more."""
        super().connection_lost(exc)
        self.admitted.release()


class QuietHandshakeLog(logging.LoggerAdapter[logging.Logger]):
    """The WebSocket server's logger: a failed handshake or handler is one line, never a traceback."""

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        """Turn the server's two tracebacks into one warning line naming the cause.

        A socket that closed before it sent a whole request (its client went, or its
        ``connect_timeout`` ran out: ``Admitted.watch``) says nothing, as the server's own
        handshake timeout says nothing: one line per silent socket would be a log an attacker fills.
        """
        if level >= logging.ERROR and msg in ("opening handshake failed", "connection handler failed"):
            cause = sys.exc_info()[1]
            if cause is not None and isinstance(cause.__cause__, EOFError):
                return
            reason = f"{type(cause).__name__}: {cause}" if cause is not None else "no reason given"
            log.warning("WebSocket %s: %s", str(msg).replace(" failed", " refused"), reason)
            return
        super().log(level, msg, *args, **kwargs)


class Handshaking(asyncio.Protocol):
    """A TLS socket's reader between the end of its handshake and its listener's protocol taking it.

    The client may send its first bytes (a CONNECT, an HTTP upgrade) with the end of its
    handshake: asyncio hands them over at once, before the task that waited for the handshake
    resumes, and they are kept here for the listener's protocol.
    """

    __slots__ = ("ended", "received")

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.ended = False

    def data_received(self, data: bytes) -> None:
        """Keep what the client sent for the protocol that takes the socket."""
        self.received.append(data)

    def eof_received(self) -> None:
        """The client half-closed before any protocol took the socket: it is gone."""
        self.ended = True

    def connection_lost(self, exc: Exception | None) -> None:
        """The socket closed before any protocol took it."""
        del exc
        self.ended = True


class Listening:
    """One listener: its server, and the sockets it counts at their accept (``Accepting``)."""

    def __init__(
        self,
        door: Door,
        name: str,
        protocol: Callable[[Admitted], asyncio.BaseProtocol],
        *,
        tls: ssl.SSLContext | None,
        handshake_timeout: float,
        shutdown_timeout: float | None = None,
    ) -> None:
        self.door = door
        self.name = name
        self.protocol = protocol
        """The listener's own protocol for a socket counted (``TcpLink``, ``WebSocketConnection``)."""
        self.tls = tls
        self.connect_timeout = handshake_timeout
        """Seconds a socket has from its accept to its CONNECT (``Admitted.watch``)."""
        self._shutdown_timeout = shutdown_timeout
        self._handshakes: dict[asyncio.Task[None], tuple[asyncio.Transport, Admitted]] = {}
        """The sockets in their TLS handshake, by the task that waits for it."""
        self.open_links = OpenLinks()
        """Its TCP links not closed yet (a WebSocket server keeps its own connections)."""
        self.server: Any = None
        """The bound server: ``asyncio.Server``, or the ``websockets`` one wrapping it."""

    async def bind(self, host: str, port: int) -> asyncio.Server:
        """Listen on plain TCP: every socket accepted is counted by ``Accepting`` first."""
        loop = asyncio.get_running_loop()
        return await loop.create_server(
            lambda: Accepting(self), host, port, reuse_address=True, backlog=BACKLOG
        )

    def handshake(self, accepting: Accepting, transport: asyncio.Transport, admitted: Admitted) -> None:
        """Start the TLS handshake of a socket counted (it ends in ``_secure``)."""
        task = asyncio.get_running_loop().create_task(self._secure(accepting, transport, admitted))
        self._handshakes[task] = (transport, admitted)
        task.add_done_callback(self._handshakes.pop)

    async def _secure(self, accepting: Accepting, transport: asyncio.Transport, admitted: Admitted) -> None:
        """The TLS handshake, then the socket to its protocol; a failed one stops counting, unlogged."""
        assert self.tls is not None  # noqa: S101 - only called with a context
        if accepting.ended or transport.is_closing():
            admitted.release()
            return
        loop = asyncio.get_running_loop()
        if accepting.early:
            # Read before the handshake began (uvloop reads a socket as soon as it is accepted):
            # handed to TLS once it reads the socket, before it starts the handshake.
            loop.call_soon(feed_handshake, transport, b"".join(accepting.early))
        waiting = Handshaking()
        try:
            secure = await loop.start_tls(
                transport,
                waiting,
                self.tls,
                server_side=True,
                ssl_handshake_timeout=self.connect_timeout,  # a backstop: Admitted.watch ends it first
                ssl_shutdown_timeout=self._shutdown_timeout,
            )
        except BaseException as exc:
            admitted.release()  # asyncio closed the socket; it reports why in debug mode alone
            if isinstance(exc, Exception):
                return
            raise
        if secure is None or waiting.ended or secure.is_closing():
            admitted.release()
            if secure is not None:
                secure.abort()
            return
        protocol = self.protocol(admitted)
        secure.set_protocol(protocol)
        protocol.connection_made(secure)
        if waiting.received and not secure.is_closing():
            cast("asyncio.Protocol", protocol).data_received(b"".join(waiting.received))

    def close(self) -> None:
        """Stop accepting; sockets still in their TLS handshake or WebSocket upgrade are closed.

        The ``websockets`` server answers an upgrade that arrives after it closed with 503, but
        waits for it up to ``connect_timeout``: a silent socket would hold the stop that long.
        """
        if self.server is not None:
            self.server.close()
            for connection in list(getattr(self.server, "handlers", ())):  # a WebSocket server's
                if connection.protocol.state is State.CONNECTING:
                    connection.transport.abort()  # nothing was opened: no goodbye is owed
        for task, (transport, admitted) in list(self._handshakes.items()):
            transport.abort()  # whether its task has started or not
            admitted.release()
            task.cancel()

    async def wait_closed(self, grace: float = STOP_GRACE) -> None:
        """Wait for the handshakes closed to end, and for the connections closed to close.

        Connections still closing after ``grace`` seconds (their client never answered the close)
        are cut. An asyncio server's clients are closed apart: its ``wait_closed`` would wait for each.
        """
        await asyncio.gather(*self._handshakes, return_exceptions=True)
        await self.open_links.end(grace)
        server = self.server
        if server is None or isinstance(server, asyncio.Server):
            return
        closed = asyncio.ensure_future(server.wait_closed())
        done, _ = await asyncio.wait({closed}, timeout=grace)
        if not done:
            for connection in list(server.handlers):
                if connection.transport is not None:
                    connection.transport.abort()
            await closed

    def port(self) -> int:
        """The port bound."""
        port: int = next(iter(self.server.sockets)).getsockname()[1]
        return port


class Accepting(asyncio.Protocol):
    """Every listener's protocol for a socket just accepted: the one place sockets are counted.

    A socket counted goes to its listener's protocol at once, or (mqtts, wss) once its TLS
    handshake is done; one past a limit is closed at once, before any TLS or HTTP work.
    """

    __slots__ = ("_listening", "early", "ended", "transport")

    def __init__(self, listening: Listening) -> None:
        self._listening = listening
        self.transport: asyncio.Transport | None = None
        self.early: list[bytes] = []
        """What the client sent before its TLS handshake began: its ClientHello."""
        self.ended = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Count the socket, close it or hand it on: the listener's protocol takes the transport."""
        listening = self._listening
        self.transport = tcp = cast("asyncio.Transport", transport)
        peer = tcp.get_extra_info("peername") or ("?", 0)
        address = str(peer[0])
        if not listening.door.admit(listening.name, address):
            tcp.abort()
            return
        admitted = Admitted(listening.door, listening.name, (address, int(peer[1])))
        if listening.tls is not None:
            admitted.watch(tcp, listening.connect_timeout)
            listening.handshake(self, tcp, admitted)
            return
        protocol = listening.protocol(admitted)
        tcp.set_protocol(protocol)
        protocol.connection_made(tcp)
        admitted.watch(tcp, listening.connect_timeout)  # a WebSocket still to upgrade (TCP: opened)

    def data_received(self, data: bytes) -> None:
        """Bytes read before the TLS handshake began: kept for it, and no more read until it does."""
        self.early.append(data)
        if self.transport is not None:
            self.transport.pause_reading()

    def eof_received(self) -> None:
        """The client closed before its TLS handshake began."""
        self.ended = True

    def connection_lost(self, exc: Exception | None) -> None:
        """The socket closed (refused, or before its TLS handshake began)."""
        del exc
        self.ended = True


async def serve_tcp(
    door: Door,
    name: str,
    host: str,
    port: int,
    *,
    tls: ssl.SSLContext | None = None,
    handshake_timeout: float = 10.0,
) -> Listening:
    """Listen for MQTT over TCP, or over TLS (mqtts) with a server context."""
    listening = Listening(
        door,
        name,
        lambda admitted: TcpLink(admitted, listening.open_links),
        tls=tls,
        handshake_timeout=handshake_timeout,
    )
    listening.server = await listening.bind(host, port)
    return listening


def only_mqtt_path(_connection: ServerConnection, request: Request) -> Response | None:
    """Upgrade a request for ``WEBSOCKET_PATH`` (any query); answer any other path 404, saying where.

    One path, as NATS serves MQTT at it alone: a mistyped URL fails at once, instead of working
    here and nowhere else.
    """
    if request.path.partition("?")[0] == WEBSOCKET_PATH:
        return None
    body = f"not found: MQTT over WebSocket is served at {WEBSOCKET_PATH}\n".encode()
    headers = Headers([("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
    headers["Connection"] = "close"
    return Response(404, "Not Found", headers, body)


async def serve_websocket(
    door: Door,
    name: str,
    host: str,
    port: int,
    max_packet: int,
    *,
    tls: ssl.SSLContext | None = None,
    handshake_timeout: float = 10.0,
) -> Listening:
    """Listen for MQTT over WebSocket (subprotocol ``mqtt``, path ``WEBSOCKET_PATH``), or wss.

    The ``websockets`` server is put together as its ``serve`` would (permessage-deflate offered,
    its server header), around a TCP server whose sockets ``Accepting`` counts first.
    """

    async def handler(ws: ServerConnection) -> None:
        link = WebSocketLink(ws)
        connection = cast("WebSocketConnection", ws).admitted.open(link)
        if connection is None:
            return  # the socket closed as its upgrade ended
        await link.serve(connection)

    logger = QuietHandshakeLog(logging.getLogger("websockets.server"))
    server = Server(handler, process_request=only_mqtt_path, open_timeout=handshake_timeout, logger=logger)
    extensions = enable_server_permessage_deflate(None)
    subprotocols = [Subprotocol("mqtt")]

    def upgrade(admitted: Admitted) -> WebSocketConnection:
        protocol = ServerProtocol(
            extensions=extensions,
            subprotocols=subprotocols,
            max_size=max_packet + FRAME_HEADROOM,
            logger=logger,
        )
        return WebSocketConnection(admitted, protocol, server)

    shutdown = CLOSE_TIMEOUT if tls is not None else None  # as websockets' own serve sets it
    listening = Listening(
        door, name, upgrade, tls=tls, handshake_timeout=handshake_timeout, shutdown_timeout=shutdown
    )
    server.wrap(await listening.bind(host, port))
    listening.server = server
    return listening
