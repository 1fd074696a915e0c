"""Every MQTT 3.1.1 packet: its type, an encoder for each direction, and the checks on decoding.

Encoders are a few byte strings each. The broker's answers (``connack``, ``ack``, ``suback``) and
the PUBLISH a publisher sends are on hot paths: no per-call work beyond building the bytes. (The
broker's own PUBLISH to subscribers is built once per message from ``string`` and
``remaining_length``, in ``radio.broker.message``.) Decoders check the shape of what they read:
anything MQTT 3.1.1 says the receiver must close the connection on raises ``Violation`` with the
clause it breaks, and no other exception.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from radio.logs import shown
from radio.wire.framing import Violation, binary, packet, read_binary, read_string, remaining_length, string

CONNECT: Final = 1
CONNACK: Final = 2
PUBLISH: Final = 3
PUBACK: Final = 4
PUBREC: Final = 5
PUBREL: Final = 6
PUBCOMP: Final = 7
SUBSCRIBE: Final = 8
SUBACK: Final = 9
UNSUBSCRIBE: Final = 10
UNSUBACK: Final = 11
PINGREQ: Final = 12
PINGRESP: Final = 13
DISCONNECT: Final = 14
AUTH: Final = 15
"""MQTT 5's AUTH; reserved in MQTT 3.1.1."""

FLAGS: Final = {1: 0, 2: 0, 4: 0, 5: 0, 6: 2, 7: 0, 8: 2, 9: 0, 10: 2, 11: 0, 12: 0, 13: 0, 14: 0}
"""The fixed-header flags each packet type other than PUBLISH must carry (MQTT-2.2.2-1)."""

# CONNACK return codes (MQTT 3.1.1, 3.2.2.3).
ACCEPTED: Final = 0
UNACCEPTABLE_PROTOCOL: Final = 1
IDENTIFIER_REJECTED: Final = 2
SERVER_UNAVAILABLE: Final = 3
NOT_AUTHORIZED: Final = 5
SUBSCRIBE_FAILURE: Final = 0x80
"""A SUBACK's return code for a filter refused."""

PINGREQ_PACKET: Final = b"\xc0\x00"
PINGRESP_PACKET: Final = b"\xd0\x00"
DISCONNECT_PACKET: Final = b"\xe0\x00"
_PUBACK_FIRST: Final = PUBACK << 4


# Encoders, in the order of the packet types.


def connect(
    client_id: str,
    username: str | None = None,
    password: str | bytes | None = None,
    keep_alive: int = 60,
    *,
    clean: bool = True,
    will: tuple[str, bytes] | None = None,
    will_qos: int = 0,
    will_retain: bool = False,
    protocol: str = "MQTT",
    level: int = 4,
) -> bytes:
    """A CONNECT; ``protocol`` and ``level`` other than MQTT 3.1.1's only to see them refused."""
    flags = 0x02 if clean else 0x00
    payload = string(client_id)
    if will is not None:
        flags |= 0x04 | will_qos << 3 | (0x20 if will_retain else 0)
        payload += string(will[0]) + binary(will[1])
    if username is not None:
        flags |= 0x80
        payload += string(username)
    if password is not None:
        flags |= 0x40
        payload += binary(password.encode() if isinstance(password, str) else password)
    return packet(0x10, string(protocol) + bytes((level, flags)) + keep_alive.to_bytes(2, "big") + payload)


def connack(session_present: bool, code: int) -> bytes:
    """A CONNACK; a refusal never says a session is present (MQTT-3.2.2-4)."""
    return bytes((0x20, 2, 1 if session_present and code == ACCEPTED else 0, code))


def publish(
    topic: str | bytes,
    payload: bytes,
    qos: int = 0,
    packet_id: int = 0,
    *,
    retain: bool = False,
    dup: bool = False,
) -> bytes:
    """A PUBLISH (``topic`` as text, or already UTF-8); the packet id is sent at QoS 1 and 2 only."""
    raw = topic.encode("utf-8") if isinstance(topic, str) else topic
    pid = packet_id.to_bytes(2, "big") if qos else b""
    return b"".join(
        (
            bytes((0x30 | qos << 1 | (0x08 if dup else 0) | (0x01 if retain else 0),)),
            remaining_length(2 + len(raw) + len(pid) + len(payload)),
            len(raw).to_bytes(2, "big"),
            raw,
            pid,
            payload,
        )
    )


def ack(kind: int, pid: int) -> bytes:
    """A PUBACK, PUBREC, PUBREL or PUBCOMP (PUBREL carries flags 0x2), or an UNSUBACK."""
    return bytes(((kind << 4) | (2 if kind == PUBREL else 0), 2, pid >> 8, pid & 0xFF))


def subscribe(pid: int, filters: Iterable[tuple[str, int]]) -> bytes:
    """A SUBSCRIBE asking for each (filter, QoS) pair, in order."""
    body = pid.to_bytes(2, "big") + b"".join(string(f) + bytes((qos,)) for f, qos in filters)
    return packet(0x82, body)


