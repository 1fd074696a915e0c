"""One persistent MQTT connection per process, and a publish that returns only once the broker has it.

The bridge's promise is that a 200 means the broker has the sample and a 503 means the caller
should retry. So a sample is never left queued to go out later, after its request was answered
503: a publish attempted while the link is down fails at once, a link that drops fails every
publish still waiting for its PUBACK, and nothing is ever resent (clean session, no redelivery).

The link speaks just the part of MQTT 3.1.1 a publisher needs (CONNECT, PUBLISH at QoS 1, PUBACK,
PINGREQ, DISCONNECT) on an event loop: the server worker's own under ``radio bridge``, else one in
a thread of its own. Request threads hand it packets
with ``call_soon_threadsafe`` and wait on a future; every packet handed over in one turn of the
loop goes out in one write, and every PUBACK that arrived in one read is handled at once. This is
the bridge's hot path: a general-purpose client spent more per sample than Flask did
(bench/RESULTS.md, "HTTP door").

Given several brokers (the nodes of a cluster), the link holds one at a time and, when it is lost
or a connect fails, tries the next at once, round the list; it waits ``RECONNECT_DELAY`` only after
every broker of a full round failed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import socket
import ssl
import struct
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Final

import uvloop

from radio.config import Address
from radio.tls import verify_failure

log = logging.getLogger("radio.bridge")

KEEPALIVE: Final = 30
RECONNECT_DELAY: Final = 1.0
CONNACK_REFUSALS: Final = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}


UNREACHABLE: Final = "the broker is unreachable: nothing was published, retry later"


class BrokerUnavailable(Exception):
    """The sample was not published: the broker is unreachable or did not confirm in time."""


def _string(value: bytes) -> bytes:
    return struct.pack("!H", len(value)) + value


def _packet(first: int, body: bytes) -> bytes:
    """Fixed header (type and flags, variable-length remaining length), then the body."""
    length, header = len(body), bytearray([first])
    while True:
        length, digit = divmod(length, 128)
        header.append(digit | (0x80 if length else 0))
        if not length:
            return bytes(header) + body


def connect_packet(client_id: str, username: str, password: str) -> bytes:
    """CONNECT: MQTT 3.1.1, clean session, user name and password."""
    flags = 0x80 | 0x40 | 0x02
    head = _string(b"MQTT") + bytes([4, flags]) + struct.pack("!H", KEEPALIVE)
    payload = _string(client_id.encode()) + _string(username.encode()) + _string(password.encode())
    return _packet(0x10, head + payload)


def publish_packet(topic: bytes, packet_id: int, payload: bytes, retain: bool) -> bytes:
    """PUBLISH at QoS 1."""
    return _packet(0x32 | retain, _string(topic) + struct.pack("!H", packet_id) + payload)


PINGREQ: Final = b"\xc0\x00"
PUBACK_HEAD: Final = b"\x40\x02"
"""A PUBACK's fixed header: type 4, two bytes to follow (the packet id)."""
DISCONNECT: Final = b"\xe0\x00"


