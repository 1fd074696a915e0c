"""Limits that keep one client from hurting the others, and the metrics that show them at work."""

from __future__ import annotations

import functools
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest
import requests
from conftest import require_mosquitto
from embedded import embedded_broker
from mqtt_client import Client, connected, listening
from polling import until
from raw_mqtt import (
    connect,
    packet,
    puback,
    publish,
    read_packet,
    read_websocket,
    session,
    subscribe,
    websocket_frame,
    websocket_upgrade,
)

from radio.broker.thread import BrokerThread
from radio.wire import Framer


def start(home, *settings: str) -> BrokerThread:
    home.config.write_text(home.config.read_text() + "[broker]\n" + "\n".join(settings) + "\n")
    return embedded_broker(home).start()


def metric(port: int, name: str, labels: str = "") -> float:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{name}{labels} is not in the metrics"
    return float(match[1])


PINGREQ = packet(0xC0, b"")
PINGRESP = 0xD0


def before_pingresp(sock: socket.socket) -> list[int]:
    """The first bytes of what the broker sends a client before it answers a PINGREQ sent now."""
    sock.sendall(PINGREQ)
    firsts = []
    while (first := read_packet(sock)[0]) != PINGRESP:
        firsts.append(first)
    return firsts


def test_a_client_gets_no_more_filters_than_max_filters(home, caplog):
    broker = start(home, "max_filters = 5")
    try:
        hog = session(broker.mqtt_port, "hog", None, None)
        try:
            codes = []
            for n in range(8):
                hog.sendall(subscribe(f"networks/+/level{n}/#", qos=0, packet_id=n + 1))
                codes.append(read_packet(hog)[1][2])
            assert codes == [0, 0, 0, 0, 0, 0x80, 0x80, 0x80]
            hog.sendall(subscribe("networks/+/level0/#", qos=1, packet_id=99))  # one it holds: granted
            assert read_packet(hog)[1][2] == 1
        finally:
            hog.close()
        assert sum("max_filters" in r.getMessage() for r in caplog.records) == 3
    finally:
        broker.stop()


def test_a_subscriber_that_does_not_read_misses_qos0_samples_and_slows_nobody(home):
    broker = start(home, "send_buffer = 4096", "send_buffer_max = 65536", 'metrics = "127.0.0.1:0"')
    try:
        port = broker.mqtt_port
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", port))
        stalled.sendall(connect("stalled"))
        assert read_packet(stalled)[0] == 0x20
        stalled.sendall(subscribe("networks/pub", qos=0))
        assert read_packet(stalled)[0] == 0x90  # and from now on it reads nothing
        try:
            with (
                listening(port, None, None, "networks/pub") as reader,
                connected(port, "admin", home.secrets["admin"]) as admin,
            ):
                payload = b'{"pad": "' + b"x" * 60_000 + b'"}'  # 18 MB in all: more than the kernel buffers
                for _ in range(300):
                    admin.publish("networks/pub", payload, qos=1)
                assert len(reader.expect(300)) == 300  # everyone else gets every sample
                metrics = broker.broker.metrics_port
                assert metric(metrics, "radio_broker_dropped_total", '{reason="slow_subscriber"}') > 0
                assert metric(metrics, "radio_broker_published_total") >= 300
                # What waits for it stops at its bound (plus the one sample that crossed it), not at 18 MB.
                assert metric(metrics, "radio_broker_send_buffered_bytes") <= 65536 + len(payload) + 100
                assert metric(metrics, "radio_broker_send_buffer_granted_bytes") <= 65536 - 4096
        finally:
            stalled.close()
    finally:
        broker.stop()


@pytest.mark.parametrize("qos", [1, 2])
def test_qos1_and_2_samples_for_a_slow_subscriber_wait_in_its_queue(home, qos):
    broker = start(home, "send_buffer = 4096", "max_inflight = 10")
    try:
        port = broker.mqtt_port
        slow = session(port, "slow", "reader_a", home.secrets["reader_a"], clean=False)
        slow.sendall(subscribe("networks/A", qos=qos))
        assert read_packet(slow)[0] == 0x90
        gen = Client("tcp", port, "gen", home.secrets["gen"])
        try:
            assert gen.connect() == 0
            for n in range(40):
                gen.publish("networks/A", b'{"n": %d}' % n, qos=qos)
        finally:
            gen.close()
        got, released = [], 0
        while len(got) < 40 or released < len(got) * (qos == 2):
            first, body = read_packet(slow)  # only max_inflight at a time: each ack lets the next go
            if first == 0x62:  # PUBREL (QoS 2)
                slow.sendall(packet(0x70, body))
                released += 1
                continue
            assert first >> 4 == 3
            pid = body[2 + body[1] : 4 + body[1]]
            got.append(body[4 + body[1] :])
            slow.sendall(packet(0x40 if qos == 1 else 0x50, pid))
        assert got == [b'{"n": %d}' % n for n in range(40)]  # every one, in order
        slow.close()
    finally:
        broker.stop()


