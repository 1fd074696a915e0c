"""MQTT 3.1.1 on the wire: cutting a byte stream into packets, checking them, decoding and encoding.

The broker reads whatever the socket has (often many packets at once) and cuts it here, in one
pass over a buffer, instead of awaiting each field as amqtt's packet classes do. A packet's size
is checked as soon as its length is known, before its body is read, and its shape before it is
decoded: anything MQTT 3.1.1 says the server must close the connection on raises ``Violation``
with the clause it breaks. Encoding is a few byte strings; a PUBLISH's bytes are built once per
message and shared by every subscriber (``broker.message.Message``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from radio.broker.attributes import shown

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

FLAGS: Final = {1: 0, 2: 0, 4: 0, 5: 0, 6: 2, 7: 0, 8: 2, 9: 0, 10: 2, 11: 0, 12: 0, 13: 0, 14: 0}
"""The fixed-header flags each packet type other than PUBLISH must carry (MQTT-2.2.2-1)."""
HEADROOM: Final = 65_536 + 16
"""What a PUBLISH holds besides its payload, at most: a topic of up to 65,535 bytes, its length
and a packet id. The default packet limit is the largest network payload plus this."""
MQTT_LIMIT: Final = 268_435_455
"""The largest remaining length MQTT can express."""

# CONNACK return codes (MQTT 3.1.1, 3.2.2.3).
ACCEPTED: Final = 0
UNACCEPTABLE_PROTOCOL: Final = 1
IDENTIFIER_REJECTED: Final = 2
SERVER_UNAVAILABLE: Final = 3
NOT_AUTHORIZED: Final = 5
SUBSCRIBE_FAILURE: Final = 0x80

PINGRESP_PACKET: Final = b"\xd0\x00"


def packet_limit(configured: int | None, largest_payload: int) -> int:
    """The largest packet a broker takes; the one rule both brokers (embedded, Mosquitto) follow.

    ``[broker] max_packet_size`` if set, else the largest network payload plus HEADROOM.
    """
    return configured if configured is not None else largest_payload + HEADROOM


class Violation(Exception):
    """A packet MQTT 3.1.1 says the server must close the connection on; the message says which."""


class Framer:
    """Cuts a byte stream into whole packets: ``(first byte, body)`` pairs, within a size limit."""

    __slots__ = ("_buffer", "_length", "limit")

    def __init__(self, limit: int) -> None:
        self._buffer = bytearray()
        self._length = 0
        self.limit = limit

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Add what the socket gave; return every packet now complete, in order.

        When nothing is left over from before (the usual case: a client's packets arrive whole),
        the packets are cut from ``data`` itself and only a partial one at its end is kept; the
        buffer is used only to join a packet split across reads.
        """
        buffer = self._buffer
        if buffer:
            buffer += data
            source: bytes | bytearray = buffer
        else:
            source = data
        packets: list[tuple[int, bytes]] = []
        position, size = 0, len(source)
        while size - position >= 2:
            length = source[position + 1]
            if length < 0x80:  # a remaining length of one byte: most packets
                at = position + 2
            else:
                at = self._long_length(source, position, size)
                if at < 0:
                    break  # the length itself has not all arrived
                length = self._length
            if length > self.limit:
                msg = f"a packet of {length} bytes, over the limit of {self.limit} [max_packet_size]"
                raise Violation(msg)
            end = at + length
            if end > size:
                break
            packets.append((source[position], bytes(source[at:end])))
            position = end
        if source is buffer:
            if position:
                del buffer[:position]
        elif position < size:
            buffer += data[position:]
        return packets

    def _long_length(self, source: bytes | bytearray, position: int, size: int) -> int:
        """Where the body starts after a remaining length of 2 to 4 bytes; -1 if it has not all arrived.

        The length's value is left in ``_length``.
        """
        length, multiplier, at = 0, 1, position + 1
        for _ in range(4):
            if at >= size:
                return -1
            byte = source[at]
            at += 1
            length += (byte & 0x7F) * multiplier
            if not byte & 0x80:
                self._length = length
                return at
            multiplier *= 128
        msg = "a remaining length longer than 4 bytes [MQTT-2.2.3]"
        raise Violation(msg)

    @property
    def pending(self) -> int:
        """Bytes of a packet not yet complete."""
        return len(self._buffer)


def check_flags(first: int) -> int:
    """The packet type, once its fixed-header flags are what MQTT 3.1.1 requires."""
    kind = first >> 4
    if kind == PUBLISH:
        return kind
    expected = FLAGS.get(kind)
    if expected is None:
        msg = f"reserved packet type {kind} [MQTT-2.2.1]"
        raise Violation(msg)
    if first & 0x0F != expected:
        msg = f"packet type {kind} with flags 0x{first & 0x0F:x} [MQTT-2.2.2-2]"
        raise Violation(msg)
    return kind


def _string(body: bytes, at: int, what: str) -> tuple[str, int]:
    if at + 2 > len(body):
        msg = f"{what} cut short"
        raise Violation(msg)
    end = at + 2 + (body[at] << 8 | body[at + 1])
    if end > len(body):
        msg = f"{what} longer than its packet"
        raise Violation(msg)
    try:
        text = body[at + 2 : end].decode("utf-8")
    except UnicodeDecodeError:
        msg = f"{what} is not UTF-8 [MQTT-1.5.3-1]"
        raise Violation(msg) from None
    if "\x00" in text:
        msg = f"{what} holds U+0000 [MQTT-1.5.3-2]"
        raise Violation(msg)
    return text, end


