"""One client's connection: the CONNECT sequence, its packets, keep-alive, and what it is sent.

The order of the CONNECT sequence is the safety of the broker: the first packet must be a
CONNECT, within ``connect_timeout``; the client is authenticated before any session is looked
at; only then is an existing session resumed, or taken over (its old connection closed); a
refused CONNECT gets its CONNACK and a closed socket, and leaves nothing behind.

Everything after that is synchronous: the transport hands over bytes (``data_received``), they
are cut into packets and each is handled on the spot. What the client is sent is gathered and
written once per turn of the event loop, so a burst of samples costs one system call per
subscriber, not one per sample. A connection whose client does not read (``congested``) gets
no more QoS 0 samples (they are counted as dropped) and its QoS 1 and 2 samples wait in its
session's queue until it drains.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Final, Protocol

from amqtt.utils import gen_client_id

from radio.broker import attributes as attrs
from radio.broker import codec
from radio.broker.access import GO
from radio.broker.message import Message
from radio.broker.output import Flusher, SendBuffers
from radio.broker.sessions import Session, Will

if TYPE_CHECKING:
    from radio.broker.router import Router
    from radio.broker.store import Store

log = logging.getLogger("radio.broker")

KEEP_ALIVE_GRACE: Final = 1.5
"""A client silent for one and a half times its keep-alive is gone (MQTT-3.1.2-24)."""
WILL_ATTEMPTS: Final = 40
"""Times a will waits for its key's quota to be readable (``USAGE_RETRY`` apart) before it is dropped."""


class Link(Protocol):
    """The byte stream under a connection: a TCP transport or a WebSocket."""

    def write(self, data: bytes) -> None:
        """Send bytes (buffered by the transport if the socket is full)."""

    def buffered(self) -> int:
        """Bytes written and not yet sent."""

    def pause_reading(self) -> None:
        """Stop reading until ``resume_reading``."""

    def resume_reading(self) -> None:
        """Read again."""

    def drained(self) -> Awaitable[None]:
        """Completes once the transport's buffer has drained."""

    def close(self) -> None:
        """Send what is buffered, then close."""


class Broker(Protocol):
    """What a connection needs of the broker around it."""

    router: Router
    store: Store | None
    connect_timeout: float
    max_packet_size: int
    flusher: Flusher
    send_buffers: SendBuffers

    async def authenticate(self, session: Session) -> bool:
        """Ask the auth plugins about a CONNECT."""

    def connection_closed(self, connection: Connection) -> None:
        """Forget a connection that ended."""

    def connected(self, connection: Connection) -> None:
        """A connection completed its CONNECT: it no longer counts as one still connecting."""


