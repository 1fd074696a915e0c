"""bench/sink.c, the broker benchmark's subscriber load, against a scripted broker.

A real broker decides itself where TCP splits its packets; the scripted one here cuts every
packet at every kind of boundary (fixed header, remaining length, topic, packet id, payload), so
the sink's reassembly is shown for each, and it sends what no real broker would (QoS 2).
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parent.parent / "bench" / "sink.c"
END = b'{"end":1}'


@pytest.fixture(scope="module")
def sink(tmp_path_factory: pytest.TempPathFactory) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        if os.environ.get("CI"):
            pytest.fail("no C compiler: .ci/run installs gcc", pytrace=False)
        pytest.skip("no C compiler (apt-get install gcc)")
    binary = tmp_path_factory.mktemp("sink") / "sink"
    subprocess.run([compiler, "-O2", "-Wall", "-Wextra", "-Werror", "-o", binary, SOURCE], check=True)
    return binary


def remaining(length: int) -> bytes:
    out = bytearray()
    while True:
        byte, length = length % 128, length // 128
        out.append(byte | (128 if length else 0))
        if not length:
            return bytes(out)


def packet(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + remaining(len(body)) + body


def publish(topic: bytes, payload: bytes, qos: int, packet_id: int = 0) -> bytes:
    ident = struct.pack("!H", packet_id) if qos else b""
    return packet(0x30 | qos << 1, struct.pack("!H", len(topic)) + topic + ident + payload)


def read_packet(conn: socket.socket) -> tuple[int, bytes]:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            assert chunk, "the sink closed the connection"
            data += chunk
        return data

    kind = exactly(1)[0]
    length, shift = 0, 0
    while True:
        byte = exactly(1)[0]
        length |= (byte & 127) << shift
        shift += 7
        if not byte & 128:
            return kind, exactly(length)


def trickle(conn: socket.socket, data: bytes) -> None:
    """Send in pieces of 1, 2, 3, 5, 8... bytes, each as its own segment.

    The pause lets the sink read each piece alone; no event says it has, and a piece read with
    the next one only makes the test easier, never wrong.
    """
    sizes = [1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987]
    at, i = 0, 0
    while at < len(data):
        size = sizes[i % len(sizes)]
        conn.sendall(data[at : at + size])
        at, i = at + size, i + 1
        time.sleep(0.001)


class Broker:
    """A listening socket on port 0 that closes every connection it accepted when done."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(10)
        self.port: int = self.server.getsockname()[1]
        self.conns: list[socket.socket] = []

    def accept(self) -> socket.socket:
        conn, _ = self.server.accept()
        self.conns.append(conn)
        conn.settimeout(10)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        self.server.close()


@pytest.fixture
def broker() -> Iterator[Broker]:
    scripted = Broker()
    yield scripted
    scripted.close()


