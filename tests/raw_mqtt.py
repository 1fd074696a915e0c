"""MQTT 3.1.1 on a plain socket, for what a well-behaved client library will not send or show.

The packets are ``radio.wire``'s, the very encoders the servers use; this adds the socket
handling and the shapes tests need (a PUBLISH with any first byte, a SUBSCRIBE of one filter).
"""

from __future__ import annotations

import socket
import struct

from radio import wire
from radio.wire import mqtt5, packet
from radio.wire import properties as props

__all__ = [
    "closed_by_peer",
    "connect",
    "open_socket",
    "packet",
    "puback",
    "publish",
    "published",
    "read_exactly",
    "read_packet",
    "read_websocket",
    "session",
    "subscribe",
    "websocket_frame",
    "websocket_upgrade",
]


connect = wire.connect
"""An MQTT 3.1.1 CONNECT (``radio.wire.connect``)."""


def open_socket(port: int, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


UPGRADE = (
    b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Protocol: mqtt\r\n\r\n"
)
"""A WebSocket upgrade asking for MQTT, without compression: frames carry the packets as they are."""


def websocket_upgrade(sock: socket.socket) -> None:
    """Upgrade the socket (plain or TLS) to MQTT over WebSocket, on this thread alone.

    Reads the server's answer up to its blank line and no further; raises EOFError if it closed.
    """
    sock.sendall(UPGRADE)
    answer = b""
    while not answer.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        if not byte:
            raise EOFError
        answer += byte
    assert answer.startswith(b"HTTP/1.1 101 "), answer


def websocket_frame(data: bytes) -> bytes:
    """One binary frame as a client sends it: masked (a mask of zeros leaves the bytes as they are)."""
    size = len(data)
    length = bytes((0x80 | size,)) if size < 126 else bytes((0x80 | 126,)) + size.to_bytes(2, "big")
    return b"\x82" + length + b"\x00\x00\x00\x00" + data


def read_websocket(sock: socket.socket) -> bytes:
    """The payload of the server's next frame (unmasked, as a server's are)."""
    head = read_exactly(sock, 2)
    if len(head) < 2:
        raise EOFError
    size = head[1] & 0x7F
    if size == 126:
        size = int.from_bytes(read_exactly(sock, 2), "big")
    elif size == 127:
        size = int.from_bytes(read_exactly(sock, 8), "big")
    return read_exactly(sock, size)


def read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the broker closed the connection (EOF or reset), waiting up to the socket timeout."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def publish(
    topic: str, payload: bytes, qos: int = 0, packet_id: int = 1, *, first_byte: int | None = None
) -> bytes:
    """A PUBLISH; ``first_byte`` replaces its type and flags (the body stays that of ``qos``)."""
    encoded = wire.publish(topic, payload, qos, packet_id)
    if first_byte is None:
        return encoded
    return bytes((first_byte,)) + encoded[1:]


def subscribe(topic_filter: str, qos: int = 0, packet_id: int = 1) -> bytes:
    return wire.subscribe(packet_id, [(topic_filter, qos)])


def puback(packet_id: int) -> bytes:
    return wire.ack(wire.PUBACK, packet_id)


def read_packet(sock: socket.socket) -> tuple[int, bytes]:
    """The next packet's first byte and body; raises EOFError when the broker closed the connection.

    Reads no byte past the packet: what follows stays in the socket for the test to read.
    """
    framer = wire.Framer()
    while True:
        wanted = framer.missing
        data = read_exactly(sock, wanted)
        if len(data) < wanted:
            raise EOFError
        if packets := framer.feed(data):
            return packets[0]


def published(body: bytes, qos: int) -> tuple[str, bytes]:
    """The topic and payload of a PUBLISH body."""
    topic, _, _, payload = wire.decode_publish(0x30 | qos << 1, body)
    return topic, payload


def session(
    port: int, client_id: str, username: str | None, password: str | None, **kwargs: object
) -> socket.socket:
    """A raw connection that sent its CONNECT and got CONNACK 0; fails otherwise."""
    sock = open_socket(port)
    sock.sendall(connect(client_id, username, password, **kwargs))  # type: ignore[arg-type]
    first, body = read_packet(sock)
    assert (first, body[1]) == (0x20, 0), f"CONNACK {first:#x} {body!r}"
    return sock


connect5 = mqtt5.connect
"""An MQTT 5 CONNECT: as ``connect``, with a property list, and one for the will."""


def publish5(
    topic: str, payload: bytes, qos: int = 0, packet_id: int = 1, properties: dict[int, object] | None = None
) -> bytes:
    return mqtt5.publish(topic, payload, qos, packet_id, properties)


def subscribe5(
    topic_filter: str, options: int = 0, packet_id: int = 1, properties: dict[int, object] | None = None
) -> bytes:
    return mqtt5.subscribe(topic_filter, options, packet_id, properties)


def session5(
    port: int, client_id: str, username: str | None, password: str | None, **kwargs: object
) -> tuple[socket.socket, dict[int, object]]:
    """A raw MQTT 5 connection that got CONNACK 0, and the CONNACK's properties; fails otherwise."""
    sock = open_socket(port)
    sock.sendall(connect5(client_id, username, password, **kwargs))  # type: ignore[arg-type]
    first, body = read_packet(sock)
    assert (first, body[1]) == (0x20, 0), f"CONNACK {first:#x} {body!r}"
    found, _ = props.decode(body, 2)
    return sock, found


def reason(body: bytes, at: int = 2) -> tuple[int, str | None]:
    """The reason code at ``at`` of an MQTT 5 acknowledgement or DISCONNECT, and its reason string."""
    if len(body) <= at:
        return 0, None
    if len(body) == at + 1:
        return body[at], None
    found, _ = props.decode(body, at + 1)
    return body[at], found.get(props.REASON_STRING)


def published5(body: bytes, qos: int) -> tuple[str, dict[int, object], bytes]:
    """The topic, properties and payload of an MQTT 5 PUBLISH body."""
    (size,) = struct.unpack_from("!H", body)
    topic = body[2 : 2 + size].decode()
    found, at = props.decode(body, 2 + size + (2 if qos else 0))
    return topic, found, body[at:]
