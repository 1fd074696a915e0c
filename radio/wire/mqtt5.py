"""MQTT 5 packets: what differs from MQTT 3.1.1 (properties, reason codes, subscription options).

A CONNECT says its protocol level before anything else; the broker decodes a level 5 CONNECT
here, and every later packet of that connection with the MQTT 5 decoders below. Packets the
server sends carry a reason code and, when there is something to say, a reason string.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from radio.logs import shown
from radio.wire import framing, packets, reasons
from radio.wire import properties as props
from radio.wire.framing import Violation, read_string

LEVEL: Final = 5

NO_LOCAL: Final = 0x04
RETAIN_AS_PUBLISHED: Final = 0x08


class CodedViolation(Violation):
    """A packet the server answers with a DISCONNECT carrying ``code``, then closes on."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class Extras:
    """What a level 5 CONNECT holds beyond a 3.1.1 one."""

    properties: props.Properties = field(default_factory=dict)
    will_properties: props.Properties = field(default_factory=dict)


def _properties(body: bytes, at: int) -> tuple[props.Properties, int]:
    try:
        return props.decode(body, at)
    except props.TooMany as exc:
        raise CodedViolation(reasons.QUOTA_EXCEEDED, str(exc)) from None
    except props.NotAllowed as exc:
        raise CodedViolation(reasons.PROTOCOL_ERROR, str(exc)) from None
    except props.Malformed as exc:
        raise CodedViolation(reasons.MALFORMED_PACKET, str(exc)) from None


def decode_connect(body: bytes) -> tuple[packets.Connect, Extras]:
    """A level 5 CONNECT's fields, and its properties and will properties."""
    extras = Extras()

    def read(body: bytes, at: int, which: str) -> int:
        found, end = _properties(body, at)
        if which == "will":
            extras.will_properties = found
        else:
            extras.properties = found
        return end

    return packets.decode_connect(body, read), extras


def decode_publish(first: int, body: bytes) -> tuple[str, int, int, props.Properties, bytes]:
    """A PUBLISH's topic ("" when it gives a topic alias only), QoS, packet id, properties, payload."""
    qos = (first >> 1) & 0x03
    if qos == 3:
        msg = "a PUBLISH with QoS 3 [MQTT-3.3.1-4]"
        raise CodedViolation(reasons.MALFORMED_PACKET, msg)
    if not qos and first & 0x08:
        msg = "a QoS 0 PUBLISH with DUP set [MQTT-3.3.1-2]"
        raise CodedViolation(reasons.MALFORMED_PACKET, msg)
    topic, at = read_string(body, 0, "a PUBLISH topic")
    if "+" in topic or "#" in topic:
        msg = f"a PUBLISH to the wildcard topic {shown(topic)} [MQTT-3.3.2-2]"
        raise CodedViolation(reasons.TOPIC_NAME_INVALID, msg)
    pid = 0
    if qos:
        pid = packets.packet_id(body, "a QoS 1 or 2 PUBLISH", at)
        at += 2
    found, at = _properties(body, at)
    _only(found, props.IN_PUBLISH, "a PUBLISH")
    return topic, qos, pid, found, body[at:]


def _only(found: props.Properties, allowed: frozenset[int], what: str) -> None:
    """A property the packet type does not carry makes the packet malformed (MQTT 5.0, 2.2.2.2)."""
    if found and not found.keys() <= allowed:
        stray = min(found.keys() - allowed)
        msg = f"{what} with property 0x{stray:02x}, which {what} does not carry [MQTT 5.0, 2.2.2.2]"
        raise CodedViolation(reasons.MALFORMED_PACKET, msg)


def decode_subscribe(body: bytes) -> tuple[int, props.Properties, list[tuple[str, int]]]:
    """A SUBSCRIBE's packet id, properties, and (filter, options byte) pairs."""
    pid = packets.packet_id(body, "a SUBSCRIBE")
    found, at = _properties(body, 2)
    _only(found, props.IN_SUBSCRIBE, "a SUBSCRIBE")
    pairs = []
    while at < len(body):
        topic_filter, at = read_string(body, at, "a SUBSCRIBE filter")
        if at >= len(body):
            msg = "a SUBSCRIBE filter without its options"
            raise CodedViolation(reasons.MALFORMED_PACKET, msg)
        options = body[at]
        if options & 0xC0:
            msg = f"a SUBSCRIBE with options 0x{options:02x}, reserved bits set [MQTT-3.8.3-5]"
            raise CodedViolation(reasons.MALFORMED_PACKET, msg)
        if options & 0x03 == 3 or (options >> 4) & 0x03 == 3:
            msg = (
                f"a SUBSCRIBE with options 0x{options:02x}: a QoS or retain handling of 3 (MQTT 5.0, 3.8.3.1)"
            )
            raise CodedViolation(reasons.PROTOCOL_ERROR, msg)
        pairs.append((topic_filter, options))
        at += 1
    if not pairs:
        msg = "a SUBSCRIBE with no topic filter [MQTT-3.8.3-2]"
        raise CodedViolation(reasons.PROTOCOL_ERROR, msg)
    return pid, found, pairs


