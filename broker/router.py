"""The broker's core: sessions, subscriptions, retained samples, and getting each sample to its readers.

Connections (``broker.connection``) hand it what clients do; it decides, with the rights plugin,
who receives what, and records in the store what must survive a restart. It never awaits: a
PUBLISH is fanned out to every entitled subscriber in one pass, and the read right is decided for
every delivery, whether live, queued, resent after a reconnect, retained, or a will.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from amqtt.contexts import Action

from radio.broker import attributes as attrs
from radio.broker import protocol5
from radio.broker.access import GO
from radio.broker.index import SubscriptionIndex
from radio.broker.message import Message
from radio.broker.per_source import (
    AnonymousCaps,
    AnonymousConnections,
    AnonymousSessions,
    KeyConnections,
    KeySessions,
    SharedBySource,
)
from radio.broker.retained import RetainedIndex
from radio.broker.sessions import Delivery, Session, SessionLimits, Will
from radio.broker.shared import PREFIX as SHARED_PREFIX
from radio.broker.shared import SharedSubscriptions
from radio.broker.shared import split as split_shared
from radio.registry import Registry
from radio.topics import MEMO_TOPIC_MOST, MEMO_TOPICS, MISSED_TOPIC, network_of_topic, network_topic, too_deep
from radio.wire import SUBSCRIBE_FAILURE, valid_filter
from radio.wire.reasons import NOT_AUTHORIZED, QUOTA_EXCEEDED, TOPIC_FILTER_INVALID

if TYPE_CHECKING:
    from radio.broker.access import Gate
    from radio.broker.connection import Connection
    from radio.broker.store import Contents, Store, StoredSession

log = logging.getLogger(__name__)


def said(session: Session, topic_filter: str) -> tuple[str, str]:
    """A session and a filter as a ``radio broker -v`` line of its SUBSCRIBE names them."""
    return session.describe(), attrs.shown(topic_filter)


FILTER_CHARACTERS_MOST: Final = 65_536
"""Characters the filters of one session may have in all (beside ``max_filters``). A persistent
session's filters are written to the store whole at each SUBSCRIBE: 100 filters of 65 KB made
each SUBSCRIBE cost the event loop some 26 ms, so one client re-subscribing held every other
client's PINGREQ a quarter of a second."""
FILTER_LEVELS_MOST: Final = 1_000
"""Levels the filters of one session may have in all: each level of a wildcard filter is a node
of the subscription index, about 400 bytes, so this bounds the index's share of one client to
some 400 KiB (``radio.topics.LEVELS_MOST`` bounds one filter)."""
WILL_ATTEMPTS: Final = 40
"""Times a will waits for its key's quota to be readable (``USAGE_RETRY`` apart) before it is dropped."""
STORED_BESIDE = (
    "offline_since",
    "address",
    "expiry",
    "options",
    "awaiting_pubrel",
    "released",
    "will",
    "pid_mark",
)
"""What the store keeps of a session beside its key's attributes."""
ROWS_AHEAD: Final = 100_000
"""Row numbers (``next_seq``) the mark in the store runs ahead of those in use: after a restart (a
``kill -9`` included) numbering goes on from that mark, so a row a lost batch held is never
numbered again, and the packet id it decided (``Session.pid_for``) is not given to another sample
its client may take for a copy."""
ROWS_RENEWED: Final = 50_000
"""Rows numbered before the mark moves on: the batch moving it has the other 50,000 to reach the disk."""
TopicCheck = Callable[[attrs.PluginSession, str, Action], bool]
Reader = Callable[[attrs.PluginSession], bool]
"""Whether one session may receive one message (built once per message: ``ReaderFactory``)."""
ReaderFactory = Callable[[str], Reader]


@dataclass(frozen=True)
class Limits:
    """Per-client limits that protect the broker from any one client."""

    keyed: SessionLimits
    anonymous: SessionLimits
    service: SessionLimits | None = None
    """The session of a key that reads every network (the history recorder's); None: ``keyed``."""
    max_filters: int = 100
    """Subscriptions one session may hold; more get SUBACK 0x80."""
    max_inflight: int = 100
    """QoS 1 and 2 samples sent to one client and not yet acknowledged; the rest wait in its queue."""
    max_incoming_qos2: int = 20
    """QoS 2 samples a client may leave waiting for its PUBREL; past it, its connection is closed."""
    send_buffer: int = 1 << 20
    """Bytes waiting to be written to one connection past which it is slow: QoS 0 samples are
    dropped for it (counted), QoS 1 and 2 samples wait in its queue. A client that keeps up is
    given more room for a burst, within the next two (``broker.output.SendBuffers``)."""
    send_buffer_max: int = 16 << 20
    """The most room one client that keeps up is given for bytes waiting to be written."""
    send_buffer_total: int = 256 << 20
    """Room granted beyond ``send_buffer`` to all clients together."""
    anonymous_caps: AnonymousCaps = field(default_factory=AnonymousCaps)
    """What anonymous persistent sessions may hold, in all and per source address."""
    max_sessions_per_key: int = 1_000
    """Persistent sessions one key may hold; past it a CONNECT that opens one more gets CONNACK 3."""
    max_queued_bytes_per_key: int = 256 << 20
    """Bytes the persistent sessions of one key may queue in all (0: no limit); past it each drops
    its oldest samples as new ones come."""
    max_connections_per_key: int = 1_000
    """Clients connected at once with one key; past it a CONNECT gets CONNACK 3 (0: no limit)."""
    max_shared_per_source: int = 1_000
    """Shared subscriptions one source holds at once (a key's, an address's anonymous ones); past
    it a SUBSCRIBE to one more gets SUBACK 0x97 (0: no limit)."""


@dataclass
class Stats:
    """Counters the metrics endpoint reads; plain integers, so counting costs nothing."""

    published: int = 0
    deliveries: int = 0
    dropped_slow: int = 0
    dropped_queue_full: int = 0
    dropped_unreadable: int = 0
    connections: int = 0


def released_rows(session: Session) -> list[list[int]]:
    """The session's QoS 2 deliveries its client has PUBRECed: [stored row, packet id] each.

    Kept with a persistent session, so that after a restart such a delivery is released again
    under its packet id (PUBREL), not sent as a new PUBLISH (MQTT-4.4.0-1): its client may have
    let the id go at the PUBREL it had, and would take the PUBLISH for another sample.
    """
    return sorted([d.message.row, pid] for pid, d in session.inflight.items() if d.released and d.message.row)


