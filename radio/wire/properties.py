"""MQTT 5 properties: ids, types, and reading and writing them (MQTT 5.0, 2.2.2).

A property list is a variable byte integer (its length in bytes), then (id, value) pairs. Values
come back as a dict by id; the two properties a packet may hold several times, user properties
and subscription identifiers, come back as lists. Anything MQTT 5 calls a malformed packet raises
``Malformed`` with the clause.
"""

from __future__ import annotations

from typing import Any, Final

from radio.errors import RadioError

PAYLOAD_FORMAT: Final = 0x01
MESSAGE_EXPIRY: Final = 0x02
CONTENT_TYPE: Final = 0x03
RESPONSE_TOPIC: Final = 0x08
CORRELATION_DATA: Final = 0x09
SUBSCRIPTION_ID: Final = 0x0B
SESSION_EXPIRY: Final = 0x11
ASSIGNED_CLIENT_ID: Final = 0x12
SERVER_KEEP_ALIVE: Final = 0x13
AUTHENTICATION_METHOD: Final = 0x15
AUTHENTICATION_DATA: Final = 0x16
REQUEST_PROBLEM_INFO: Final = 0x17
WILL_DELAY: Final = 0x18
REQUEST_RESPONSE_INFO: Final = 0x19
RESPONSE_INFO: Final = 0x1A
SERVER_REFERENCE: Final = 0x1C
REASON_STRING: Final = 0x1F
RECEIVE_MAXIMUM: Final = 0x21
TOPIC_ALIAS_MAXIMUM: Final = 0x22
TOPIC_ALIAS: Final = 0x23
MAXIMUM_QOS: Final = 0x24
RETAIN_AVAILABLE: Final = 0x25
USER_PROPERTY: Final = 0x26
MAXIMUM_PACKET_SIZE: Final = 0x27
WILDCARD_AVAILABLE: Final = 0x28
SUBSCRIPTION_ID_AVAILABLE: Final = 0x29
SHARED_AVAILABLE: Final = 0x2A

BYTE, TWO, FOUR, VARINT, TEXT, BINARY, PAIR = range(7)
TYPES: Final = {
    PAYLOAD_FORMAT: BYTE,
    MESSAGE_EXPIRY: FOUR,
    CONTENT_TYPE: TEXT,
    RESPONSE_TOPIC: TEXT,
    CORRELATION_DATA: BINARY,
    SUBSCRIPTION_ID: VARINT,
    SESSION_EXPIRY: FOUR,
    ASSIGNED_CLIENT_ID: TEXT,
    SERVER_KEEP_ALIVE: TWO,
    AUTHENTICATION_METHOD: TEXT,
    AUTHENTICATION_DATA: BINARY,
    REQUEST_PROBLEM_INFO: BYTE,
    WILL_DELAY: FOUR,
    REQUEST_RESPONSE_INFO: BYTE,
    RESPONSE_INFO: TEXT,
    SERVER_REFERENCE: TEXT,
    REASON_STRING: TEXT,
    RECEIVE_MAXIMUM: TWO,
    TOPIC_ALIAS_MAXIMUM: TWO,
    TOPIC_ALIAS: TWO,
    MAXIMUM_QOS: BYTE,
    RETAIN_AVAILABLE: BYTE,
    USER_PROPERTY: PAIR,
    MAXIMUM_PACKET_SIZE: FOUR,
    WILDCARD_AVAILABLE: BYTE,
    SUBSCRIPTION_ID_AVAILABLE: BYTE,
    SHARED_AVAILABLE: BYTE,
}
REPEATABLE: Final = frozenset({USER_PROPERTY, SUBSCRIPTION_ID})
PASSED_ON: Final = frozenset({PAYLOAD_FORMAT, CONTENT_TYPE, RESPONSE_TOPIC, CORRELATION_DATA, USER_PROPERTY})
"""What a PUBLISH (or a will) carries to its subscribers unchanged (MQTT-3.3.2-4..20); the
message expiry goes on too, counted down."""
IN_PUBLISH: Final = frozenset(
    {PAYLOAD_FORMAT, MESSAGE_EXPIRY, TOPIC_ALIAS, RESPONSE_TOPIC, CORRELATION_DATA, USER_PROPERTY}
    | {SUBSCRIPTION_ID, CONTENT_TYPE}
)
"""What a PUBLISH may carry (MQTT 5.0, 3.3.2.3); any other property makes it a malformed packet
(2.2.2.2). A subscription id is the server's to send: a client's is refused with its own clause."""
IN_SUBSCRIBE: Final = frozenset({SUBSCRIPTION_ID, USER_PROPERTY})
"""What a SUBSCRIBE may carry (MQTT 5.0, 3.8.2.1)."""
IN_UNSUBSCRIBE: Final = frozenset({USER_PROPERTY})
"""What an UNSUBSCRIBE may carry (MQTT 5.0, 3.10.2.1)."""
MAX_VARINT: Final = 268_435_455

Properties = dict[int, Any]


class Malformed(RadioError, ValueError):
    """A property list MQTT 5 calls malformed or a protocol error; the message says which clause."""


MOST_REPEATED: Final = 100
"""User properties (or subscription ids) one property list may hold. MQTT sets no bound but the
packet's size, and each costs the broker's one thread about a microsecond and a half to read,
before any right is checked: 18,000 of them in one 126 KB PUBLISH of an anonymous client, who may
publish nothing, held every other client some 23 ms, and a stream of them stalled the broker."""


