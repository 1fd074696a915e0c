"""One client's connection: reading, dispatching each packet to its handler, keep-alive, writing, closing.

The handlers live by packet type, as in Mosquitto's sources: ``handle_connect`` (the CONNECT
sequence), ``handle_publish`` (PUBLISH and its acknowledgements both ways, wills),
``handle_subscribe`` (SUBSCRIBE, UNSUBSCRIBE). The first packet must be a CONNECT, within
``connect_timeout``.

Everything after the CONNECT is synchronous: the transport hands over bytes (``data_received``), they
are cut into packets and each is handled on the spot. What the client is sent is gathered and
written once per turn of the event loop, so a burst of samples costs one system call per
subscriber, not one per sample; a paced sample (alone in its read) goes out at once
(``broker.output``). A connection whose client does not read (``congested``) gets
no more QoS 0 samples (they are counted as dropped) and its QoS 1 and 2 samples wait in its
session's queue until it drains.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final, Protocol

from radio import wire as codec
from radio.broker import handle_connect, handle_publish, handle_subscribe
from radio.broker.output import Flusher, SendBuffers
from radio.wire import mqtt5, reasons
from radio.wire.framing import TooLarge
from radio.wire.packets import AuthPacket

if TYPE_CHECKING:
    from radio.broker.per_source import Slot
    from radio.broker.protocol5 import Peer
    from radio.broker.router import Router
    from radio.broker.sessions import Session
    from radio.broker.store import Store

log = logging.getLogger(__name__)

_PUBACK: Final = codec.PUBACK << 4
"""The first byte of a PUBACK."""
KEEP_ALIVE_GRACE: Final = 1.5
"""A client silent for one and a half times its keep-alive is gone (MQTT-3.1.2-24)."""
STALL: Final = 10.0
"""Seconds a client holding room beyond ``send_buffer`` may take nothing before it is closed."""
READ_TURN: Final = 65_536
"""Bytes a client that may publish nothing is read in a row before every other client is
(``Connection._give_way``)."""


class Link(Protocol):
    """The byte stream under a connection: a TCP transport or a WebSocket."""

    @property
    def transport(self) -> asyncio.WriteTransport | None:
        """A transport that ``write`` and ``buffered`` only pass through to (TCP), or None.

        Fan-out writes to it directly: a call through the link for each delivery costs about as
        much as the rest of the delivery's bookkeeping.
        """

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

    def close(self, linger: bool = False) -> None:
        """Send what is buffered, then close (``linger``: after reading what the client still sends)."""


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
        "_alive_timer",
        "_draining",
        "_out",
        "_out_size",
        "_parked",
        "_proved",
        "_published_seen",
        "_room",
        "_stall_timer",
        "_took",
        "_turn",
        "_unyielded",
        "_written",
        "acks_waiting",
        "bounded",
        "broker",
        "buffers",
        "closed",
        "flusher",
        "framer",
        "last_heard",
        "link",
        "listener",
        "loop",
        "peer",
        "pending",
        "router",
        "send",
        "session",
        "slot",
        "v5",
        "waiting_bytes",
    )

    def __init__(
        self, broker: Broker, link: Link, listener: str, peer: tuple[str, int], accepted: float | None = None
    ) -> None:
        self.broker = broker
        self.link = link
        transport = link.transport
        self.send: Callable[[bytes], object] = link.write if transport is None else transport.write
        """Over TCP the socket's transport's own ``write``, taken once (``Link.transport``): each
        delivery then calls it without looking it up on the transport, which from cold caches (a
        paced sample's first delivery) costs about what the call does."""
        self.waiting_bytes: Callable[[], int] = (
            link.buffered if transport is None else transport.get_write_buffer_size
        )
        """What the transport holds unwritten: its own ``get_write_buffer_size`` over TCP, likewise."""
        self.router: Router = broker.router
        self.flusher: Flusher = broker.flusher
        self.buffers: SendBuffers = broker.send_buffers
        """The broker's parts every delivery reaches, held here: one attribute away, not two."""
        self.listener, self.peer = listener, peer
        self.framer = codec.Framer(broker.max_packet_size)
        self.session: Session | None = None
        self.v5: Peer | None = None
        """What an MQTT 5 client asked for at CONNECT; None for MQTT 3.1.1."""
        self.closed = False
        self.last_heard = time.monotonic()
        self.loop = asyncio.get_running_loop()
        self._out: list[bytes] | None = None
        """What this turn gathered for the client; None when nothing waits (an idle connection)."""
        self._out_size = 0
        self._room = broker.send_buffers.base
        """Bytes that may wait to be written to the client before it counts as slow (``SendBuffers``)."""
        self._written = 0
        """Bytes handed to the transport so far."""
        self._proved = 0
        """Bytes the client had taken when its room last grew."""
        self._took = 0
        """Bytes the client had taken at the last look of ``_stall_timer``."""
        self._stall_timer: asyncio.TimerHandle | None = None
        """While it holds room granted for a burst: a look every ``STALL`` seconds at what it took."""
        self._turn = -1
        """The flusher's turn in which bytes last went straight to the transport (``write``)."""
        self._draining = False
        self._unyielded = 0
        """Bytes read since this connection last let the others have a turn (``READ_TURN``)."""
        self._published_seen = -1
        """The broker's count of samples published when this publisher's reads last fanned one out."""
        self._parked: list[tuple[int, bytes]] | None = None
        self.pending: list[tuple[int, bytes]] | None = None
        """Packets that came while the CONNECT was being authenticated, or while a publisher is held
        for its rate; None while packets are handled as they come. ``_parked``: those of a read
        left for the client's next turn, the work its earlier ones brought (the retained samples of
        its SUBSCRIBEs) having used its turn up (``spend``)."""
        self.acks_waiting = 0
        """Acknowledgements waiting for the store (later ones wait behind them, in order)."""
        self.slot: Slot | None = None
        """What this connection holds of a per-source count, given back when it ends: one of its
        address's anonymous connections, or of its key's (``broker.per_source``)."""
        self.bounded = True
        """Whether it is read at most ``READ_TURN`` bytes in a row (``_give_way``): until its key is
        known to publish somewhere, nothing it sends is a burst to fan out."""
        # Its CONNECT is due ``connect_timeout`` after the socket's accept, a TLS handshake or a
        # WebSocket upgrade included.
        due = (self.loop.time() if accepted is None else accepted) + broker.connect_timeout
        self._alive_timer: asyncio.TimerHandle | None = self.loop.call_at(due, self._connect_timed_out)

    def __repr__(self) -> str:
        return f"<Connection {self.who()}>"

    def who(self) -> str:
        """The client as the log names it (never a secret)."""
        if self.session is not None:
            return self.session.describe()
        return f"the client at {self.peer[0]}:{self.peer[1]} ({self.listener})"

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run a step of this connection as a task whose failure is logged, not lost."""
        self.loop.create_task(work).add_done_callback(_report_crash)

    # Reading.
    def data_received(self, data: bytes) -> None:
        """Bytes from the client: cut them into packets and handle each.

        A read that is one whole PUBACK (a QoS 1 subscriber sends one per sample) ends the
        delivery it names without framing and dispatching: the same outcome as the long way.
        """
        if self.closed:
            return
        self.last_heard = time.monotonic()
        self._count_turn(len(data))
        session = self.session
        if (
            len(data) == 4  # a PUBACK: its first byte, remaining length 2, a packet id
            and data[0] == _PUBACK
            and data[1] == 2
            and session is not None
            and self.pending is None
            and self._parked is None
            and not self.framer.pending
            and (pid := data[2] << 8 | data[3])
        ):
            self.router.acknowledged(session, pid)
            return
        try:
            # A paced client's read is one whole packet: handled without building a list of one.
            handled_now = session is not None and self.pending is None and self._parked is None
            at = self.framer.whole(data) if handled_now else 0
            if at:
                first, body = data[0], data[at:]
            else:
                if session is None and self.pending is None and not self.framer.pending:
                    _check_first_byte(data)  # say so at the first byte, not once a body has arrived
                packets = self.framer.feed(data)
                if self.pending is not None:
                    self.pending.extend(packets)
                    return
                if self._parked is not None:
                    self._parked.extend(packets)
                    return
                if len(packets) != 1:
                    self._run(packets)
                    return
                first, body = packets[0]
            flusher = self.flusher
            flusher.alone = True  # its writes may go straight out (``write``)
            try:
                self._handle(first, body)
            finally:
                flusher.alone = False
        except codec.Violation as exc:
            self.violated(exc)

    def violated(self, exc: codec.Violation) -> None:
        """Close on a packet MQTT forbids; an MQTT 5 client is told why first (DISCONNECT)."""
        code = reasons.MALFORMED_PACKET
        if isinstance(exc, mqtt5.CodedViolation):
            code = exc.code
        elif isinstance(exc, TooLarge):
            code = reasons.PACKET_TOO_LARGE
        elif isinstance(exc, AuthPacket):
            code = reasons.PROTOCOL_ERROR
        self.close(str(exc), code)

    def _run(self, packets: list[tuple[int, bytes]]) -> None:
        for i, (first, body) in enumerate(packets):
            if self.closed:
                return
            if self.pending is not None:  # a publisher paused for its rate: the rest waits too
                self.pending.extend(packets[i:])
                return
            if i and self._unyielded >= READ_TURN:
                self._park(packets[i:])
                return
            self._handle(first, body)

    def spend(self, size: int) -> None:
        """Count work done for this client that its reads did not (a SUBSCRIBE's retained samples).

        A SUBSCRIBE of a few bytes brings every retained sample its filter matches, again at every
        SUBSCRIBE: one read of pipelined SUBSCRIBEs to a network's 1,000 retained topics was a
        million samples walked before any other client was read. Counted against its turn, the
        rest of its read waits for its next one (``_park``).
        """
        self._unyielded += size

    def _park(self, rest: list[tuple[int, bytes]]) -> None:
        """Leave the rest of a read for the client's next turn: every other client is read first."""
        self._unyielded = 0
        self._parked = rest
        self.link.pause_reading()
        self.loop.call_soon(self._unpark)

    def _unpark(self) -> None:
        """Handle what was left for this turn, then read again; not while its answers wait past its room."""
        if self.closed or self._parked is None:
            return
        if self.waiting > self._room:
            self.spawn(self._unpark_when_drained(self.link.drained()))
            return
        parked, self._parked = self._parked, None
        self._run_then_read(parked)

    def _run_then_read(self, packets: list[tuple[int, bytes]]) -> None:
        """Handle packets that waited, then read again unless they left something waiting."""
        try:
            self._run(packets)
        except codec.Violation as exc:
            self.violated(exc)
            return
        if self.pending is None and self._parked is None and not self.closed:
            self.link.resume_reading()

    async def _unpark_when_drained(self, drained: Awaitable[None]) -> None:
        await drained
        self._unpark()

    def _handle(self, first: int, body: bytes) -> None:
        kind = codec.check_flags(first)
        session = self.session
        if session is None:
            if kind != codec.CONNECT:
                msg = f"the first packet is not a CONNECT (byte 0x{first:02x}) [MQTT-3.1.0-1]"
                raise codec.Violation(msg)
            handle_connect.on_connect(self, body)
        elif kind == codec.PUBLISH:
            if self.v5 is None:
                handle_publish.on_publish(self, first, body)
            else:
                handle_publish.on_publish5(self, self.v5, first, body)
        else:
            handler = (_HANDLERS if self.v5 is None else _HANDLERS5).get(kind)
            if handler is None:
                msg = "a second CONNECT [MQTT-3.1.0-2]"
                if kind != codec.CONNECT:
                    msg = f"a packet of type {kind}, which only a server sends"
                raise codec.Violation(msg)
            handler(self, session, body)

    def _count_turn(self, size: int) -> None:
        """Count a read against this client's turn, and give way past ``READ_TURN`` (``_give_way``)."""
        if not self.bounded:
            published = self.router.stats.published
            if published != self._published_seen:  # a sample went out since its last read: a burst goes on
                self._published_seen = published
                self._unyielded = 0
                return
        # Bounded, or its reads since its last sample fanned nothing out (refusals, pings).
        self._unyielded += size
        if self._unyielded >= READ_TURN:
            self._give_way()

    def _give_way(self) -> None:
        """Stop reading this client until the loop's next turn: every other one is read first.

        uvloop (libuv) reads a socket again and again in one turn while bytes keep coming, up to
        32 reads of 256 KiB: one client streaming tiny packets (refused ones too) held every other
        client seconds at a time. After ``READ_TURN`` (64 KiB, a quarter of what asyncio's own loop
        reads per turn) the others are read first, so such a client holds them tens of milliseconds.

        Bounded so: a client not yet connected, an anonymous one, and one whose key may publish
        nowhere (a listener's key, sold to someone the operator does not run): nothing they send
        is a burst to fan out. A publisher's key is read whole in a turn while its reads keep
        fanning samples out, which is what lets a subscriber that keeps up on average take a burst
        without loss (``SendBuffers``); once ``READ_TURN`` bytes of its reads fanned nothing out
        (refused PUBLISHes, PINGREQs), it gives way too. One that floods with samples it may
        publish is the operator's to hold to a rate, or to revoke.
        """
        self._unyielded = 0
        self.link.pause_reading()
        self.loop.call_soon(self._take_turn)

    def _take_turn(self) -> None:
        """Read again, unless something else holds the reading (a CONNECT being decided, a rate).

        Nor while what it was answered waits unread past its room: everything a client that gives
        way sends asks for an answer (a PINGRESP, a SUBACK, a refused PUBLISH's acknowledgement, with
        its reason string for MQTT 5), so one that never read them made the broker hold them
        without bound, 15 MB for 6 MB of refused PUBLISHes. It is read again once the transport
        has drained (or at once, if the transport holds them within its own bounds).
        """
        if self.pending is not None or self._parked is not None or self.closed:
            return
        if self.waiting > self._room:
            self.spawn(self._read_when_drained(self.link.drained()))
            return
        self.link.resume_reading()

    async def _read_when_drained(self, drained: Awaitable[None]) -> None:
        await drained
        if self.pending is None and self._parked is None and not self.closed:
            self.link.resume_reading()

    def read_again(self) -> None:
        """The CONNECT is decided: handle what waited for it, then read the socket again."""
        pending, self.pending = self.pending or [], None
        self.link.resume_reading()
        try:
            self._run(pending)
        except codec.Violation as exc:
            self.violated(exc)

    def hold(self, seconds: float, first: int, body: bytes) -> None:
        """Read nothing more from this client for ``seconds`` (its key's rate), then handle this packet."""
        self.pending = [(first, body)]
        self.link.pause_reading()
        self.loop.call_later(seconds, self._after_rate_wait)

    def _after_rate_wait(self) -> None:
        """The publisher's key has a token again: handle what waited, then read again."""
        if self.closed:
            return
        self.last_heard = time.monotonic()  # its keep-alive counts from when it is read again
        pending, self.pending = self.pending or [], None
        self._run_then_read(pending)

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

    def _on_disconnect5(self, session: Session, body: bytes) -> None:
        code, found = mqtt5.decode_disconnect(body)
        handle_connect.new_expiry(session, found)  # first: an invalid DISCONNECT discards nothing
        if code == reasons.SUCCESS:
            session.will = None  # MQTT-3.14.4-3: only a normal disconnection (0x00) discards the will
        self.close(None)

    # Keep-alive.
    def start_keep_alive(self, keep_alive: int) -> None:
        """Watch for silence past the keep-alive the client asked for (none for 0)."""
        if self._alive_timer is not None:
            self._alive_timer.cancel()
            self._alive_timer = None
        if keep_alive:
            grace = math.ceil(keep_alive * KEEP_ALIVE_GRACE)
            self._alive_timer = self.loop.call_later(grace, self._check_alive, grace)

    def _connect_timed_out(self) -> None:
        self._alive_timer = None
        if self.session is None and not self.closed:
            self.close(f"no CONNECT within {self.broker.connect_timeout:g}s")

    def _check_alive(self, grace: float) -> None:
        self._alive_timer = None
        if self.closed:
            return
        silent = time.monotonic() - self.last_heard
        if self.pending is not None:  # paused for its rate: not read, so not silent
            self._alive_timer = self.loop.call_later(grace, self._check_alive, grace)
            return
        if silent >= grace:
            why = f"silent for {silent:.1f}s, past its keep-alive [MQTT-3.1.2-24]"
            self.close(why, reasons.KEEP_ALIVE_TIMEOUT)
            return
        self._alive_timer = self.loop.call_later(grace - silent, self._check_alive, grace)

    # Writing.
    def write(self, data: bytes) -> None:
        """Queue bytes for the client; they go out together at the end of this turn of the loop.

        A packet handled alone in its read (``Flusher.alone``: a paced sample, not a burst) goes
        straight to the transport instead, if this connection wrote nothing yet in this turn and
        has the base room (no room granted for a burst, which ``flush`` gives back): gathering
        one packet would only add the cost of the end-of-turn flush. What follows in this turn is
        gathered behind it, in order.
        """
        if self.closed:
            return
        out = self._out
        if out is None:
            flusher = self.flusher
            if flusher.alone and self._turn != flusher.turn and self._room == self.buffers.base:
                self._turn = flusher.turn
                try:
                    self.send(data)
                except Exception:  # noqa: BLE001 - gathered instead: the flush writes it or closes
                    self._out = [data]
                    flusher.mark(self)
                    self._out_size += len(data)
                    return
                self._written += len(data)
                if not flusher.scheduled:  # after the write: the first subscriber does not wait for it
                    flusher.schedule()  # the turn ends: what comes next goes straight out again
                return
            self._out = [data]
            flusher.mark(self)
        else:
            out.append(data)
        self._out_size += len(data)

    def flush(self) -> None:
        """Write what this turn gathered, in one call (``broker.output.Flusher`` calls it)."""
        out = self._out
        if out is None or self.closed:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        self._out = None
        self._out_size = 0
        try:
            self.send(data)
        except Exception as exc:  # noqa: BLE001 - a broken transport ends this connection only
            self.close(f"writing failed: {exc}")
            return
        self._written += len(data)
        if self._room > self.buffers.base and not self.link.buffered():
            self._shrink()  # caught up: the room granted for a burst goes back

    def congested(self) -> bool:
        """Whether the client reads too slowly for more samples now (past its room, which may grow)."""
        waiting = self._out_size + self.waiting_bytes()
        if not waiting:
            return False
        room, buffers = self._room, self.buffers
        if waiting > buffers.least and self.slot is not None:
            # One source's clients share their base room; what was granted for a burst is their own.
            room += max(buffers.least, self.slot.share(buffers.source, buffers.base)) - buffers.base
        return waiting > room and not self._grow(waiting)

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
        room = self.buffers.grow(self._room)
        if room == self._room:
            return False
        if self._stall_timer is None:
            self._took = taken
            self._stall_timer = self.loop.call_later(STALL, self._stall_check)
        self._room, self._proved = room, taken
        return waiting <= room

    def _stall_check(self) -> None:
        """Room granted for a burst goes back from a client that took nothing for ``STALL`` seconds.

        The kernel's buffers take a burst's first megabytes for a client that reads nothing, which
        looks like keeping up: its room grows. Kept, that room would be kept from the clients that
        read, for ever. With nothing waiting here it only gives the room back; with bytes waiting
        it is closed, which lets them go (its session stays, if it has one).
        """
        self._stall_timer = None
        if self.closed or self._room == self.buffers.base:
            return
        buffered = self.link.buffered()
        taken = self._written - buffered
        if taken > self._took:
            self._took = taken
            self._stall_timer = self.loop.call_later(STALL, self._stall_check)
        elif buffered:
            self.close(f"it took nothing for {STALL:g} s, {buffered:,} bytes waiting for it")
        else:
            self._shrink()

    def _shrink(self) -> None:
        self.buffers.release(self._room)
        self._room = self.buffers.base
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    @property
    def waiting(self) -> int:
        """Bytes waiting to be written to the client (for the metrics)."""
        return self._out_size + self.waiting_bytes()

    def wait_for_drain(self) -> None:
        """Send the session's queue once the transport has drained."""
        if self._draining or self.closed:
            return
        self._draining = True
        self.spawn(self._after_drain(self.link.drained()))

    async def _after_drain(self, drained: Awaitable[None]) -> None:
        try:
            await drained
        finally:
            self._draining = False
        if not self.closed and self.session is not None:
            self.router.pump(self.session)

    # Ending.
    def close(self, reason: str | None, code: int | None = None, says: str | None = None) -> None:
        """End the connection: publish the will if it ended badly, hand the session back, close.

        An MQTT 5 client is sent a DISCONNECT with ``code`` first (and ``says`` as its reason
        string, else ``reason``), once it has completed its CONNECT (MQTT-3.14.0-1).
        """
        if self.closed:
            return
        if reason is not None:
            log.warning("closing %s: %s", self.who(), reason)
        told = False
        if code is not None and self.v5 is not None and self.session is not None:
            self.write(mqtt5.disconnect(code, self.v5.fits(says or reason)))
            told = True
        self.flush()
        self.closed = True
        if self._room > self.buffers.base:
            self._shrink()
        if self._alive_timer is not None:
            self._alive_timer.cancel()
            self._alive_timer = None
        session = self.session
        router = self.router
        if session is not None and session.connection is self:
            will, session.will = session.will, None
            if will is not None:
                handle_publish.will_after(self, session, will)
            router.went_offline(session)
            router.stats.connections -= 1
        if self.slot is not None:
            self.slot.release()
            self.slot = None
        if told:
            self.link.close(linger=True)
        else:
            self.link.close()
        self.broker.connection_closed(self)

    def connection_lost(self) -> None:
        """The transport ended without a DISCONNECT: the will goes out (MQTT-3.1.2-8)."""
        if not self.closed:
            self.close("the connection was lost" if self.session is None else None)


def _check_first_byte(data: bytes) -> None:
    if data and data[0] != codec.CONNECT << 4:
        msg = f"the first packet is not a CONNECT (byte 0x{data[0]:02x}) [MQTT-3.1.0-1]"
        raise codec.Violation(msg)


_HANDLERS: Final[dict[int, Callable[[Connection, Session, bytes], None]]] = {
    codec.PUBACK: handle_publish.on_puback,
    codec.PUBREC: handle_publish.on_pubrec,
    codec.PUBREL: handle_publish.on_pubrel,
    codec.PUBCOMP: handle_publish.on_puback,
    codec.SUBSCRIBE: handle_subscribe.on_subscribe,
    codec.UNSUBSCRIBE: handle_subscribe.on_unsubscribe,
    codec.PINGREQ: Connection._on_pingreq,
    codec.DISCONNECT: Connection._on_disconnect,
}
"""What each packet type after the CONNECT does (PUBLISH is handled inline)."""
_HANDLERS5: Final[dict[int, Callable[[Connection, Session, bytes], None]]] = {
    **_HANDLERS,
    codec.PUBACK: handle_publish.on_puback5,
    codec.PUBREC: handle_publish.on_pubrec5,
    codec.PUBREL: handle_publish.on_pubrel5,
    codec.PUBCOMP: handle_publish.on_puback5,
    codec.SUBSCRIBE: handle_subscribe.on_subscribe5,
    codec.UNSUBSCRIBE: handle_subscribe.on_unsubscribe5,
    codec.DISCONNECT: Connection._on_disconnect5,
}
"""The same for an MQTT 5 client, where its packets differ."""


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("a connection task failed: %s: %s", type(exc).__name__, exc)
