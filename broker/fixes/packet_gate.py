"""Fix: malformed, oversized and out-of-order packets reach amqtt's parser (amqtt 0.12.1).

Stock amqtt parses whatever arrives:

- the first packet need not be a CONNECT, and nothing bounds the wait for it: garbage bytes or an
  HTTP request keep the socket open (MQTT-3.1.0-1);
- a PUBLISH whose topic holds a wildcard raises half-way through its parse, and the rest of the
  packet is then read as packets: the stream is desynchronised (MQTT-3.3.2-2);
- a SUBSCRIBE asking QoS 3 is granted 0x03 (MQTT-3.8.3-4); a QoS 3 PUBLISH is ignored in silence
  (MQTT-3.3.1-4);
- there is no maximum packet size over TCP: a 64 MiB PUBLISH is read, kept and forwarded.

Here every connection reads through a ``PacketGate``: it frames each packet itself, checks its
size before reading its body and its shape before amqtt sees it, and ends the stream (amqtt
then sees the client gone, closes the connection and publishes the will, MQTT-3.1.2-8) at the
first violation, with one warning line saying which.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import Final

from amqtt.adapters import ReaderAdapter

log = logging.getLogger("radio.broker")

CONNECT: Final = 1
PUBLISH: Final = 3
SUBSCRIBE: Final = 8
UNSUBSCRIBE: Final = 10
FLAGS: Final = {1: 0, 2: 0, 4: 0, 5: 0, 6: 2, 7: 0, 8: 2, 9: 0, 10: 2, 11: 0, 12: 0, 13: 0, 14: 0}
"""The fixed-header flags each packet type other than PUBLISH must carry (MQTT-2.2.2-1)."""
HEADROOM: Final = 65_536 + 16
"""What a PUBLISH holds besides its payload, at most: a topic of up to 65,535 bytes, its length
and a packet id. The default packet limit is the largest network payload plus this."""


def packet_limit(configured: int | None, largest_payload: int) -> int:
    """The largest packet a broker takes; the one rule both brokers (embedded, Mosquitto) follow.

    ``[broker] max_packet_size`` if set, else the largest network payload plus HEADROOM.
    """
    return configured if configured is not None else largest_payload + HEADROOM


class Violation(Exception):
    """Why a client's stream is closed."""


class PacketGate(ReaderAdapter):
    """Reads whole packets from a connection, passing on only well-formed ones within the limit."""

    def __init__(self, inner: ReaderAdapter, max_packet_size: int, who: Callable[[], str]) -> None:
        self._inner = inner
        self._limit = max_packet_size
        self._who = who
        self._buffer = b""
        self._position = 0
        self._packets = 0
        self._ended = False

    async def read(self, n: int = -1) -> bytes:
        """What amqtt's parser asks for, always from within one whole, checked packet."""
        if self._position >= len(self._buffer):
            self._buffer, self._position = await self._next_packet(), 0
        end = len(self._buffer) if n < 0 else self._position + n
        data = self._buffer[self._position : end]
        self._position += len(data)
        return data

    def feed_eof(self) -> None:
        """End the stream for amqtt; the connection closes once its reader sees it."""
        self._ended = True
        self._inner.feed_eof()

    async def _next_packet(self) -> bytes:
        if self._ended:
            return b""
        try:
            packet = await self._read_packet()
        except Violation as exc:
            log.warning("closing %s: %s", self._who(), exc)
            self._ended = True
            return b""
        except (EOFError, ConnectionError, OSError):
            self._ended = True
            return b""
        self._packets += 1
        return packet

    async def _read_exactly(self, n: int) -> bytes:
        try:
            data = await self._inner.read(n)
        except Exception as exc:  # asyncio.IncompleteReadError and the websocket's closing
            raise EOFError from exc
        if len(data) < n:
            raise EOFError
        return data

    async def _read_packet(self) -> bytes:
        # Every packet has at least two bytes: its type and the first byte of its length.
        header = await self._read_exactly(2)
        first = header[0]
        kind = first >> 4
        if self._packets == 0 and kind != CONNECT:
            msg = f"the first packet is not a CONNECT (byte 0x{first:02x}) [MQTT-3.1.0-1]"
            raise Violation(msg)
        if self._packets > 0 and kind == CONNECT:
            msg = "a second CONNECT [MQTT-3.1.0-2]"
            raise Violation(msg)
        length_bytes = header[1:]
        length, multiplier = header[1] & 0x7F, 128
        while length_bytes[-1] & 0x80:
            if len(length_bytes) == 4:
                msg = "a remaining length longer than 4 bytes [MQTT-2.2.3]"
                raise Violation(msg)
            byte = (await self._read_exactly(1))[0]
            length_bytes += bytes([byte])
            length += (byte & 0x7F) * multiplier
            multiplier *= 128
        if length > self._limit:
            msg = f"a packet of {length} bytes, over the limit of {self._limit} [max_packet_size]"
            raise Violation(msg)
        body = await self._read_exactly(length) if length else b""
        check(first, body)
        return bytes([first]) + length_bytes + body