def proved(session: Session, registry: Registry) -> bool:
    """Whether the secret the session proved is its key's secret now (anonymous: always).

    A rotated key's old secret proves nothing from the rotation on: what it opened is closed, and
    what it left behind (a will) is not sent.
    """
    name = session.key_name
    if name is None:
        return True
    key = registry.keys.get(name)
    return key is not None and key.digest == session.attributes.get(attrs.KEY_DIGEST)


def wall_clock(expires: float | None) -> float | None:
    """A message's expiry (``time.monotonic``) as the store keeps it: wall-clock seconds."""
    return None if expires is None else time.time() + expires - time.monotonic()


def monotonic(expires: float | None) -> float | None:
    """A stored expiry (wall clock) as a message holds it (``time.monotonic``)."""
    return None if expires is None else time.monotonic() + expires - time.time()


class Router:
    """Everything the broker knows, and the rules for changing it."""

    def __init__(
        self,
        registry: Callable[[], Registry],
        topic_check: TopicCheck,
        reader: ReaderFactory,
        limits: Limits,
        store: Store | None = None,
    ) -> None:
        self.registry = registry
        self.allows = topic_check
        self.reader = reader
        self.limits = limits
        self.store = store
        self.sessions: dict[tuple[str | None, str], Session] = {}
        """By (key id, client id): see ``Session.ident``."""
        self.anonymous = AnonymousSessions(limits.anonymous_caps)
        self.keyed = KeySessions(limits.max_sessions_per_key, limits.max_queued_bytes_per_key)
        self.key_connections = KeyConnections(limits.max_connections_per_key)
        self.anonymous_connections = AnonymousConnections(limits.anonymous_caps.max_connections_per_address)
        """Anonymous clients connected now, per source address (broker/per_source.py)."""
        self.index: SubscriptionIndex[Session] = SubscriptionIndex()
        self.index5: SubscriptionIndex[Session] = SubscriptionIndex()
        """The filters of MQTT 5 sessions: kept apart, so that a 3.1.1 delivery never asks which
        protocol its session speaks, and a broker without MQTT 5 clients walks no second index."""
        self.filters5 = 0
        """Filters in ``index5``."""
        self.shared = SharedSubscriptions()
        """``$share/GROUP/FILTER`` subscriptions (broker/shared.py)."""
        self.shared_by_source = SharedBySource(limits.max_shared_per_source)
        """How many of them each source holds (broker/per_source.py)."""
        self.retained = RetainedIndex()
        self.stats = Stats()
        self._seq = 0
        self._seq_renewed = 0
        """The row number past which the mark in the store moves on (``next_seq``)."""
        self.tallies: list[Session] = []
        """Sessions whose tally has counts the meter has not collected yet."""
        self.gate: Gate | None = None
        """Rates, quotas and schemas (broker/access.py), set by the core."""
        self.reads_by_network = False
        """Whether every topic plugin's read verdict depends only on the registry, the network and
        the key, so that fan-out may remember it per session (``_read_key``); set by the core."""
        self._read_snapshot: Registry | None = None
        self._read_keys: dict[str, object] = {}
        self._read_topics: dict[str, object] = {}
        """The same keys by topic, so that a sample's network is worked out once per topic."""

    # Sessions.
    def limits_for(self, key_name: str | None) -> SessionLimits:
        """Anonymous sessions get the tight limits (nobody pays for them), the recorder wide ones."""
        if key_name is None:
            return self.limits.anonymous
        if self.limits.service is not None:
            key = self.registry().keys.get(key_name)
            if key is not None and key.read_all:
                return self.limits.service
        return self.limits.keyed

    def billed(self, session: Session) -> bool:
        """Whether what a session receives is counted: a key's, not anonymous or a service key's."""
        name = session.key_name
        key = self.registry().keys.get(name) if name is not None else None
        return key is not None and not key.publish_all and not key.read_all

    def speaks(self, session: Session, v5: bool) -> None:
        """The protocol of the session's client now: its filters move to that protocol's index."""
        if session.v5 == v5:
            return
        # Kept: a 3.1.1 client may resume a session MQTT 5 made.
        options = dict(session.options) if session.options is not None else None
        for topic_filter in session.subscriptions:
            if split_shared(topic_filter) is None:
                self._remove_filter(session, topic_filter)
        session.v5, session.options = v5, options
        for topic_filter, qos in session.subscriptions.items():
            if split_shared(topic_filter) is None:
                self._add_filter(session, topic_filter, qos)

    def hold(self, session: Session) -> None:
        """Keep a session (opened, resumed or restored) under its key and client id."""
        if not session.window:
            session.window = self.limits.max_inflight
        if session.pid_mark is None and session.persistent and self.store is not None:
            session.mark_pids(session.next_pid)  # written with the session (``save``)
        self.sessions[session.ident] = session
        self.anonymous.track(session)
        self.keyed.track(session)

    def discard(self, session: Session) -> None:
        """Forget a session: its subscriptions, its queue, and its copy in the store."""
        unfinished = [
            d for d in (*session.inflight.values(), *(session.queue or ())) if d.shared and not d.released
        ]
        if self.sessions.get(session.ident) is session:
            del self.sessions[session.ident]
        self.anonymous.untrack(session)
        self.keyed.untrack(session)
        will = session.will
        if will is not None and will.timer is not None:  # a delayed will of a session that is no more
            will.timer.cancel()
            session.will = None
        for topic_filter in list(session.subscriptions):
            self._remove_filter(session, topic_filter)
        session.subscriptions.clear()
        session.clear_queue()
        session.inflight.clear()
        session.unsent = None
        if session.persistent and self.store is not None:
            self.store.drop_session(session.store_id)
        for delivery in unfinished:
            self._share_again(session, delivery)

    def _share_again(self, session: Session, delivery: Delivery) -> None:
        """A shared subscription's sample its member's session ended without: the group's next member.

        MQTT 5.0, 4.8.2: the next member that may read it gets it (or, while none is connected, keeps
        it in its queue), so a member that leaves loses the group nothing. One its client had (QoS 2
        past PUBREC) is not sent again.
        """
        group = self.shared.of(session, delivery.shared or "")
        if group is None:
            return
        message = delivery.message
        chosen = group.next(self.reader(message.topic), message.qos)
        if chosen is not None:
            self._deliver_one(chosen[0], message, chosen[1], group.topic_filter)

    def save(self, session: Session) -> None:
        """Record a persistent session's identity and subscriptions in the store."""
        if session.persistent and self.store is not None:
            keep = {k: session.attributes.get(k) for k in (attrs.KEY_NAME, attrs.KEY_ID, attrs.KEY_DIGEST)}
            keep["offline_since"] = session.offline_since
            keep["address"] = session.remote_address
            if session.expiry is not None:
                keep["expiry"] = session.expiry
            if session.options:
                keep["options"] = dict(session.options)  # the store's: written later, by its thread
            if session.incoming_qos2:
                keep["awaiting_pubrel"] = sorted(session.incoming_qos2)
            if released := released_rows(session):
                keep["released"] = released
            if (mark := session.pid_mark) is not None:
                keep["pid_mark"] = mark
            will = session.will
            if will is not None and will.timer is not None and session.connection is None:
                keep["will"] = will.stored()  # waiting out its delay: it goes after a restart too
            self.store.save_session(session.store_id, keep, session.subscriptions)

    def went_offline(self, session: Session) -> None:
        """Its connection ended: a clean session goes, a persistent one waits (within its limits).

        So does one whose client set its expiry to 0 at DISCONNECT (MQTT 5): it ends now.
        """
        session.connection = None
        if session.clean_session or session.expiry == 0:
            self.discard(session)
            return
        session.offline_since = time.time()
        for dropped in session.trim(session.limits):  # an absent client keeps only its own share
            self.stats.dropped_queue_full += 1
            self._forget(session, dropped)
            self._missed(session, dropped)
        self.save(session)

    def expire(self, now: float | None = None) -> int:
        """Forget offline sessions past their expiry; how many went."""
        now = time.time() if now is None else now
        gone = [
            s
            for s in self.sessions.values()
            if s.connection is None and s.offline_since is not None and now - s.offline_since > s.lifetime
        ]
        for session in gone:
            log.info("session of client %r expired after %gs offline", session.client_id, session.lifetime)
            self.discard(session)
        return len(gone)

    # Wills.
    def publish_will(self, session: Session, will: Will, attempt: int = 0) -> None:
        """A will is a sample like any other: it passes the gate, as its key stands now.

        One its key's old secret set goes nowhere once the key is rotated (``proved``): a delayed
        will waits in the store with its session, and a rotation while it waits, the broker
        running or stopped, would otherwise not stop it.
        """
        if not proved(session, self.registry()):
            return
        gate = self.gate
        verdict = gate.will(session, will.topic, will.payload, will.retain) if gate is not None else GO
        if verdict > 0:  # the key's quota cannot be read this instant: ask again shortly
            if attempt < WILL_ATTEMPTS:
                asyncio.get_running_loop().call_later(verdict, self.publish_will, session, will, attempt + 1)
            else:
                log.warning("dropped the will of %s: its key's quota could not be read", session.describe())
            return
        if verdict == GO:
            expires = time.monotonic() + will.expiry if will.expiry is not None else None
            message = Message(will.topic, will.payload, will.qos, will.retain, will.fields, expires)
            message.origin = session
            self.publish(message)

    def wait_for_will(self, session: Session, will: Will, delay: float) -> None:
        """The will goes after ``delay`` seconds, unless its client is back first (MQTT-3.1.3-9).

        It waits on its session, and in the store with it (``save``): a restart does not lose it.
        """
        session.will = will
        will.timer = asyncio.get_running_loop().call_later(delay, self._will_due, session, will)

    def _will_due(self, session: Session, will: Will) -> None:
        will.timer = None
        if session.will is will and session.connection is None:
            session.will = None
            self.save(session)  # the store lets it go: published once, not again after a restart
            self.publish_will(session, will)

    # Publishing.
    def next_seq(self) -> int:
        """A number for a message kept in the store, unique across restarts."""
        self._seq += 1
        if self._seq >= self._seq_renewed:
            self._mark_rows()
        return self._seq

    def _mark_rows(self) -> None:
        """Move the mark in the store ahead of the rows numbered now (``ROWS_AHEAD``)."""
        self._seq_renewed = self._seq + ROWS_RENEWED
        if self.store is not None:
            self.store.mark("seq", self._seq + ROWS_AHEAD)

    def reserve_pids(self, session: Session, pid: int) -> None:
        """A persistent session's ids went past the stretch its mark covers: the mark moves on.

        Its samples go out before the batch holding them is on disk; should a ``kill -9`` lose that
        batch, its client may still hold their ids (QoS 2: PUBREC sent, PUBREL awaited) and would
        take another sample under one for a copy. After a restart the session goes on from its
        mark, which runs ``PIDS_AHEAD`` ids ahead of those in use, and moves on long before they
        reach it: no delivery waits for the store.
        """
        session.mark_pids(pid)
        self.save(session)

    def publish(self, message: Message) -> None:
        """Retain it if asked and allowed, and deliver it to every entitled subscriber.

        A delivery is counted for its listening key when it is first written to its connection, at
        every QoS: counted when acknowledged, a client that never acknowledged took ``max_inflight``
        samples per connection uncounted. A resend (DUP, after a reconnect) is not counted again.

        An empty retained message only clears its topic's retained sample: it is not a sample (the
        gate admits it with the right alone, uncharged and past any rate), so it reaches no
        listener. Delivered, it would be a free, unmetered flood of payloads no reader can parse.
        """
        if message.retain:
            self._retain(message)
            if not message.payload:
                return
        self.stats.published += 1
        if self.shared.groups:
            self.shared.publish(message, self.reader(message.topic), self._deliver_one)
        targets = self.index.targets(message.topic)
        if targets:
            self._fan_out(message, targets)
        if self.filters5:
            targets = self.index5.targets(message.topic)
            if targets:
                self._fan_out5(message, targets)
        if self.gate is not None:
            self.gate.published()  # its metering, after its deliveries

    def _fan_out(self, message: Message, targets: Iterable[tuple[Session, int]]) -> None:
        """Each target that may read the sample gets it (the verdict remembered per session)."""
        may_read: Reader | None = None  # built only if some session's remembered verdict is stale
        key = self._read_key(message.topic)
        top = message.qos
        plain = b""
        once = Delivery(message, 1) if top else None  # what every QoS 1 session shares (``Delivery``)
        delivered = dropped = 0  # counted once per sample, not per delivery
        for session, granted in targets:
            memo = session.read_memo
            if memo is None or memo[0] is not key:
                if may_read is None:
                    may_read = self.reader(message.topic)
                memo = session.read_memo = (key, may_read(session))
            if not memo[1]:
                continue
            if top and granted:
                qos = top if top < granted else granted  # noqa: FURB136 - no call per delivery
                self.deliver(session, message, qos, None, once if qos == 1 else None)
                continue
            connection = session.connection
            if connection is not None:
                if connection.congested():
                    dropped += 1
                else:
                    connection.write(plain or (plain := message.packet(0)))
                    delivered += 1
                    if session.tally is not None:
                        self.tallied(session, message)
        stats = self.stats
        stats.deliveries += delivered
        stats.dropped_slow += dropped

    def _fan_out5(self, message: Message, targets: Iterable[tuple[Session, int]]) -> None:
        """The same for MQTT 5 sessions: each that may read the sample gets it, with its options."""
        may_read: Reader | None = None
        key = self._read_key(message.topic)
        for session, granted in targets:
            memo = session.read_memo
            if memo is None or memo[0] is not key:
                if may_read is None:
                    may_read = self.reader(message.topic)
                memo = session.read_memo = (key, may_read(session))
            if memo[1]:
                self.deliver5(session, message, granted)

    def deliver5(self, session: Session, message: Message, granted: int) -> None:
        """One delivery to an MQTT 5 session, with its subscription options (broker/protocol5.py)."""
        chosen = protocol5.subscribed(session, message, granted)
        if chosen is None:
            return
        qos, retain, ids = chosen
        if qos:
            self.deliver(session, message, qos, (retain, ids) if retain or ids else None)
            return
        connection = session.connection
        if connection is None or connection.v5 is None:
            return
        if connection.congested():
            self.stats.dropped_slow += 1
            return
        packet = connection.v5.publish(message, 0, retain=retain, ids=ids)
        if packet is not None:
            connection.write(packet)
            self.stats.deliveries += 1
            if session.tally is not None:
                self.tallied(session, message)

    def _deliver_one(self, session: Session, message: Message, granted: int, topic_filter: str) -> None:
        """A delivery to one member of a shared subscription, at min(published, granted).

        An MQTT 5 member's keeps the options it gave that shared filter (its subscription id,
        retain-as-published), as a delivery of its own filters does (``deliver5``).
        """
        qos = min(message.qos, granted)
        retain, ids = protocol5.shared(session, message, topic_filter)
        if qos:
            delivery = Delivery(message, qos, (retain, ids) if retain or ids else None)
            delivery.shared = topic_filter
            self.deliver(session, message, qos, delivery.extra, delivery)
            return
        connection = session.connection
        if connection is None or connection.congested():
            self.stats.dropped_slow += connection is not None
            return
        packet = (
            message.packet(0)
            if connection.v5 is None
            else connection.v5.publish(message, 0, retain=retain, ids=ids)
        )
        if packet is not None:
            connection.write(packet)
            self.stats.deliveries += 1
            if session.tally is not None:
                self.tallied(session, message)

    def _read_key(self, topic: str) -> object:
        """What a read verdict remembered on a session holds for: this registry snapshot and network.

        The topic plugins promise (``reads_by_network``) that their verdict depends on nothing
        else, so a changed registry (a right taken away, a key revoked) is asked again at the next
        sample. Without that promise every delivery is asked: a fresh key matches no memo.

        It is looked up by topic, so that the topic's network is worked out (``network_of_topic``,
        interpreted Python) only for a topic not seen under this snapshot, not before every
        sample's first delivery; past ``MEMO_TOPICS`` topics that memo starts again, and a topic
        longer than ``MEMO_TOPIC_MOST`` is never kept (radio/topics.py).
        """
        if not self.reads_by_network:
            return object()
        snapshot = self.registry()
        if snapshot is not self._read_snapshot:
            self._read_snapshot, self._read_keys, self._read_topics = snapshot, {}, {}
        key = self._read_topics.get(topic)
        if key is None:
            if len(self._read_topics) >= MEMO_TOPICS:
                self._read_topics = {}
            network = network_of_topic(topic) or ""
            key = self._read_keys.get(network)
            if key is None:
                key = self._read_keys[network] = object()
            if len(topic) <= MEMO_TOPIC_MOST:
                self._read_topics[topic] = key
        return key

    def retained_full(self, topic: str) -> int | None:
        """Its network's ``max_retained`` if retaining ``topic`` would keep one topic past it.

        Asked by the admission gate (broker/access.py) before a retained PUBLISH is admitted, so
        that a refused one is neither delivered nor charged. Replacing a retained topic always
        works; only a new one counts, and never the network's own topic (``networks/X``, where
        the HTTP door publishes: a sample it forwards is never refused after it answered 200).
        """
        name = network_of_topic(topic) or ""
        network = self.registry().networks.get(name)
        if (
            network is None
            or not network.retain
            or topic in self.retained
            or topic == network_topic(name)
            or self.retained.count(name) < network.max_retained
        ):
            return None
        return network.max_retained

    def _retain(self, message: Message) -> None:
        """Keep a network's last sample (within its ``max_retained``, which the gate checked)."""
        network = self.registry().networks.get(network_of_topic(message.topic) or "")
        if network is not None and not network.retain:
            return  # the network keeps no last sample, whoever publishes to it
        if message.payload:
            kept = Message(message.topic, message.payload, message.qos, True, message.fields, message.expires)  # noqa: FBT003
            self.retained.put(message.topic, kept)
        elif self.retained.pop(message.topic) is None:
            return
        if self.store is not None:
            self.store.retain(
                message.topic, message.payload, message.qos, message.fields, wall_clock(message.expires)
            )

    def deliver(
        self,
        session: Session,
        message: Message,
        qos: int,
        extra: tuple[bool, tuple[int, ...]] | None = None,
        delivery: Delivery | None = None,
    ) -> None:
        """A QoS 1 or 2 delivery: sent now if the client is there and keeping up, else queued.

        ``delivery``: the one a QoS 1 fan-out shares between its sessions (``Delivery``).
        """
        if delivery is None:
            delivery = Delivery(message, qos, extra)
        store = self.store
        kept = store is not None and not session.clean_session  # persistent
        if kept:
            assert store is not None  # noqa: S101 - kept says so
            if not message.row:
                message.row = self.next_seq()
            expires = wall_clock(message.expires)
            store.queue(
                session.store_id,
                message.row,
                message.topic,
                message.payload,
                qos,
                message.fields,
                expires,
                delivery.extra,
                delivery.shared,
            )
        connection = session.connection
        if (
            connection is not None
            and not session.queue
            and len(session.inflight) < session.window
            and session.unsent is None
            and not connection.congested()
        ):
            if kept:
                self._send_kept(session, connection, delivery)
            else:
                self._send(session, connection, delivery)
            return
        # A connected anonymous client that is merely slow gets a keyed share; others their own.
        slow_anonymous = connection is not None and session.limits is self.limits.anonymous
        online = self.limits.keyed if slow_anonymous else None
        for dropped in session.enqueue(delivery, online):
            self.stats.dropped_queue_full += 1
            self._forget(session, dropped)
            self._missed(session, dropped)
        if connection is not None:
            if connection.congested():
                connection.wait_for_drain()
            elif len(session.inflight) < session.window:
                self.pump(session)

    def _send(self, session: Session, connection: Connection, delivery: Delivery, pid: int = 0) -> int:
        """Send a delivery under a new packet id, held in flight; the id (0: dropped, not sent).

        ``pid``: the id to use, free (``Session.pid_for``); else the session's next.
        """
        if session.missed:
            self._report_missed(session, connection)
        if not pid:
            pid = session.allocate_pid()
        v5 = connection.v5
        if v5 is None:
            extra = delivery.extra  # a retained sample's for a new subscription (retain flag 1)
            message = delivery.message
            packet = (
                message.packet(delivery.qos, pid)
                if extra is None
                else message.packet(delivery.qos, pid, retain=extra[0])
            )
        else:
            retain, ids = delivery.extra or (False, ())
            encoded = v5.publish(delivery.message, delivery.qos, pid, retain=retain, ids=ids)
            if encoded is None:  # expired, or larger than the client takes: dropped (MQTT-3.1.2-25)
                self._forget(session, delivery)
                return 0
            packet = encoded
        session.inflight[pid] = delivery
        connection.write(packet)
        self.stats.deliveries += 1
        if session.tally is not None:  # counted once written, as at QoS 0: a resend is not counted again
            self.tallied(session, delivery.message)
        return pid

    def _send_kept(
        self, session: Session, connection: Connection, delivery: Delivery, *, queued: bool = False
    ) -> int:
        """``_send`` for a persistent session: the store keeps the packet id with the sample.

        After a restart the sample goes again under that id with DUP (MQTT-4.4.0-1): under a new
        one, a client that had it (its PUBREC lost) would take it for another sample. Only
        persistent sessions pay for it; a retained sample a SUBSCRIBE brought is not stored.
        One sent from the queue (``queued``) goes under the id its row decides (``pid_for``).
        """
        row = delivery.message.row
        if queued and row:
            pid = self._send(session, connection, delivery, session.pid_for(row))
        else:
            pid = self._send(session, connection, delivery)
            if not session.pid_lo <= pid < session.pid_hi and pid:
                self.reserve_pids(session, pid)
        if pid and row and self.store is not None:
            self.store.sent(session.store_id, row, pid)
        return pid

    def _missed(self, session: Session, delivery: Delivery) -> None:
        if session.limits.report_missed:
            network = network_of_topic(delivery.message.topic)
            if network is not None:
                missed = session.missed
                if missed is None:
                    missed = session.missed = {}
                missed[network] = missed.get(network, 0) + 1

    def _report_missed(self, session: Session, connection: Connection) -> None:
        """Before the next sample, say what the queue dropped (QoS 0; not stored).

        The client learns of the hole where it is: between the samples it got before and the ones
        it gets after.
        """
        payload = json.dumps({"networks": session.missed}, sort_keys=True).encode()
        session.missed = None
        missed = Message(MISSED_TOPIC, payload, 0)
        packet = missed.packet(0) if connection.v5 is None else connection.v5.publish(missed, 0)
        if packet is not None:
            connection.write(packet)

    def _forget(self, session: Session, delivery: Delivery) -> None:
        if self.store is not None and not session.clean_session and delivery.message.row:  # persistent
            self.store.unqueue(session.store_id, delivery.message.row)

    def pump(self, session: Session) -> None:
        """Send queued samples while the client keeps up, checking each against its rights now."""
        connection = session.connection
        if connection is None:
            return
        if session.unsent is not None and not self._resend(session, connection):
            return
        inflight, window = session.inflight, session.window
        allows = self.allows
        kept = not session.clean_session and self.store is not None
        while session.queue and len(inflight) < window:
            if connection.congested():
                connection.wait_for_drain()
                return
            delivery = session.dequeue()
            expires = delivery.message.expires
            if expires is not None and expires <= time.monotonic():  # MQTT 5 message expiry
                self._forget(session, delivery)
                continue
            if not allows(session, delivery.message.topic, Action.RECEIVE):
                self._unreadable(session, delivery)
                continue
            if kept:
                self._send_kept(session, connection, delivery, queued=True)
            else:
                self._send(session, connection, delivery)

    def acknowledged(self, session: Session, pid: int) -> Delivery | None:
        """PUBACK or PUBCOMP: the delivery is done; the next queued one may go."""
        delivery = session.inflight.pop(pid, None)
        if delivery is not None:
            if self.store is not None and delivery.message.row:  # in the store, for this session or another
                self._forget(session, delivery)
            unsent = session.unsent
            if unsent is not None and pid in unsent:  # acknowledged before it went again
                unsent.remove(pid)
            if session.queue or unsent:
                self.pump(session)
        return delivery

    def resume(self, session: Session) -> None:
        """A session's client is back: resend what it has not acknowledged, then its queue.

        Each is checked against the key's rights as they are now: a sample queued while the key
        could read its network is not delivered once it cannot (and leaves the store).

        A PUBREL goes again at once, whatever the rights now: the client has that sample (its
        PUBREC came), and the PUBREL carries nothing of it; without it the client would hold the
        packet id for ever. An unacknowledged PUBLISH goes only as the window of the new
        connection has room (``pump``): an MQTT 5 client may give a smaller receive maximum than
        the connection that left them unacknowledged, and the server must never have more
        outstanding than it (MQTT-3.3.4-9).
        """
        connection = session.connection
        assert connection is not None  # noqa: S101 - called once connected
        unsent: deque[int] = deque()
        for pid, delivery in list(session.inflight.items()):
            if delivery.released:
                connection.write(bytes((0x62, 2, pid >> 8, pid & 0xFF)))  # PUBREL again
            else:
                unsent.append(pid)  # its rights are checked when it goes (``_resend``)
        session.unsent = unsent or None
        self.pump(session)

    def _resend(self, session: Session, connection: Connection) -> bool:
        """Send again what a resumed session left unacknowledged, while the window has room.

        In the order first sent, under the first packet ids, DUP set (MQTT-4.4.0-1, 4.6.0-1).
        Whether all of it went: the queue waits until then, so that nothing overtakes a resend.
        """
        unsent = session.unsent
        inflight = session.inflight
        while unsent:
            if len(inflight) - len(unsent) >= session.window:
                return False
            if connection.congested():
                connection.wait_for_drain()
                return False
            pid = unsent.popleft()
            delivery = inflight.get(pid)
            if delivery is None or delivery.released:
                continue  # the client answered it before it went again (it left ``unsent`` then)
            if not self.allows(session, delivery.message.topic, Action.RECEIVE):
                del inflight[pid]
                self._unreadable(session, delivery)
            elif connection.v5 is None:
                retain = delivery.extra is not None and delivery.extra[0]
                connection.write(delivery.message.packet(delivery.qos, pid, retain=retain, dup=True))
            else:
                retain, ids = delivery.extra or (False, ())
                message = delivery.message
                packet = connection.v5.publish(message, delivery.qos, pid, retain=retain, dup=True, ids=ids)
                if packet is None:
                    del inflight[pid]
                    self._forget(session, delivery)
                else:
                    connection.write(packet)
        session.unsent = None
        return True

    # Subscribing.
    def subscribe(
        self, session: Session, requests: list[tuple[str, int]], *, v5: bool = False, ident: int = 0
    ) -> list[int]:
        """Grant or refuse each filter; return the SUBACK codes. Retained samples follow separately.

        MQTT 3.1.1 has one refusal, 0x80; MQTT 5 says why (``v5``: each request's int is its
        options byte, ``ident`` the subscription id): 0x8F a malformed filter, 0x87 no read
        right, 0x97 the session's ``max_filters`` (or its filters' characters and levels in all), or
        a new shared one past its source's ``max_shared_per_source``.
        """
        codes = []
        verbose = log.isEnabledFor(logging.DEBUG)  # `radio broker -v`: each filter's verdict
        shared_refused, shared_over = 0, ""
        for topic_filter, asked in requests:
            qos = asked & 0x03
            shared = split_shared(topic_filter)
            inner = shared[1] if shared is not None else topic_filter
            if (
                (topic_filter.startswith(SHARED_PREFIX) and shared is None)
                or not valid_filter(inner)
                or too_deep(inner)
            ):
                if verbose:
                    log.debug(
                        "refused a subscription of %s to %s: not a valid filter", *said(session, topic_filter)
                    )
                codes.append(TOPIC_FILTER_INVALID if v5 else SUBSCRIBE_FAILURE)
                continue
            if not self.allows(session, inner, Action.SUBSCRIBE):
                if verbose:
                    log.debug(
                        "refused a subscription of %s to %s: its key may not read it",
                        *said(session, topic_filter),
                    )
                codes.append(NOT_AUTHORIZED if v5 else SUBSCRIBE_FAILURE)
                continue
            new = topic_filter not in session.subscriptions
            if new and (over := self._over_filters(session, topic_filter)) is not None:
                log.warning("refused a subscription of %s: %s", session.describe(), over)
                codes.append(QUOTA_EXCEEDED if v5 else SUBSCRIBE_FAILURE)
                continue
            if new and shared is not None and (over := self.shared_by_source.refusal(session)) is not None:
                shared_refused, shared_over = shared_refused + 1, over
                codes.append(QUOTA_EXCEEDED if v5 else SUBSCRIBE_FAILURE)
                continue
            if verbose:
                log.debug("granted a subscription of %s to %s at QoS %d", *said(session, topic_filter), qos)
            session.subscriptions[topic_filter] = qos
            self._add_filter(session, topic_filter, qos, new=new)
            session.set_options(topic_filter, (asked, ident) if v5 and (asked & ~0x03 or ident) else None)
            codes.append(qos)
        if shared_refused:  # one line per SUBSCRIBE, which may name thousands of groups
            refused = f"{shared_refused} shared subscription{'s' * (shared_refused != 1)}"
            log.warning("refused %s of %s: %s", refused, session.describe(), shared_over)
        self.save(session)
        return codes

    def _over_filters(self, session: Session, topic_filter: str) -> str | None:
        """Why one more filter is too many for the session (logged), or None."""
        if len(session.subscriptions) >= self.limits.max_filters:
            return f"it holds {self.limits.max_filters} filters, the limit [broker] max_filters"
        if session.filter_characters + len(topic_filter) > FILTER_CHARACTERS_MOST:
            return f"its filters would have more than {FILTER_CHARACTERS_MOST:,} characters in all, the limit"
        if session.filter_levels + topic_filter.count("/") + 1 > FILTER_LEVELS_MOST:
            return f"its filters would have more than {FILTER_LEVELS_MOST:,} levels in all, the limit"
        return None

    def _add_filter(self, session: Session, topic_filter: str, qos: int, *, new: bool = True) -> None:
        """Index a filter the session holds (``new``: it did not hold it before)."""
        if new:
            session.filter_characters += len(topic_filter)
            session.filter_levels += topic_filter.count("/") + 1
        shared = split_shared(topic_filter)
        if shared is None and session.v5:
            self.filters5 += new
            self.index5.add(topic_filter, session, qos)
        elif shared is None:
            self.index.add(topic_filter, session, qos)
        else:
            self.shared.add(shared[0], shared[1], session, qos)
            if new:
                self.shared_by_source.joined(session)

    def _remove_filter(self, session: Session, topic_filter: str) -> None:
        session.filter_characters -= len(topic_filter)
        session.filter_levels -= topic_filter.count("/") + 1
        session.set_options(topic_filter, None)
        shared = split_shared(topic_filter)
        if shared is None and session.v5:
            self.filters5 -= 1
            self.index5.remove(topic_filter, session)
        elif shared is None:
            self.index.remove(topic_filter, session)
        else:
            self.shared.remove(shared[0], shared[1], session)
            self.shared_by_source.left(session)

    def send_retained(self, session: Session, granted: list[tuple[str, int]], ident: int = 0) -> None:
        """Send the retained samples a new subscription brings, with the retain flag set.

        A shared subscription brings none (MQTT-3.8.4-8); an MQTT 5 one carries its subscription
        id, and an expired retained sample is not sent. They are held to the same flow control as
        live samples: at QoS 0 only while the client keeps up (else dropped and counted as for a
        slow subscriber), at QoS 1 and 2 no more unacknowledged than its window (``max_inflight``,
        an MQTT 5 client's receive maximum), the rest queued within the session's limits. A
        SUBSCRIBE of a few bytes may bring hundreds of retained samples, and MQTT sends them again
        for every SUBSCRIBE of the same filter: a client re-subscribing without reading or
        acknowledging would otherwise make the broker hold every copy, and past 65,535
        unacknowledged ones no packet id is free.
        """
        connection = session.connection
        if connection is None:
            return
        extra = (True, (ident,) if ident else ())
        # A filter named again in one SUBSCRIBE replaces its grant: its last one brings them, once.
        # One packet of 60 KB naming a filter 3,500 times walked 3.5 million samples, with no turn
        # between them to give way at (``Connection.spend``).
        for topic_filter, qos in dict(granted).items():
            if topic_filter.startswith(SHARED_PREFIX):
                continue
            for message in self.retained.match(topic_filter):
                connection.spend(message.size)  # against its turn, sent or not: see Connection.spend
                expires = message.expires
                if expires is not None and expires <= time.monotonic():
                    continue  # its publisher's message expiry passed: for 3.1.1 listeners too
                if not self.allows(session, message.topic, Action.RECEIVE):
                    continue
                level = min(qos, message.qos)
                if level:
                    self._deliver_retained(session, connection, Delivery(message, level, extra))
                else:
                    self._send_retained0(session, connection, message, extra[1])

    def _send_retained0(
        self, session: Session, connection: Connection, message: Message, ids: tuple[int, ...]
    ) -> None:
        """A retained sample at QoS 0: written now, or dropped (counted) if the client is slow."""
        if connection.congested():
            self.stats.dropped_slow += 1
            return
        v5 = connection.v5
        packet = (
            message.packet(0, retain=True) if v5 is None else v5.publish(message, 0, retain=True, ids=ids)
        )
        if packet is None:
            return
        connection.write(packet)
        if session.tally is not None:
            self.tallied(session, message)

    def _deliver_retained(self, session: Session, connection: Connection, delivery: Delivery) -> None:
        """A retained sample at QoS 1 or 2: sent now if the window has room, else queued.

        As ``deliver``, but never kept in the store: a SUBSCRIBE brings them again, and one that
        wrote a row per retained sample would let a client re-subscribing in a loop write the
        broker's disk as fast as it sends.
        """
        if (
            not session.queue
            and len(session.inflight) < session.window
            and session.unsent is None
            and not connection.congested()
        ):
            pid = self._send(session, connection, delivery)
            if not session.pid_lo <= pid < session.pid_hi and pid:
                self.reserve_pids(session, pid)
            return
        online = self.limits.keyed if session.limits is self.limits.anonymous else None
        for dropped in session.enqueue(delivery, online):
            self.stats.dropped_queue_full += 1
            self._forget(session, dropped)
            self._missed(session, dropped)
        if connection.congested():
            connection.wait_for_drain()
        elif len(session.inflight) < session.window:
            self.pump(session)

    def tallied(self, session: Session, message: Message) -> None:
        """Count one delivery to a listening key (its meter collects the tallies on a timer)."""
        tally = session.tally
        assert tally is not None  # noqa: S101 - callers check
        if not tally:
            self.tallies.append(session)
        row = tally.get(message.network)
        if row is None:
            tally[message.network] = [1, len(message.payload)]
        else:
            row[0] += 1
            row[1] += len(message.payload)

    def collect_tallies(self) -> list[tuple[Session, dict[str, list[int]]]]:
        """The deliveries counted since the last call, per session; the tallies start again."""
        sessions, self.tallies = self.tallies, []
        collected = []
        for session in sessions:
            if session.tally:
                collected.append((session, session.tally))
                session.tally = {}
        return collected

    def unsubscribe(self, session: Session, filters: list[str]) -> list[bool]:
        """Drop filters the session holds (others are ignored, as MQTT asks); which ones it held."""
        held = []
        for topic_filter in filters:
            found = session.subscriptions.pop(topic_filter, None) is not None
            if found:
                self._remove_filter(session, topic_filter)
            held.append(found)
        self.save(session)
        return held

    # Registry changes.
    def enforce(self, registry: Registry) -> list[Session]:
        """Apply a new registry; return the sessions whose connection must close (key gone or rotated).

        A revoked key's sessions are deleted (a new key under the same name has a new id and
        starts with none); samples waiting for a key that may no longer read their network are
        dropped. A will stays: the gate judges it by the rights of the moment it fires, and counts
        it against the key if it is refused then (``publish_will``).
        """
        closing = []
        for session in list(self.sessions.values()):
            name = session.key_name
            if name is None:
                owned = registry.allow_anonymous
                current = True
            else:
                key = registry.keys.get(name)
                owned = key is not None and key.id == session.key_id
                current = proved(session, registry)
            if not owned or not current:
                # A revoked or rotated key sends no will: neither its open connection's, nor one
                # an old connection left waiting out its delay (MQTT 5) on an offline session.
                session.will = None
                if session.connection is not None:
                    closing.append(session)
            if not owned:
                self.discard(session)
                continue
            if session.connection is not None:  # a right to publish given or taken away
                session.connection.bounded = not registry.access(name).publishes
            self._purge_unreadable(session)
        return closing

    def _purge_unreadable(self, session: Session) -> None:
        if not session.queue and not session.inflight:
            return
        kept: list[Delivery] = []
        dropped: list[Delivery] = []
        while session.queue:
            delivery = session.dequeue()
            if self.allows(session, delivery.message.topic, Action.RECEIVE):
                kept.append(delivery)
            else:
                dropped.append(delivery)
        for delivery in kept:
            session.keep(delivery)
        # What a connected client was sent is its own until it answers: the answer frees its
        # place in the window (MQTT-3.3.4-9) and its packet id. Only what waits to go again goes,
        # and never a released QoS 2 delivery: its client has it, only the PUBREL is left (``resume``).
        connected = session.connection is not None
        unsent = session.unsent
        for pid, delivery in list(session.inflight.items()):
            if delivery.released or (connected and (unsent is None or pid not in unsent)):
                continue
            if not self.allows(session, delivery.message.topic, Action.RECEIVE):
                del session.inflight[pid]
                dropped.append(delivery)
                if unsent is not None and pid in unsent:
                    unsent.remove(pid)
        for delivery in dropped:
            self._unreadable(session, delivery)

    def _unreadable(self, session: Session, delivery: Delivery) -> None:
        """A sample held for a session that may no longer read it: it leaves the session.

        One a shared subscription brought goes to the group's next member that may read it (MQTT
        5.0, 4.8.2), as it would have had the right gone before it was published: the group loses
        nothing to a member's lost right. One its client had (QoS 2 past PUBREC) is never here.
        """
        self.stats.dropped_unreadable += 1
        self._forget(session, delivery)
        if delivery.shared and not delivery.released:
            self._share_again(session, delivery)

    # Restart.
    def _restored(self, stored: StoredSession, registry: Registry) -> Session | None:
        """A stored session as it comes back, or None if nothing can be kept of it (the store forgets it).

        One whose key is gone comes back too, to go as a revoked key's sessions go (``restore``).
        """
        name = stored.attributes.get(attrs.KEY_NAME)
        key = registry.keys.get(name) if name is not None else None
        if name is not None and key is None and attrs.KEY_ID not in stored.attributes:
            # Written before sessions were kept per key, its key gone since: it has no id to go under.
            if self.store is not None:
                self.store.drop_session(stored.row_id)
            return None
        session = Session(stored.client_id, False, self.limits_for(name))  # noqa: FBT003
        session.attributes.update({k: v for k, v in stored.attributes.items() if k not in STORED_BESIDE})
        session.expiry = stored.attributes.get("expiry")
        options = stored.attributes.get("options")
        session.options = {f: (o[0], o[1]) for f, o in options.items()} if options else None
        # Only MQTT 5 gives a filter options: such a session's filters go back to the MQTT 5 index,
        # so that what is queued for it while its client is away keeps them (subscription ids...).
        session.v5 = session.options is not None
        if key is not None and attrs.KEY_ID not in session.attributes:
            session.attributes[attrs.KEY_ID] = key.id
        if self.store is not None and stored.row_id != session.store_id:
            self.store.rename_session(stored.row_id, session.store_id)  # a file from before ids had a key
        session.offline_since = stored.attributes.get("offline_since") or time.time()
        session.remote_address = stored.attributes.get("address") or ""
        awaiting = stored.attributes.get("awaiting_pubrel")
        session.incoming_qos2 = set(awaiting) if awaiting else None
        mark = stored.attributes.get("pid_mark")
        if mark:
            session.next_pid = int(mark)
        will = stored.attributes.get("will")
        if will is not None:
            session.will = Will.from_stored(will)
        return session

    def restore(self, contents: Contents, registry: Registry) -> None:
        """Put back what the store kept, then apply the registry: sessions whose key is gone go."""
        for topic, payload, qos in contents.retained:
            fields, expires = contents.retained_extras.get(topic, (b"", None))
            kept = Message(topic, payload, qos, True, fields, monotonic(expires))  # noqa: FBT003
            self.retained.put(topic, kept)
        # Past every row a batch lost to a kill -9 may have numbered; the mark moves on at once.
        self._seq = max(contents.last_seq, contents.marks.get("seq", 0))
        self._mark_rows()
        restored = 0
        for stored in contents.sessions:
            session = self._restored(stored, registry)
            if session is None:
                continue
            self.hold(session)
            will = session.will
            if will is not None:  # waiting out its delay when the broker stopped: the rest of it
                self.wait_for_will(session, will, max(0.0, will.due - time.time()))
            for topic_filter, qos in stored.subscriptions:
                session.subscriptions[topic_filter] = qos
                self._add_filter(session, topic_filter, qos)
            released = dict(stored.attributes.get("released") or ())
            for seq, topic, payload, qos in stored.queued:
                fields, expires = stored.queued_extras.get(seq, (b"", None))
                message = Message(topic, payload, qos, False, fields, monotonic(expires))  # noqa: FBT003
                message.row = seq
                delivery = Delivery(message, qos, stored.delivered_as.get(seq))
                delivery.shared = stored.shared.get(seq)  # its group's next member gets it should this end
                pid = released.get(seq)
                if pid is not None and pid not in session.inflight:
                    # PUBRECed before the restart: only its PUBCOMP is awaited (``resume``)
                    delivery.released = True
                    session.inflight[pid] = delivery
                elif (pid := stored.sent.get(seq)) is not None and pid not in session.inflight:
                    session.inflight[pid] = delivery  # sent, unanswered: it goes again under pid
                else:
                    session.keep(delivery)
            # Its ids go on from its mark, past any a batch lost to a kill -9 held; the mark moves
            # on before any client connects (``RadioBroker.start``).
            self.reserve_pids(session, session.next_pid)
            restored += 1
        # The registry as it is now, as if it had changed while the broker ran: what a key revoked,
        # rotated or narrowed meanwhile held goes as it would then (a shared subscription's sample
        # to the group's next member), once every session, and so every group, is back.
        held = len(self.sessions)
        self.enforce(registry)
        restored -= held - len(self.sessions)
        if contents.retained or restored:
            log.info(
                "restored %d retained sample(s) and %d persistent session(s)",
                len(contents.retained),
                restored,
            )