def _binary(body: bytes, at: int, what: str) -> tuple[bytes, int]:
    if at + 2 > len(body):
        msg = f"{what} cut short"
        raise Violation(msg)
    end = at + 2 + (body[at] << 8 | body[at + 1])
    if end > len(body):
        msg = f"{what} longer than its packet"
        raise Violation(msg)
    return body[at + 2 : end], end


def packet_id(body: bytes, what: str) -> int:
    """The packet id of a PUBACK, PUBREC, PUBREL or PUBCOMP (or the start of another packet)."""
    if len(body) < 2 or not (pid := body[0] << 8 | body[1]):
        msg = f"{what} without a packet id [MQTT-2.3.1-1]"
        raise Violation(msg)
    return pid


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


def decode_connect(body: bytes) -> Connect:
    """A CONNECT's fields; an unknown protocol (name and level) comes back unsupported, for a CONNACK 1."""
    name, at = _string(body, 0, "the protocol name")
    if at + 4 > len(body):
        msg = "a CONNECT cut short"
        raise Violation(msg)
    level, flags = body[at], body[at + 1]
    keep_alive = body[at + 2] << 8 | body[at + 3]
    at += 4
    if (name, level) not in (("MQTT", 4), ("MQIsdp", 3)):
        if name not in ("MQTT", "MQIsdp"):
            msg = f"protocol name {name!r} [MQTT-3.1.2-1]"
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
    if has_password and not has_user:
        msg = "a password without a user name [MQTT-3.1.2-22]"
        raise Violation(msg)
    client_id, at = _string(body, at, "the client id")
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
    topic, at = _string(body, at, "the will topic")
    if not topic or "+" in topic or "#" in topic:
        msg = f"the will topic {shown(topic)} is not a topic name [MQTT-3.1.3-11]"
        raise Violation(msg)
    payload, at = _binary(body, at, "the will message")
    return topic, payload, at


def _credentials(
    body: bytes, at: int, *, has_user: bool, has_password: bool
) -> tuple[str | None, str | None, int]:
    username = password = None
    if has_user:
        username, at = _string(body, at, "the user name")
    if has_password:
        raw, at = _binary(body, at, "the password")
        password = raw.decode("utf-8", "replace")
    return username, password, at


def decode_publish(first: int, body: bytes) -> tuple[str, int, int, bytes]:
    """A PUBLISH's topic, QoS, packet id (0 at QoS 0) and payload."""
    qos = (first >> 1) & 0x03
    if qos == 3:
        msg = "a PUBLISH with QoS 3 [MQTT-3.3.1-4]"
        raise Violation(msg)
    if not qos and first & 0x08:
        msg = "a QoS 0 PUBLISH with DUP set [MQTT-3.3.1-2]"
        raise Violation(msg)
    topic, at = _string(body, 0, "a PUBLISH topic")
    if not topic:
        msg = "a PUBLISH with an empty topic [MQTT-4.7.3-1]"
        raise Violation(msg)
    if "+" in topic or "#" in topic:
        msg = f"a PUBLISH to the wildcard topic {shown(topic)} [MQTT-3.3.2-2]"
        raise Violation(msg)
    pid = 0
    if qos:
        pid = packet_id(body[at:], "a QoS 1 or 2 PUBLISH")
        at += 2
    return topic, qos, pid, body[at:]


def decode_subscribe(body: bytes) -> tuple[int, list[tuple[str, int]]]:
    """A SUBSCRIBE's packet id and its (filter, requested QoS) pairs."""
    pid = packet_id(body, "a SUBSCRIBE")
    at, pairs = 2, []
    while at < len(body):
        topic_filter, at = _string(body, at, "a SUBSCRIBE filter")
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


def decode_unsubscribe(body: bytes) -> tuple[int, list[str]]:
    """An UNSUBSCRIBE's packet id and filters."""
    pid = packet_id(body, "an UNSUBSCRIBE")
    at, filters = 2, []
    while at < len(body):
        topic_filter, at = _string(body, at, "an UNSUBSCRIBE filter")
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


def remaining_length(n: int) -> bytes:
    """MQTT's variable-length encoding of a packet's remaining length."""
    if n < 128:
        return bytes((n,))
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def connack(session_present: bool, code: int) -> bytes:
    """A CONNACK."""
    return bytes((0x20, 2, 1 if session_present and code == ACCEPTED else 0, code))


def ack(kind: int, pid: int) -> bytes:
    """A PUBACK, PUBREC, PUBREL or PUBCOMP (PUBREL carries flags 0x2), or an UNSUBACK."""
    return bytes(((kind << 4) | (2 if kind == PUBREL else 0), 2, pid >> 8, pid & 0xFF))


def suback(pid: int, codes: list[int]) -> bytes:
    """A SUBACK with one return code per filter, in order."""
    return bytes((0x90,)) + remaining_length(2 + len(codes)) + bytes((pid >> 8, pid & 0xFF, *codes))


def encode_topic(topic: str) -> bytes:
    """A topic as it stands in a PUBLISH: two length bytes, then UTF-8."""
    raw = topic.encode("utf-8")
    return len(raw).to_bytes(2, "big") + raw
