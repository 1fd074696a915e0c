"""MQTT 5 on the embedded broker, beside MQTT 3.1.1: the same samples, plus what MQTT 5 adds.

Real broker on free ports, paho clients speaking MQTT 5 and 3.1.1, mosquitto_pub and
mosquitto_sub with ``-V 5``, and raw packets for what paho does not show (topic aliases the
server sets, the receive maximum's window).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Home
from mqtt_client import NOT_AUTHORIZED, Client, Message
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from polling import until
from raw_mqtt import (
    closed_by_peer,
    connect5,
    open_socket,
    puback,
    publish5,
    published5,
    read_packet,
    session5,
    subscribe5,
)
from test_safety import set_rights
from test_tls import make_certs, tls_broker, use_tls

from radio.broker.thread import BrokerThread
from radio.config import Address
from radio.registry import LiveRegistry
from radio.tls import client_context
from radio.wire import properties as props
from radio.wire.properties import encode_varint

PINGREQ = bytes((0xC0, 0))
PINGRESP = 0xD0


def client(broker: BrokerThread, home: Home, key: str | None, protocol: int, **kwargs: object) -> Client:
    made = Client(
        "tcp", broker.mqtt_port, key, home.secrets[key] if key else None, protocol=protocol, **kwargs
    )  # type: ignore[arg-type]
    assert made.connect() == 0
    return made


@pytest.fixture
def clients(broker: BrokerThread, home: Home) -> Iterator[list[Client]]:
    """Clients a test opens, closed after it."""
    opened: list[Client] = []
    yield opened
    for one in opened:
        one.close()


def open_client(clients: list[Client], broker, home, key, protocol=5, **kwargs) -> Client:
    made = client(broker, home, key, protocol, **kwargs)
    clients.append(made)
    return made


def persistent(port: int, home: Home, client_id: str) -> Client:
    """An MQTT 5 client of reader_a that keeps its session (not connected yet)."""
    return Client(
        "tcp",
        port,
        "reader_a",
        home.secrets["reader_a"],
        client_id=client_id,
        clean_session=False,
        protocol=5,
    )


def seen(messages: list[Message]) -> list[tuple[str, bytes, bool]]:
    return [(m.topic, m.payload, m.retain) for m in messages]


def test_v311_and_v5_listeners_receive_the_same_samples_live_and_retained(
    broker, home, clients, transport
) -> None:
    port = broker.ws_port if transport == "ws" else broker.mqtt_port
    admin = open_client(clients, broker, home, "admin", 4)
    admin.publish("networks/A", b'{"retained": 1}', qos=1, retain=True)
    readers = []
    for protocol in (4, 5):
        reader = Client(transport, port, "reader_a", home.secrets["reader_a"], protocol=protocol)
        clients.append(reader)
        assert reader.connect() == 0
        assert reader.subscribe("networks/A/#", qos=1) == 1
        readers.append(reader)
    for protocol in (4, 5):
        gen = Client(transport, port, "gen", home.secrets["gen"], protocol=protocol)
        clients.append(gen)
        assert gen.connect() == 0
        gen.publish("networks/A", json.dumps({"from": protocol, "qos": 0}).encode())
        gen.publish("networks/A/s", json.dumps({"from": protocol, "qos": 1}).encode(), qos=1)
    expected = [("networks/A", b'{"retained": 1}', True)]
    for protocol in (4, 5):
        expected += [
            ("networks/A", json.dumps({"from": protocol, "qos": 0}).encode(), False),
            ("networks/A/s", json.dumps({"from": protocol, "qos": 1}).encode(), False),
        ]
    for reader in readers:
        assert seen(reader.expect(5)) == expected


def test_v311_and_v5_listeners_receive_the_same_samples_over_tls(home: Home, tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    use_tls(home, certs)
    opened = []
    with tls_broker("embedded", home) as ports:
        try:
            for transport, name in (("tcp", "mqtts"), ("ws", "wss")):
                readers = []
                for protocol in (4, 5):
                    reader = Client(
                        transport, ports[name], "reader_a", home.secrets["reader_a"], protocol=protocol
                    )
                    reader._paho.tls_set_context(client_context(certs / "ca.pem"))
                    opened.append(reader)
                    assert reader.connect() == 0
                    assert reader.subscribe("networks/A", qos=1) == 1
                    readers.append(reader)
                gen = Client(transport, ports[name], "gen", home.secrets["gen"], protocol=5)
                gen._paho.tls_set_context(client_context(certs / "ca.pem"))
                opened.append(gen)
                assert gen.connect() == 0
                gen.publish("networks/A", b'{"over": "tls"}', qos=1)
                for reader in readers:
                    assert seen(reader.expect(1)) == [("networks/A", b'{"over": "tls"}', False)]
        finally:
            for one in opened:
                one.close()


def test_connack_says_the_brokers_terms_and_assigns_a_client_id(broker, home, clients) -> None:
    made = Client("tcp", broker.mqtt_port, "reader_a", home.secrets["reader_a"], client_id="", protocol=5)
    clients.append(made)
    assert made.connect(keepalive=120) == 0
    got = made.connack_properties
    assert got is not None
    assert got.AssignedClientIdentifier
    assert got.ServerKeepAlive == 60  # a longer keep-alive is answered with the broker's longest
    assert got.ReceiveMaximum == broker.broker.radio.router.limits.max_incoming_qos2
    assert got.TopicAliasMaximum > 0
    limit = broker.broker.radio.max_packet_size  # on the remaining length; MQTT's counts the fixed header
    assert got.MaximumPacketSize == 1 + len(encode_varint(limit)) + limit


def test_a_keep_alive_of_0_is_answered_with_the_brokers_longest(broker, home) -> None:
    """0 turns keep-alive off, the longest of all: a client that vanished without a word would hold
    its connection (and its will) until the system's own TCP keep-alive, hours later."""
    sock, found = session5(broker.mqtt_port, "no-pings", "reader_a", home.secrets["reader_a"], keep_alive=0)
    sock.close()
    assert found[props.SERVER_KEEP_ALIVE] == 60


@pytest.mark.parametrize(
    ("key", "most"), [("reader_a", 7 * 24 * 3600), (None, 3600)], ids=["keyed", "anonymous"]
)
def test_a_session_expiry_is_bounded_by_the_brokers_limits(broker, home, clients, key, most) -> None:
    made = Client("tcp", broker.mqtt_port, key, home.secrets.get(key or ""), clean_session=False, protocol=5)
    clients.append(made)
    assert made.connect() == 0  # asks 0xFFFFFFFF: never to expire
    assert made.connack_properties.SessionExpiryInterval == most