def check(first: int, body: bytes) -> None:
    """Raise ``Violation`` for a packet MQTT 3.1.1 says the server must close the connection on."""
    kind, flags = first >> 4, first & 0x0F
    if kind == PUBLISH:
        _check_publish(flags, body)
        return
    if kind not in FLAGS:
        msg = f"reserved packet type {kind} [MQTT-2.2.1]"
        raise Violation(msg)
    if flags != FLAGS[kind]:
        msg = f"packet type {kind} with flags 0x{flags:x} [MQTT-2.2.2-2]"
        raise Violation(msg)
    if kind == SUBSCRIBE:
        _check_subscribe(body)
    elif kind == UNSUBSCRIBE:
        _check_unsubscribe(body)


def _string(body: bytes, at: int, what: str) -> tuple[str, int]:
    if at + 2 > len(body):
        msg = f"{what} cut short"
        raise Violation(msg)
    (size,) = struct.unpack_from("!H", body, at)
    end = at + 2 + size
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


def _packet_id(body: bytes, at: int, what: str) -> int:
    if at + 2 > len(body) or struct.unpack_from("!H", body, at)[0] == 0:
        msg = f"{what} without a packet id [MQTT-2.3.1-1]"
        raise Violation(msg)
    return at + 2


def _check_publish(flags: int, body: bytes) -> None:
    qos = (flags >> 1) & 0x03
    if qos == 3:
        msg = "a PUBLISH with QoS 3 [MQTT-3.3.1-4]"
        raise Violation(msg)
    if qos == 0 and flags & 0x08:
        msg = "a QoS 0 PUBLISH with DUP set [MQTT-3.3.1-2]"
        raise Violation(msg)
    topic, at = _string(body, 0, "a PUBLISH topic")
    if not topic:
        msg = "a PUBLISH with an empty topic [MQTT-4.7.3-1]"
        raise Violation(msg)
    if "+" in topic or "#" in topic:
        msg = f"a PUBLISH to the wildcard topic {topic!r} [MQTT-3.3.2-2]"
        raise Violation(msg)
    if qos:
        _packet_id(body, at, "a QoS 1 or 2 PUBLISH")


def _check_subscribe(body: bytes) -> None:
    _check_filters(body, "SUBSCRIBE", "[MQTT-3.8.3-3]", with_qos=True)


def _check_unsubscribe(body: bytes) -> None:
    _check_filters(body, "UNSUBSCRIBE", "[MQTT-3.10.3-2]", with_qos=False)


def _check_filters(body: bytes, kind: str, rule: str, *, with_qos: bool) -> None:
    at = _packet_id(body, 0, kind)
    if at == len(body):
        msg = f"a {kind} with no topic filter {rule}"
        raise Violation(msg)
    while at < len(body):
        _, at = _string(body, at, f"a {kind} filter")
        if not with_qos:
            continue
        if at >= len(body):
            msg = f"a {kind} filter without its QoS"
            raise Violation(msg)
        if body[at] > 2:
            msg = f"a {kind} asking QoS byte 0x{body[at]:02x} [MQTT-3.8.3-4]"
            raise Violation(msg)
        at += 1