def suback(pid: int, codes: list[int]) -> bytes:
    """A SUBACK with one return code per filter, in order."""
    return bytes((0x90,)) + remaining_length(2 + len(codes)) + bytes((pid >> 8, pid & 0xFF, *codes))


def unsubscribe(pid: int, filters: Iterable[str]) -> bytes:
    """An UNSUBSCRIBE of each filter."""
    return packet(0xA2, pid.to_bytes(2, "big") + b"".join(string(f) for f in filters))


# Decoders: ``body`` is what follows the fixed header (``Framer`` gives it with the first byte).


class AuthPacket(Violation):
    """An AUTH packet from a client: an MQTT 5 client is told it is a protocol error (0x82)."""


def check_flags(first: int) -> int:
    """The packet type, once its fixed-header flags are what MQTT 3.1.1 requires."""
    kind = first >> 4
    if kind == PUBLISH:
        return kind
    expected = FLAGS.get(kind)
    if expected is None:
        if kind == AUTH:
            msg = (
                "an AUTH packet: packet type 15 is reserved in MQTT 3.1.1 [MQTT-2.2.1], and MQTT 5 "
                "takes one only after a CONNECT that named an authentication method, of which this "
                "broker takes none [MQTT 5.0, 4.12]"
            )
            raise AuthPacket(msg)
        msg = f"reserved packet type {kind} [MQTT-2.2.1]"
        raise Violation(msg)
    if first & 0x0F != expected:
        msg = f"packet type {kind} with flags 0x{first & 0x0F:x} [MQTT-2.2.2-2]"
        raise Violation(msg)
    return kind


def packet_id(body: bytes, what: str, at: int = 0) -> int:
    """The packet id at ``at`` in a body: a PUBACK's, PUBREC's, ... or inside another packet.

    Read in place: a PUBLISH's follows its topic, and a slice to read it would copy the payload.
    """
    if len(body) < at + 2 or not (pid := body[at] << 8 | body[at + 1]):
        msg = f"{what} without a packet id [MQTT-2.3.1-1]"
        raise Violation(msg)
    return pid


def leading_pubacks(data: bytes) -> tuple[list[int], int]:
    """The packet ids of the PUBACKs back to back at the start of ``data``, and the bytes they take.

    What a busy publisher reads is PUBACKs, four bytes each: read in one pass, without framing each.
    """
    at, end, ids = 0, len(data) - 3, []
    while at < end and data[at] == _PUBACK_FIRST and data[at + 1] == 2:
        ids.append(data[at + 2] << 8 | data[at + 3])
        at += 4
    return ids, at


@dataclass(slots=True)
class Connect:
    """What a CONNECT asks for."""

    level: int
    clean_session: bool
    keep_alive: int
    client_id: str
    will_topic: str | None
    will_payload: bytes
    will_qos: int
    will_retain: bool
    username: str | None
    password: str | None
    supported: bool = True
    """False for a protocol name and level Radio does not speak: answered CONNACK 1."""


PropertyReader = Callable[[bytes, int, str], int]
"""Reads an MQTT 5 property list at an offset (of the ``connect`` or the ``will``); returns its end."""


def decode_connect(body: bytes, properties: PropertyReader | None = None) -> Connect:
    """A CONNECT's fields; an unknown protocol (name and level) comes back unsupported, for a CONNACK 1.

    With ``properties`` (radio/wire/mqtt5.py), a level 5 CONNECT is decoded too, its property
    lists handed to it; MQTT 5 also allows a password without a user name.
    """
    name, at = read_string(body, 0, "the protocol name")
    if at + 4 > len(body):
        msg = "a CONNECT cut short"
        raise Violation(msg)
    level, flags = body[at], body[at + 1]
    keep_alive = body[at + 2] << 8 | body[at + 3]
    at += 4
    v5 = properties is not None and (name, level) == ("MQTT", 5)
    if (name, level) not in (("MQTT", 4), ("MQIsdp", 3)) and not v5:
        if name not in ("MQTT", "MQIsdp"):
            msg = f"protocol name {shown(name)} [MQTT-3.1.2-1]"
            raise Violation(msg)
        return Connect(level, True, 0, "", None, b"", 0, False, None, None, supported=False)  # noqa: FBT003
    if flags & 0x01:
        msg = "the CONNECT's reserved flag is set [MQTT-3.1.2-3]"
        raise Violation(msg)
    will, will_qos, will_retain = bool(flags & 0x04), (flags >> 3) & 0x03, bool(flags & 0x20)
    if will_qos == 3 or (not will and (will_qos or will_retain)):
        msg = "inconsistent will flags [MQTT-3.1.2-11..15]"
        raise Violation(msg)
    has_user, has_password = bool(flags & 0x80), bool(flags & 0x40)
    if has_password and not has_user and not v5:
        msg = "a password without a user name [MQTT-3.1.2-22]"
        raise Violation(msg)
    if properties is not None and v5:
        at = properties(body, at, "connect")
    client_id, at = read_string(body, at, "the client id")
    if will and properties is not None and v5:
        at = properties(body, at, "will")
    will_topic, will_payload, at = _will(body, at) if will else (None, b"", at)
    username, password, at = _credentials(body, at, has_user=has_user, has_password=has_password)
    if at != len(body):
        msg = "a CONNECT with bytes after its payload"
        raise Violation(msg)
    return Connect(
        level,
        bool(flags & 0x02),
        keep_alive,
        client_id,
        will_topic,
        will_payload,
        will_qos,
        will_retain,
        username,
        password,
    )