class Reader(threading.Thread):
    """A QoS 0 subscriber that reads steadily, as fast as it can, through a small socket buffer."""

    def __init__(self, port: int, name: str, silence: float, pause: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.pause = pause
        """Once, after its first thousand samples, the reader takes nothing for this long: as a
        reader on a busy core does when it is descheduled."""
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)  # the burst waits in the broker
        self.sock.settimeout(silence)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(
            packet(0x10, b"\x00\x04MQTT\x04\x02\x00\x3c" + len(name).to_bytes(2, "big") + name.encode())
        )
        assert read_packet(self.sock)[0] == 0x20
        self.sock.sendall(subscribe("networks/pub", qos=0))
        assert read_packet(self.sock)[0] == 0x90
        self.count = 0
        self.expected = 0

    def run(self) -> None:
        framer = Framer(limit=1 << 20)
        try:
            while self.count < self.expected:
                data = self.sock.recv(65536)
                if not data:
                    return
                before, self.count = (
                    self.count,
                    self.count + sum(first >> 4 == 3 for first, _ in framer.feed(data)),
                )
                if self.pause and before < 1000 <= self.count:
                    time.sleep(self.pause)  # the pause is what is tested: a reader that stops a while
        except TimeoutError:
            return  # nothing came for a while: what arrived is counted
        finally:
            self.sock.close()


def burst(
    home, port: int, subscribers: int, silence: float, samples: int = 30_000, pause: float = 0.0
) -> list[int]:
    """Publish ``samples`` QoS 0 samples in one burst; how many each steady reader received (it
    stops reading after ``silence`` seconds without a byte)."""
    readers = [Reader(port, f"reader-{n}", silence, pause) for n in range(subscribers)]
    data = b"".join(
        publish("networks/pub", b'{"n": %d, "pad": "%s"}' % (n, b"x" * 200)) for n in range(samples)
    )
    for reader in readers:
        reader.expected = samples
        reader.start()
    admin = session(port, "burst", "admin", home.secrets["admin"])
    try:
        admin.sendall(data)  # about 7 MB for each subscriber, as fast as the broker takes it
        for reader in readers:
            reader.join()
    finally:
        admin.close()
    return [r.count for r in readers]


def test_a_burst_reaches_every_subscriber_that_keeps_reading(home):
    """30,000 QoS 0 samples in one burst to 10 subscribers: their room grows, none is dropped."""
    broker = start(home, 'metrics = "127.0.0.1:0"')
    try:
        assert burst(home, broker.mqtt_port, 10, silence=30) == [30_000] * 10
        port = broker.broker.metrics_port
        assert metric(port, "radio_broker_dropped_total", '{reason="slow_subscriber"}') == 0
        assert metric(port, "radio_broker_send_buffer_granted_bytes") <= 256 << 20  # send_buffer_total
    finally:
        broker.stop()


def test_a_burst_reaches_subscribers_that_stop_reading_for_a_moment(home):
    """A reader that takes nothing for a second in the middle of a burst (descheduled on a busy
    core) still reads on: its room keeps growing meanwhile, and it loses nothing."""
    broker = start(home, 'metrics = "127.0.0.1:0"')
    try:
        assert burst(home, broker.mqtt_port, 10, silence=30, pause=1.0) == [30_000] * 10
        assert (
            metric(broker.broker.metrics_port, "radio_broker_dropped_total", '{reason="slow_subscriber"}')
            == 0
        )
    finally:
        broker.stop()


@pytest.mark.slow  # seconds of waiting: the fast tier stays under two minutes
def test_the_room_granted_for_bursts_is_bounded_in_all(home):
    """With nothing to grant beyond send_buffer, the same burst overflows it: dropped and counted."""
    broker = start(home, "send_buffer_total = 0", 'metrics = "127.0.0.1:0"')
    try:
        assert all(count < 30_000 for count in burst(home, broker.mqtt_port, 2, silence=3))
        port = broker.broker.metrics_port
        assert metric(port, "radio_broker_dropped_total", '{reason="slow_subscriber"}') > 0
        assert metric(port, "radio_broker_send_buffer_refused_total", '{limit="send_buffer_total"}') > 0
        assert metric(port, "radio_broker_send_buffer_granted_bytes") == 0
    finally:
        broker.stop()