Start = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def start(sink: Path, broker: Broker, tmp_path: Path) -> Iterator[Start]:
    """Start the sink for (QoS, N[, ROOM]) against the scripted broker; each is stopped after."""
    started: list[subprocess.Popen[bytes]] = []

    def run(qos: int, n: int, *room: int) -> subprocess.Popen[bytes]:
        started.append(
            subprocess.Popen(
                [sink, str(broker.port), "networks/bench", str(qos), str(n), "bench-sub-", tmp_path, END]
                + [str(r) for r in room],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
        return started[-1]

    yield run
    for process in started:
        process.kill()
        process.wait(10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def accept_subscriber(broker: Broker, qos: int) -> tuple[socket.socket, bytes]:
    conn = broker.accept()
    kind, body = read_packet(conn)
    assert kind == 0x10
    assert body[:7] == b"\x00\x04MQTT\x04"  # MQTT 3.1.1
    assert body[7] == 0x02  # clean session, no credentials
    assert body[8:10] == b"\xff\xff"  # the longest keep-alive: no PINGREQ inside a run
    client_id = body[12 : 12 + struct.unpack("!H", body[10:12])[0]]
    conn.sendall(packet(0x20, b"\x00\x00"))
    kind, body = read_packet(conn)
    assert kind == 0x82
    assert body[2:] == struct.pack("!H", 14) + b"networks/bench" + bytes([qos])
    conn.sendall(packet(0x90, body[:2] + bytes([qos])))
    return conn, client_id


def subscribed(
    process: subprocess.Popen[bytes], broker: Broker, qos: int, n: int
) -> dict[bytes, socket.socket]:
    """Accept and subscribe the sink's N connections, by client id, once it says it is ready."""
    conns = {c: s for s, c in (accept_subscriber(broker, qos) for _ in range(n))}
    assert sorted(conns) == [f"bench-sub-{i}".encode() for i in range(n)]
    assert said(process, b"ready\n") == [b"ready\n"]
    return conns


def said(process: subprocess.Popen[bytes], line: bytes, seconds: float = 10) -> list[bytes]:
    """The lines the sink printed up to ``line`` (a report of its arrivals), within ``seconds``.

    Read from the pipe itself, never through a buffered reader: ``select`` then sees every line
    not yet taken.
    """
    assert process.stdout is not None
    deadline = time.monotonic() + seconds
    out = b""
    while line not in out.splitlines(keepends=True):
        ready, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"the sink never said {line!r}, only {out!r}"
        out += os.read(process.stdout.fileno(), 4096)
    return out.splitlines(keepends=True)


def test_the_sink_reassembles_split_packets_stamps_each_and_acknowledges_qos_1(
    start: Start, broker: Broker, tmp_path: Path
) -> None:
    process = start(1, 2, 1024)  # room for 1 KiB each: the 20 KiB sample makes it grow
    conn = subscribed(process, broker, 1, 2)[b"bench-sub-0"]
    big = b'{"t":1.5,"seq":1,"pad":"' + b"x" * 20_000 + b'"}'  # a 3-byte remaining length
    payloads = [b'{"t":1.25,"seq":0}', big, b'{"t":2.0,"seq":2}', END]
    before = time.time()
    trickle(conn, b"".join(publish(b"networks/bench", p, 1, 7 + i) for i, p in enumerate(payloads)))
    acks = [read_packet(conn) for _ in payloads]
    assert acks == [(0x40, struct.pack("!H", 7 + i)) for i in range(len(payloads))]
    reports = said(process, b"arrived 4 1 1\n")  # four PUBLISHes, one subscriber, which got the end
    assert all(r.startswith(b"arrived ") for r in reports)
    out = tmp_path / "sub-0.txt"
    assert out.read_bytes() == b""  # nothing is written while samples arrive
    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 0
    lines = out.read_bytes().splitlines()
    assert [line.partition(b" ")[2] for line in lines] == payloads
    stamps = [float(line.partition(b" ")[0]) for line in lines]
    assert all(before <= s <= time.time() for s in stamps)
    assert stamps == sorted(stamps)
    assert (tmp_path / "sub-1.txt").read_bytes() == b""


def test_the_sink_writes_what_it_holds_on_sigterm_and_drops_a_qos_2_publisher(
    start: Start, broker: Broker, tmp_path: Path
) -> None:
    process = start(0, 2)
    conns = subscribed(process, broker, 0, 2)
    conns[b"bench-sub-1"].sendall(publish(b"networks/bench", b'{"t":3.0,"seq":0}', 0))
    conns[b"bench-sub-0"].sendall(publish(b"networks/bench", b'{"t":3.0,"seq":9}', 2, 1))
    assert conns[b"bench-sub-0"].recv(1) == b""  # QoS 2 is refused: the sink hangs up
    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 0
    assert (tmp_path / "sub-1.txt").read_bytes().split(b" ", 1)[1] == b'{"t":3.0,"seq":0}\n'
    assert process.stderr is not None
    assert b"subscriber 0 closed: QoS 2 PUBLISH (not supported)" in process.stderr.read()


def test_the_sink_says_why_when_the_broker_refuses_a_subscriber(start: Start, broker: Broker) -> None:
    process = start(1, 1)
    conn = broker.accept()
    assert read_packet(conn)[0] == 0x10
    conn.sendall(packet(0x20, b"\x00\x05"))  # not authorised
    assert process.wait(10) == 1
    assert process.stderr is not None
    assert b"before its subscription held: CONNACK refused" in process.stderr.read()
    assert process.stdout is not None
    assert process.stdout.read() == b""  # never "ready"
