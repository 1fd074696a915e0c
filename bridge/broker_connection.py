"""The bridge's connection to the broker: one at a time, kept up, failing over round the brokers given.

It speaks the part of MQTT 3.1.1 a publisher needs (CONNECT, PUBLISH at QoS 1, PUBACK, PINGREQ,
DISCONNECT, all from ``radio.wire``) on an event loop: the server worker's own under ``radio
bridge``, else one in a thread of its own. What it reads is mostly PUBACKs back to back: they are
taken in one pass, and every packet id one read brought is handed on at once (``on_acknowledged``).

Given several brokers (the nodes of a cluster), it holds one at a time and, when it is lost or a
connect fails, tries the next at once, round the list; it waits ``RECONNECT_DELAY`` only after
every broker of a full round failed. Whenever a connection ends, ``on_lost`` is called first: what
was sent on it and not acknowledged must be answered 503, never sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import struct
import threading
import uuid
import weakref
from collections.abc import Callable, Sequence
from typing import Final

import uvloop

from radio import wire
from radio.config import Address
from radio.errors import reason as in_words
from radio.failover import FailoverCursor
from radio.tls import verify_failure

log = logging.getLogger("radio.bridge")

KEEPALIVE: Final = 30
RECONNECT_DELAY: Final = 1.0
CLOSE_GRACE: Final = 0.2
"""Seconds a stopping connection waits for its socket to close (a TLS close takes a few exchanges)."""
LARGEST_ANSWER: Final = 65_536
"""What a broker sends a publisher is CONNACK, PUBACK and PINGRESP, four bytes at most: a packet
announced larger than this means the stream is not MQTT, and the connection is dropped instead of
buffering it."""
CONNACK_REFUSALS: Final = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}


class Connection(asyncio.Protocol):
    """One socket to one broker; lives and dies on the event loop it was made on."""

    def __init__(self, on_acknowledged: Callable[[list[int]], None]) -> None:
        loop = asyncio.get_running_loop()
        self.on_acknowledged = on_acknowledged
        """Called once per read, with the packet ids of the PUBACKs it brought (maybe none)."""
        self.transport: asyncio.Transport | None = None
        self.connack: asyncio.Future[int] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.framer = wire.Framer(LARGEST_ANSWER)
        self.last_heard = loop.time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """The socket is connected (and its TLS handshake done): the CONNECT goes next."""
        self.transport = transport  # type: ignore[assignment]  # a TCP connection's is a Transport

    def data_received(self, data: bytes) -> None:
        """Frame what arrived; hand on the PUBACKs, answer the CONNACK's waiter; the rest is ignored."""
        self.last_heard = asyncio.get_running_loop().time()
        acknowledged: list[int] = []
        try:
            if not self.framer.pending:  # a busy connection reads PUBACKs back to back
                acknowledged, taken = wire.leading_pubacks(data)
                data = data[taken:]
            for first, body in self.framer.feed(data) if data else ():
                kind = first >> 4
                if kind == wire.PUBACK:
                    acknowledged.append(wire.packet_id(body, "a PUBACK"))
                elif kind == wire.CONNACK and not self.connack.done():
                    self.connack.set_result(wire.decode_connack(body)[1])
        except wire.Violation as exc:
            self._fail(str(exc))
        self.on_acknowledged(acknowledged)  # what was acknowledged before a bad packet stands

    def _fail(self, why: str) -> None:
        log.warning("closing the broker link: %s", why)
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        """The socket is gone: whoever waits for the CONNACK or the close learns it."""
        if not self.connack.done():
            self.connack.set_exception(ConnectionError(str(exc or "connection closed")))
        if not self.closed.done():
            self.closed.set_result(None)