def test_properties_reach_v5_listeners_and_v311_ones_get_the_sample(broker, home, clients) -> None:
    v5 = open_client(clients, broker, home, "reader_a", 5)
    v311 = open_client(clients, broker, home, "reader_a", 4)
    for reader in (v5, v311):
        assert reader.subscribe("networks/A", qos=1) == 1
    asked = Properties(PacketTypes.PUBLISH)
    asked.UserProperty = ("site", "north")
    asked.UserProperty = ("unit", "km/h")
    asked.ContentType = "application/json"
    asked.PayloadFormatIndicator = 1
    asked.ResponseTopic = "networks/A/replies"
    asked.CorrelationData = b"\x01\x02"
    gen = open_client(clients, broker, home, "gen", 5)
    gen.publish("networks/A", b'{"speed": 3}', qos=1, properties=asked)
    got = v5.expect(1)[0]
    assert got.payload == b'{"speed": 3}'
    assert got.properties.UserProperty == [("site", "north"), ("unit", "km/h")]
    assert got.properties.ContentType == "application/json"
    assert got.properties.PayloadFormatIndicator == 1
    assert got.properties.ResponseTopic == "networks/A/replies"
    assert got.properties.CorrelationData == b"\x01\x02"
    assert [m.payload for m in v311.expect(1)] == [b'{"speed": 3}']


def test_a_retained_sample_keeps_its_properties(broker, home, clients) -> None:
    asked = Properties(PacketTypes.PUBLISH)
    asked.UserProperty = ("kept", "yes")
    open_client(clients, broker, home, "gen", 5).publish(
        "networks/A", b'{"r": 1}', qos=1, retain=True, properties=asked
    )
    reader = open_client(clients, broker, home, "reader_a", 5)
    assert reader.subscribe("networks/A", qos=1) == 1
    got = reader.expect(1)[0]
    assert (got.retain, got.properties.UserProperty) == (True, [("kept", "yes")])


def test_an_expired_message_is_not_delivered_and_the_rest_count_down(broker, home, clients) -> None:
    away = persistent(broker.mqtt_port, home, "away")
    assert away.connect() == 0
    assert away.subscribe("networks/A", qos=1) == 1
    away.close()
    gen = open_client(clients, broker, home, "gen", 5)
    for seconds in (1, 60):
        asked = Properties(PacketTypes.PUBLISH)
        asked.MessageExpiryInterval = seconds
        gen.publish("networks/A", json.dumps({"expiry": seconds}).encode(), qos=1, properties=asked)
    time.sleep(1.5)  # the time a message expires in: nothing to await but the clock
    back = persistent(broker.mqtt_port, home, "away")
    clients.append(back)
    assert back.connect() == 0
    got = back.expect(1)[0]
    assert got.payload == b'{"expiry": 60}'
    assert got.properties.MessageExpiryInterval < 60
    assert back.subscribe("networks/pub") == 0  # a round trip: the expired one would have come first
    assert back.received_so_far() == []


@pytest.mark.parametrize("qos", [1, 2])
def test_a_delivery_left_unanswered_goes_again_after_its_message_expired(broker, home, qos) -> None:
    """Its onward delivery began, so its expiry no longer drops it (MQTT-3.3.2-5): it goes again
    under its packet id with DUP, no time left. Dropped, a QoS 2 message the client had would hold
    that packet id for ever, awaiting its PUBREL."""
    credentials = ("reader_a", home.secrets["reader_a"])
    lasting = {props.SESSION_EXPIRY: 60}
    sock, _ = session5(broker.mqtt_port, "expiring", *credentials, clean=False, properties=lasting)
    sock.sendall(subscribe5("networks/A", qos))
    assert read_packet(sock)[0] == 0x90
    gen = Client("tcp", broker.mqtt_port, "gen", home.secrets["gen"], protocol=5)
    assert gen.connect() == 0
    asked = Properties(PacketTypes.PUBLISH)
    asked.MessageExpiryInterval = 1
    gen.publish("networks/A", b'{"short": 1}', qos=qos, properties=asked)
    gen.close()
    first, body = read_packet(sock)
    assert first == 0x30 | qos << 1
    topic_end = 2 + int.from_bytes(body[:2], "big")
    pid = body[topic_end : topic_end + 2]
    sock.close()
    time.sleep(1.5)  # the time a message expires in: nothing to await but the clock
    back, _ = session5(broker.mqtt_port, "expiring", *credentials, clean=False, properties=lasting)
    back.sendall(b"\xc0\x00")  # PINGREQ: its PINGRESP comes after anything the resume sends
    got = []
    while (packet := read_packet(back))[0] != 0xD0:
        got.append(packet)
    back.close()
    assert [first for first, _ in got] == [0x30 | qos << 1 | 0x08]
    body = got[0][1]
    assert body[topic_end : topic_end + 2] == pid
    _, found, payload = published5(body, qos)
    assert (found.get(props.MESSAGE_EXPIRY), payload) == (0, b'{"short": 1}')


def test_a_will_waits_its_delay_and_a_client_back_in_time_cancels_it(broker, home, clients) -> None:
    reader = open_client(clients, broker, home, "reader_a", 5)
    assert reader.subscribe("networks/A/status", qos=1) == 1
    will = {props.WILL_DELAY: 1, props.USER_PROPERTY: [("why", "gone")]}
    expiry = {props.SESSION_EXPIRY: 60}
    credentials = ("gen", home.secrets["gen"])
    sock, _ = session5(
        broker.mqtt_port,
        "delayed",
        *credentials,
        will=("networks/A/status", b'{"gone": 1}'),
        properties=expiry,
        will_properties=will,
    )
    sock.close()
    started = time.monotonic()
    got = reader.expect(1)[0]
    assert time.monotonic() - started >= 0.9
    assert (got.payload, got.properties.UserProperty) == (b'{"gone": 1}', [("why", "gone")])
    will[props.WILL_DELAY] = 30
    sock, _ = session5(
        broker.mqtt_port,
        "back",
        *credentials,
        will=("networks/A/status", b'{"gone": 2}'),
        properties=expiry,
        will_properties=will,
    )
    sock.close()
    again, _ = session5(broker.mqtt_port, "back", *credentials, clean=False, properties=expiry)
    again.sendall(b"\xe0\x00")  # DISCONNECT: no will of its own either
    again.close()
    open_client(clients, broker, home, "admin", 5).publish("networks/A/status", b'{"sentinel": 1}', qos=1)
    assert [m.payload for m in reader.expect(1)] == [b'{"sentinel": 1}']


def test_a_will_waiting_out_its_delay_goes_when_a_clean_start_ends_its_session(broker, home, clients) -> None:
    """MQTT-3.1.3-9: the delay or the session's end, whichever comes first."""
    reader = open_client(clients, broker, home, "reader_a", 5)
    assert reader.subscribe("networks/A/status", qos=1) == 1
    credentials = ("gen", home.secrets["gen"])
    sock, _ = session5(
        broker.mqtt_port,
        "ended",
        *credentials,
        will=("networks/A/status", b'{"gone": 3}'),
        properties={props.SESSION_EXPIRY: 60},
        will_properties={props.WILL_DELAY: 30},
    )
    sock.close()  # without DISCONNECT: the will waits its 30 s
    open_client(clients, broker, home, "admin", 5).publish("networks/A/status", b'{"sentinel": 1}', qos=1)
    assert [m.payload for m in reader.expect(1)] == [b'{"sentinel": 1}']  # the will is still waiting
    again, _ = session5(broker.mqtt_port, "ended", *credentials)  # clean start: that session ends
    with again:
        assert [m.payload for m in reader.expect(1)] == [b'{"gone": 3}']


def away_status_reader(port: int, home: Home) -> None:
    """reader_a's persistent session ``status-reader`` on networks/A/status, its client gone."""
    reader = persistent(port, home, "status-reader")
    assert reader.connect() == 0
    assert reader.subscribe("networks/A/status", qos=1) == 1
    reader.close()


