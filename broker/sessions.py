"""A client's session: what survives its connection (subscriptions, queued and unacknowledged samples).

A session belongs to the key that opened it, for its whole life: it records the key's name and
id, and ends when that key is revoked (a new key under the same name gets a new id, so it starts
with nothing). It is found by (key id, client id), anonymous clients counting as one key: clients
of different keys that happen to pick the same client id (ids are often predictable) have
sessions of their own, and none can refuse, take over or resume another's.

Each is bounded: a keyed session keeps at most ``max_queued`` samples and bytes while its client
is away or slow, an anonymous one far fewer (nobody pays for it); past the bound the oldest
samples go, counted and logged once per episode, never silently.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from radio.broker import attributes as attrs

if TYPE_CHECKING:
    from radio.broker.access import Standing
    from radio.broker.connection import Connection
    from radio.broker.message import Message

log = logging.getLogger(__name__)

MAX_PACKET_ID: Final = 65_535
PIDS_AHEAD: Final = 4_096
"""Packet ids a persistent session's mark in the store runs ahead of the ids it uses: after a
restart (a ``kill -9`` included) the session goes on from that mark, past any id it may have used
before the batch holding it was on disk."""
PIDS_RENEWED: Final = 1_024
"""Ids a persistent session uses before its mark moves on: the batch moving it has the other
3,072 to reach the disk."""
NO_MARK: Final = MAX_PACKET_ID + 2
"""``Session.pid_hi`` of a session whose ids need no mark (not kept across a restart)."""


def store_id(key_id: str | None, client_id: str) -> str:
    """One string for (key id, client id): a key id has no NUL, so the first NUL splits them."""
    return f"{key_id or ''}\x00{client_id}"


@dataclass(frozen=True)
class SessionLimits:
    """How much one session may hold; keyed and anonymous sessions get a set each."""

    max_queued: int
    max_queued_bytes: int
    expiry: float
    """Seconds a persistent session is kept while its client is away."""
    report_missed: bool = False
    """Tell the client what its queue dropped, per network, before its next sample (the recorder's
    session: it leaves that many numbers out, so the history shows the hole)."""


class KeyAccount:
    """What the persistent sessions of one key have queued in all, and the most they may.

    Each session is held to ``max_queued_bytes``, but a key may hold ``max_sessions_per_key`` of
    them: a read-only key's thousand sessions, left subscribed to a busy network, would queue
    16 GiB, a row for each sample and session in the store. Past ``limit`` (0: none) each of
    them drops its own oldest samples as the next one comes, so the key holds at most ``limit``
    plus one sample per session.
    """

    __slots__ = ("limit", "queued_bytes")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.queued_bytes = 0

    def over(self) -> bool:
        """Whether the key's sessions queue more than they may."""
        return bool(self.limit) and self.queued_bytes > self.limit


class Delivery:
    """A QoS 1 or 2 sample on its way to a session: queued, or sent and not yet acknowledged.

    Its packet id is where the session keeps it (``inflight``), not in it, so a QoS 1 delivery
    without options is the same for every session of a message and one serves them all
    (``Router._fan_out``); a QoS 2 one changes per session (``released``) and is each one's own.
    """

    __slots__ = ("extra", "message", "qos", "released", "shared")

    def __init__(self, message: Message, qos: int, extra: tuple[bool, tuple[int, ...]] | None = None) -> None:
        self.message = message
        self.qos = qos
        self.extra = extra
        """The retain flag it goes out with (1 for a retained sample a new subscription brings) and,
        for MQTT 5, its subscription ids (None: 0, none)."""
        self.released = False
        """QoS 2: PUBREC received and PUBREL sent; only PUBCOMP is awaited."""
        self.shared: str | None = None
        """The shared subscription (``$share/GROUP/FILTER``) it came to this session by: should the
        session end before its client has it, the group's next member gets it (``Router.discard``)."""


