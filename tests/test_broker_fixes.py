"""Each fix in broker/fixes/ against stock amqtt 0.12.1: the defect shows on stock, not on Radio's broker.

The stock broker runs with Radio's auth and ACL plugins, so the only difference is the fixes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import uuid
from importlib.metadata import version

import pytest
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from embedded import embedded_broker
from mqtt_client import Client
from raw_mqtt import closed_by_peer, open_socket, read_exactly
from raw_mqtt import connect as raw_connect

from radio.broker.plugins import AMQTT_VERSION


def test_the_installed_amqtt_is_the_one_the_fixes_are_written_for():
    assert version("amqtt") == AMQTT_VERSION


# Stock amqtt leaves sockets for the garbage collector, which may find them during any later test
# of this module: the warnings are ignored here (each fix asserts the behaviour itself) and every
# leftover is collected before the module ends, so that no other module inherits them.
pytestmark = [
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.usefixtures("collect_stock_leftovers"),
]


def test_retained_samples_do_not_leak_to_a_connecting_client(any_broker, home):
    """Stock pushes other clients' retained matches on CONNECT, unchecked: reader_a would read B."""
    broker, fixed = any_broker
    port = broker.mqtt_port
    clients = []

    def client(key):
        c = Client("tcp", port, key, home.secrets[key])
        clients.append(c)
        assert c.connect() == 0
        return c

    try:
        admin = client("admin")
        admin.publish("networks/B", b'{"private": "B"}', qos=1, retain=True)
        admin.publish("networks/A", b'{"sample": "A"}', qos=1, retain=True)
        reader_b = client("reader_b")
        assert reader_b.subscribe("networks/B") == 0
        assert reader_b.expect(1)[0].payload == b'{"private": "B"}'

        reader_a = client("reader_a")
        assert reader_a.subscribe("networks/A") == 0
        # Whatever stock pushed at CONNECT came before the retained A that answers the SUBSCRIBE.
        got = []
        while not got or got[-1].topic != "networks/A":
            got.extend(reader_a.expect(1))
        leaked = [m.topic for m in got if m.topic != "networks/A"]
        assert leaked == ([] if fixed else ["networks/B"])
    finally:
        for c in clients:
            c.close()


def test_a_refused_connect_gets_return_code_5_and_the_socket_is_closed(broker):
    for username, password in (("gen", "wrong"), ("nobody", "x"), ("gen", None)):
        with open_socket(broker.mqtt_port) as sock:
            sock.sendall(raw_connect("raw-client", username, password))
            assert read_exactly(sock, 4) == bytes([0x20, 0x02, 0x00, 0x05])
            assert closed_by_peer(sock)


def test_a_client_still_connecting_at_shutdown_gets_its_socket_closed(any_broker):
    """Half a CONNECT when the broker stops: its socket is closed before the stop returns.

    Radio's broker closes it itself. Stock amqtt's shutdown leaves it open, to be collected after
    its loop is gone (a ResourceWarning wherever that happens): its runner closes what it leaves
    while the loop still runs, so stock, run beside Radio's broker, leaves nothing behind either.
    """
    broker, _ = any_broker
    with open_socket(broker.mqtt_port, timeout=2) as sock:
        sock.sendall(b"\x10\x04\x00\x02MQ")  # the start of a CONNECT, never finished
        broker.stop()
        assert closed_by_peer(sock)


def test_delivery_is_at_the_lower_of_publish_and_granted_qos(any_broker, home):
    """MQTT-3.8.4-6: a QoS 0 publish reaches a QoS 1 subscriber at QoS 0 (stock: at QoS 1)."""
    broker, fixed = any_broker
    reader = Client("tcp", broker.mqtt_port, "reader_a", home.secrets["reader_a"])
    gen = Client("tcp", broker.mqtt_port, "gen", home.secrets["gen"])
    try:
        assert reader.connect() == 0
        assert gen.connect() == 0
        assert reader.subscribe("networks/A", qos=1) == 1
        gen.publish("networks/A", b'{"qos": 0}', qos=0)
        gen.publish("networks/A", b'{"qos": 1}', qos=1)
        assert [m.qos for m in reader.expect(2)] == ([0, 1] if fixed else [1, 1])
    finally:
        gen.close()
        reader.close()


@contextlib.contextmanager
def churning(port: int, threads: int):
    """Anonymous clients connecting, subscribing to a filter of their own, and leaving, non-stop."""
    stop = threading.Event()

    def churn():
        while not stop.is_set():
            c = Client("tcp", port)
            if c.connect() == 0:
                c.subscribe(f"networks/pub/{uuid.uuid4().hex}")
            c.close()

    churners = [threading.Thread(target=churn) for _ in range(threads)]
    for t in churners:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in churners:
            t.join()


@pytest.mark.slow  # churns subscribers for seconds on both brokers
def test_fan_out_loses_nothing_while_subscribers_come_and_go(any_broker, home):
    """Defect 4 (docs/broker.md): subscribers churning during fan-out. Stock iterates the live subscription table across
    the awaits of each read check: a filter added or removed meanwhile raises "dictionary changed
    size during iteration" and the message is lost for every subscriber not yet served.

    Five filters matching networks/A are listed before the steady subscriber's, so each message
    awaits five read checks before reaching it; churners add and remove filters of their own.
    """
    broker, fixed = any_broker
    decoy = Client("tcp", broker.mqtt_port, "admin", home.secrets["admin"])
    steady = Client("tcp", broker.mqtt_port, "reader_a", home.secrets["reader_a"])
    gen = Client("tcp", broker.mqtt_port, "gen", home.secrets["gen"])
    for client in (decoy, steady, gen):
        assert client.connect() == 0
    for topic_filter in ("#", "networks/#", "networks/+", "+/A", "+/+"):
        assert decoy.subscribe(topic_filter) == 0
    assert steady.subscribe("networks/A") == 0
    try:
        with churning(broker.mqtt_port, threads=4):
            for n in range(1000):
                gen.publish("networks/A", json.dumps({"n": n}).encode())
            gen.publish("networks/A", b'{"n": "last"}', qos=1)
        received = []
        while not received or received[-1] != "last":
            received.append(json.loads(steady.expect(1, timeout=30)[0].payload)["n"])
    finally:
        for client in (gen, steady, decoy):
            client.close()
    lost = 1000 - len(received[:-1])
    if fixed:
        assert received[:-1] == list(range(1000))
    else:
        assert lost > 0


def test_a_handler_that_never_stops_does_not_hang_the_broker(home, mocker):
    """The fault (amqtt's reader never signalling that it stopped) is a race; it is injected here."""
    running = embedded_broker(home)
    running.start()
    client = Client("tcp", running.mqtt_port, "gen", home.secrets["gen"])
    assert client.connect() == 0

    async def never_stops(self):
        await asyncio.Event().wait()

    mocker.patch.object(BrokerProtocolHandler, "stop", never_stops)
    try:
        running.stop()  # BrokerThread gives up after 30 s: a hang fails the test
        assert client.disconnected.wait(10)
    finally:
        client.close()