def delayed_will_qos1(client_id: str, secret: str, delay: int) -> bytes:
    """gen's MQTT 5 CONNECT with a QoS 1 will on networks/A/status that waits ``delay`` seconds."""
    will = {"will": ("networks/A/status", b'{"old secret": 1}'), "will_properties": {props.WILL_DELAY: delay}}
    packet = bytearray(connect5(client_id, "gen", secret, properties={props.SESSION_EXPIRY: 60}, **will))
    packet[packet.index(b"\x00\x04MQTT\x05") + 7] |= 0x08  # will QoS 1: kept for an away reader
    return bytes(packet)


@pytest.mark.slow  # seconds of waiting: the fast tier stays under two minutes
def test_a_will_waiting_out_its_delay_when_the_broker_stops_goes_after_its_restart(home: Home) -> None:
    """MQTT-3.1.2-8: a will goes once its delay is over unless its client is back first. The store
    keeps it with its session, so a restart meanwhile neither loses it nor sends it before its time."""
    delay = 3
    with BrokerThread(
        LiveRegistry(home.config), mqtt=Address("127.0.0.1", 0), websocket=Address("127.0.0.1", 0)
    ) as first:
        away_status_reader(first.mqtt_port, home)
        sock, _ = session5(
            first.mqtt_port,
            "restarted",
            "gen",
            home.secrets["gen"],
            will=("networks/A/status", b'{"gone": 4}'),
            properties={props.SESSION_EXPIRY: 60},
            will_properties={props.WILL_DELAY: delay, props.USER_PROPERTY: [("why", "gone")]},
        )
        sock.close()  # without DISCONNECT: the will waits its delay
        closed = time.monotonic()
        assert first.broker is not None
        sessions = first.broker.radio.router.sessions
        assert until(lambda: any(s.client_id == "restarted" and s.will for s in list(sessions.values())))
        assert time.monotonic() - closed < delay  # the broker stops while the will waits
    with BrokerThread(
        LiveRegistry(home.config), mqtt=Address("127.0.0.1", 0), websocket=Address("127.0.0.1", 0)
    ) as second:
        back = persistent(second.mqtt_port, home, "status-reader")
        try:
            assert back.connect() == 0
            got = back.expect(1)[0]
        finally:
            back.close()
    assert time.monotonic() - closed >= delay - 0.5  # the rest of its delay, not at once on start
    assert (got.payload, got.properties.UserProperty) == (b'{"gone": 4}', [("why", "gone")])


@pytest.mark.slow  # seconds of waiting: the fast tier stays under two minutes
def test_a_will_waiting_out_its_delay_goes_with_its_rotated_secret(broker, home, clients) -> None:
    """A rotated key sends no last will: not even one its old secret left waiting on its delay."""
    reader = open_client(clients, broker, home, "reader_a", 5)
    assert reader.subscribe("networks/A/status", qos=1) == 1
    old = home.secrets["gen"]
    sock, _ = session5(
        broker.mqtt_port,
        "rotated-away",
        "gen",
        old,
        will=("networks/A/status", b'{"old secret": 1}'),
        properties={props.SESSION_EXPIRY: 60},
        will_properties={props.WILL_DELAY: 4},
    )
    sock.close()
    due = time.monotonic() + 4
    home.secrets["gen"] = home.store().rotate("gen")

    def old_refused() -> bool:
        probe = Client("tcp", broker.mqtt_port, "gen", old)
        try:
            return probe.connect() == NOT_AUTHORIZED
        finally:
            probe.close()

    assert until(old_refused)
    assert time.monotonic() < due, "the rotation came after the will's delay: the test shows nothing"
    time.sleep(due + 0.5 - time.monotonic())  # the will's delay: nothing to await but the clock
    open_client(clients, broker, home, "admin", 5).publish("networks/A/status", b'{"sentinel": 1}', qos=1)
    assert [m.payload for m in reader.expect(1)] == [b'{"sentinel": 1}']


@pytest.mark.parametrize("rotated_while_running", [True, False], ids=["rotated-running", "rotated-stopped"])
def test_a_stored_will_of_a_key_rotated_since_is_not_sent_after_a_restart(
    home: Home, rotated_while_running: bool
) -> None:
    """A rotated key sends no last will: not one its old secret left in the store with its session
    either, whether the rotation came while the broker ran or while it was stopped."""
    with BrokerThread(
        LiveRegistry(home.config), mqtt=Address("127.0.0.1", 0), websocket=Address("127.0.0.1", 0)
    ) as first:
        away_status_reader(first.mqtt_port, home)
        with open_socket(first.mqtt_port) as sock:
            sock.sendall(delayed_will_qos1("rotated", home.secrets["gen"], 1))
            assert read_packet(sock)[1][1] == 0  # CONNACK 0; closed without DISCONNECT
        due = time.monotonic() + 1
        assert first.broker is not None
        sessions = first.broker.radio.router.sessions
        assert until(lambda: any(s.will for s in list(sessions.values())))
        if rotated_while_running:
            home.secrets["gen"] = home.store().rotate("gen")
            assert until(lambda: not any(s.will for s in list(sessions.values())))
        assert time.monotonic() < due, "the broker stopped after the will's delay: the test shows nothing"
    if not rotated_while_running:
        home.secrets["gen"] = home.store().rotate("gen")
    time.sleep(max(0.0, due - time.monotonic()))  # the will is due as the broker starts again
    with BrokerThread(
        LiveRegistry(home.config), mqtt=Address("127.0.0.1", 0), websocket=Address("127.0.0.1", 0)
    ) as second:
        admin = Client("tcp", second.mqtt_port, "admin", home.secrets["admin"], protocol=5)
        back = persistent(second.mqtt_port, home, "status-reader")
        try:
            assert admin.connect() == 0
            admin.publish("networks/A/status", b'{"sentinel": 1}', qos=1)
            assert back.connect() == 0
            got = [m.payload for m in back.expect(1)]
            assert back.subscribe("networks/pub") == 0  # a round trip: anything queued came first
            got += [m.payload for m in back.received_so_far()]
        finally:
            admin.close()
            back.close()
    assert got == [b'{"sentinel": 1}']


def subscribed5(broker, home, client_id: str, topic_filter: str, qos: int, properties: dict[int, object]):
    """A raw MQTT 5 reader (key reader_a) with ``properties`` at CONNECT, subscribed; and the CONNACK's."""
    reader, found = session5(
        broker.mqtt_port, client_id, "reader_a", home.secrets["reader_a"], properties=properties
    )
    reader.sendall(subscribe5(topic_filter, qos))
    assert read_packet(reader)[0] == 0x90
    return reader, found


def test_topic_aliases_both_ways(broker, home, clients) -> None:
    reader, found = subscribed5(broker, home, "aliased", "networks/A/#", 0, {props.TOPIC_ALIAS_MAXIMUM: 2})
    with reader:
        gen, _ = session5(broker.mqtt_port, "aliasing", "gen", home.secrets["gen"])
        with gen:
            gen.sendall(publish5("networks/A/x", b'{"n": 1}', properties={props.TOPIC_ALIAS: 3}))
            gen.sendall(publish5("", b'{"n": 2}', properties={props.TOPIC_ALIAS: 3}))
            first = published5(read_packet(reader)[1], 0)
            second = published5(read_packet(reader)[1], 0)
    assert (first[0], first[2]) == ("networks/A/x", b'{"n": 1}')
    alias = first[1][props.TOPIC_ALIAS]
    assert second == ("", {props.TOPIC_ALIAS: alias}, b'{"n": 2}')
    assert found[props.TOPIC_ALIAS_MAXIMUM] > 0