def decode_unsubscribe(body: bytes) -> tuple[int, list[str]]:
    """An UNSUBSCRIBE's packet id and filters (its properties are read past)."""
    pid = packets.packet_id(body, "an UNSUBSCRIBE")
    found, at = _properties(body, 2)
    _only(found, props.IN_UNSUBSCRIBE, "an UNSUBSCRIBE")
    filters = []
    while at < len(body):
        topic_filter, at = read_string(body, at, "an UNSUBSCRIBE filter")
        filters.append(topic_filter)
    if not filters:
        msg = "an UNSUBSCRIBE with no topic filter [MQTT-3.10.3-2]"
        raise CodedViolation(reasons.PROTOCOL_ERROR, msg)
    return pid, filters


def decode_ack(body: bytes, what: str) -> tuple[int, int]:
    """A PUBACK, PUBREC, PUBREL or PUBCOMP's packet id and reason code (0 when left out)."""
    pid = packets.packet_id(body, what)
    code = body[2] if len(body) > 2 else reasons.SUCCESS
    if len(body) > 3:
        _properties(body, 3)
    return pid, code


def decode_disconnect(body: bytes) -> tuple[int, props.Properties]:
    """A client's DISCONNECT: its reason code and properties."""
    if not body:
        return reasons.SUCCESS, {}
    if len(body) == 1:
        return body[0], {}
    found, _ = _properties(body, 1)
    return body[0], found


_packet = framing.packet

REASON_MOST: Final = 1_000
"""Characters of a reason string the server sends at most; a longer one is cut, ending in "...".
A reason may quote what the client sent (a filter, a field of a sample, a protocol name), and
MQTT bounds a string to 65,535 bytes: one quoting more would not even encode."""


def said(reason: str) -> str:
    """A reason string as the server sends it: within ``REASON_MOST`` characters."""
    return reason if len(reason) <= REASON_MOST else reason[: REASON_MOST - 3] + "..."


def _reason(reason: str | None) -> props.Properties:
    return {props.REASON_STRING: said(reason)} if reason is not None else {}


def connack(session_present: bool, code: int, found: props.Properties) -> bytes:
    """A CONNACK with its reason code and properties (a reason string cut to ``REASON_MOST``)."""
    flags = 1 if session_present and code == reasons.SUCCESS else 0
    if props.REASON_STRING in found:
        found = {**found, props.REASON_STRING: said(found[props.REASON_STRING])}
    return _packet(0x20, bytes((flags, code)) + props.encode(found))


def ack(kind: int, pid: int, code: int = reasons.SUCCESS, reason: str | None = None) -> bytes:
    """A PUBACK, PUBREC, PUBREL or PUBCOMP: as short as MQTT 3.1.1's when it succeeded."""
    if code == reasons.SUCCESS and reason is None:
        return packets.ack(kind, pid)
    found = _reason(reason)
    first = (kind << 4) | (2 if kind == packets.PUBREL else 0)
    return _packet(first, bytes((pid >> 8, pid & 0xFF, code)) + props.encode(found))


def suback(kind: int, pid: int, codes: list[int], reason: str | None = None) -> bytes:
    """A SUBACK (or UNSUBACK): a reason code per filter, in order."""
    found = _reason(reason)
    return _packet(kind << 4, bytes((pid >> 8, pid & 0xFF)) + props.encode(found) + bytes(codes))


def disconnect(code: int, reason: str | None = None) -> bytes:
    """The server's DISCONNECT: why it closes the connection."""
    found = _reason(reason)
    return _packet(0xE0, bytes((code,)) + props.encode(found))


# What a client sends: Radio's own clients use paho; these serve tests and tools that must send
# what a library will not.


def connect(
    client_id: str,
    username: str | None = None,
    password: str | None = None,
    keep_alive: int = 60,
    *,
    clean: bool = True,
    will: tuple[str, bytes] | None = None,
    properties: props.Properties | None = None,
    will_properties: props.Properties | None = None,
) -> bytes:
    """A level 5 CONNECT: 3.1.1's fields, with a property list, and one for the will."""
    flags = 0x02 if clean else 0x00
    payload = framing.string(client_id)
    if will is not None:
        flags |= 0x04
        payload += props.encode(will_properties or {}) + framing.string(will[0]) + framing.binary(will[1])
    if username is not None:
        flags |= 0x80
        payload += framing.string(username)
    if password is not None:
        flags |= 0x40
        payload += framing.string(password)
    head = framing.string("MQTT") + bytes((LEVEL, flags)) + keep_alive.to_bytes(2, "big")
    return _packet(0x10, head + props.encode(properties or {}) + payload)


def publish(
    topic: str, payload: bytes, qos: int = 0, pid: int = 1, properties: props.Properties | None = None
) -> bytes:
    """A level 5 PUBLISH with its properties."""
    body = framing.string(topic) + (pid.to_bytes(2, "big") if qos else b"") + props.encode(properties or {})
    return _packet(0x30 | qos << 1, body + payload)


def subscribe(
    topic_filter: str, options: int = 0, pid: int = 1, properties: props.Properties | None = None
) -> bytes:
    """A level 5 SUBSCRIBE of one filter with its options byte (the QoS in its low bits)."""
    body = pid.to_bytes(2, "big") + props.encode(properties or {}) + framing.string(topic_filter)
    return _packet(0x82, body + bytes((options,)))