@pytest.mark.slow
@pytest.mark.parametrize("door", ["tcp", "websocket"])
def test_a_client_closed_while_it_reads_nothing_is_dropped_with_what_waits_for_it(home, door):
    """A socket closes once what waits for it is written, which a client that reads nothing never
    lets happen: past CLOSE_TIMEOUT the broker drops it rather than hold the socket and its bytes,
    uncounted, for as long as the client keeps its end open."""
    broker = start(home)
    stalled = socket.socket()
    try:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.settimeout(10)
        if door == "tcp":
            stalled.connect(("127.0.0.1", broker.mqtt_port))
            send, read = stalled.sendall, lambda: read_packet(stalled)[0]
        else:
            stalled.connect(("127.0.0.1", broker.ws_port))
            websocket_upgrade(stalled)
            send, read = (
                (lambda data: stalled.sendall(websocket_frame(data))),
                lambda: read_websocket(stalled)[0],
            )
        send(connect("stalled", keep_alive=1))
        assert read() == 0x20
        send(subscribe("networks/pub", qos=0))
        assert read() == 0x90  # from now on it reads and sends nothing
        with connected(broker.mqtt_port, "admin", home.secrets["admin"]) as admin:
            for n in range(300):  # 9 MB: more than the kernel's buffers take
                admin.publish("networks/pub", b'{"n": %d, "pad": "%s"}' % (n, b"x" * 30_000))
        # Closed past its keep-alive (1.5 s), with more waiting for it than the kernel holds; the
        # broker runs in this process, so its sockets are this process's.
        client = stalled.getsockname()

        def dropped() -> bool:
            return all(held.raddr != client for held in psutil.Process().net_connections("tcp"))

        assert until(dropped, 30, every=0.2)
    finally:
        stalled.close()
        broker.stop()


@pytest.mark.slow
def test_room_granted_to_clients_that_read_nothing_goes_back_once_they_stall(home):
    """The kernel's buffers take a burst's first megabytes for a client that reads nothing, which
    looks like keeping up: its room grows. Once it has taken nothing for STALL seconds it is
    closed, and the room it held goes back to the clients that read."""
    broker = start(home, 'metrics = "127.0.0.1:0"')
    port = broker.broker.metrics_port
    stalled = []
    try:
        for n in range(3):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", broker.mqtt_port))
            sock.sendall(connect(f"stalled-{n}"))
            assert read_packet(sock)[0] == 0x20
            sock.sendall(subscribe("networks/pub", qos=0))
            assert read_packet(sock)[0] == 0x90  # and from now on it reads nothing
            stalled.append(sock)
        assert burst(home, port=broker.mqtt_port, subscribers=2, silence=30) == [30_000] * 2
        assert metric(port, "radio_broker_send_buffer_granted_bytes") > 0  # held by the stalled

        with connected(broker.mqtt_port, "admin", home.secrets["admin"]) as admin:

            def given_back() -> bool:
                admin.publish("networks/pub", b'{"n": 0}')  # a delivery finds each stalled client
                return metric(port, "radio_broker_send_buffer_granted_bytes") == 0

            assert until(given_back, 30, every=0.5)
    finally:
        for sock in stalled:
            sock.close()
        broker.stop()


def test_retained_samples_a_subscribe_brings_wait_for_the_window_like_live_ones(home):
    """Each SUBSCRIBE of a filter brings its retained samples again (MQTT-3.3.1-6).

    Held to the window of unacknowledged samples, a client re-subscribing without acknowledging
    makes the broker hold no more than any slow client, and never runs it out of packet ids.
    """
    broker = start(home, "max_inflight = 10")
    try:
        port = broker.mqtt_port
        with connected(port, "admin", home.secrets["admin"]) as admin:
            admin.publish("networks/pub", b'{"n": 1}', qos=1, retain=True)
        hog = session(port, "hog", None, None)
        try:
            for n in range(1, 31):
                hog.sendall(subscribe("networks/pub", qos=1, packet_id=n))
            firsts = before_pingresp(hog)
            assert firsts.count(0x90) == 30  # a SUBACK each
            assert firsts.count(0x33) == 10  # QoS 1, retained: the window's worth, the rest wait
            hog.sendall(puback(1))
            assert before_pingresp(hog) == [0x33]  # one acknowledged: one more goes
        finally:
            hog.close()
    finally:
        broker.stop()