def _caller_cancelled() -> bool:
    """Whether the running task itself is being cancelled: not a PUBACK deadline that passed."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _expire(done: asyncio.Future[None]) -> None:
    """The timeout of an awaited PUBACK: the waiter sees its future cancelled."""
    if not done.done():
        done.cancel()


class _Link(asyncio.Protocol):
    """One connection to the broker; lives and dies on the publisher's event loop."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher
        self.transport: asyncio.Transport | None = None
        self.connack: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._buffer = bytearray()
        self.last_heard = asyncio.get_running_loop().time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP connection's is a Transport

    def data_received(self, data: bytes) -> None:
        self.last_heard = asyncio.get_running_loop().time()
        buffer = self._buffer
        buffer += data
        self._take_pubacks(buffer)
        self._take_packets(buffer)
        self.publisher._report_confirmed()

    def _take_packets(self, buffer: bytearray) -> None:
        """Every whole packet at the front of the buffer: PUBACKs, the CONNACK; the rest ignored."""
        while len(buffer) >= 2:
            length, shift, at = 0, 0, 1
            while True:
                if at >= len(buffer):
                    return
                digit = buffer[at]
                length |= (digit & 0x7F) << shift
                at += 1
                if not digit & 0x80:
                    break
                shift += 7
                if shift > 21:
                    self._fail("a malformed packet")
                    return
            if len(buffer) < at + length:
                return
            kind, body = buffer[0] >> 4, bytes(buffer[at : at + length])
            del buffer[: at + length]
            if kind == 4 and length >= 2:  # PUBACK
                self.publisher._acknowledged(struct.unpack_from("!H", body)[0])
            elif kind == 2 and length >= 2 and not self.connack.done():  # CONNACK
                self.connack.set_result(body[1])

    def _take_pubacks(self, buffer: bytearray) -> None:
        """What a busy link reads is PUBACKs back to back, four bytes each: taken in one pass."""
        at, end, acknowledged = 0, len(buffer) - 3, self.publisher._acknowledged
        while at < end and buffer[at] == PUBACK_HEAD[0] and buffer[at + 1] == PUBACK_HEAD[1]:
            acknowledged(buffer[at + 2] << 8 | buffer[at + 3])
            at += 4
        if at:
            del buffer[:at]

    def _fail(self, why: str) -> None:
        log.warning("closing the broker link: %s", why)
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.connack.done():
            self.connack.set_exception(ConnectionError(str(exc or "connection closed")))
        if not self.closed.done():
            self.closed.set_result(None)


CLOSE_GRACE: Final = 0.2
"""Seconds a stopping link waits for its socket to close (a TLS close takes a few exchanges)."""


