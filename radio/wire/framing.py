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


class TooLarge(Violation):
    """A packet over the size limit (an MQTT 5 client is told so: DISCONNECT 0x95)."""


class Framer:
    """Cuts a byte stream into whole packets: ``(first byte, body)`` pairs, within a size limit."""

    __slots__ = ("_buffer", "_length", "limit", "missing")

    def __init__(self, limit: int = MQTT_LIMIT) -> None:
        self._buffer: bytearray | None = None
        """A packet split across reads, joined here; None while none is (most packets come whole)."""
        self._length = 0
        self.limit = limit
        """The largest remaining length taken: past it, ``feed`` raises before the body arrives."""
        self.missing = 2
        """Bytes the next packet needs at least before it is complete: a reader that must not read
        past a packet (a test's socket) reads exactly this many."""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Add what the socket gave; return every packet now complete, in order.

        When nothing is left over from before (the usual case: a client's packets arrive whole),
        the packets are cut from ``data`` itself and only a partial one at its end is kept; the
        buffer is used only to join a packet split across reads.
        """
        buffer = self._buffer
        source: bytes | bytearray = data
        if buffer is not None:
            buffer += data
            source = buffer
        packets: list[tuple[int, bytes]] = []
        position, size = 0, len(source)
        while size - position >= 2:
            length = source[position + 1]
            if length < 0x80:  # a remaining length of one byte: most packets
                at = position + 2
            else:
                at = self._long_length(source, position, size)
                if at < 0:
                    self.missing = 1  # the length itself has not all arrived
                    break
                length = self._length
            if length > self.limit:
                msg = f"a packet of {length} bytes, over the limit of {self.limit} [max_packet_size]"
                raise TooLarge(msg)
            end = at + length
            if end > size:
                self.missing = end - size
                break
            packets.append((source[position], bytes(source[at:end])))
            position = end
        else:
            self.missing = 2 - (size - position)
        if buffer is not None or position < size:
            self._keep(buffer, data, position, size)
        return packets

    def whole(self, data: bytes) -> int:
        """Where the body starts if ``data`` is exactly one packet and nothing waits before it, else 0.

        A paced client's read is one whole packet (a sample): it is handled without building the
        list ``feed`` returns. The size limit holds here as there; anything else is left to ``feed``.
        """
        size = len(data)
        if self._buffer is not None or size < 2:
            return 0
        length = data[1]
        if length < 0x80:
            at = 2
        else:
            at = self._long_length(data, 0, size)
            if at < 0:
                return 0
            length = self._length
        if length > self.limit:
            msg = f"a packet of {length} bytes, over the limit of {self.limit} [max_packet_size]"
            raise TooLarge(msg)
        if at + length != size:
            return 0
        self.missing = 2
        return at

    def _keep(self, buffer: bytearray | None, data: bytes, position: int, size: int) -> None:
        """Keep the bytes past the last whole packet for the next read; let an emptied buffer go."""
        if buffer is None:
            self._buffer = bytearray(data[position:])
        elif position == size:
            self._buffer = None
        elif position:
            del buffer[:position]

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
        return len(self._buffer) if self._buffer is not None else 0
