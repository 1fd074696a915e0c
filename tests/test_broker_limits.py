"""Limits that keep one client from hurting the others, and the metrics that show them at work."""

from __future__ import annotations

import re
import socket

import pytest
import requests
from embedded import embedded_broker
from mqtt_client import Client, connected, listening
from raw_mqtt import connect, packet, read_packet, session, subscribe

from radio.broker.thread import BrokerThread


def start(home, *settings: str) -> BrokerThread:
    home.config.write_text(home.config.read_text() + "[broker]\n" + "\n".join(settings) + "\n")
    return embedded_broker(home).start()


def metric(port: int, name: str, labels: str = "") -> float:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{name}{labels} is not in the metrics"
    return float(match[1])


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
    broker = start(home, "send_buffer = 4096", 'metrics = "127.0.0.1:0"')
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
        finally:
            stalled.close()
        assert (
            metric(broker.broker.metrics_port, "radio_broker_dropped_total", '{reason="slow_subscriber"}') > 0
        )
        assert metric(broker.broker.metrics_port, "radio_broker_published_total") >= 300
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