class TooMany(Malformed):
    """A property list holding more user properties (or subscription ids) than ``MOST_REPEATED``."""


class NotAllowed(Malformed):
    """A property value that parses but MQTT 5 does not allow: a protocol error (MQTT 5.0, 1.2).

    Not a malformed packet, which is one that cannot be parsed: the value is of its type.
    """


def varint(body: bytes, at: int) -> tuple[int, int]:
    """A variable byte integer at ``at``: its value and where it ends."""
    value, multiplier = 0, 1
    for _ in range(4):
        if at >= len(body):
            msg = "a variable byte integer cut short [MQTT-1.5.5]"
            raise Malformed(msg)
        byte = body[at]
        at += 1
        value += (byte & 0x7F) * multiplier
        if not byte & 0x80:
            return value, at
        multiplier *= 128
    msg = "a variable byte integer longer than 4 bytes [MQTT-1.5.5-1]"
    raise Malformed(msg)


def encode_varint(n: int) -> bytes:
    """MQTT's variable byte integer."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _text(body: bytes, at: int, end: int) -> tuple[str, int]:
    raw, at = _binary(body, at, end)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        msg = "a property string that is not UTF-8 [MQTT-1.5.4-1]"
        raise Malformed(msg) from None
    if "\x00" in text:
        msg = "a property string holding U+0000 [MQTT-1.5.4-2]"
        raise Malformed(msg)
    return text, at


def _binary(body: bytes, at: int, end: int) -> tuple[bytes, int]:
    if at + 2 > end:
        msg = "a property value cut short"
        raise Malformed(msg)
    stop = at + 2 + (body[at] << 8 | body[at + 1])
    if stop > end:
        msg = "a property value longer than its properties"
        raise Malformed(msg)
    return body[at + 2 : stop], stop


def _value(kind: int, body: bytes, at: int, end: int) -> tuple[Any, int]:
    if kind in (BYTE, TWO, FOUR):
        size = 1 if kind == BYTE else 2 if kind == TWO else 4
        if at + size > end:
            msg = "a property value cut short"
            raise Malformed(msg)
        return int.from_bytes(body[at : at + size], "big"), at + size
    if kind == VARINT:
        return varint(body, at)
    if kind == TEXT:
        return _text(body, at, end)
    if kind == BINARY:
        return _binary(body, at, end)
    name, at = _text(body, at, end)
    text, at = _text(body, at, end)
    return (name, text), at


def decode(body: bytes, at: int) -> tuple[Properties, int]:
    """The property list at ``at``: its properties and where it ends."""
    length, at = varint(body, at)
    end = at + length
    if end > len(body):
        msg = "properties longer than their packet"
        raise Malformed(msg)
    found: Properties = {}
    while at < end:
        ident, at = varint(body, at)
        kind = TYPES.get(ident)
        if kind is None:
            msg = f"unknown property 0x{ident:02x} [MQTT-2.2.2]"
            raise Malformed(msg)
        value, at = _value(kind, body, at, end)
        if ident in REPEATABLE:
            values = found.setdefault(ident, [])
            if len(values) == MOST_REPEATED:
                msg = f"more than {MOST_REPEATED} of property 0x{ident:02x} in one packet"
                raise TooMany(msg)
            values.append(value)
        elif ident in found:
            msg = f"property 0x{ident:02x} twice [MQTT-2.2.2-2]"
            raise Malformed(msg)
        else:
            if ident == PAYLOAD_FORMAT and value > 1:  # a PUBLISH's, or a will's: both are read here
                msg = f"a payload format indicator of {value}, which is 0 or 1 [MQTT 5.0, 3.3.2.3.2]"
                raise NotAllowed(msg)
            found[ident] = value
    if at != end:
        msg = "a property longer than its properties"
        raise Malformed(msg)
    return found, end


def _string(raw: bytes) -> bytes:
    return len(raw).to_bytes(2, "big") + raw


def encode_one(ident: int, value: Any) -> bytes:
    """One property, id and value."""
    kind = TYPES[ident]
    head = encode_varint(ident)
    if kind in (BYTE, TWO, FOUR):
        return head + int(value).to_bytes(1 if kind == BYTE else 2 if kind == TWO else 4, "big")
    if kind == VARINT:
        return head + encode_varint(value)
    if kind == PAIR:
        name, text = value
        return head + _string(name.encode("utf-8")) + _string(text.encode("utf-8"))
    raw = str(value).encode("utf-8") if kind == TEXT else bytes(value)
    return head + _string(raw)


def encode_fields(properties: Properties) -> bytes:
    """The properties' bytes, without the length before them (repeatable ones from their lists)."""
    parts: list[bytes] = []
    for ident, value in properties.items():
        if ident in REPEATABLE:
            parts.extend(encode_one(ident, v) for v in value)
        else:
            parts.append(encode_one(ident, value))
    return b"".join(parts)


def encode(properties: Properties) -> bytes:
    """A property list: its length, then the properties."""
    fields = encode_fields(properties)
    return encode_varint(len(fields)) + fields


def passed_on(properties: Properties) -> bytes:
    """The fields a PUBLISH carries to its subscribers as they came (see ``PASSED_ON``)."""
    return encode_fields({k: v for k, v in properties.items() if k in PASSED_ON})