def _will(body: bytes, at: int) -> tuple[str, bytes, int]:
    topic, at = read_string(body, at, "the will topic")
    if not topic or "+" in topic or "#" in topic:
        msg = f"the will topic {shown(topic)} is not a topic name [MQTT-3.1.3-11]"
        raise Violation(msg)
    payload, at = read_binary(body, at, "the will message")
    return topic, payload, at


def _credentials(
    body: bytes, at: int, *, has_user: bool, has_password: bool
) -> tuple[str | None, str | None, int]:
    username = password = None
    if has_user:
        username, at = read_string(body, at, "the user name")
    if has_password:
        raw, at = read_binary(body, at, "the password")
        password = raw.decode("utf-8", "replace")
    return username, password, at


def decode_connack(body: bytes) -> tuple[bool, int]:
    """A CONNACK's session-present flag and return code."""
    if len(body) != 2 or body[0] & 0xFE:
        msg = f"a CONNACK of {len(body)} bytes, flags 0x{body[0] if body else 0:02x} [MQTT-3.2.2-1]"
        raise Violation(msg)
    return bool(body[0]), body[1]


def decode_publish(first: int, body: bytes) -> tuple[str, int, int, bytes]:
    """A PUBLISH's topic, QoS, packet id (0 at QoS 0) and payload."""
    qos = (first >> 1) & 0x03
    if qos == 3:
        msg = "a PUBLISH with QoS 3 [MQTT-3.3.1-4]"
        raise Violation(msg)
    if not qos and first & 0x08:
        msg = "a QoS 0 PUBLISH with DUP set [MQTT-3.3.1-2]"
        raise Violation(msg)
    topic, at = read_string(body, 0, "a PUBLISH topic")
    if not topic:
        msg = "a PUBLISH with an empty topic [MQTT-4.7.3-1]"
        raise Violation(msg)
    if "+" in topic or "#" in topic:
        msg = f"a PUBLISH to the wildcard topic {shown(topic)} [MQTT-3.3.2-2]"
        raise Violation(msg)
    pid = 0
    if qos:
        pid = packet_id(body, "a QoS 1 or 2 PUBLISH", at)
        at += 2
    return topic, qos, pid, body[at:]


def decode_subscribe(body: bytes) -> tuple[int, list[tuple[str, int]]]:
    """A SUBSCRIBE's packet id and its (filter, requested QoS) pairs."""
    pid = packet_id(body, "a SUBSCRIBE")
    at, pairs = 2, []
    while at < len(body):
        topic_filter, at = read_string(body, at, "a SUBSCRIBE filter")
        if at >= len(body):
            msg = "a SUBSCRIBE filter without its QoS"
            raise Violation(msg)
        if body[at] > 2:
            msg = f"a SUBSCRIBE asking QoS byte 0x{body[at]:02x} [MQTT-3.8.3-4]"
            raise Violation(msg)
        pairs.append((topic_filter, body[at]))
        at += 1
    if not pairs:
        msg = "a SUBSCRIBE with no topic filter [MQTT-3.8.3-3]"
        raise Violation(msg)
    return pid, pairs


def decode_suback(body: bytes) -> tuple[int, list[int]]:
    """A SUBACK's packet id and its return codes, one per filter asked for."""
    pid = packet_id(body, "a SUBACK")
    codes = list(body[2:])
    if not codes or any(code not in (0, 1, 2, SUBSCRIBE_FAILURE) for code in codes):
        msg = f"a SUBACK with return codes {codes} [MQTT-3.9.3-2]"
        raise Violation(msg)
    return pid, codes


def decode_unsubscribe(body: bytes) -> tuple[int, list[str]]:
    """An UNSUBSCRIBE's packet id and filters."""
    pid = packet_id(body, "an UNSUBSCRIBE")
    at, filters = 2, []
    while at < len(body):
        topic_filter, at = read_string(body, at, "an UNSUBSCRIBE filter")
        filters.append(topic_filter)
    if not filters:
        msg = "an UNSUBSCRIBE with no topic filter [MQTT-3.10.3-2]"
        raise Violation(msg)
    return pid, filters


def valid_filter(topic_filter: str) -> bool:
    """Whether a filter is well formed: '#' alone and last, '+' alone in its level."""
    if not topic_filter:
        return False
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True