class Publisher:
    """This process's link to the broker, under the bridge's own key."""

    def __init__(
        self,
        broker: Address | Sequence[Address],
        username: str,
        password: str,
        timeout: float = 5.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.brokers = [broker] if isinstance(broker, Address) else list(broker)
        """Tried in turn: the next one when the link is lost or a connect fails."""
        if not self.brokers:
            msg = "the publisher needs at least one broker"
            raise ValueError(msg)
        self._current = 0
        self.timeout = timeout
        self.tls = tls
        """Set for an mqtts:// broker: the context that verifies its certificate."""
        self._refusals_logged: set[str] = set()
        self._username = username
        self._password = password
        self._client_id = f"radio-bridge-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._connected = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._main: asyncio.Task[None] | None = None
        self._link: _Link | None = None
        self._waiting: dict[int, tuple[Future[None] | asyncio.Future[None], object]] = {}
        """Samples sent and not yet acknowledged, by packet id: the caller's future, and what it
        gave with the sample (handed back to ``on_confirmed``)."""
        self._confirmed: list[tuple[Future[None] | asyncio.Future[None], object]] = []
        self.on_confirmed: Callable[[list[object]], None] | None = None
        """Called on the link's loop once per read from the broker, with the receipts of the samples
        it confirmed: before any of their callers resumes, so what it counts is counted first."""
        self._next_id = 0
        self._outgoing: list[bytes] = []
        self._due: collections.deque[tuple[float, asyncio.Future[None]]] = collections.deque()
        """Samples awaited on the link's loop, by deadline (``_expire_at``)."""
        self._sweep: asyncio.TimerHandle | None = None
        self._up = asyncio.Event()
        """``_connected`` for waiters on the link's own loop; set and cleared on that loop."""
        self._links: weakref.WeakSet[_Link] = weakref.WeakSet()
        """Every connection made, until it is gone: none may outlive the publisher's own loop."""

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Connect in the background; publishing waits (up to the timeout) for the link.

        Under ``radio bridge`` the link runs on the worker's own event loop (``loop``, from its
        running thread), which is awake anyway while requests come in: no thread of its own to wake
        for every packet. Without one, the link gets an event loop in a thread of its own.
        """
        if self._main is not None:
            return
        if loop is not None:
            self._loop = loop
            self._main = loop.create_task(self._keep_connected())
            return
        loop = uvloop.new_event_loop()
        self._loop = loop
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            self._main = loop.create_task(self._keep_connected())
            loop.call_soon(started.set)
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(self._main)
            # Let closing transports (a TLS shutdown takes a few turns) finish before the loop goes.
            loop.run_until_complete(self._closed_links())
            loop.close()

        self._thread = threading.Thread(target=run, name="radio-bridge-mqtt", daemon=True)
        self._thread.start()
        started.wait()

    def stop(self) -> None:
        """Say DISCONNECT and close the link (from any thread but the link's own loop)."""
        main, loop = self._main, self._loop
        if main is None or loop is None:
            return
        self._connected.clear()  # a stop asked for is no lost link: nothing to warn about
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
    def broker(self) -> Address:
        """The broker linked to (or tried next)."""
        return self.brokers[self._current]

    @property
    def connected(self) -> bool:
        """Whether the broker link is up right now."""
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        """Whether the link came up within ``timeout`` seconds."""
        return self._connected.wait(timeout)

    def publish(self, topic: str, payload: bytes, retain: bool, receipt: object = None) -> None:
        """Publish at QoS 1 and return once the broker acknowledged it; else BrokerUnavailable."""
        deadline = time.monotonic() + self.timeout
        if not self._connected.wait(self.timeout) or self._loop is None:
            raise BrokerUnavailable(UNREACHABLE)
        done: Future[None] = Future()
        try:
            self._loop.call_soon_threadsafe(
                functools.partial(
                    self._send, topic.encode(), payload, retain, done, deadline, receipt=receipt
                )
            )
        except RuntimeError:  # the loop is closed: the publisher was stopped
            raise BrokerUnavailable(UNREACHABLE) from None
        try:
            done.result(max(deadline - time.monotonic(), 0.001))
        except FutureTimeout:
            if not done.cancel():  # its PUBACK is being handled this very moment: that answer stands
                done.result()
                return
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._unconfirmed, done)
            raise BrokerUnavailable(self._not_confirmed()) from None

    async def publish_async(self, topic: str, payload: bytes, retain: bool, receipt: object = None) -> None:
        """``publish`` on the link's own loop (``radio bridge``: the worker's): no thread waits."""
        deadline = time.monotonic() + self.timeout
        loop = asyncio.get_running_loop()
        if self._loop is None:
            raise BrokerUnavailable(UNREACHABLE)
        if loop is not self._loop:
            msg = "publish_async runs on the link's own loop (start(loop)); from any other, use publish"
            raise RuntimeError(msg)
        if not self._connected.is_set():
            try:
                async with asyncio.timeout(self.timeout):
                    await self._up.wait()
            except TimeoutError:
                raise BrokerUnavailable(UNREACHABLE) from None
        done = loop.create_future()
        self._send(topic.encode(), payload, retain, done, deadline, receipt=receipt)
        if not done.done():
            self._expire_at(loop, deadline, done)
        try:
            await done
        except asyncio.CancelledError:
            if _caller_cancelled():
                raise
            self._unconfirmed(done)
            raise BrokerUnavailable(self._not_confirmed()) from None

    def _expire_at(
        self, loop: asyncio.AbstractEventLoop, deadline: float, done: asyncio.Future[None]
    ) -> None:
        """Cancel ``done`` if it is still waiting at ``deadline``.

        Every sample has the same timeout, so deadlines come in order: they queue up, and one timer
        at the earliest expires what is due, where a timer per sample was made and cancelled on the
        worker's busy loop for every request. Samples answered meanwhile leave the front of the
        queue as new ones join it; one that comes out of order (it waited for the link) gets a
        timer of its own.
        """
        due = self._due
        while due and due[0][1].done():
            due.popleft()
        if due and deadline < due[-1][0]:
            # Out of order (it waited for the link while later samples went ahead): a timer of its own.
            loop.call_later(max(deadline - time.monotonic(), 0.0), _expire, done)
            return
        due.append((deadline, done))
        if self._sweep is None:
            self._sweep = loop.call_later(max(deadline - time.monotonic(), 0.0), self._expire_due, loop)

    def _expire_due(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweep = None
        due, now = self._due, time.monotonic()
        while due and (due[0][0] <= now or due[0][1].done()):
            _expire(due.popleft()[1])
        if due:
            self._sweep = loop.call_later(max(due[0][0] - now, 0.0), self._expire_due, loop)

    def _not_confirmed(self) -> str:
        return f"the broker did not confirm the sample within {self.timeout:g} s: retry later"

    # On the publisher's event loop from here on.

    def _send(
        self,
        topic: bytes,
        payload: bytes,
        retain: bool,
        done: Future[None] | asyncio.Future[None],
        deadline: float,
        *,
        receipt: object = None,
    ) -> None:
        if done.done():  # its caller gave up (timed out) before the loop got to it
            return
        if time.monotonic() >= deadline:
            # Handed over too late (a busy loop, a link just back): sending it now would publish a
            # sample whose request is answered 503.
            done.set_exception(
                BrokerUnavailable("the broker link was busy: nothing was published, retry later")
            )
            return
        if not self._connected.is_set() or self._link is None:
            done.set_exception(
                BrokerUnavailable("the broker link dropped: nothing was published, retry later")
            )
            return
        for _ in range(65535):
            self._next_id = self._next_id % 65535 + 1
            if self._next_id not in self._waiting:
                break
        else:
            done.set_exception(BrokerUnavailable("too many samples waiting for the broker: retry later"))
            return
        self._waiting[self._next_id] = (done, receipt)
        if not self._outgoing:
            # Everything handed over before the loop gets back to this goes out in one write.
            asyncio.get_running_loop().call_soon(self._flush)
        self._outgoing.append(publish_packet(topic, self._next_id, payload, retain))

    def _flush(self) -> None:
        data = b"".join(self._outgoing)
        self._outgoing.clear()
        link = self._link
        # A link the broker just closed takes no more writes (uvloop raises): its waiting samples
        # are answered 503 as the link's loss is handled.
        if link is not None and link.transport is not None and not link.transport.is_closing():
            link.transport.write(data)

    def _unconfirmed(self, done: Future[None] | asyncio.Future[None]) -> None:
        """A sample went unacknowledged past the timeout and its request was answered 503.

        The link is dropped at once (a TCP reset): nothing more goes to a broker that stopped
        answering. What was sent cannot be taken back: a stalled broker still reads what its
        socket received before the reset, and publishes it when it wakes. The answer to a sample
        the broker did not confirm in time is "retry", and a retried sample may reach listeners
        twice (docs/http-door.md).
        """
        if not any(waiting is done for waiting, _ in self._waiting.values()):
            return  # never sent (handed over too late), or answered meanwhile: the link is fine
        link = self._link
        if link is not None and link.transport is not None and not link.transport.is_closing():
            log.warning(
                "a sample was not confirmed within %g s: dropping the link to the broker at %s",
                self.timeout,
                self.broker,
            )
            sock = link.transport.get_extra_info("socket")
            if sock is not None:  # a reset, not a close: the broker must not read the rest
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            link.transport.abort()

    def _acknowledged(self, packet_id: int) -> None:
        done, receipt = self._waiting.pop(packet_id, (None, None))
        if done is None or done.done():
            return  # answered already: timed out (503)
        if isinstance(done, Future) and not done.set_running_or_notify_cancel():
            return  # its thread gave up (503) just now; from here on it can no longer
        self._confirmed.append((done, receipt))

    def _report_confirmed(self) -> None:
        """Count what one read confirmed (``on_confirmed``), then let the waiting callers go on.

        Counted first, so that no caller answers 200 for a sample not yet in the counts.
        """
        confirmed, self._confirmed = self._confirmed, []
        if not confirmed:
            return
        receipts = [receipt for _, receipt in confirmed if receipt is not None]
        if receipts and self.on_confirmed is not None:
            try:
                self.on_confirmed(receipts)
            except Exception:
                log.exception("counting confirmed samples failed")
        for done, _ in confirmed:
            if not done.done():
                done.set_result(None)

    def _drop_waiting(self) -> None:
        """Every sample still unacknowledged is answered 503: it must never go out later."""
        waiting, self._waiting = self._waiting, {}
        self._outgoing.clear()
        self._due.clear()  # every one of them is answered below
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for done, _ in waiting.values():
            if done.done():
                continue  # answered already: timed out (503)
            if isinstance(done, Future) and not done.set_running_or_notify_cancel():
                continue  # its thread gave up just now
            done.set_exception(BrokerUnavailable("the broker link dropped: retry later"))
        if waiting:
            log.warning("dropped %d unconfirmed samples, answered 503", len(waiting))

    async def _closed_links(self) -> None:
        """Wait (at most ``CLOSE_GRACE``) for every connection made to close, then abort the rest."""
        links = [link for link in self._links if not link.closed.done()]
        if links:
            await asyncio.wait([link.closed for link in links], timeout=CLOSE_GRACE)
        for link in links:
            if not link.closed.done() and link.transport is not None:
                link.transport.abort()
        await asyncio.sleep(0)  # the aborts' callbacks run

    async def _keep_connected(self) -> None:
        loop = asyncio.get_running_loop()
        lost = False
        failed = 0  # connects failed in a row: a full round of them waits before the next
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
                    lost = lost or was_connected
                self._connected.clear()
                self._up.clear()
                self._link = None
                self._drop_waiting()
                failed = 0 if was_connected else failed + 1
                self._current = (self._current + 1) % len(self.brokers)
                if failed and failed % len(self.brokers) == 0:
                    await asyncio.sleep(RECONNECT_DELAY)
        finally:
            self._connected.clear()
            self._up.clear()
            self._drop_waiting()
            link = self._link
            if link is not None and link.transport is not None and not link.transport.is_closing():
                link.transport.write(DISCONNECT)
                link.transport.close()
            if link is not None:  # closing (or dropped just before the stop): let it finish
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(link.closed), CLOSE_GRACE)

    def _new_link(self) -> _Link:
        link = _Link(self)
        self._links.add(link)
        return link

    async def _session(self, loop: asyncio.AbstractEventLoop, lost: bool) -> None:
        """One connection, from CONNECT until it closes."""
        async with asyncio.timeout(10):
            transport, link = await loop.create_connection(
                self._new_link,
                self.broker.host,
                self.broker.port,
                ssl=self.tls,
                server_hostname=self.broker.host if self.tls is not None else None,
            )
            try:
                transport.write(connect_packet(self._client_id, self._username, self._password))
                code = await link.connack
            except BaseException:
                # Stopped or timed out before the link was ours to close: close it here, or the
                # loop would be closed under an open socket.
                transport.abort()
                raise
        if code != 0:
            reason = CONNACK_REFUSALS.get(code, f"code {code}")
            refusal = f"the broker refused the bridge's key: {reason}"
            if refusal not in self._refusals_logged:  # once per reason: it is retried every second
                self._refusals_logged.add(refusal)
                log.error("%s", refusal)
            transport.close()
            msg = f"refused: {reason}"
            raise ConnectionError(msg)
        self._link = link
        self._connected.set()
        self._up.set()
        self._refusals_logged.clear()  # a refusal after this one is news again
        log.info("%s the broker at %s", "reconnected to" if lost else "connected to", self.broker)
        while not link.closed.done():
            await asyncio.wait([link.closed], timeout=KEEPALIVE / 2)
            if link.closed.done():
                break
            if loop.time() - link.last_heard > KEEPALIVE * 1.5:
                transport.abort()  # no answer, not even to the last PINGREQ: the link is dead
                break
            transport.write(PINGREQ)
        msg = "connection closed"
        raise ConnectionError(msg)
