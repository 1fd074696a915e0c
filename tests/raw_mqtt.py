"""Hand-built MQTT 3.1.1 packets, for what a well-behaved client library will not send or show."""

from __future__ import annotations

import socket
import struct

from radio.wire import properties as props


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + _remaining_length(len(body)) + body


def connect(
    client_id: str,
    username: str | None = None,
    password: str | None = None,
    keepalive: int = 60,
    *,
    clean: bool = True,
    will: tuple[str, bytes] | None = None,
) -> bytes:
    flags = 0x02 if clean else 0x00
    payload = _string(client_id)
    if will is not None:
        flags |= 0x04
        payload += _string(will[0]) + struct.pack("!H", len(will[1])) + will[1]
    if username is not None:
        flags |= 0x80
        payload += _string(username)
    if password is not None:
        flags |= 0x40
        payload += _string(password)
    body = _string("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + payload
    return packet(0x10, body)


def open_socket(port: int, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


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
    body = _string(topic) + (struct.pack("!H", packet_id) if qos else b"") + payload
    return packet(first_byte if first_byte is not None else 0x30 | qos << 1, body)


def subscribe(topic_filter: str, qos: int = 0, packet_id: int = 1) -> bytes:
    return packet(0x82, struct.pack("!H", packet_id) + _string(topic_filter) + bytes([qos]))


def puback(packet_id: int) -> bytes:
    return packet(0x40, struct.pack("!H", packet_id))


def read_packet(sock: socket.socket) -> tuple[int, bytes]:
    """The next packet's first byte and body; raises EOFError when the broker closed the connection."""
    first = read_exactly(sock, 1)
    if not first:
        raise EOFError
    length, shift = 0, 0
    while True:
        byte = read_exactly(sock, 1)[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return first[0], read_exactly(sock, length)


def published(body: bytes, qos: int) -> tuple[str, bytes]:
    """The topic and payload of a PUBLISH body."""
    (size,) = struct.unpack_from("!H", body)
    topic = body[2 : 2 + size].decode()
    return topic, body[2 + size + (2 if qos else 0) :]


def session(
    port: int, client_id: str, username: str | None, password: str | None, **kwargs: object
) -> socket.socket:
    """A raw connection that sent its CONNECT and got CONNACK 0; fails otherwise."""
    sock = open_socket(port)
    sock.sendall(connect(client_id, username, password, **kwargs))  # type: ignore[arg-type]
    first, body = read_packet(sock)
    assert (first, body[1]) == (0x20, 0), f"CONNACK {first:#x} {body!r}"
    return sock


def connect5(
    client_id: str,
    username: str | None = None,
    password: str | None = None,
    keepalive: int = 60,
    *,
    clean: bool = True,
    will: tuple[str, bytes] | None = None,
    properties: dict[int, object] | None = None,
    will_properties: dict[int, object] | None = None,
) -> bytes:
    """An MQTT 5 CONNECT: as ``connect``, with a property list, and one for the will."""
    flags = 0x02 if clean else 0x00
    payload = _string(client_id)
    if will is not None:
        flags |= 0x04
        payload += props.encode(will_properties or {})
        payload += _string(will[0]) + struct.pack("!H", len(will[1])) + will[1]
    if username is not None:
        flags |= 0x80
        payload += _string(username)
    if password is not None:
        flags |= 0x40
        payload += _string(password)
    head = _string("MQTT") + bytes([5, flags]) + struct.pack("!H", keepalive) + props.encode(properties or {})
    return packet(0x10, head + payload)


def publish5(
    topic: str, payload: bytes, qos: int = 0, packet_id: int = 1, properties: dict[int, object] | None = None
) -> bytes:
    """An MQTT 5 PUBLISH."""
    body = _string(topic) + (struct.pack("!H", packet_id) if qos else b"") + props.encode(properties or {})
    return packet(0x30 | qos << 1, body + payload)


def subscribe5(
    topic_filter: str, options: int = 0, packet_id: int = 1, properties: dict[int, object] | None = None
) -> bytes:
    """An MQTT 5 SUBSCRIBE of one filter with its options byte (QoS in its low bits)."""
    body = struct.pack("!H", packet_id) + props.encode(properties or {}) + _string(topic_filter)
    return packet(0x82, body + bytes([options]))


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