class BrokerConnection:
    """This process's connection to the broker, under the bridge's own key, kept up in the background."""

    def __init__(
        self,
        brokers: Sequence[Address],
        username: str,
        password: str,
        *,
        tls: ssl.SSLContext | None,
        on_acknowledged: Callable[[list[int]], None],
        on_lost: Callable[[], None],
    ) -> None:
        self._cursor = FailoverCursor(brokers)
        self.tls = tls
        """Set for an mqtts:// broker: the context that verifies its certificate."""
        self.on_acknowledged = on_acknowledged
        self.on_lost = on_lost
        self._refusals_logged: set[str] = set()
        self._outage_said = False
        """Whether the current outage was logged: once per outage, not once a second."""
        self._username = username
        self._password = password
        self._client_id = f"radio-bridge-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._connected = threading.Event()
        self.up = asyncio.Event()
        """``connected`` for waiters on the connection's own loop; set and cleared on that loop."""
        self._given_up = asyncio.Event()
        """The server stops: nobody waits for the connection any more (``give_up_waiting``)."""
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._main: asyncio.Task[None] | None = None
        self.connection: Connection | None = None
        """The connection up now, if any."""
        self._connections: weakref.WeakSet[Connection] = weakref.WeakSet()
        """Every connection made, until it is gone: none may outlive the loop it runs on."""

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Connect in the background, on ``loop`` (from its running thread), else on a thread of its own.

        Under ``radio bridge`` the connection runs on the worker's own event loop, which is awake
        anyway while requests come in: no thread of its own to wake for every packet.
        """
        if self._main is not None:
            return
        if loop is not None:
            self.loop = loop
            self._main = loop.create_task(self._keep_connected())
            return
        loop = uvloop.new_event_loop()
        self.loop = loop
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            self._main = loop.create_task(self._keep_connected())
            loop.call_soon(started.set)
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(self._main)
            # Let closing transports (a TLS shutdown takes a few turns) finish before the loop goes.
            loop.run_until_complete(self._all_closed())
            loop.close()

        self._thread = threading.Thread(target=run, name="radio-bridge-mqtt", daemon=True)
        self._thread.start()
        started.wait()

    def stop(self) -> None:
        """Say DISCONNECT and close the connection (from any thread but its own loop's)."""
        main, loop = self._main, self.loop
        if main is None or loop is None:
            return
        self._connected.clear()  # a stop asked for is no lost connection: nothing to warn about
        if self._thread is not None:
            loop.call_soon_threadsafe(main.cancel)
            self._thread.join(10)
            self._thread = None
        else:

            async def cancel() -> None:
                main.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await main

            with contextlib.suppress(RuntimeError):  # the loop already stopped
                asyncio.run_coroutine_threadsafe(cancel(), loop).result(10)
        self._main = None

    @property
    def brokers(self) -> tuple[Address, ...]:
        """Tried in turn: the next one when the connection is lost or a connect fails."""
        return self._cursor.items

    @property
    def broker(self) -> Address:
        """The broker connected to (or tried next)."""
        return self._cursor.current

    @property
    def connected(self) -> bool:
        """Whether the connection is up right now."""
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        """Whether the connection came up within ``timeout`` seconds."""
        return self._connected.wait(timeout)

    # On the connection's event loop from here on.

    def give_up_waiting(self) -> None:
        """The server stops: publishes waiting for the connection to come (back) up fail now.

        Else each would hold the stop for its whole timeout while the broker is away, to be
        answered 503 all the same.
        """
        self._given_up.set()

    async def comes_up(self, within: float) -> bool:
        """Whether the connection is up within ``within`` seconds; False at once once given up."""
        if self._given_up.is_set():
            return False
        up, given_up = asyncio.ensure_future(self.up.wait()), asyncio.ensure_future(self._given_up.wait())
        try:
            await asyncio.wait((up, given_up), timeout=within, return_when=asyncio.FIRST_COMPLETED)
        finally:
            up.cancel()
            given_up.cancel()
        return self.connected and not self._given_up.is_set()

    @property
    def ready(self) -> bool:
        """Whether a packet written now goes to a broker that answered the CONNECT."""
        return self._connected.is_set() and self.connection is not None

    def _open(self) -> asyncio.Transport | None:
        """The transport of the connection up now, unless it is closing.

        A connection the broker just closed takes no more writes (uvloop raises): what was meant for
        it is answered 503 as its loss is handled.
        """
        connection = self.connection
        if connection is None or connection.transport is None or connection.transport.is_closing():
            return None
        return connection.transport

    def write(self, data: bytes) -> None:
        """Send ``data`` on the connection up now; nothing if there is none."""
        if (transport := self._open()) is not None:
            transport.write(data)

    def reset(self, why: str) -> None:
        """Drop the connection at once with a TCP reset: the broker must not read what it has not yet."""
        if (transport := self._open()) is None:
            return
        log.warning("%s: dropping the link to the broker at %s", why, self.broker)
        sock = transport.get_extra_info("socket")
        if sock is not None:  # a reset, not a close
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    def new_connection(self) -> Connection:
        """A connection to be made (the protocol factory): followed until it is gone."""
        connection = Connection(self.on_acknowledged)
        self._connections.add(connection)
        return connection

    async def _all_closed(self) -> None:
        """Wait (at most ``CLOSE_GRACE``) for every connection made to close, then abort the rest."""
        connections = [c for c in self._connections if not c.closed.done()]
        if connections:
            await asyncio.wait([c.closed for c in connections], timeout=CLOSE_GRACE)
        for connection in connections:
            if not connection.closed.done() and connection.transport is not None:
                connection.transport.abort()
        await asyncio.sleep(0)  # the aborts' callbacks run

    def _down(self) -> None:
        self._connected.clear()
        self.up.clear()
        self.connection = None
        self.on_lost()

    async def _keep_connected(self) -> None:
        loop = asyncio.get_running_loop()
        lost = False
        try:
            while True:
                broker = self.broker
                was_connected = False
                try:
                    await self._session(loop, lost)
                except (OSError, ConnectionError, TimeoutError) as exc:
                    was_connected = self._connected.is_set()
                    refusal = verify_failure(exc, f"the broker at {broker}")
                    if refusal is not None and refusal not in self._refusals_logged:
                        self._refusals_logged.add(refusal)  # once per reason: it is retried, in vain
                        log.error("%s", refusal)  # noqa: TRY400 - one line, the cause is in it
                    if self._connected.is_set():
                        log.warning("lost the broker at %s (%s); reconnecting", broker, exc or "closed")
                        self._outage_said = True  # said: the attempts that fail next say nothing
                    elif refusal is None and not self._outage_said:
                        self._outage_said = True
                        log.warning(
                            "cannot reach the broker at %s (%s); retrying, answering 503 meanwhile",
                            broker,
                            in_words(exc),
                        )
                    lost = lost or was_connected
                self._down()
                if self._cursor.move_on(worked=was_connected):  # a full round failed: wait before the next
                    await asyncio.sleep(RECONNECT_DELAY)
        finally:
            connection = self.connection
            self._down()
            if connection is not None and connection.transport is not None:
                if not connection.transport.is_closing():
                    connection.transport.write(wire.DISCONNECT_PACKET)
                    connection.transport.close()
                # Closing (or dropped just before the stop): let it finish.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(connection.closed), CLOSE_GRACE)

    async def _session(self, loop: asyncio.AbstractEventLoop, lost: bool) -> None:
        """One connection, from CONNECT until it closes."""
        async with asyncio.timeout(10):
            transport, connection = await loop.create_connection(
                self.new_connection,
                self.broker.host,
                self.broker.port,
                ssl=self.tls,
                server_hostname=self.broker.host if self.tls is not None else None,
            )
            try:
                transport.write(wire.connect(self._client_id, self._username, self._password, KEEPALIVE))
                code = await connection.connack
            except BaseException:
                # Stopped or timed out before the connection was ours to close: close it here, or
                # the loop would be closed under an open socket.
                transport.abort()
                raise
        if code != wire.ACCEPTED:
            reason = CONNACK_REFUSALS.get(code, f"code {code}")
            refusal = f"the broker refused the bridge's key: {reason}"
            if refusal not in self._refusals_logged:  # once per reason: it is retried every second
                self._refusals_logged.add(refusal)
                log.error("%s", refusal)
            transport.close()
            self._outage_said = True  # the refusal says it: not "cannot reach" besides
            msg = f"refused: {reason}"
            raise ConnectionError(msg)
        self.connection = connection
        self._connected.set()
        self.up.set()
        self._refusals_logged.clear()  # a refusal after this one is news again
        self._outage_said = False
        log.info("%s the broker at %s", "reconnected to" if lost else "connected to", self.broker)
        while not connection.closed.done():
            await asyncio.wait([connection.closed], timeout=KEEPALIVE / 2)
            if connection.closed.done():
                break
            if loop.time() - connection.last_heard > KEEPALIVE * 1.5:
                transport.abort()  # no answer, not even to the last PINGREQ: the connection is dead
                break
            transport.write(wire.PINGREQ_PACKET)
        msg = "connection closed"
        raise ConnectionError(msg)