def test_the_receive_maximum_holds_back_what_the_client_has_no_room_for(broker, home, clients) -> None:
    reader, _ = subscribed5(broker, home, "narrow", "networks/A", 1, {props.RECEIVE_MAXIMUM: 1})
    with reader:
        gen = open_client(clients, broker, home, "gen", 5)
        gen.publish("networks/A", b'{"n": 1}', qos=1)
        gen.publish("networks/A", b'{"n": 2}', qos=1)
        first, body = read_packet(reader)
        assert published5(body, 1)[2] == b'{"n": 1}'
        reader.settimeout(0.5)
        with pytest.raises(TimeoutError):
            read_packet(reader)  # the second waits for the first's PUBACK
        reader.settimeout(10)
        reader.sendall(puback(int.from_bytes(body[12:14], "big")))
        assert published5(read_packet(reader)[1], 1)[2] == b'{"n": 2}'
        del first


def test_the_receive_maximum_holds_back_retained_samples_too(broker, home, clients) -> None:
    admin = open_client(clients, broker, home, "admin", 5)
    for n in range(3):
        admin.publish(f"networks/A/{n}", json.dumps({"n": n}), qos=1, retain=True)
    reader, _ = session5(
        broker.mqtt_port,
        "narrow",
        "reader_a",
        home.secrets["reader_a"],
        properties={props.RECEIVE_MAXIMUM: 1},
    )
    with reader:
        reader.sendall(subscribe5("networks/A/#", 1))
        reader.sendall(PINGREQ)
        firsts, bodies = [], []
        while (packet := read_packet(reader))[0] != PINGRESP:  # all it was sent before the answer
            firsts.append(packet[0])
            bodies.append(packet[1])
        assert firsts == [0x90, 0x33]  # the SUBACK, then one retained sample: the client takes one
        for _ in range(2):
            size = int.from_bytes(bodies[-1][:2], "big")  # the topic's, then the packet id
            reader.sendall(puback(int.from_bytes(bodies[-1][2 + size : 4 + size], "big")))
            first, body = read_packet(reader)
            assert first == 0x33
            bodies.append(body)
        seen_payloads = sorted(published5(body, 1)[2] for body in bodies[1:])
        assert seen_payloads == [json.dumps({"n": n}).encode() for n in range(3)]


LASTING = {props.SESSION_EXPIRY: 60}


def left_unacknowledged(broker, home, clients, client_id: str, qos: int) -> list[int]:
    """reader_a's persistent session gets three samples of gen at ``qos`` and leaves without
    answering any; their packet ids, in the order sent."""
    credentials = ("reader_a", home.secrets["reader_a"])
    sock, _ = session5(broker.mqtt_port, client_id, *credentials, clean=False, properties=LASTING)
    with sock:
        sock.sendall(subscribe5("networks/A", qos))
        assert read_packet(sock)[0] == 0x90
        gen = open_client(clients, broker, home, "gen", 5)
        for n in range(3):
            gen.publish("networks/A", json.dumps({"n": n}).encode(), qos=qos)
        return [int.from_bytes(read_packet(sock)[1][12:14], "big") for _ in range(3)]


def back_taking_one(broker, home, client_id: str):
    """The same session's client back, taking one unacknowledged sample at a time (receive maximum 1)."""
    credentials = ("reader_a", home.secrets["reader_a"])
    narrow = {**LASTING, props.RECEIVE_MAXIMUM: 1}
    return session5(broker.mqtt_port, client_id, *credentials, clean=False, properties=narrow)[0]


def until_pingresp(sock) -> list[tuple[int, bytes]]:
    """Every packet the broker sent before its answer to a PINGREQ sent now."""
    sock.sendall(PINGREQ)
    got = []
    while (packet := read_packet(sock))[0] != PINGRESP:
        got.append(packet)
    return got


def test_a_resumed_session_resends_within_the_receive_maximum_of_its_new_connection(
    broker, home, clients
) -> None:
    """The window is the new CONNECT's (MQTT-3.3.4-9): what the client left unacknowledged goes
    again one at a time to a client that now takes one, each after the last one's PUBACK, in the
    order first sent and under its first packet id (MQTT-4.4.0-1)."""
    first_ids = left_unacknowledged(broker, home, clients, "narrowing", 1)
    with back_taking_one(broker, home, "narrowing") as back:
        resent = []
        for _ in range(3):
            got = until_pingresp(back)
            assert [first for first, _ in got] == [0x3A]  # one PUBLISH, QoS 1, DUP: the client takes one
            pid = int.from_bytes(got[0][1][12:14], "big")
            resent.append((pid, published5(got[0][1], 1)[2]))
            back.sendall(puback(pid))
    assert resent == [(pid, json.dumps({"n": n}).encode()) for n, pid in enumerate(first_ids)]


def test_a_qos2_delivery_released_before_it_went_again_counts_in_the_receive_maximum(
    broker, home, clients
) -> None:
    """A QoS 2 delivery the client PUBRECs is outstanding until its PUBCOMP (MQTT-3.3.4-9), even
    one it answers before the resumed session sent it again: with a window of one, nothing more
    goes while it waits for its PUBCOMP."""
    ids = left_unacknowledged(broker, home, clients, "released-early", 2)
    with back_taking_one(broker, home, "released-early") as back:
        first = until_pingresp(back)
        assert [kind for kind, _ in first] == [
            0x3C
        ]  # the first again (QoS 2, DUP), alone: the client takes one
        assert int.from_bytes(first[0][1][12:14], "big") == ids[0]
        # A PUBREL goes once the release is in the store, a PINGRESP at once: each PUBREL is
        # awaited first, and a PING then shows nothing else came before or with it.
        back.sendall(bytes((0x50, 2)) + ids[2].to_bytes(2, "big"))  # PUBREC for the third, not yet resent
        assert read_packet(back) == (0x62, ids[2].to_bytes(2, "big"))  # PUBREL
        assert until_pingresp(back) == []
        back.sendall(bytes((0x50, 2)) + ids[0].to_bytes(2, "big"))  # PUBREC for the first
        back.sendall(bytes((0x70, 2)) + ids[0].to_bytes(2, "big"))  # PUBCOMP for the first
        # Its PUBREL; the third still waits for its PUBCOMP, so the second does not go yet.
        assert read_packet(back) == (0x62, ids[0].to_bytes(2, "big"))
        assert until_pingresp(back) == []
        back.sendall(bytes((0x70, 2)) + ids[2].to_bytes(2, "big"))  # PUBCOMP for the third
        last = until_pingresp(back)
        assert [kind for kind, _ in last] == [0x3C]
        assert int.from_bytes(last[0][1][12:14], "big") == ids[1]


