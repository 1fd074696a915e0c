"""A load client for brokers: many MQTT connections in one asyncio process, large reads, no library.

paho or mosquitto_sub would spend more CPU per message than the broker under test; this client
frames packets with ``radio.wire`` (the servers' own encoders and framer), counts PUBLISHes,
acknowledges QoS 1, and reports its own CPU time next to the broker's. TCP, or WebSocket through
the ``websockets`` package, each in clear or over TLS (``mqtts``, ``wss``: the CA to trust is in
``TLS_CA`` or given to ``open_connection``).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import websockets

from radio import wire

KEEP_ALIVE = 300
"""Seconds of silence a load client's CONNECT allows: no PINGREQ is needed during a run."""


def connect_packet(
    client_id: str, username: str | None = None, password: str | None = None, *, clean: bool = True
) -> bytes:
    return wire.connect(client_id, username, password, KEEP_ALIVE, clean=clean)


@dataclass
class Connection:
    """One MQTT connection: send bytes, and a packet handler fed from a reader task."""

    send: Callable[[bytes], Awaitable[None]]
    close: Callable[[], Awaitable[None]]
    packets: asyncio.Queue[tuple[int, bytes]] = field(default_factory=asyncio.Queue)


def tls_context(ca: str | None = None) -> ssl.SSLContext:
    """What a TLS client verifies the broker with: the CA file given, else ``$TLS_CA``."""
    return ssl.create_default_context(cafile=ca or os.environ.get("TLS_CA"))


async def open_connection(
    transport: str,
    port: int,
    on_packet: Callable[[int, bytes], None] | None = None,
    tls: ssl.SSLContext | None = None,
) -> Connection:
    """Connect over ``tcp``, ``ws``, ``mqtts`` or ``wss``; PUBLISHes to ``on_packet``, else queued."""
    framer = wire.Framer()
    queue: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()

    def received(data: bytes) -> None:
        for packet in framer.feed(data):
            if on_packet is not None and packet[0] >> 4 == 3:  # PUBLISH
                on_packet(*packet)
            else:
                queue.put_nowait(packet)

    if transport in {"mqtts", "wss"} and tls is None:
        tls = tls_context()
    if transport in {"ws", "wss"}:
        return await _open_ws(port, received, queue, tls)
    return await _open_tcp(port, received, queue, tls)


async def _open_tcp(
    port: int,
    received: Callable[[bytes], None],
    queue: asyncio.Queue[tuple[int, bytes]],
    tls: ssl.SSLContext | None = None,
) -> Connection:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20, ssl=tls)

    async def send(data: bytes) -> None:
        writer.write(data)
        await writer.drain()

    async def close() -> None:
        task.cancel()
        writer.close()

    async def read() -> None:
        while data := await reader.read(1 << 16):
            received(data)

    task = asyncio.ensure_future(read())
    return Connection(send, close, queue)


async def _open_ws(
    port: int,
    received: Callable[[bytes], None],
    queue: asyncio.Queue[tuple[int, bytes]],
    tls: ssl.SSLContext | None = None,
) -> Connection:
    ws = await websockets.connect(
        f"{'wss' if tls else 'ws'}://127.0.0.1:{port}/mqtt",
        subprotocols=[websockets.Subprotocol("mqtt")],
        max_size=None,
        ssl=tls,
    )

    async def close() -> None:
        task.cancel()
        await ws.close()

    async def read() -> None:
        async for message in ws:
            received(message if isinstance(message, bytes) else message.encode())

    task = asyncio.ensure_future(read())
    return Connection(ws.send, close, queue)


async def handshake(
    connection: Connection, client_id: str, username: str | None = None, password: str | None = None
) -> None:
    """CONNECT and wait for CONNACK 0."""
    await connection.send(connect_packet(client_id, username, password))
    first, body = await asyncio.wait_for(connection.packets.get(), 30)
    if first != 0x20 or body[1] != 0:
        msg = f"CONNACK refused: {body!r}"
        raise RuntimeError(msg)


async def subscribe(connection: Connection, topic_filter: str, qos: int) -> None:
    """SUBSCRIBE and wait for the SUBACK granting it."""
    await connection.send(wire.subscribe(1, [(topic_filter, qos)]))
    first, body = await asyncio.wait_for(connection.packets.get(), 30)
    if first != 0x90 or body[2] not in (0, 1, 2):
        msg = f"SUBSCRIBE refused: {body!r}"
        raise RuntimeError(msg)


def now() -> float:
    return time.perf_counter()


async def open_listeners(
    port: int,
    count: int,
    on_publish: Callable[[int], Callable[[int, bytes], None]],
    *,
    transport: str = "tcp",
    topic_filter: str = "networks/bench",
    qos: int = 0,
    batch: int = 100,
    first_index: int = 0,
) -> list[Connection]:
    """``count`` anonymous subscribers, ``batch`` at a time; ``on_publish(i)`` handles the i-th's."""
    connections: list[Connection] = []
    for start in range(first_index, first_index + count, batch):
        indexes = range(start, min(start + batch, first_index + count))
        opened = await asyncio.gather(*(open_connection(transport, port, on_publish(i)) for i in indexes))
        await asyncio.gather(*(handshake(c, f"listener-{i}") for c, i in zip(opened, indexes, strict=True)))
        await asyncio.gather(*(subscribe(c, topic_filter, qos) for c in opened))
        connections.extend(opened)
    return connections
