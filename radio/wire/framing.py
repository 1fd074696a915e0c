"""The frame around every MQTT packet: remaining length, string fields, and cutting a stream into packets.

Every packet is a first byte (type and flags), its remaining length in one to four bytes of seven
bits each, and a body. ``Framer`` takes bytes as the socket gives them, however they are chunked,
and returns whole packets in one pass over its buffer; a packet's size is checked as soon as its
length is known, before its body is read, so a peer cannot make a receiver buffer more than the
limit. Malformed input raises ``Violation`` and nothing else.
"""

from __future__ import annotations

from typing import Final

from radio.errors import RadioError

HEADROOM: Final = 65_536 + 16
"""What a PUBLISH holds besides its payload, at most: a topic of up to 65,535 bytes, its length
and a packet id. The default packet limit is the largest network payload plus this."""
MQTT_LIMIT: Final = 268_435_455
"""The largest remaining length MQTT can express (four bytes of seven bits)."""


class Violation(RadioError):
    """Bytes MQTT 3.1.1 says the receiver must close the connection on; the message says which rule."""


def packet_limit(configured: int | None, largest_payload: int) -> int:
    """The largest packet a broker takes; the one rule both brokers (embedded, Mosquitto) follow.

    ``[broker] max_packet_size`` if set, else the largest network payload plus HEADROOM.
    """
    return configured if configured is not None else largest_payload + HEADROOM


def remaining_length(n: int) -> bytes:
    """MQTT's variable-length encoding of a packet's remaining length (on the broker's hot path)."""
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


def packet(first: int, body: bytes) -> bytes:
    """A whole packet: its first byte (type and flags), remaining length, then the body."""
    return bytes((first,)) + remaining_length(len(body)) + body


def string(text: str) -> bytes:
    """A UTF-8 string field: two length bytes, then the text's UTF-8."""
    raw = text.encode("utf-8")
    return len(raw).to_bytes(2, "big") + raw


def binary(data: bytes) -> bytes:
    """A binary data field (a will message, a password): two length bytes, then the bytes."""
    return len(data).to_bytes(2, "big") + data


def read_binary(body: bytes, at: int, what: str) -> tuple[bytes, int]:
    """The binary field at ``at`` in ``body``, and where the next field starts."""
    if at + 2 > len(body):
        msg = f"{what} cut short"
        raise Violation(msg)
    end = at + 2 + (body[at] << 8 | body[at + 1])
    if end > len(body):
        msg = f"{what} longer than its packet"
        raise Violation(msg)
    return body[at + 2 : end], end


def read_string(body: bytes, at: int, what: str) -> tuple[str, int]:
    """The UTF-8 string field at ``at`` in ``body``, and where the next field starts."""
    raw, end = read_binary(body, at, what)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        msg = f"{what} is not UTF-8 [MQTT-1.5.3-1]"
        raise Violation(msg) from None
    if "\x00" in text:
        msg = f"{what} holds U+0000 [MQTT-1.5.3-2]"
        raise Violation(msg)
    return text, end


class Framer:
    """Cuts a byte stream into whole packets: ``(first byte, body)`` pairs, within a size limit."""

    __slots__ = ("_buffer", "limit")

    def __init__(self, limit: int = MQTT_LIMIT) -> None:
        self._buffer = bytearray()
        self.limit = limit
        """The largest remaining length taken: past it, ``feed`` raises before the body arrives."""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Add what the socket gave; return every packet now complete, in order."""
        buffer = self._buffer
        buffer += data
        packets: list[tuple[int, bytes]] = []
        position, size = 0, len(buffer)
        while size - position >= 2:
            length, multiplier, at, complete = 0, 1, position + 1, False
            for _ in range(4):
                if at >= size:
                    break
                byte = buffer[at]
                at += 1
                length += (byte & 0x7F) * multiplier
                if not byte & 0x80:
                    complete = True
                    break
                multiplier *= 128
            else:
                msg = "a remaining length longer than 4 bytes [MQTT-2.2.3]"
                raise Violation(msg)
            if not complete:
                break  # the length itself has not all arrived
            if length > self.limit:
                msg = f"a packet of {length} bytes, over the limit of {self.limit} [max_packet_size]"
                raise Violation(msg)
            end = at + length
            if end > size:
                break
            packets.append((buffer[position], bytes(buffer[at:end])))
            position = end
        if position:
            del buffer[:position]
        return packets

    @property
    def pending(self) -> int:
        """Bytes of a packet not yet complete."""
        return len(self._buffer)