def test_a_sample_in_flight_when_its_right_goes_counts_in_the_receive_maximum_until_acknowledged(
    broker, home, clients
) -> None:
    """A PUBLISH sent is outstanding until its PUBACK (MQTT-3.3.4-9), whatever happens to the
    key's rights meanwhile: the next sample, on a network the key still reads, waits for it. What
    was not sent yet on the network whose right went is never sent."""
    credentials = ("reader_a", home.secrets["reader_a"])
    sock, _ = session5(broker.mqtt_port, "in-flight", *credentials, properties={props.RECEIVE_MAXIMUM: 1})
    with sock:
        sock.sendall(subscribe5("networks/A", 1) + subscribe5("networks/pub", 1, 2))
        assert [read_packet(sock)[0] for _ in range(2)] == [0x90, 0x90]
        gen = open_client(clients, broker, home, "gen", 5)
        for n in range(2):
            gen.publish("networks/A", json.dumps({"n": n}).encode(), qos=1)
        in_flight = until_pingresp(sock)
        assert [kind for kind, _ in in_flight] == [0x32]  # the first; the second waits its turn
        set_rights(home, broker.mqtt_port, "reader_a", subscribe=[])
        admin = open_client(clients, broker, home, "admin", 5)
        admin.publish("networks/pub", b'{"public": 1}', qos=1)
        assert until_pingresp(sock) == []  # the window is the first's until its PUBACK
        sock.sendall(puback(int.from_bytes(in_flight[0][1][12:14], "big")))
        after = until_pingresp(sock)
        assert [published5(body, 1)[2] for _, body in after] == [b'{"public": 1}']


def test_a_sample_larger_than_the_client_takes_is_not_sent_to_it(broker, home, clients) -> None:
    asked = Properties(PacketTypes.CONNECT)
    asked.MaximumPacketSize = 64
    reader = Client("tcp", broker.mqtt_port, "reader_a", home.secrets["reader_a"], protocol=5)
    clients.append(reader)
    assert reader.connect(properties=asked) == 0
    assert reader.subscribe("networks/A", qos=1) == 1
    gen = open_client(clients, broker, home, "gen", 5)
    gen.publish("networks/A", json.dumps({"pad": "x" * 100}).encode(), qos=1)
    gen.publish("networks/A", b'{"small": 1}', qos=1)
    assert [m.payload for m in reader.expect(1)] == [b'{"small": 1}']


def test_subscription_options_and_identifiers(broker, home, clients) -> None:
    admin = open_client(clients, broker, home, "admin", 5)
    admin.publish("networks/A", b'{"retained": 1}', qos=1, retain=True)
    me = open_client(clients, broker, home, "admin", 5)
    ids = Properties(PacketTypes.SUBSCRIBE)
    ids.SubscriptionIdentifier = 7
    result, mid = me._paho.subscribe(
        "networks/A",
        options=SubscribeOptions(qos=1, noLocal=True, retainAsPublished=True, retainHandling=2),
        properties=ids,
    )
    assert result == 0
    other = open_client(clients, broker, home, "admin", 5)
    assert other.subscribe("networks/pub") == 0
    me.publish("networks/A", b'{"mine": 1}', qos=1)  # no-local: not back to me
    admin.publish("networks/A", b'{"theirs": 1}', qos=1, retain=True)
    got = me.expect(1)[0]
    assert (got.payload, got.retain) == (b'{"theirs": 1}', True)  # retain as published; none at SUBSCRIBE
    assert got.properties.SubscriptionIdentifier == [7]
    del mid


def test_a_shared_subscription_gives_each_sample_to_one_member_with_the_read_right(
    broker, home, clients
) -> None:
    members = [open_client(clients, broker, home, "reader_a", 5) for _ in range(2)]
    for member in members:
        assert member.subscribe("$share/g/networks/A", qos=1) == 1
    outsider = open_client(clients, broker, home, "reader_b", 5)
    assert outsider.subscribe("$share/g/networks/A", qos=1) == outsider.refused
    gen = open_client(clients, broker, home, "gen", 5)
    for n in range(4):
        gen.publish("networks/A", json.dumps({"n": n}).encode(), qos=1)
    got = [m.payload for m in members[0].expect(2)] + [m.payload for m in members[1].expect(2)]
    assert sorted(got) == sorted(json.dumps({"n": n}).encode() for n in range(4))
    assert outsider.received_so_far() == []


def test_a_shared_subscription_s_deliveries_carry_its_subscription_identifier(broker, home, clients) -> None:
    """MQTT-3.3.4-3: a sample goes with the ids its client gave the subscriptions it came by; for a
    shared one, the receiving member's own (MQTT 5.0, 3.3.4), and no other filter's."""
    member = open_client(clients, broker, home, "reader_a", 5)
    for topic_filter, ident in (("$share/g/networks/A", 7), ("networks/A/#", 9)):
        ids = Properties(PacketTypes.SUBSCRIBE)
        ids.SubscriptionIdentifier = ident
        result, mid = member._paho.subscribe(topic_filter, options=SubscribeOptions(qos=1), properties=ids)
        assert result == 0
        with member._suback:
            assert member._suback.wait_for(lambda mid=mid: mid in member._subacks, 10)
    gen = open_client(clients, broker, home, "gen", 5)
    for qos in (1, 0):
        gen.publish("networks/A", json.dumps({"qos": qos}).encode(), qos=qos)
    got = sorted(
        (m.payload, tuple(getattr(m.properties, "SubscriptionIdentifier", ()))) for m in member.expect(4)
    )
    assert got == sorted((json.dumps({"qos": q}).encode(), (i,)) for q in (1, 0) for i in (7, 9))


def test_a_shared_subscription_keeps_the_retain_flag_when_its_member_asked(broker, home, clients) -> None:
    """Retain-as-published holds for whatever subscription a sample comes by (MQTT 5.0, 3.8.3.1)."""
    member = open_client(clients, broker, home, "reader_a", 5)
    result, mid = member._paho.subscribe(
        "$share/g/networks/A", options=SubscribeOptions(qos=1, retainAsPublished=True)
    )
    assert result == 0
    with member._suback:
        assert member._suback.wait_for(lambda: mid in member._subacks, 10)
    admin = open_client(clients, broker, home, "admin", 5)
    for qos in (1, 0):
        admin.publish("networks/A", json.dumps({"qos": qos}).encode(), qos=qos, retain=True)
    got = sorted((m.payload, m.retain) for m in member.expect(2))
    assert got == sorted((json.dumps({"qos": q}).encode(), True) for q in (1, 0))