class Connection:
    """The broker's side of one client connection."""

    __slots__ = (
        "_acks_waiting",
        "_alive_timer",
        "_anonymous",
        "_draining",
        "_loop",
        "_out",
        "_out_size",
        "_pending",
        "_proved",
        "_room",
        "_written",
        "broker",
        "closed",
        "framer",
        "last_heard",
        "link",
        "listener",
        "peer",
        "session",
    )

    def __init__(self, broker: Broker, link: Link, listener: str, peer: tuple[str, int]) -> None:
        self.broker = broker
        self.link = link
        self.listener = listener
        self.peer = peer
        self.framer = codec.Framer(broker.max_packet_size)
        self.session: Session | None = None
        self.closed = False
        self.last_heard = time.monotonic()
        self._loop = asyncio.get_running_loop()
        self._out: list[bytes] = []
        self._out_size = 0
        self._room = broker.send_buffers.base
        """Bytes that may wait to be written to the client before it counts as slow (``SendBuffers``)."""
        self._written = 0
        """Bytes handed to the transport so far."""
        self._proved = 0
        """Bytes the client had taken when its room last grew."""
        self._draining = False
        self._pending: list[tuple[int, bytes]] | None = None
        """Packets that came while the CONNECT was being authenticated; None once it was."""
        self._acks_waiting = 0
        self._anonymous = False
        """Whether this connection holds one of its address's anonymous connections."""
        self._alive_timer: asyncio.TimerHandle | None = self._loop.call_later(
            broker.connect_timeout, self._connect_timed_out
        )

    def __repr__(self) -> str:
        return f"<Connection {self.who()}>"

    def who(self) -> str:
        """The client as the log names it (never a secret)."""
        if self.session is not None:
            return self.session.describe()
        return f"the client at {self.peer[0]}:{self.peer[1]} ({self.listener})"

    # Reading.
    def data_received(self, data: bytes) -> None:
        """Bytes from the client: cut them into packets and handle each."""
        if self.closed:
            return
        self.last_heard = time.monotonic()
        try:
            if self.session is None and self._pending is None and not self.framer.pending:
                _check_first_byte(data)  # say so at the first byte, not once a body has arrived
            packets = self.framer.feed(data)
            if self._pending is not None:
                self._pending.extend(packets)
                return
            self._run(packets)
        except codec.Violation as exc:
            self.close(str(exc))

    def _run(self, packets: list[tuple[int, bytes]]) -> None:
        for i, (first, body) in enumerate(packets):
            if self.closed:
                return
            if self._pending is not None:  # a publisher paused for its rate: the rest waits too
                self._pending.extend(packets[i:])
                return
            self._handle(first, body)

    def _handle(self, first: int, body: bytes) -> None:
        kind = codec.check_flags(first)
        session = self.session
        if session is None:
            if kind != codec.CONNECT:
                msg = f"the first packet is not a CONNECT (byte 0x{first:02x}) [MQTT-3.1.0-1]"
                raise codec.Violation(msg)
            self._on_connect(body)
        elif kind == codec.PUBLISH:
            self._on_publish(first, body)
        elif kind in (codec.PUBACK, codec.PUBCOMP):
            self.broker.router.acknowledged(session, codec.packet_id(body, "an acknowledgement"))
        else:
            handler = _HANDLERS.get(kind)
            if handler is None:
                msg = "a second CONNECT [MQTT-3.1.0-2]"
                if kind != codec.CONNECT:
                    msg = f"a packet of type {kind}, which only a server sends"
                raise codec.Violation(msg)
            handler(self, session, body)

    def _on_pubrel(self, session: Session, body: bytes) -> None:
        pid = codec.packet_id(body, "a PUBREL")
        session.incoming_qos2.discard(pid)
        self._ack(codec.ack(codec.PUBCOMP, pid))

    def _on_unsubscribe(self, session: Session, body: bytes) -> None:
        pid, filters = codec.decode_unsubscribe(body)
        self.broker.router.unsubscribe(session, filters)
        self.write(codec.ack(codec.UNSUBACK, pid))

    def _on_pingreq(self, session: Session, body: bytes) -> None:
        del session
        if body:
            msg = "a PINGREQ with a body (its remaining length is 0) [MQTT-3.12]"
            raise codec.Violation(msg)
        self.write(codec.PINGRESP_PACKET)

    def _on_disconnect(self, session: Session, body: bytes) -> None:
        del body
        session.will = None  # MQTT-3.14.4-3: a clean goodbye discards the will
        self.close(None)

    # The CONNECT sequence.
    def _on_connect(self, body: bytes) -> None:
        request = codec.decode_connect(body)
        self._pending = []
        if not request.supported:
            self._refuse(
                codec.UNACCEPTABLE_PROTOCOL, f"protocol level {request.level} (Radio speaks MQTT 3.1.1)"
            )
            return
        if not request.client_id and not request.clean_session:
            self._refuse(codec.IDENTIFIER_REJECTED, "an empty client id with clean session 0 [MQTT-3.1.3-8]")
            return
        router = self.broker.router
        candidate = Session(request.client_id or gen_client_id(), request.clean_session, router.limits.keyed)
        candidate.username, candidate.password = request.username, request.password
        candidate.remote_address, candidate.remote_port = self.peer
        candidate.attributes[attrs.TRANSPORT] = self.listener
        if request.will_topic is not None:
            candidate.will = Will(
                request.will_topic, request.will_payload, request.will_qos, request.will_retain
            )
        self.link.pause_reading()
        task = self._loop.create_task(self._admit(candidate, request.keep_alive))
        task.add_done_callback(_report_crash)

    async def _admit(self, candidate: Session, keep_alive: int) -> None:
        try:
            accepted = await self.broker.authenticate(candidate)
        except Exception:
            log.exception("authenticating %s failed", self.who())
            accepted = False
        if self.closed:
            return
        if not accepted:
            self._refuse(codec.NOT_AUTHORIZED, None)
            return
        taken = self._take_session(candidate)
        if taken is None:
            return
        session, present = taken
        self.write(codec.connack(present, codec.ACCEPTED))
        self._start_keep_alive(keep_alive)
        if present:
            self.broker.router.resume(session)
        pending, self._pending = self._pending or [], None
        self.link.resume_reading()
        try:
            self._run(pending)
        except codec.Violation as exc:
            self.close(str(exc))

    def _take_session(self, candidate: Session) -> tuple[Session, bool] | None:
        """The session this connection continues (and whether it existed), or None if refused.

        Sessions are the key's own: only a client of the same key (anonymous clients are one)
        takes over or resumes one. A new anonymous persistent session must fit its caps.
        """
        router = self.broker.router
        candidate.limits = router.limits_for(candidate.key_name)
        ident = candidate.ident
        existing = router.sessions.get(ident)
        opens = existing is None or candidate.clean_session or existing.clean_session
        if opens and candidate.persistent:
            name = candidate.key_name
            if name is None:
                refusal = router.anonymous.refusal(candidate.remote_address)
            else:
                refusal = router.keyed.refusal(candidate.key_id, name)
            if refusal is not None:
                self._refuse(codec.SERVER_UNAVAILABLE, refusal)
                return None
        if existing is not None and existing.connection is not None:
            log.warning(
                "client %s connected again: closing its previous connection", attrs.shown(candidate.client_id)
            )
            existing.connection.close(None)
            existing = router.sessions.get(ident)
        if candidate.key_name is None:
            if not router.anonymous_connections.open(self.peer[0]):
                most = router.anonymous_connections.limit
                self._refuse(
                    codec.SERVER_UNAVAILABLE,
                    f"{most} anonymous clients connected from {self.peer[0]}, "
                    "the limit [broker] anonymous_max_connections_per_address",
                )
                return None
            self._anonymous = True
        if existing is not None and (candidate.clean_session or existing.clean_session):
            router.discard(existing)
            existing = None
        session = candidate if existing is None else existing
        if existing is not None:
            # The new CONNECT brings its own will, credentials and address, and the key they proved.
            session.username, session.password = candidate.username, candidate.password
            session.remote_address, session.remote_port = candidate.remote_address, candidate.remote_port
            session.attributes.update(candidate.attributes)
            session.will = candidate.will
            session.limits = candidate.limits
        router.hold(session)
        session.connection = self
        session.offline_since = None
        self.session = session
        self.broker.connected(self)
        if session.tally is None and router.billed(session):
            session.tally = {}
        router.save(session)
        router.stats.connections += 1
        return session, existing is not None

    def _start_keep_alive(self, keep_alive: int) -> None:
        if self._alive_timer is not None:
            self._alive_timer.cancel()
            self._alive_timer = None
        if keep_alive:
            grace = math.ceil(keep_alive * KEEP_ALIVE_GRACE)
            self._alive_timer = self._loop.call_later(grace, self._check_alive, grace)

    def _refuse(self, code: int, reason: str | None) -> None:
        if reason is not None:
            log.warning("refused %s: %s", self.who(), reason)
        self.write(codec.connack(False, code))  # noqa: FBT003
        self.close(None)

    def _connect_timed_out(self) -> None:
        self._alive_timer = None
        if self.session is None and not self.closed:
            self.close(f"no CONNECT within {self.broker.connect_timeout:g}s")

    def _check_alive(self, grace: float) -> None:
        self._alive_timer = None
        if self.closed:
            return
        silent = time.monotonic() - self.last_heard
        if self._pending is not None:  # paused for its rate: not read, so not silent
            self._alive_timer = self._loop.call_later(grace, self._check_alive, grace)
            return
        if silent >= grace:
            self.close(f"silent for {silent:.1f}s, past its keep-alive [MQTT-3.1.2-24]")
            return
        self._alive_timer = self._loop.call_later(grace - silent, self._check_alive, grace)

    # Publishing.
    def _on_publish(self, first: int, body: bytes) -> None:
        topic, qos, pid, payload = codec.decode_publish(first, body)
        session = self.session
        assert session is not None  # noqa: S101 - only after CONNECT
        broker = self.broker
        router = broker.router
        if qos == 2 and pid in session.incoming_qos2:
            self._ack(codec.ack(codec.PUBREC, pid))  # a resend: admitted, delivered and charged once
            return
        if qos == 2 and len(session.incoming_qos2) >= router.limits.max_incoming_qos2:
            # Before the gate: a sample the broker will not take must not be charged to its key.
            self.close(
                f"{len(session.incoming_qos2)} QoS 2 samples awaiting their PUBREL, "
                "the limit [broker] max_incoming_qos2"
            )
            return
        gate = router.gate
        if gate is not None and self._held(
            gate.publish(session, topic, payload, bool(first & 0x01)), first, body, qos, pid
        ):
            return
        if qos == 2:
            session.incoming_qos2.add(pid)
        store = broker.store
        mark = store.pending if store is not None else 0
        router.publish(Message(topic, payload, qos, bool(first & 0x01)))
        if not qos:
            return
        ack = codec.ack(codec.PUBACK if qos == 1 else codec.PUBREC, pid)
        if store is not None and (store.pending != mark or self._acks_waiting):
            self._acks_waiting += 1
            store.after_commit(lambda ok: self._durable(ack, ok), since=mark)
        else:
            self.write(ack)

    def _ack_dropped(self, qos: int, pid: int) -> None:
        """A dropped publish is acknowledged all the same: MQTT 3.1.1 has no refusal."""
        if qos == 1:
            self._ack(codec.ack(codec.PUBACK, pid))
        elif qos == 2:
            self._ack(codec.ack(codec.PUBREC, pid))

    def _held(self, verdict: float, first: int, body: bytes, qos: int, pid: int) -> bool:
        """Apply the access gate's verdict (broker/access.py); True if the publish goes no further now."""
        if verdict > 0:  # over its rate: read nothing more from this client until a token is back
            self._pending = [(first, body)]
            self.link.pause_reading()
            self._loop.call_later(verdict, self._after_rate_wait)
            return True
        if verdict < 0:  # dropped (quota, schema)
            self._ack_dropped(qos, pid)
            return True
        return False

    def _after_rate_wait(self) -> None:
        """The publisher's key has a token again: handle what waited, then read again."""
        if self.closed:
            return
        self.last_heard = time.monotonic()  # its keep-alive counts from when it is read again
        pending, self._pending = self._pending or [], None
        try:
            self._run(pending)
        except codec.Violation as exc:
            self.close(str(exc))
            return
        if self._pending is None and not self.closed:
            self.link.resume_reading()

    def _durable(self, ack: bytes, ok: bool) -> None:
        self._acks_waiting -= 1
        if self.closed:
            return
        if ok:
            self.write(ack)
        else:
            self.close("the broker's store cannot be written: its sample was not acknowledged")

    def _ack(self, ack: bytes) -> None:
        """An acknowledgement that stores nothing, kept in order behind any waiting on the store."""
        store = self.broker.store
        if store is not None and self._acks_waiting:
            self._acks_waiting += 1  # stores nothing itself: it only keeps its place in the order
            store.after_commit(lambda ok: self._durable(ack, ok), since=store.pending)
        else:
            self.write(ack)

    def _on_pubrec(self, session: Session, body: bytes) -> None:
        pid = codec.packet_id(body, "a PUBREC")
        delivery = session.inflight.get(pid)
        if delivery is not None:
            delivery.released = True
        self.write(codec.ack(codec.PUBREL, pid))

    def _on_subscribe(self, session: Session, body: bytes) -> None:
        pid, requests = codec.decode_subscribe(body)
        router = self.broker.router
        codes = router.subscribe(session, requests)
        self.write(codec.suback(pid, codes))
        granted = [
            (f, code) for (f, _), code in zip(requests, codes, strict=True) if code != codec.SUBSCRIBE_FAILURE
        ]
        for packet in router.retained_for(session, granted):
            self.write(packet)

    # Writing.
    def write(self, data: bytes) -> None:
        """Queue bytes for the client; they go out together at the end of this turn of the loop."""
        if self.closed:
            return
        out = self._out
        if not out:
            self.broker.flusher.mark(self)
        out.append(data)
        self._out_size += len(data)

    def flush(self) -> None:
        """Write what this turn gathered, in one call (``broker.output.Flusher`` calls it)."""
        if not self._out or self.closed:
            return
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        self._out_size = 0
        try:
            self.link.write(data)
        except Exception as exc:  # noqa: BLE001 - a broken transport ends this connection only
            self.close(f"writing failed: {exc}")
            return
        self._written += len(data)
        if self._room > self.broker.send_buffers.base and not self.link.buffered():
            self._shrink()  # caught up: the room granted for a burst goes back

    def congested(self) -> bool:
        """Whether the client reads too slowly for more samples now (past its room, which may grow)."""
        waiting = self._out_size + self.link.buffered()
        return waiting > self._room and not self._grow(waiting)

    def _grow(self, waiting: int) -> bool:
        """Whether the room grew to hold ``waiting``, for a client that keeps up (``SendBuffers``).

        It keeps up if it took everything written to it before this turn of the loop (only this
        turn's bytes wait: the event loop reads a publisher's burst whole and it is fanned out
        in one turn), or took bytes since its room last grew.
        """
        buffered = self.link.buffered()
        taken = self._written - buffered
        if buffered and taken <= self._proved:
            return False  # it does not read: it keeps the room it has
        room = self.broker.send_buffers.grow(self._room)
        if room == self._room:
            return False
        self._room, self._proved = room, taken
        return waiting <= room

    def _shrink(self) -> None:
        self.broker.send_buffers.release(self._room)
        self._room = self.broker.send_buffers.base

    @property
    def waiting(self) -> int:
        """Bytes waiting to be written to the client (for the metrics)."""
        return self._out_size + self.link.buffered()

    def wait_for_drain(self) -> None:
        """Send the session's queue once the transport has drained."""
        if self._draining or self.closed:
            return
        self._draining = True
        task = self._loop.create_task(self._after_drain(self.link.drained()))
        task.add_done_callback(_report_crash)

    async def _after_drain(self, drained: Awaitable[None]) -> None:
        try:
            await drained
        finally:
            self._draining = False
        if not self.closed and self.session is not None:
            self.broker.router.pump(self.session)

    # Ending.
    def close(self, reason: str | None) -> None:
        """End the connection: publish the will if it ended badly, hand the session back, close."""
        if self.closed:
            return
        if reason is not None:
            log.warning("closing %s: %s", self.who(), reason)
        self.flush()
        self.closed = True
        if self._room > self.broker.send_buffers.base:
            self._shrink()
        if self._alive_timer is not None:
            self._alive_timer.cancel()
            self._alive_timer = None
        session = self.session
        router = self.broker.router
        if session is not None and session.connection is self:
            will, session.will = session.will, None
            if will is not None:
                self._publish_will(session, will)
            router.went_offline(session)
            router.stats.connections -= 1
        if self._anonymous:
            self._anonymous = False
            router.anonymous_connections.done(self.peer[0])
        self.link.close()
        self.broker.connection_closed(self)

    def connection_lost(self) -> None:
        """The transport ended without a DISCONNECT: the will goes out (MQTT-3.1.2-8)."""
        if not self.closed:
            self.close("the connection was lost" if self.session is None else None)

    def _publish_will(self, session: Session, will: Will, attempt: int = 0) -> None:
        """A will is a sample like any other: it passes the gate, as its key stands now."""
        router = self.broker.router
        gate = router.gate
        verdict = gate.will(session, will.topic, will.payload, will.retain) if gate is not None else GO
        if verdict > 0:  # the key's quota cannot be read this instant: ask again shortly
            if attempt < WILL_ATTEMPTS:
                self._loop.call_later(verdict, self._publish_will, session, will, attempt + 1)
            else:
                log.warning("dropped the will of %s: its key's quota could not be read", self.who())
            return
        if verdict == GO:
            router.publish(Message(will.topic, will.payload, will.qos, will.retain))


def _check_first_byte(data: bytes) -> None:
    if data and data[0] != codec.CONNECT << 4:
        msg = f"the first packet is not a CONNECT (byte 0x{data[0]:02x}) [MQTT-3.1.0-1]"
        raise codec.Violation(msg)


_HANDLERS: Final = {
    codec.PUBREC: Connection._on_pubrec,
    codec.PUBREL: Connection._on_pubrel,
    codec.SUBSCRIBE: Connection._on_subscribe,
    codec.UNSUBSCRIBE: Connection._on_unsubscribe,
    codec.PINGREQ: Connection._on_pingreq,
    codec.DISCONNECT: Connection._on_disconnect,
}
"""What each packet type after the CONNECT does (PUBLISH and the acknowledgements are handled inline)."""


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("a connection task failed: %s: %s", type(exc).__name__, exc)