def test_retained_samples_for_a_client_that_does_not_read_are_held_to_its_room(home):
    """At QoS 0 they are dropped past the client's room, as live samples are, and counted; the
    client's next SUBSCRIBEs wait for it to read what it was sent (``Connection.spend``).

    Sent regardless, 100 SUBSCRIBEs (2 KB) made the broker hold 60 MB for a client that reads nothing.
    """
    broker = start(home, "send_buffer = 4096", "send_buffer_max = 8192", 'metrics = "127.0.0.1:0"')
    try:
        port = broker.mqtt_port
        with connected(port, "admin", home.secrets["admin"]) as admin:
            for n in range(20):
                admin.publish(f"networks/pub/{n}", b'{"pad": "%s"}' % (b"x" * 30_000), qos=1, retain=True)
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", port))
        try:
            stalled.sendall(connect("stalled"))
            assert read_packet(stalled)[0] == 0x20  # and from now on it reads nothing
            for n in range(1, 100):
                stalled.sendall(subscribe("networks/pub/#", qos=0, packet_id=n))
            stalled.sendall(subscribe("networks/+/#", qos=0, packet_id=100))  # the same samples, last

            async def waiting() -> tuple[int, list[str]]:
                """Bytes waiting for the stalled client, and the filters it holds so far."""
                for connection in broker.broker.radio.connections:
                    session = connection.session
                    if session is not None and session.client_id == "stalled":
                        return connection.waiting, sorted(session.subscriptions)
                return 0, []

            def dropped() -> float:
                labels = '{reason="slow_subscriber"}'
                return metric(broker.broker.metrics_port, "radio_broker_dropped_total", labels)

            assert until(lambda: dropped() > 0)
            with connected(port) as other:  # a round trip: the broker has had its turns since
                assert other.subscribe("networks/pub/0") == 0
            left, held = broker.call(waiting)
            assert left < 64 * 1024, f"{left:,} bytes wait for a client that reads nothing"
            assert held == ["networks/pub/#"]  # its last SUBSCRIBE waits for it to read
        finally:
            stalled.close()
    finally:
        broker.stop()


SMALL_SOFT_LIMIT = 256
"""A soft limit on open files far below the default ``anonymous_max_connections_per_address``."""


@pytest.mark.parametrize("engine", ["embedded", pytest.param("mosquitto", marks=pytest.mark.mosquitto)])
@pytest.mark.skipif(
    resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 4 * SMALL_SOFT_LIMIT,
    reason="a hard limit too low to raise to",
)
def test_one_address_holding_the_open_files_a_process_starts_with_leaves_keys_a_way_in(home, engine):
    """`radio broker` started under a soft limit on open files (systemd's and a shell's default is
    1,024) raises it to the hard one, for its Mosquitto too: anonymous clients of one address
    holding more connections than that soft limit leave a key room to connect."""
    if engine == "mosquitto":
        require_mosquitto()
    command = [sys.executable, "-m", "radio", "broker", "--engine", engine, "--config", str(home.config)]
    runner = subprocess.Popen(
        [*command, "--mqtt", "127.0.0.1:0", "--ws", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        preexec_fn=functools.partial(  # noqa: PLW1509 - the child's own limit, set before it runs Python
            resource.setrlimit,
            resource.RLIMIT_NOFILE,
            (SMALL_SOFT_LIMIT, resource.getrlimit(resource.RLIMIT_NOFILE)[1]),
        ),
    )
    anonymous: list[socket.socket] = []
    try:
        assert runner.stdout is not None
        port = next(
            int(m[1]) for line in runner.stdout if (m := re.search(r"mqtt://127\.0\.0\.1:(\d+)", line))
        )
        for n in range(SMALL_SOFT_LIMIT + 50):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            anonymous.append(sock)
            sock.sendall(connect(f"crowd-{n}", keep_alive=600))
            assert read_packet(sock)[0] == 0x20  # answered: the broker holds it before the next comes
        key = socket.create_connection(("127.0.0.1", port), timeout=10)
        anonymous.append(key)
        key.sendall(connect("the-key", "reader_a", home.secrets["reader_a"]))
        kind, body = read_packet(key)
        assert (kind, body[1:2]) == (0x20, b"\x00")
    finally:
        for sock in anonymous:
            sock.close()
        runner.send_signal(signal.SIGINT)
        runner.communicate(timeout=30)