@pytest.mark.skipif(shutil.which("mosquitto_sub") is None, reason="mosquitto-clients is not installed")
def test_mosquitto_clients_speak_mqtt5_with_it(broker, home, clients, tmp_path) -> None:
    reader = open_client(clients, broker, home, "reader_a", 4)
    assert reader.subscribe("networks/A") == 0
    admin = open_client(clients, broker, home, "admin", 4)
    admin.publish("networks/pub", b'{"to": "mosquitto_sub"}', qos=1, retain=True)
    listener = subprocess.Popen(
        [
            "mosquitto_sub",
            "-V",
            "5",
            "-h",
            "127.0.0.1",
            "-p",
            str(broker.mqtt_port),
            "-t",
            "networks/pub",
            "-C",
            "1",
            "-F",
            "%t %p",
            "-W",
            "20",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    # The key's credentials go in mosquitto_pub's own options file, not on its command line.
    (tmp_path / "mosquitto_pub").write_text(f"-u gen\n-P {home.secrets['gen']}\n")
    (tmp_path / "mosquitto_pub").chmod(0o600)
    try:
        sent = subprocess.run(
            [
                "mosquitto_pub",
                "-V",
                "5",
                "-h",
                "127.0.0.1",
                "-p",
                str(broker.mqtt_port),
                "-t",
                "networks/A",
                "-m",
                '{"n": 5}',
                "-q",
                "1",
                "-D",
                "publish",
                "user-property",
                "k",
                "v",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path)},
        )
        assert sent.returncode == 0, sent.stderr
        assert [m.payload for m in reader.expect(1)] == [b'{"n": 5}']
        out, _ = listener.communicate(timeout=20)
        assert out == 'networks/pub {"to": "mosquitto_sub"}\n'
    finally:
        listener.kill()
        listener.wait()


def test_a_shared_group_is_its_key_s_own(broker, home, clients) -> None:
    """A group name is its key's, as a client id is: another key that may read the network and
    joins ``$share/g/...`` is a group of its own, and takes no share of the first key's samples,
    which its members would silently miss. Anonymous clients form a scope of their own."""
    home.add_key("buyer_b", subscribe=["A", "pub"])
    registry = broker.broker.radio.registry
    assert until(lambda: "buyer_b" in registry.current.keys)
    workers = [open_client(clients, broker, home, "reader_a", 5) for _ in range(2)]
    other = open_client(clients, broker, home, "buyer_b", 5)
    for member in (*workers, other):
        assert member.subscribe("$share/g/networks/A", qos=1) == 1
    anonymous = open_client(clients, broker, home, None, 5)
    assert anonymous.subscribe("$share/g/networks/pub", qos=1) == 1
    assert other.subscribe("$share/g/networks/pub", qos=1) == 1
    gen = open_client(clients, broker, home, "gen", 5)
    samples = [json.dumps({"n": n}).encode() for n in range(4)]
    for sample in samples:
        gen.publish("networks/A", sample, qos=1)
    got = [m.payload for m in workers[0].expect(2)] + [m.payload for m in workers[1].expect(2)]
    assert sorted(got) == samples  # each once, between the key's own members
    assert sorted(m.payload for m in other.expect(4)) == samples  # its own group's, every one
    admin = open_client(clients, broker, home, "admin", 5)
    for sample in samples:
        admin.publish("networks/pub", sample, qos=1)
    assert [m.payload for m in anonymous.expect(4)] == samples
    assert [m.payload for m in other.expect(4)] == samples


def test_a_shared_group_whose_key_may_no_longer_read_is_sent_nothing(broker, home, clients) -> None:
    """Each member's right is checked at each delivery: once its key may no longer read the network,
    no member of the key's group is sent a sample, and another key's group of the same name (its
    own) goes on receiving every one."""
    home.add_key("member", subscribe=["A"])
    registry = broker.broker.radio.registry
    assert until(lambda: "member" in registry.current.keys)
    kept = open_client(clients, broker, home, "reader_a", 5)
    losing = [open_client(clients, broker, home, "member", 5) for _ in range(2)]
    for member in (kept, *losing):
        assert member.subscribe("$share/g/networks/A", qos=1) == 1
    home.store().edit("member", subscribe=["B"])
    assert until(lambda: not registry.current.access("member").may_read("networks/A"))
    gen = open_client(clients, broker, home, "gen", 5)
    for n in range(4):
        gen.publish("networks/A", json.dumps({"n": n}).encode(), qos=1)
    assert [m.payload for m in kept.expect(4)] == [json.dumps({"n": n}).encode() for n in range(4)]
    assert [member.received_so_far() for member in losing] == [[], []]


def test_a_shared_sample_its_member_left_unacknowledged_goes_to_another_member(broker, home, clients) -> None:
    """MQTT 5.0, 4.8.2: a QoS 1 sample whose member's session ends before it is acknowledged goes to
    another member of the group: a member that leaves loses the group nothing."""
    staying = open_client(clients, broker, home, "reader_a", 5)
    assert staying.subscribe("$share/g/networks/A", qos=1) == 1
    samples = [json.dumps({"n": n}).encode() for n in range(2)]
    leaving, _ = session5(broker.mqtt_port, "leaving", "reader_a", home.secrets["reader_a"])
    with leaving:
        leaving.sendall(subscribe5("$share/g/networks/A", 1))
        assert read_packet(leaving)[0] == 0x90
        gen = open_client(clients, broker, home, "gen", 5)
        for sample in samples:
            gen.publish("networks/A", sample, qos=1)
        first, body = read_packet(leaving)  # its turn's sample, never acknowledged
        assert first >> 4 == 3
        unanswered = published5(body, 1)[2]
        assert [m.payload for m in staying.expect(1)] == [s for s in samples if s != unanswered]
    assert [m.payload for m in staying.expect(1)] == [unanswered]


def test_a_shared_subscription_whose_members_are_all_away_queues_for_a_persistent_one(
    broker, home, clients
) -> None:
    """MQTT 5.0, 4.8.2: a shared subscription belongs to its members' sessions. While no member is
    connected, a QoS 1 or 2 sample waits in the queue of one whose session outlives its connection,
    as it would for a filter of its own, instead of being lost to the group; a QoS 0 one goes to
    nobody, as to any absent client. While a member is connected, it gets every sample at once."""
    away = persistent(broker.mqtt_port, home, "away-member")
    assert away.connect() == 0
    assert away.subscribe("$share/g/networks/A", qos=1) == 1
    away.close()
    gen = open_client(clients, broker, home, "gen", 5)
    gen.publish("networks/A", b'{"queued": 1}', qos=1)
    gen.publish("networks/A", b'{"at qos 0": 1}', qos=0)
    back = persistent(broker.mqtt_port, home, "away-member")
    clients.append(back)
    assert back.connect() == 0
    assert [m.payload for m in back.expect(1)] == [b'{"queued": 1}']
    here = open_client(clients, broker, home, "reader_a", 5)
    assert here.subscribe("$share/g/networks/A", qos=1) == 1
    back.close()
    for n in range(3):
        gen.publish("networks/A", json.dumps({"n": n}).encode(), qos=1)
    assert [m.payload for m in here.expect(3)] == [json.dumps({"n": n}).encode() for n in range(3)]
    again = persistent(broker.mqtt_port, home, "away-member")
    clients.append(again)
    assert again.connect() == 0
    assert again.subscribe("networks/pub") == 0  # a round trip: anything queued would have come first
    assert again.received_so_far() == []


def test_a_disconnect_with_will_keeps_the_will(broker, home, clients) -> None:
    reader = open_client(clients, broker, home, "reader_a", 5)
    assert reader.subscribe("networks/A/status", qos=1) == 1
    sock, _ = session5(
        broker.mqtt_port, "leaving", "gen", home.secrets["gen"], will=("networks/A/status", b'{"bye": 1}')
    )
    with sock:
        sock.sendall(b"\xe0\x01\x04")  # DISCONNECT, reason 0x04: disconnect with will message
    assert [m.payload for m in reader.expect(1)] == [b'{"bye": 1}']


@pytest.mark.parametrize("code", [0x80, 0x81, 0x87])
def test_a_disconnect_for_an_error_publishes_the_will(broker, home, clients, code: int) -> None:
    """Only a normal disconnection (0x00) discards the will (MQTT-3.14.4-3): a client that leaves
    for an error (0x80 and above) still has its will published, its "offline" status say."""
    reader = open_client(clients, broker, home, "reader_a", 5)
    assert reader.subscribe("networks/A/status", qos=1) == 1
    sock, _ = session5(
        broker.mqtt_port, "failing", "gen", home.secrets["gen"], will=("networks/A/status", b'{"bye": 2}')
    )
    with sock:
        sock.sendall(bytes((0xE0, 0x01, code)))
    assert [m.payload for m in reader.expect(1)] == [b'{"bye": 2}']


def test_a_disconnect_that_gives_a_session_expiry_after_0_at_connect_is_a_protocol_error(
    broker, home, clients
) -> None:
    """A session that began with expiry 0 ends with its connection: a DISCONNECT that sets another
    expiry is a protocol error (MQTT-3.14.2-2), not a valid DISCONNECT. The client is told so
    (DISCONNECT 0x82), and its will, which only a valid normal disconnection discards, goes."""
    reader = open_client(clients, broker, home, "reader_a", 5)
    assert reader.subscribe("networks/A/status", qos=1) == 1
    sock, _ = session5(
        broker.mqtt_port, "lingering", "gen", home.secrets["gen"], will=("networks/A/status", b'{"bye": 3}')
    )
    with sock:
        sock.sendall(bytes((0xE0, 0x07, 0x00, 0x05, props.SESSION_EXPIRY, 0, 0, 0, 60)))
        first, body = read_packet(sock)
        assert (first, body[0]) == (0xE0, 0x82)
    assert [m.payload for m in reader.expect(1)] == [b'{"bye": 3}']


def test_a_disconnect_that_sets_session_expiry_0_ends_the_session_at_once(broker, home) -> None:
    """A session expiry of 0 ends the session with its connection (MQTT 5.0 3.1.2.11.2); a
    DISCONNECT may set it so (3.14.2.2.2). Kept until the next expiry sweep, the session held
    its subscriptions and filled its queue for up to a minute."""

    async def held() -> int:
        return broker.broker.session_count()

    credentials = ("gen", home.secrets["gen"])
    lasting = {props.SESSION_EXPIRY: 60}
    before = broker.call(held)
    sock, _ = session5(broker.mqtt_port, "ending", *credentials, properties=lasting)
    with sock:
        sock.sendall(subscribe5("networks/pub", 1))
        assert read_packet(sock)[0] == 0x90
        assert broker.call(held) == before + 1
        sock.sendall(bytes((0xE0, 0x07, 0x00, 0x05, props.SESSION_EXPIRY, 0, 0, 0, 0)))
        assert closed_by_peer(sock)
    assert broker.call(held) == before  # gone with its connection, not at the next sweep
    with open_socket(broker.mqtt_port) as again:
        again.sendall(connect5("ending", *credentials, clean=False, properties=lasting))
        first, body = read_packet(again)
    assert (first, body[0], body[1]) == (0x20, 0, 0)  # accepted, and no session present


def two_runs(home: Home) -> Iterator[int]:
    """The broker started twice on the same store: the MQTT port of each run, while it runs."""
    for _ in range(2):
        with BrokerThread(
            LiveRegistry(home.config), mqtt=Address("127.0.0.1", 0), websocket=Address("127.0.0.1", 0)
        ) as running:
            yield running.mqtt_port


def test_properties_and_expiry_of_kept_samples_survive_a_restart(home: Home) -> None:
    """Retained and queued samples come back from the store with their MQTT 5 properties."""
    asked = Properties(PacketTypes.PUBLISH)
    asked.UserProperty = ("kept", "on disk")
    asked.MessageExpiryInterval = 600
    runs = two_runs(home)
    try:
        port = next(runs)
        away = persistent(port, home, "kept")
        assert away.connect() == 0
        assert away.subscribe("networks/A/q", qos=1) == 1
        away.close()
        gen = Client("tcp", port, "gen", home.secrets["gen"], protocol=5)
        assert gen.connect() == 0
        gen.publish("networks/A/r", b'{"retained": 1}', qos=1, retain=True, properties=asked)
        gen.publish("networks/A/q", b'{"queued": 1}', qos=1, properties=asked)
        gen.close()
        back = persistent(next(runs), home, "kept")
        try:
            assert back.connect() == 0
            queued = back.expect(1)[0]
            assert back.subscribe("networks/A/r", qos=1) == 1
            retained = back.expect(1)[0]
        finally:
            back.close()
    finally:
        runs.close()
    for got in (queued, retained):
        assert got.properties.UserProperty == [("kept", "on disk")]
        assert 0 < got.properties.MessageExpiryInterval <= 600


@pytest.mark.parametrize("queued", ["before", "after"])
def test_a_session_s_subscription_options_hold_for_samples_queued_across_a_restart(
    home: Home, queued: str
) -> None:
    """A sample kept for an MQTT 5 session goes as it would have without a restart, whether it was
    queued before it or after the session was restored: with the subscription id of the filter
    that matched it (MQTT-3.3.4-3), and its retain flag to a retain-as-published one."""
    runs = two_runs(home)
    try:
        port = next(runs)
        away = persistent(port, home, "kept")
        assert away.connect() == 0
        ids = Properties(PacketTypes.SUBSCRIBE)
        ids.SubscriptionIdentifier = 7
        kept = SubscribeOptions(qos=1, retainAsPublished=True)
        result, mid = away._paho.subscribe("networks/A", options=kept, properties=ids)
        assert result == 0
        with away._suback:
            assert away._suback.wait_for(lambda: mid in away._subacks, 10)
        away.close()
        if queued == "after":
            port = next(runs)
        gen = Client("tcp", port, "gen", home.secrets["gen"], protocol=5)
        assert gen.connect() == 0
        gen.publish("networks/A", b'{"queued": 1}', qos=1, retain=True)
        gen.close()
        back = persistent(next(runs) if queued == "before" else port, home, "kept")
        try:
            assert back.connect() == 0
            got = back.expect(1)[0]
        finally:
            back.close()
    finally:
        runs.close()
    assert (got.payload, got.retain) == (b'{"queued": 1}', True)
    assert got.properties.SubscriptionIdentifier == [7]


def test_an_mqtt5_session_s_deliveries_in_flight_go_again_after_a_restart_within_its_new_window(
    home: Home,
) -> None:
    """After a restart too, what the client left unanswered goes again with DUP under its first
    packet id (MQTT-4.4.0-1), in the order first sent, one at a time to a client that now takes
    one (MQTT-3.3.4-9)."""
    credentials = ("reader_a", home.secrets["reader_a"])
    runs = two_runs(home)
    try:
        port = next(runs)
        sock, _ = session5(port, "restarted", *credentials, clean=False, properties=LASTING)
        with sock:
            sock.sendall(subscribe5("networks/A", 2))
            assert read_packet(sock)[0] == 0x90
            gen = Client("tcp", port, "gen", home.secrets["gen"], protocol=5)
            try:
                assert gen.connect() == 0
                gen.publish("networks/A", b'{"n": 0}', qos=1)
                first, body = read_packet(sock)
                assert first == 0x32
                sock.sendall(puback(int.from_bytes(body[12:14], "big")))  # the ids go on past it
                for n in range(1, 4):
                    gen.publish("networks/A", json.dumps({"n": n}).encode(), qos=2)
            finally:
                gen.close()
            first_ids = [int.from_bytes(read_packet(sock)[1][12:14], "big") for _ in range(3)]
        port = next(runs)
        narrow = {**LASTING, props.RECEIVE_MAXIMUM: 1}
        back, _ = session5(port, "restarted", *credentials, clean=False, properties=narrow)
        with back:
            resent = []
            for _ in range(3):
                got = until_pingresp(back)
                assert [first for first, _ in got] == [0x3C]  # one PUBLISH, QoS 2, DUP
                pid = got[0][1][12:14]
                resent.append((int.from_bytes(pid, "big"), published5(got[0][1], 2)[2]))
                back.sendall(bytes((0x50, 2)) + pid)  # PUBREC
                assert read_packet(back) == (0x62, pid)  # PUBREL
                back.sendall(bytes((0x70, 2)) + pid)  # PUBCOMP: the next may go
            assert until_pingresp(back) == []
    finally:
        runs.close()
    assert resent == [(pid, json.dumps({"n": n}).encode()) for n, pid in enumerate(first_ids, 1)]


def test_a_session_resumed_in_the_other_protocol_keeps_its_subscriptions(broker, home, clients) -> None:
    gen = open_client(clients, broker, home, "gen", 4)
    first = persistent(broker.mqtt_port, home, "switching")
    assert first.connect() == 0
    assert first.subscribe("networks/A", qos=1) == 1
    first.close()
    for n, protocol in enumerate((4, 5, 4)):
        back = Client(
            "tcp",
            broker.mqtt_port,
            "reader_a",
            home.secrets["reader_a"],
            client_id="switching",
            clean_session=False,
            protocol=protocol,
        )
        clients.append(back)
        assert back.connect() == 0
        gen.publish("networks/A", json.dumps({"n": n}).encode(), qos=1)
        assert [m.payload for m in back.expect(1)] == [json.dumps({"n": n}).encode()]
        back.close()


def test_a_shared_sample_queued_for_a_key_that_may_no_longer_read_it_is_never_sent(
    broker, home, clients
) -> None:
    """A sample of a shared subscription waiting in the queue of a member whose key's read right is
    taken away is never sent, even once the right is back: no member of its key's group may read
    it, and another key's group of the same name is a group of its own, sent every sample."""
    home.add_key("member", subscribe=["A"])
    registry = broker.broker.radio.registry
    assert until(lambda: "member" in registry.current.keys)
    losing = losing_member(broker.mqtt_port, home)
    kept = persistent(broker.mqtt_port, home, "kept-member")
    for member in (losing, kept):
        assert member.connect() == 0
        assert member.subscribe("$share/g/networks/A", qos=1) == 1
        member.close()
    gen = open_client(clients, broker, home, "gen", 5)
    samples = [json.dumps({"n": n}).encode() for n in range(4)]
    for sample in samples:
        gen.publish("networks/A", sample, qos=1)  # all away: queued for each key's group
    home.store().edit("member", subscribe=["B"])
    assert until(lambda: not registry.current.access("member").may_read("networks/A"))
    back = persistent(broker.mqtt_port, home, "kept-member")
    clients.append(back)
    assert back.connect() == 0
    assert sorted(m.payload for m in back.expect(4)) == samples
    home.store().edit("member", subscribe=["A"])
    assert until(lambda: registry.current.access("member").may_read("networks/A"))
    assert nothing_queued_for(losing_member(broker.mqtt_port, home), clients)


def losing_member(port: int, home: Home) -> Client:
    """An MQTT 5 client of the key ``member`` that keeps its session "losing" (not connected yet)."""
    return Client(
        "tcp", port, "member", home.secrets["member"], client_id="losing", clean_session=False, protocol=5
    )


def nothing_queued_for(client: Client, clients: list[Client]) -> bool:
    """Whether the client, connected, is sent nothing its session held."""
    clients.append(client)
    assert client.connect() == 0
    assert client.subscribe("networks/pub") == 0  # a round trip: anything queued would have come first
    return client.received_so_far() == []


def away_members_hold(port: int, home: Home, members: list[Client], samples: list[bytes]) -> None:
    """Each member joins ``$share/g/networks/A`` and leaves; then gen publishes the samples (QoS 1)."""
    for member in members:
        assert member.connect() == 0
        assert member.subscribe("$share/g/networks/A", qos=1) == 1
        member.close()
    gen = Client("tcp", port, "gen", home.secrets["gen"], protocol=5)
    assert gen.connect() == 0
    for sample in samples:
        gen.publish("networks/A", sample, qos=1)  # all away: queued for one member or the other
    gen.close()


def kept_gets(port: int, home: Home, count: int) -> list[bytes]:
    """What the member ``kept`` is sent once back, sorted."""
    back = persistent(port, home, "kept")
    try:
        assert back.connect() == 0
        return sorted(m.payload for m in back.expect(count))
    finally:
        back.close()


@pytest.mark.parametrize("change", ["revoked", "read right taken"])
def test_a_shared_sample_queued_for_a_key_changed_while_stopped_is_never_sent(
    home: Home, change: str
) -> None:
    """A member's key revoked, or its read right taken away, while the broker was stopped is applied
    at its start as a change made while it runs: what its key's group held is never sent, and
    another key's group of the same name (its own) keeps every sample."""
    home.add_key("member", subscribe=["A"])
    samples = [json.dumps({"n": n}).encode() for n in range(4)]
    runs = two_runs(home)
    clients: list[Client] = []
    try:
        port = next(runs)
        away_members_hold(port, home, [losing_member(port, home), persistent(port, home, "kept")], samples)
        if change == "revoked":
            home.store().revoke("member")
        else:
            home.store().edit("member", subscribe=["B"])
        port = next(runs)
        got = kept_gets(port, home, 4)
        if change != "revoked":
            assert nothing_queued_for(losing_member(port, home), clients)
    finally:
        for client in clients:
            client.close()
        runs.close()
    assert got == samples


def test_a_shared_sample_queued_across_a_restart_goes_to_another_member_when_its_session_ends(
    home: Home,
) -> None:
    """MQTT 5.0, 4.8.2: a shared subscription's sample waiting for a member whose session then ends
    goes to another member, whether it was queued before a restart or after: the store keeps the
    shared subscription it came by, and a member that starts its session afresh loses the group
    nothing it held."""
    samples = [json.dumps({"n": n}).encode() for n in range(4)]
    runs = two_runs(home)
    try:
        port = next(runs)
        away_members_hold(port, home, [persistent(port, home, c) for c in ("ending", "kept")], samples)
        port = next(runs)
        afresh = Client("tcp", port, "reader_a", home.secrets["reader_a"], client_id="ending", protocol=5)
        assert afresh.connect() == 0  # a clean start: the session it held ends
        afresh.close()
        got = kept_gets(port, home, 4)
    finally:
        runs.close()
    assert got == samples