class Will:
    """A last will: published if the connection ends without DISCONNECT, if the key may still."""

    __slots__ = ("delay", "due", "expiry", "fields", "payload", "qos", "retain", "timer", "topic")

    def __init__(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.fields = b""
        """MQTT 5: the properties its subscribers get (user properties, content type...)."""
        self.expiry: int | None = None
        """MQTT 5: its message expiry interval, in seconds."""
        self.delay = 0
        """MQTT 5: seconds after the connection ends before it is published (will delay interval)."""
        self.timer: asyncio.TimerHandle | None = None
        """The pending publication of a delayed will."""
        self.due = 0.0
        """When a delayed will goes (wall clock, seconds since the epoch): kept in the store with
        its session, so that after a restart it goes when it would have."""

    def stored(self) -> dict[str, Any]:
        """The will as the store keeps it with its session (``Router.save``), while it waits its delay."""
        return {
            "topic": self.topic,
            "payload": base64.b64encode(self.payload).decode(),
            "qos": self.qos,
            "retain": self.retain,
            "fields": base64.b64encode(self.fields).decode(),
            "expiry": self.expiry,
            "due": self.due,
        }

    @classmethod
    def from_stored(cls, kept: dict[str, Any]) -> Will:
        """A will the store kept (``stored``), waiting out the rest of its delay."""
        will = cls(kept["topic"], base64.b64decode(kept["payload"]), int(kept["qos"]), bool(kept["retain"]))
        will.fields = base64.b64decode(kept["fields"])
        will.expiry = kept.get("expiry")
        will.due = float(kept["due"])
        return will


class Session:
    """One client id's state. Quacks like an amqtt session where the plugins look.

    ``attributes``, ``username``, ``password``, ``client_id``, ``remote_address``, ``remote_port``,
    ``will_flag`` and ``will_topic`` are what Radio's auth and topic plugins read.
    """

    __slots__ = (
        "account",
        "attributes",
        "clean_session",
        "client_id",
        "connection",
        "dropped",
        "expiry",
        "filter_characters",
        "filter_levels",
        "incoming_qos2",
        "inflight",
        "limits",
        "missed",
        "next_pid",
        "offline_since",
        "options",
        "password",
        "pid_hi",
        "pid_lo",
        "queue",
        "queued_bytes",
        "read_memo",
        "remote_address",
        "remote_port",
        "standing",
        "subscriptions",
        "tally",
        "unsent",
        "username",
        "v5",
        "warned_full",
        "will",
        "window",
    )

    def __init__(self, client_id: str, clean_session: bool, limits: SessionLimits) -> None:
        self.client_id = client_id
        self.clean_session = clean_session
        self.limits = limits
        self.attributes: dict[str, Any] = {}
        self.username: str | None = None
        self.password: str | None = None
        self.remote_address = ""
        self.remote_port = 0
        self.subscriptions: dict[str, int] = {}
        self.filter_characters = 0
        """Characters its filters have in all (``router.FILTER_CHARACTERS_MOST``)."""
        self.filter_levels = 0
        """Levels its filters have in all (``router.FILTER_LEVELS_MOST``)."""
        self.queue: deque[Delivery] | None = None
        """Deliveries waiting to be sent; None while none waits (most never do, and an empty deque
        weighs 760 bytes: a broker holds tens of thousands of idle listeners)."""
        self.queued_bytes = 0
        self.account: KeyAccount | None = None
        """Its key's, while it is a persistent session the broker holds (``per_source.KeySessions``)."""
        self.inflight: dict[int, Delivery] = {}
        self.incoming_qos2: set[int] | None = None
        """Ids of the client's QoS 2 samples awaiting their PUBREL; None while there is none."""
        self.next_pid = 1
        self.pid_lo = 1
        self.pid_hi = NO_MARK
        """Ids from ``pid_lo`` up to ``pid_hi`` (excluded) go out under the mark in the store
        (``pid_mark``); one outside moves it on (``Router.reserve_pids``). A session not kept across
        a restart has none: every id is inside."""
        self.connection: Connection | None = None
        self.will: Will | None = None
        self.offline_since: float | None = None
        self.dropped = 0
        self.missed: dict[str, int] | None = None
        """Samples dropped from the queue per network and not yet reported (``report_missed``);
        None while there is none."""
        self.warned_full = False
        self.v5 = False
        """Whether its client speaks MQTT 5: its deliveries take the MQTT 5 path (broker/protocol5.py)."""
        self.options: dict[str, tuple[int, int]] | None = None
        """MQTT 5 subscription options beyond the QoS, per filter: (options byte, subscription id);
        None while no filter has any (``set_options``)."""
        self.expiry: float | None = None
        """MQTT 5: the session expiry interval its client asked for (None: the limits' own)."""
        self.window = 0
        """QoS 1 and 2 samples it may have unacknowledged (the broker's limit, or the client's lower one)."""
        self.unsent: deque[int] | None = None
        """Packet ids of unacknowledged deliveries a resumed session has yet to send again: they go
        as its new connection's window has room (``Router.resume``); None while none waits."""
        self.read_memo: tuple[object, bool] | None = None
        """The last read verdict fan-out asked of the topic plugins, and what it holds for
        (``Router._read_key``: a registry snapshot and a network)."""
        self.standing: Standing | None = None
        """Where its last sample stood at the admission gate (``broker.access.Standing``)."""
        self.tally: dict[str, list[int]] | None = None
        """A listening key's deliveries not yet handed to the meter: network -> [samples, bytes].
        None for sessions nobody is billed for (anonymous, the platform's service keys)."""

    # What the plugins read of an amqtt session.
    @property
    def will_flag(self) -> bool:
        """Whether the CONNECT carried a will."""
        return self.will is not None

    @property
    def will_topic(self) -> str | None:
        """The will's topic, if any."""
        return self.will.topic if self.will is not None else None

    @property
    def key_name(self) -> str | None:
        """The key behind the session, None for anonymous."""
        return attrs.key_name(self)

    @property
    def key_id(self) -> str | None:
        """The id of the key that opened it: a session never passes to another key."""
        value: str | None = self.attributes.get(attrs.KEY_ID)
        return value

    @property
    def ident(self) -> tuple[str | None, str]:
        """What the session is found by: its key's id (None: anonymous) and its client id."""
        return self.key_id, self.client_id

    @property
    def store_id(self) -> str:
        """What the store keeps the session under (see ``store_id``)."""
        return store_id(self.key_id, self.client_id)

    @property
    def persistent(self) -> bool:
        """Clean session 0: it outlives its connection, and its samples are kept in the store."""
        return not self.clean_session

    @property
    def lifetime(self) -> float:
        """Seconds it is kept while its client is away: what the client asked, within its limits."""
        expiry = self.expiry
        limit = self.limits.expiry
        return limit if expiry is None else min(expiry, limit)

    def allocate_pid(self) -> int:
        """A packet id not in use by an unacknowledged delivery."""
        pid = self.next_pid
        inflight = self.inflight
        while pid in inflight:
            pid = pid % MAX_PACKET_ID + 1
        self.next_pid = pid % MAX_PACKET_ID + 1
        return pid

    def mark_pids(self, pid: int) -> None:
        """Ids from ``pid`` on are the ones used now: ``pid_mark`` moves ahead of them."""
        self.pid_lo = pid
        self.pid_hi = min(pid + PIDS_RENEWED, MAX_PACKET_ID + 1)

    @property
    def pid_mark(self) -> int | None:
        """Where its ids go on after a restart, ahead of any it used (None: not kept across one)."""
        if self.pid_hi == NO_MARK:
            return None
        return (self.pid_lo - 1 + PIDS_AHEAD) % MAX_PACKET_ID + 1

    def pid_for(self, row: int) -> int:
        """The packet id for a stored sample sent from the queue: its row's, unless one in flight has it.

        Such a sample goes out before the batch holding its id is on disk. Should a ``kill -9``
        lose that batch, the sample is sent again after the restart under the same id all the
        same (its row is on disk), and no other sample takes the id a client may still hold for it
        (QoS 2, its PUBREC lost): a client takes a second sample under that id for the first.
        """
        pid = (row - 1) % MAX_PACKET_ID + 1
        inflight = self.inflight
        while pid in inflight:
            pid = pid % MAX_PACKET_ID + 1
        return pid

    def enqueue(self, delivery: Delivery, limits: SessionLimits | None = None) -> list[Delivery]:
        """Queue a delivery; return the oldest ones dropped to stay within the limits.

        ``limits`` are the session's own unless given: a connected client that is merely slow is
        held to the wider limits of a keyed session, an absent anonymous one to its tight ones.
        """
        self.keep(delivery)
        return self.trim(limits or self.limits)

    def keep(self, delivery: Delivery) -> None:
        """Queue a delivery without trimming (one kept through a purge, or restored from the store)."""
        if self.queue is None:
            self.queue = deque()
        self.queue.append(delivery)
        self.queued_bytes += delivery.message.size
        if self.account is not None:
            self.account.queued_bytes += delivery.message.size

    def trim(self, limits: SessionLimits) -> list[Delivery]:
        """Drop the oldest queued deliveries past ``limits``; return them."""
        dropped: list[Delivery] = []
        queue = self.queue
        if queue is None:
            return dropped
        account = self.account
        while len(queue) > 1 and (
            len(queue) > limits.max_queued
            or self.queued_bytes > limits.max_queued_bytes
            or (account is not None and account.over())
        ):
            old = queue.popleft()
            self.queued_bytes -= old.message.size
            if account is not None:
                account.queued_bytes -= old.message.size
            dropped.append(old)
        if dropped:
            self.dropped += len(dropped)
            if not self.warned_full:
                self.warned_full = True
                log.warning(
                    "the queue of client %r is full (%d samples, %d bytes%s): dropping its oldest samples; "
                    "drops are counted in the broker's metrics",
                    self.client_id,
                    limits.max_queued,
                    limits.max_queued_bytes,
                    f", {account.limit} for its key's sessions" if account and account.limit else "",
                )
        return dropped

    @property
    def queued(self) -> int:
        """How many deliveries wait in the queue."""
        return len(self.queue) if self.queue is not None else 0

    def dequeue(self) -> Delivery:
        """The oldest queued delivery, taken off the queue (an empty queue is let go: ``queue``)."""
        queue = self.queue
        if not queue:
            msg = "dequeue from an empty queue"
            raise IndexError(msg)
        delivery = queue.popleft()
        self.queued_bytes -= delivery.message.size
        if self.account is not None:
            self.account.queued_bytes -= delivery.message.size
        if not queue:
            self.queue = None
            self.warned_full = False
        return delivery

    def clear_queue(self) -> None:
        """Let every queued delivery go."""
        if self.account is not None:
            self.account.queued_bytes -= self.queued_bytes
        self.queue = None
        self.queued_bytes = 0

    def set_options(self, topic_filter: str, options: tuple[int, int] | None) -> None:
        """Record a filter's MQTT 5 options (None: it has none beyond its QoS)."""
        held = self.options
        if options is not None:
            if held is None:
                held = self.options = {}
            held[topic_filter] = options
        elif held is not None:
            held.pop(topic_filter, None)
            if not held:
                self.options = None

    def awaits_pubrel(self, pid: int) -> bool:
        """Whether the client's QoS 2 sample ``pid`` was taken and its PUBREL is awaited."""
        return self.incoming_qos2 is not None and pid in self.incoming_qos2

    @property
    def awaiting_pubrel(self) -> int:
        """How many of the client's QoS 2 samples await their PUBREL."""
        return len(self.incoming_qos2) if self.incoming_qos2 is not None else 0

    def await_pubrel(self, pid: int) -> None:
        """The client's QoS 2 sample ``pid`` was taken: its PUBREL is awaited."""
        if self.incoming_qos2 is None:
            self.incoming_qos2 = set()
        self.incoming_qos2.add(pid)

    def released(self, pid: int) -> None:
        """PUBREL for the client's QoS 2 sample ``pid``: nothing more is awaited for it."""
        held = self.incoming_qos2
        if held is not None:
            held.discard(pid)
            if not held:
                self.incoming_qos2 = None

    def describe(self) -> str:
        """The session as the log names it (never a secret)."""
        return attrs.describe(self)
