"""What one MQTT 5 client asked for at CONNECT, and how a sample is written for it.

An MQTT 3.1.1 connection has none of this (``Connection.v5`` is None) and its deliveries never
come here: its PUBLISH bytes are built once per message and shared, as before. An MQTT 5
client may limit what it is sent (receive maximum, maximum packet size), let the server shorten
topics to aliases, and ask for problem information; a delivery may carry its subscription ids
and a message expiry counted down, so those packets are built per delivery.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Final

from radio.wire import properties as props
from radio.wire.mqtt5 import NO_LOCAL, RETAIN_AS_PUBLISHED, said

if TYPE_CHECKING:
    from radio.broker.message import Message
    from radio.broker.sessions import Session

SERVER_KEEP_ALIVE: Final = 60
"""The longest keep-alive granted to an MQTT 5 client, in seconds: a longer one is answered with this."""
TOPIC_ALIASES: Final = 64
"""Topic aliases an MQTT 5 client may set per connection (Topic Alias Maximum in the CONNACK)."""
REASON_BESIDE: Final = 16
"""Bytes an acknowledgement or DISCONNECT holds beside its reason string's text, at most: the fixed
header, a packet id, the reason code, the property list's length, the property's id and length."""


class Peer:
    """One MQTT 5 connection's terms, and its topic aliases both ways."""

    __slots__ = ("alias_max", "aliases_in", "aliases_out", "max_packet", "problem_info", "receive_max")

    def __init__(self, found: props.Properties) -> None:
        self.receive_max: int = found.get(props.RECEIVE_MAXIMUM, 65_535)
        self.max_packet: int = found.get(props.MAXIMUM_PACKET_SIZE, 0)
        """The largest packet the client takes (0: any)."""
        self.alias_max: int = min(found.get(props.TOPIC_ALIAS_MAXIMUM, 0), TOPIC_ALIASES)
        """Aliases the server sets in what the client is sent: as many as it allows, at most 64 (each
        holds a topic for the connection's life)."""
        self.problem_info: bool = found.get(props.REQUEST_PROBLEM_INFO, 1) == 1
        """Whether reason strings may go in acknowledgements (always in CONNACK and DISCONNECT)."""
        self.aliases_in: dict[int, str] = {}
        self.aliases_out: dict[str, int] = {}

    def reason(self, text: str | None, more: int = 0) -> str | None:
        """A reason string for an acknowledgement, if the client wants them and it fits (``fits``)."""
        return self.fits(text, more) if self.problem_info else None

    def fits(self, text: str | None, more: int = 0) -> str | None:
        """``text`` as a packet's reason string; None if the packet would outgrow what the client takes.

        MQTT-3.1.2-25: the reason string is left out, and the packet goes without it. ``more``:
        bytes the packet holds beyond an acknowledgement's (a SUBACK's reason codes).
        """
        if text is None or not self.max_packet:
            return text
        size = REASON_BESIDE + more + len(said(text).encode("utf-8"))
        return text if size <= self.max_packet else None

    def _alias(self, topic: str) -> tuple[str, int, int]:
        """The topic to write ("" if aliased already), its alias (0: none), and the alias it sets now."""
        if not self.alias_max:
            return topic, 0, 0
        alias = self.aliases_out.get(topic)
        if alias is not None:
            return "", alias, 0
        if len(self.aliases_out) < self.alias_max:
            alias = len(self.aliases_out) + 1
            return topic, alias, alias
        return topic, 0, 0

    def publish(
        self,
        message: Message,
        qos: int,
        pid: int = 0,
        *,
        retain: bool = False,
        dup: bool = False,
        ids: tuple[int, ...] = (),
    ) -> bytes | None:
        """The PUBLISH that delivers ``message``, or None if it expired or is larger than the client takes.

        A resend (``dup``) of a delivery its client left unanswered goes even once the message has
        expired, with no time left: its onward delivery began, and only a message whose delivery
        has not begun may be dropped at its expiry (MQTT-3.3.2-5). Dropped, a QoS 2 message the
        client had (its PUBREC lost) would hold its packet id for ever, awaiting a PUBREL.
        """
        fields = message.fields
        new_alias = 0
        custom = bool(ids) or message.expires is not None or self.alias_max
        if not custom:
            packet = message.packet5(qos, pid, retain=retain, dup=dup)
        else:
            if message.expires is not None:
                left = math.ceil(message.expires - time.monotonic())
                if left <= 0:
                    if not dup:
                        return None
                    left = 0
                fields = props.encode_one(props.MESSAGE_EXPIRY, left) + fields
            for ident in ids:
                fields += props.encode_one(props.SUBSCRIPTION_ID, ident)
            topic, alias, new_alias = self._alias(message.topic)
            if alias:
                fields += props.encode_one(props.TOPIC_ALIAS, alias)
            first = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
            packet = message.build5(first, pid.to_bytes(2, "big") if qos else b"", topic, fields)
        if self.max_packet and len(packet) > self.max_packet:
            return None
        if new_alias:
            self.aliases_out[message.topic] = new_alias
        return packet


def matches(topic_filter: str, topic: str) -> bool:
    """Whether a filter matches a topic, by MQTT's rules ('$' topics only by filters naming them)."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    levels = topic.split("/")
    parts = topic_filter.split("/")
    for i, part in enumerate(parts):
        if part == "#":
            return True
        if i >= len(levels) or (part not in ("+", levels[i])):
            return False
    return len(parts) == len(levels)


def subscribed(session: Session, message: Message, granted: int) -> tuple[int, bool, tuple[int, ...]] | None:
    """How an MQTT 5 session gets ``message``: (QoS, retain flag, subscription ids), or None for not at all.

    Without options beyond the QoS it is min(published, granted), retain 0, no ids, as for 3.1.1.
    Otherwise every filter of the session that matches counts: one with no-local set leaves out
    the session's own samples, retain-as-published keeps the flag, and the ids of all of them go
    with the one delivery (MQTT-3.3.4-3).
    """
    options = session.options
    if not options:
        return min(message.qos, granted), False, ()
    topic, own = message.topic, message.origin is session
    qos, retain, ids = -1, False, []
    for topic_filter, level in session.subscriptions.items():
        if topic_filter.startswith("$share/") or not matches(topic_filter, topic):
            continue
        flags, ident = options.get(topic_filter, (level, 0))
        if own and flags & NO_LOCAL:
            continue
        qos = max(qos, level)
        retain = retain or bool(flags & RETAIN_AS_PUBLISHED and message.retain)
        if ident:
            ids.append(ident)
    if qos < 0:
        return None
    return min(message.qos, qos), retain, tuple(ids)


def shared(session: Session, message: Message, topic_filter: str) -> tuple[bool, tuple[int, ...]]:
    """How a member of the shared subscription ``topic_filter`` gets ``message``: (retain flag, ids).

    By that filter's options alone: retain-as-published keeps the flag (MQTT 5.0, 3.8.3.1), and
    its subscription id goes (MQTT-3.3.4-3), no other, as of a shared subscription only the ids of
    the member receiving it go (3.3.4); the session's own filters that match have a delivery of
    their own (``subscribed``).
    """
    options = session.options
    found = options.get(topic_filter) if options else None
    if found is None:
        return False, ()
    flags, ident = found
    return bool(flags & RETAIN_AS_PUBLISHED and message.retain), (ident,) if ident else ()
