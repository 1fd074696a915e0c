"""Nothing acknowledged is lost, and no sample reaches a key that has lost its right.

Each test holds one promise a broker could break without anyone noticing: queued and in-flight
samples are delivered only with a read check, a new key of a revoked name inherits no session, a
will fires only with the right of the moment, QoS 2 and offline queues are bounded, QoS 2 is
resent, the store is private, and a store that cannot be written acknowledges nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import re
import socket
import sqlite3
import stat
import subprocess
import threading
import tomllib
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import polling
import pytest
import tomli_w
from conftest import ENGINES, broker_process, running_broker
from embedded import embedded_broker
from mqtt_client import Client, Message, away_on_a
from paho.mqtt.enums import CallbackAPIVersion
from raw_mqtt import (
    closed_by_peer,
    connect,
    open_socket,
    packet,
    publish,
    published,
    read_packet,
    session,
    subscribe,
)

from radio.broker.store import Store
from radio.broker.thread import BrokerThread
from radio.config import Address
from radio.registry import LiveRegistry

WITHIN = 2.0


def closed_within(sock, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return closed_by_peer(sock)
    except TimeoutError:
        return False


eventually = functools.partial(polling.eventually, within=WITHIN, every=0.05)
"""Retry until truthy: what is awaited here shows no event a test could wait on."""


def set_rights(home, port: int, name: str, **rights: list[str]) -> None:
    """Change a key's rights, keeping its secret, and return once the broker applies the change.

    The same write revokes a canary key whose connection is open: when the broker closes it, the
    whole new registry is in force (on Mosquitto too, which reloads its files all at once).
    """
    canary_name = f"canary-{os.urandom(4).hex()}"
    secret = home.add_key(canary_name)

    def connected() -> Client | None:
        client = Client("tcp", port, canary_name, secret)
        if client.connect() == 0:
            return client
        client.close()
        return None

    canary = eventually(connected)
    assert canary is not None, "the broker did not load the canary key in time"
    data = tomllib.loads(home.keys.read_text())
    data["keys"][name].update(rights)
    del data["keys"][canary_name]
    fresh = home.keys.with_suffix(".tmp")
    fresh.write_text(tomli_w.dumps(data))
    fresh.chmod(0o600)
    fresh.replace(home.keys)
    try:
        assert canary.disconnected.wait(WITHIN), "the broker did not apply the change in time"
    finally:
        canary.close()


def barrier(port: int, client: Client, secrets: dict[str, str]) -> list:
    """Publish a token on the public network the client also reads; return what came before it."""
    assert client.subscribe("networks/pub", qos=1) == 1
    admin = Client("tcp", port, "admin", secrets["admin"])
    try:
        assert admin.connect() == 0
        admin.publish("networks/pub", b'{"token": 1}', qos=1)
    finally:
        admin.close()
    got = []
    while True:
        message = client.expect(1)[0]
        if message.payload == b'{"token": 1}':
            return got
        got.append(message)


@pytest.fixture(params=ENGINES)
def engine_broker(request, home):
    with running_broker(request.param, home) as running:
        running.engine_name = request.param
        yield running


def gen_publishes(port: int, secrets: dict[str, str], *payloads: bytes, qos: int = 1) -> None:
    """gen publishes these samples to A, each acknowledged, and leaves."""
    gen = Client("tcp", port, "gen", secrets["gen"])
    assert gen.connect() == 0
    for payload in payloads:
        gen.publish("networks/A", payload, qos=qos)
    gen.close()


def leave_queued(port: int, secrets: dict[str, str], count: int = 3) -> None:
    """reader_a's persistent session "away" subscribed to A; while it is away, gen publishes."""
    away_on_a(port, secrets["reader_a"], "away")
    gen_publishes(port, secrets, *(f'{{"private": {n}}}'.encode() for n in range(count)))


def back_on_a(port: int, secret: str, secrets: dict[str, str]) -> list[Message]:
    """What reader_a's session "away" gets from A once it is back, up to a barrier (none is owed)."""
    back = Client("tcp", port, "reader_a", secret, client_id="away", clean_session=False)
    try:
        assert back.connect() == 0
        return [m for m in barrier(port, back, secrets) if m.topic == "networks/A"]
    finally:
        back.close()


def test_queued_samples_are_not_delivered_once_the_right_to_read_them_is_gone(engine_broker, home):
    """A key that lost A gets none of its queued A samples when it reconnects."""
    port = engine_broker.mqtt_port
    leave_queued(port, home.secrets)
    set_rights(home, port, "reader_a", subscribe=[])
    assert back_on_a(port, home.secrets["reader_a"], home.secrets) == []
    if engine_broker.engine_name == "mosquitto":
        return  # Mosquitto checks on delivery and keeps the rest queued; see the README
    # The samples were dropped, not held back: given the right again, the session gets none.
    set_rights(home, port, "reader_a", subscribe=["A"])
    assert back_on_a(port, home.secrets["reader_a"], home.secrets) == []


def test_unacknowledged_samples_are_not_resent_once_the_right_is_gone(broker, home):
    """A sample sent and never acknowledged is not resent once the key has lost the network."""
    port = broker.mqtt_port
    sock = session(port, "inflight", "reader_a", home.secrets["reader_a"], clean=False)
    try:
        sock.sendall(subscribe("networks/A", qos=1))
        assert read_packet(sock)[0] == 0x90
        gen_publishes(port, home.secrets, b'{"n": 1}')
        assert read_packet(sock)[0] == 0x32  # delivered, and left unacknowledged
    finally:
        sock.close()
    set_rights(home, port, "reader_a", subscribe=[])
    back = session(port, "inflight", "reader_a", home.secrets["reader_a"], clean=False)
    try:
        back.sendall(packet(0xC0, b""))  # PINGREQ: whatever is resent comes before its answer
        assert read_packet(back) == (0xD0, b"")
    finally:
        back.close()


def test_a_new_key_under_a_revoked_name_starts_with_no_session(engine_broker, home):
    """`revoke hana` then `add hana`: the new key gets none of the old one's queued samples.

    Mosquitto keeps a session by client id, not by key: the new key resumes it (session present
    1), but gets none of its samples of a network it may not read, which Mosquitto checks as it
    delivers. The README tells operators to give a new key new client ids.
    """
    port = engine_broker.mqtt_port
    leave_queued(port, home.secrets)
    home.radio_main("keys", "revoke", "reader_a")
    secret = home.radio_main("keys", "add", "reader_a", "--subscribe", "B").stdout.strip()
    home.secrets["reader_a"] = secret

    def connack() -> bytes | None:
        sock = open_socket(port)
        try:
            sock.sendall(connect("away", "reader_a", secret, clean=False))
            first, body = read_packet(sock)
            return body if first == 0x20 and body[1] == 0 else None  # accepted: the new key is in force
        finally:
            sock.close()

    answer = eventually(connack)
    assert answer is not None
    if engine_broker.engine_name == "embedded":
        assert answer == b"\x00\x00"  # session present 0: the old key's session is gone
    assert back_on_a(port, secret, home.secrets) == []


def test_a_key_revoked_while_the_broker_was_down_leaves_no_session_to_its_successor(home):
    broker = embedded_broker(home).start()
    try:
        leave_queued(broker.mqtt_port, home.secrets)
    finally:
        broker.stop()
    home.radio_main("keys", "revoke", "reader_a")
    secret = home.radio_main("keys", "add", "reader_a", "--subscribe", "A").stdout.strip()
    broker = embedded_broker(home).start()
    try:
        sock = open_socket(broker.mqtt_port)
        try:
            sock.sendall(connect("away", "reader_a", secret, clean=False))
            assert read_packet(sock) == (0x20, b"\x00\x00")
            sock.sendall(packet(0xC0, b""))
            assert read_packet(sock) == (0xD0, b"")  # no queued sample of the old key came first
        finally:
            sock.close()
    finally:
        broker.stop()


def test_a_will_is_checked_against_the_rights_of_the_moment_it_fires(engine_broker, home, everything_on):
    """A will registered while gen could publish to A neither fires nor is retained once it cannot."""
    port = engine_broker.mqtt_port
    watcher = everything_on(engine_broker)
    sock = session(port, "dying", "gen", home.secrets["gen"], will=("networks/A", b'{"will": 1}'))
    set_rights(home, port, "gen", publish=[])
    sock.close()  # without DISCONNECT: the will would fire now
    assert [m for m in barrier(port, watcher, home.secrets) if m.payload == b'{"will": 1}'] == []
    late = Client("tcp", port, "admin", home.secrets["admin"])
    try:
        assert late.connect() == 0
        assert late.subscribe("networks/A", qos=1) == 1
        assert [m for m in barrier(port, late, home.secrets) if m.topic == "networks/A"] == []
    finally:
        late.close()


def test_a_will_is_judged_when_it_fires_not_when_a_right_comes_and_goes(broker, home, everything_on):
    """Rights are those of the moment the will fires: a right taken away and given back before then
    lets it through; one still away drops it, counted against the key like any refused sample."""
    port = broker.mqtt_port
    watcher = everything_on(broker)
    sock = session(port, "comes-back", "gen", home.secrets["gen"], will=("networks/A", b'{"will": "back"}'))
    set_rights(home, port, "gen", publish=[])
    set_rights(home, port, "gen", publish=["A"])
    sock.close()  # without DISCONNECT: the will fires, and gen may publish to A again
    assert [m.payload for m in barrier(port, watcher, home.secrets)] == [b'{"will": "back"}']
    sock = session(port, "stays-away", "gen", home.secrets["gen"], will=("networks/A", b'{"will": "away"}'))
    set_rights(home, port, "gen", publish=[])
    sock.close()
    meter = broker.broker.radio.meter
    assert polling.until(lambda: meter.refused.get(("gen", "mqtt", "rights")) == 1)
    assert [m.payload for m in barrier(port, watcher, home.secrets)] == []


@pytest.fixture
def everything_on(home):
    """An admin on '#' against a given broker, closed afterwards."""
    clients = []

    def _open(running) -> Client:
        client = Client("tcp", running.mqtt_port, "admin", home.secrets["admin"])
        assert client.connect() == 0
        assert client.subscribe("#", qos=1) == 1
        clients.append(client)
        return client

    yield _open
    for client in clients:
        client.close()


def test_a_refused_qos2_publish_stores_nothing_and_incoming_qos2_is_bounded(broker, home):
    """A refused QoS 2 publish stores nothing and incoming QoS 2 is bounded: 5,000 x 60 KB grow nothing."""
    port = broker.mqtt_port
    anon = session(port, "anon-qos2", None, None)
    try:
        for pid in range(1, 51):  # anonymous: may publish nothing
            anon.sendall(publish("networks/pub", b"x" * 60_000, qos=2, packet_id=pid))
            assert read_packet(anon) == (0x50, pid.to_bytes(2, "big"))  # PUBREC, the payload not kept
            # PUBREL: until it comes, a resend of this packet id is this same refused sample.
            anon.sendall(b"\x62\x02" + pid.to_bytes(2, "big"))
            assert read_packet(anon) == (0x70, pid.to_bytes(2, "big"))

        def waiting() -> int:
            async def count() -> int:
                return broker.broker.radio.router.sessions[None, "anon-qos2"].awaiting_pubrel

            return int(broker.call(count))

        assert waiting() == 0
    finally:
        anon.close()
    gen = session(port, "gen-qos2", "gen", home.secrets["gen"])
    try:
        for pid in range(1, 21):  # the limit, max_incoming_qos2 = 20 by default
            gen.sendall(publish("networks/A", b"{}", qos=2, packet_id=pid))
            assert read_packet(gen)[0] == 0x50
        gen.sendall(publish("networks/A", b"{}", qos=2, packet_id=21))
        assert closed_within(gen, 3)
    finally:
        gen.close()


@pytest.mark.slow  # seconds of waiting: the fast tier stays under two minutes
def test_offline_anonymous_sessions_are_bounded_and_the_store_stays_small(home, caplog):
    """Offline anonymous sessions on networks/# are bounded: 600 x 1 KB keep the store small."""
    # Many from one address here: what is bounded is each session's queue (the caps on how many
    # sessions an address may open are tested in tests/test_abuse.py).
    home.config.write_text(home.config.read_text() + "[broker]\nanonymous_max_sessions_per_address = 200\n")
    with BrokerThread(
        LiveRegistry(home.config), mqtt=Address("127.0.0.1", 0), websocket=Address("127.0.0.1", 0)
    ) as broker:
        port = broker.mqtt_port
        for n in range(200):
            sock = session(port, f"anon-{n}", None, None, clean=False)
            sock.sendall(subscribe("networks/#", qos=1))
            assert read_packet(sock)[0] == 0x90
            sock.sendall(packet(0xE0, b""))  # DISCONNECT
            sock.close()
        admin = Client("tcp", port, "admin", home.secrets["admin"])
        assert admin.connect() == 0
        for n in range(300):
            admin.publish("networks/pub", b'{"n": %d, "pad": "%s"}' % (n, b"x" * 1000), qos=1)
        admin.close()

        async def depths() -> list[int]:
            return [s.queued for s in broker.broker.radio.router.sessions.values() if s.key_name is None]

        assert max(broker.call(depths)) <= 100
        assert sum(broker.call(depths)) > 0
    size = sum(p.stat().st_size for p in home.path.glob("broker.db*"))
    assert size < 20 * 1024 * 1024
    full = [r for r in caplog.records if "queue of client 'anon-7'" in r.getMessage()]
    assert len(full) == 1  # logged once per session, not once per drop


def test_an_offline_anonymous_session_expires(home):
    home.config.write_text(home.config.read_text() + "[broker]\nanonymous_session_expiry = 1\n")
    with BrokerThread(
        LiveRegistry(home.config), mqtt=Address("127.0.0.1", 0), websocket=Address("127.0.0.1", 0)
    ) as broker:
        sock = session(broker.mqtt_port, "short-lived", None, None, clean=False)
        sock.sendall(subscribe("networks/pub", qos=1))
        assert read_packet(sock)[0] == 0x90
        sock.sendall(packet(0xE0, b""))
        sock.close()

        def present() -> bool:
            async def held() -> bool:
                return (None, "short-lived") in broker.broker.radio.router.sessions

            return bool(broker.call(held))

        assert present()  # kept while its client is away ...
        assert eventually(lambda: not present(), within=4)  # ... and gone after its expiry


def test_qos2_deliveries_are_resent_on_reconnect(broker, home):
    """MQTT-4.4.0-1 for QoS 2: PUBLISH (with DUP) before PUBREC, PUBREL after it."""
    port = broker.mqtt_port
    sock = session(port, "q2", "reader_a", home.secrets["reader_a"], clean=False)
    sock.sendall(subscribe("networks/A", qos=2))
    assert read_packet(sock)[0] == 0x90
    gen_publishes(port, home.secrets, b'{"q": 2}', qos=2)
    first, body = read_packet(sock)
    assert first == 0x34  # PUBLISH QoS 2
    pid = body[2 + body[1] : 4 + body[1]]
    sock.close()  # no PUBREC
    sock = session(port, "q2", "reader_a", home.secrets["reader_a"], clean=False)
    first, body = read_packet(sock)
    assert first == 0x3C  # PUBLISH QoS 2 with DUP
    assert body[2 + body[1] : 4 + body[1]] == pid
    sock.sendall(packet(0x50, pid))  # PUBREC
    assert read_packet(sock) == (0x62, pid)  # PUBREL
    sock.close()  # no PUBCOMP
    sock = session(port, "q2", "reader_a", home.secrets["reader_a"], clean=False)
    try:
        assert read_packet(sock) == (0x62, pid)  # PUBREL again
        sock.sendall(packet(0x70, pid))  # PUBCOMP
        sock.sendall(packet(0xC0, b""))
        assert read_packet(sock) == (0xD0, b"")
    finally:
        sock.close()


def test_a_qos2_sample_sent_again_after_a_restart_is_delivered_once(home):
    """The packet ids awaiting PUBREL are kept with a persistent session: sent again after a
    restart, before PUBREL, a sample is the same one; once PUBCOMP came, the id is a new sample's."""
    registry = LiveRegistry(home.config)
    received = []
    for run in (1, 2):
        with BrokerThread(
            registry, mqtt=Address("127.0.0.1", 0), websocket=Address("127.0.0.1", 0)
        ) as broker:
            port = broker.mqtt_port
            reader = Client(
                "tcp", port, "reader_a", home.secrets["reader_a"], client_id="qos2-r", clean_session=False
            )
            try:
                assert reader.connect() == 0
                if run == 1:
                    assert reader.subscribe("networks/A", qos=1) == 1
                with session(port, "qos2-p", "gen", home.secrets["gen"], clean=False) as publisher:
                    dup = 0x08 if run == 2 else 0  # the same sample again, as if its PUBREC was lost
                    publisher.sendall(publish("networks/A", b'{"once": 1}', 2, 9, first_byte=0x34 | dup))
                    assert read_packet(publisher) == (0x50, b"\x00\x09")  # PUBREC
                    if run == 2:
                        publisher.sendall(b"\x62\x02\x00\x09")  # PUBREL
                        assert read_packet(publisher) == (0x70, b"\x00\x09")  # PUBCOMP: 9 is free
                        publisher.sendall(publish("networks/A", b'{"new": 2}', 2, 9))
                        assert read_packet(publisher) == (0x50, b"\x00\x09")
                received += [m.payload for m in reader.expect(1)]
            finally:
                reader.close()
    assert received == [b'{"once": 1}', b'{"new": 2}']


@contextlib.contextmanager
def restartable(home, kind: str) -> Iterator[int]:
    """A broker on the home's store, its MQTT port; at the end stopped, or killed (``kill -9``)."""
    if kind == "graceful":
        with BrokerThread(
            LiveRegistry(home.config), mqtt=Address("127.0.0.1", 0), websocket=Address("127.0.0.1", 0)
        ) as broker:
            yield broker.mqtt_port
        return
    process, port = start_broker_process(home)
    try:
        yield port
    finally:
        stop(process, kill=True)


@pytest.mark.parametrize("kind", ["graceful", "kill -9"])
def test_deliveries_in_flight_at_a_restart_go_again_under_their_packet_ids(home, kind):
    """MQTT-4.4.0-1, after a restart too: an unanswered PUBLISH goes again with DUP and its first
    packet id, at QoS 2 and QoS 1, and a PUBRECed QoS 2 one only as its PUBREL. Under a new id, a
    client whose PUBREC was lost would take the QoS 2 sample for another one: delivered twice."""
    credentials = ("reader_a", home.secrets["reader_a"])
    with contextlib.ExitStack() as after_the_stop, restartable(home, kind) as port:
        reader = session(port, "in-flight", *credentials, clean=False)
        after_the_stop.callback(reader.close)  # connected as the broker stops or is killed
        pids = _three_in_flight(reader, port, home.secrets)
    with restartable(home, kind) as port:
        with session(port, "in-flight", *credentials, clean=False) as reader:
            got = _resent(reader)
            assert [first for first, _ in got] == [0x62, 0x3C, 0x3A]  # PUBREL; QoS 2 and QoS 1, DUP
            assert [got[0][1], _pid_of(got[1][1]), _pid_of(got[2][1])] == pids
            assert [published(got[1][1], 2)[1], published(got[2][1], 1)[1]] == [b'{"n": 2}', b'{"n": 3}']
            reader.sendall(packet(0x70, pids[0]) + packet(0x50, pids[1]))  # PUBCOMP; PUBREC
            assert read_packet(reader) == (0x62, pids[1])
            reader.sendall(packet(0x70, pids[1]) + packet(0x40, pids[2]))  # PUBCOMP; PUBACK
            assert _resent(reader) == []
        with session(port, "in-flight", *credentials, clean=False) as reader:
            assert _resent(reader) == []  # every one answered: nothing is owed


def test_a_delivery_sent_from_the_queue_goes_again_under_its_packet_id_after_a_restart(home):
    """A sample queued while its client was away, then sent and left unanswered, keeps its packet
    id across a restart as one sent at once does."""
    credentials = ("reader_a", home.secrets["reader_a"])
    with restartable(home, "graceful") as port:
        _away_after_one(port, "queued", credentials, home.secrets)
        gen_publishes(port, home.secrets, b'{"queued": 1}', qos=2)
        with session(port, "queued", *credentials, clean=False) as reader:
            first, body = read_packet(reader)
            assert first == 0x34
            pid = _pid_of(body)
            assert pid != b"\x00\x01"  # the session's ids went on past the first
    with restartable(home, "graceful") as port, session(port, "queued", *credentials, clean=False) as reader:
        got = _resent(reader)
        assert [(first, _pid_of(body)) for first, body in got] == [(0x3C, pid)]
        assert published(got[0][1], 2)[1] == b'{"queued": 1}'


def test_samples_sent_from_the_queue_keep_their_packet_ids_when_the_store_lost_them(home, mocker):
    """A sample sent from a session's queue goes out before the batch holding its packet id is on
    disk: a ``kill -9`` then leaves the sample in the store without it. After the restart it goes
    again under that same id all the same, and so does the next: under ids shifted by one, a QoS 2
    client still holding the first sample's id (its PUBREC lost) would drop the second sample as
    a copy of the first."""
    credentials = ("reader_a", home.secrets["reader_a"])
    with restartable(home, "graceful") as port:
        _away_after_one(port, "lost-ids", credentials, home.secrets)
        gen_publishes(port, home.secrets, b'{"q": 1}', b'{"q": 2}', qos=2)  # queued, on disk
        # The ids of what is sent from now on never reach the disk, as with a kill -9 in the window.
        mocker.patch.object(Store, "sent", return_value=None)
        with session(port, "lost-ids", *credentials, clean=False) as reader:
            before = [read_packet(reader) for _ in range(2)]  # their PUBRECs are lost with the broker
    assert [published(body, 2)[1] for _, body in before] == [b'{"q": 1}', b'{"q": 2}']
    mocker.stopall()
    with (
        restartable(home, "graceful") as port,
        session(port, "lost-ids", *credentials, clean=False) as reader,
    ):
        after = _resent(reader)
    assert [published(body, 2)[1] for _, body in after] == [b'{"q": 1}', b'{"q": 2}']
    assert [_pid_of(body) for _, body in after] == [_pid_of(body) for _, body in before]


def _subscribed_and_away(home, client_id: str, qos: int) -> None:
    """A persistent session of reader_a subscribed to A, its client gone; all of it on disk."""
    with (
        restartable(home, "graceful") as port,
        session(port, client_id, "reader_a", home.secrets["reader_a"], clean=False) as reader,
    ):
        reader.sendall(subscribe("networks/A", qos=qos))
        assert read_packet(reader)[0] == 0x90


@pytest.mark.parametrize("qos", [1, 2])
def test_live_samples_after_a_restart_take_no_packet_id_a_lost_batch_used(home, mocker, qos):
    """A sample sent to a persistent session goes out before the batch holding it is on disk. A
    ``kill -9`` in that window loses the sample with its packet id, while the client may still hold
    that id (QoS 2: PUBREC sent, PUBREL awaited) and take a later sample under it for a copy of the
    lost one. The session's ids are reserved in the store ahead of their use: after the restart its
    samples go under ids past every one it may have used."""
    credentials = ("reader_a", home.secrets["reader_a"])
    _subscribed_and_away(home, "live-ids", qos)
    with restartable(home, "graceful") as port:
        # Nothing written from now on reaches the disk, as with a kill -9 in the window.
        mocker.patch.object(Store, "_write", return_value=None)
        with session(port, "live-ids", *credentials, clean=False) as reader:
            gen_publishes(port, home.secrets, b'{"lost": 1}', qos=qos)
            _, body = read_packet(reader)
            assert published(body, qos)[1] == b'{"lost": 1}'
            held = _pid_of(body)
            if qos == 2:
                reader.sendall(packet(0x50, held))  # PUBREC; its PUBREL is lost with the broker
    mocker.stopall()
    with (
        restartable(home, "graceful") as port,
        session(port, "live-ids", *credentials, clean=False) as reader,
    ):
        assert _resent(reader) == []  # the lost sample is unknown to the broker now
        gen_publishes(port, home.secrets, b'{"n": 1}', b'{"n": 2}', b'{"n": 3}', qos=qos)
        after = [read_packet(reader) for _ in range(3)]
    assert [published(body, qos)[1] for _, body in after] == [b'{"n": 1}', b'{"n": 2}', b'{"n": 3}']
    assert held not in [_pid_of(body) for _, body in after]


def test_queued_samples_after_a_restart_take_no_packet_id_a_lost_batch_used(home, mocker):
    """A sample sent from the queue goes under an id its stored row decides; rows are numbered
    ahead in the store, so a row a ``kill -9`` lost is never numbered again after the restart,
    and the next queued sample does not take the id a client may still hold for the lost one."""
    credentials = ("reader_a", home.secrets["reader_a"])
    _subscribed_and_away(home, "queued-ids", 2)
    with restartable(home, "graceful") as port:
        mocker.patch.object(Store, "_write", return_value=None)
        gen_publishes(port, home.secrets, b'{"lost": 1}', qos=2)  # queued for the absent client
        with session(port, "queued-ids", *credentials, clean=False) as reader:
            _, body = read_packet(reader)
            assert published(body, 2)[1] == b'{"lost": 1}'
            held = _pid_of(body)
            reader.sendall(packet(0x50, held))  # PUBREC; its PUBREL is lost with the broker
    mocker.stopall()
    with restartable(home, "graceful") as port:
        gen_publishes(port, home.secrets, b'{"n": 1}', qos=2)  # queued again
        with session(port, "queued-ids", *credentials, clean=False) as reader:
            _, body = read_packet(reader)
    assert published(body, 2)[1] == b'{"n": 1}'
    assert _pid_of(body) != held


def _away_after_one(port: int, client_id: str, credentials: tuple[str, str], secrets: dict[str, str]) -> None:
    """A persistent session subscribed to A at QoS 2, one sample answered, its client gone."""
    with session(port, client_id, *credentials, clean=False) as reader:
        reader.sendall(subscribe("networks/A", qos=2))
        assert read_packet(reader)[0] == 0x90
        _answered_one(reader, port, secrets)


def _pid_of(body: bytes) -> bytes:
    """The packet id of a QoS 1 or 2 PUBLISH body."""
    return body[2 + body[1] : 4 + body[1]]


def _answered_one(reader: socket.socket, port: int, secrets: dict[str, str]) -> None:
    """``reader`` gets one sample of A and acknowledges it: the session's next packet id is not 1."""
    gen_publishes(port, secrets, b'{"n": 0}', qos=1)
    first, body = read_packet(reader)
    assert first == 0x32
    reader.sendall(packet(0x40, _pid_of(body)))  # PUBACK


def _three_in_flight(reader: socket.socket, port: int, secrets: dict[str, str]) -> list[bytes]:
    """``reader`` subscribes to A at QoS 2, acknowledges one sample, then is sent three it leaves in
    flight: QoS 2 PUBRECed (released), QoS 2 and QoS 1 unanswered. Their packet ids.

    Each is in the store when this returns: the publisher had its acknowledgements, and the PUBREL
    went once the release was kept.
    """
    reader.sendall(subscribe("networks/A", qos=2))
    assert read_packet(reader)[0] == 0x90
    _answered_one(reader, port, secrets)
    gen_publishes(port, secrets, b'{"n": 1}', b'{"n": 2}', qos=2)
    gen_publishes(port, secrets, b'{"n": 3}', qos=1)
    bodies = [read_packet(reader) for _ in range(3)]
    assert [first for first, _ in bodies] == [0x34, 0x34, 0x32]
    pids = [_pid_of(body) for _, body in bodies]
    reader.sendall(packet(0x50, pids[0]))  # PUBREC for the first only
    assert read_packet(reader) == (0x62, pids[0])  # PUBREL: it is released
    return pids


def test_a_refused_qos2_sample_sent_again_after_a_kill_is_the_same_refused_sample(home):
    """A refused QoS 2 sample's packet id awaits its PUBREL in the store, as an admitted one's does,
    before its PUBREC goes: sent again after a ``kill -9``, before PUBREL, it is the same sample, not
    judged (and counted) again, nor delivered once the key may publish there."""
    gen = ("gen", home.secrets["gen"])
    with contextlib.ExitStack() as after_the_kill, restartable(home, "kill -9") as port:
        publisher = session(port, "refused", *gen, clean=False)
        after_the_kill.callback(publisher.close)  # its leaving saves nothing: the broker is gone
        publisher.sendall(publish("networks/B", b'{"refused": 1}', 2, 9))  # gen may not publish to B
        assert read_packet(publisher) == (0x50, b"\x00\x09")  # PUBREC: MQTT 3.1.1 has no refusal
    home.radio_main("keys", "edit", "gen", "--publish", "A,B")
    with restartable(home, "kill -9") as port:
        reader = Client("tcp", port, "reader_b", home.secrets["reader_b"])
        try:
            assert reader.connect() == 0
            assert reader.subscribe("networks/B", qos=1) == 1
            with session(port, "refused", *gen, clean=False) as publisher:
                publisher.sendall(publish("networks/B", b'{"refused": 1}', 2, 9, first_byte=0x3C))  # DUP
                assert read_packet(publisher) == (0x50, b"\x00\x09")
                publisher.sendall(packet(0x62, b"\x00\x09"))  # PUBREL
                assert read_packet(publisher) == (0x70, b"\x00\x09")  # PUBCOMP
                publisher.sendall(publish("networks/B", b'{"token": 1}', 1, 10))
                assert read_packet(publisher) == (0x40, b"\x00\x0a")
            assert [m.payload for m in reader.expect(1)] == [b'{"token": 1}']
        finally:
            reader.close()


def test_a_released_qos2_delivery_is_released_again_after_its_read_right_went(home):
    """Once its PUBREC came, the client has the sample: the PUBREL that ends the exchange carries
    nothing of it, so it goes again after the key lost its right to the network too. Dropped
    instead, the client would hold that packet id awaiting a PUBREL for ever."""
    credentials = ("reader_a", home.secrets["reader_a"])
    with embedded_broker(home) as broker:
        port = broker.mqtt_port
        with session(port, "released", *credentials, clean=False) as reader:
            pids = _first_of_two_released(reader, port, home.secrets)
        home.radio_main("keys", "edit", "reader_a", "--subscribe", "B")  # in force once it returns
        with session(port, "released", *credentials, clean=False) as reader:
            assert _resent(reader) == [(0x62, pids[0])]  # the PUBREL again; the unanswered sample, no longer


def _first_of_two_released(reader: socket.socket, port: int, secrets: dict[str, str]) -> list[bytes]:
    """``reader`` subscribes to A at QoS 2, gets two samples and PUBRECs the first: their packet ids."""
    reader.sendall(subscribe("networks/A", qos=2))
    assert read_packet(reader)[0] == 0x90
    gen_publishes(port, secrets, b'{"n": 1}', b'{"n": 2}', qos=2)
    bodies = [read_packet(reader) for _ in range(2)]
    assert [first for first, _ in bodies] == [0x34, 0x34]
    pids = [body[2 + body[1] : 4 + body[1]] for _, body in bodies]
    reader.sendall(packet(0x50, pids[0]))  # PUBREC for the first only
    assert read_packet(reader) == (0x62, pids[0])  # PUBREL: it is released
    return pids


def _resent(reader: socket.socket) -> list[tuple[int, bytes]]:
    """What a resumed session is sent before the answer to a PINGREQ: what was resent to it."""
    reader.sendall(packet(0xC0, b""))
    got = []
    while (answer := read_packet(reader))[0] != 0xD0:
        got.append(answer)
    return got


def test_the_store_is_private(broker, home):
    """broker.db and its -wal and -shm hold private samples: 0600, never world-readable."""
    leave_queued(broker.mqtt_port, home.secrets)

    async def flushed() -> None:
        store = broker.broker.radio.store
        assert store is not None
        done = __import__("asyncio").get_running_loop().create_future()
        store.after_commit(done.set_result)
        assert await done is True

    broker.call(flushed)
    files = list(home.path.glob("broker.db*"))
    assert len(files) >= 2
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_a_store_that_cannot_be_read_stops_the_broker_with_one_line(home):
    """A corrupt broker.db stops the broker with one line and status 2, never a traceback."""
    (home.path / "broker.db").write_bytes(b"this is not a database" * 100)
    result = home.radio("broker", "--mqtt", "127.0.0.1:0", "--ws", "127.0.0.1:0", check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "broker.db" in lines[0]
    assert "Move it aside" in lines[0]


def test_a_store_that_cannot_be_written_is_never_acknowledged(broker, home, mocker, caplog):
    """The broker acknowledges no sample its store could not keep.

    A failing disk cannot be made here, so the write itself is made to fail.
    """
    leave_queued(broker.mqtt_port, home.secrets, count=1)  # a persistent session to queue for
    mocker.patch.object(Store, "_write", side_effect=sqlite3.OperationalError("disk I/O error"))
    sock = session(broker.mqtt_port, "pub-fail", "gen", home.secrets["gen"])
    try:
        sock.sendall(publish("networks/A", b'{"lost": "not acknowledged"}', qos=1, packet_id=7))
        assert closed_within(sock, 5)  # no PUBACK came first: the read would have returned it
    finally:
        sock.close()
    assert sum("cannot write the broker's store" in r.getMessage() for r in caplog.records) == 1
    mocker.stopall()
    gen = Client("tcp", broker.mqtt_port, "gen", home.secrets["gen"])
    try:
        assert gen.connect() == 0
        gen.publish("networks/A", b'{"kept": 1}', qos=1)  # acknowledged again once it can write
    finally:
        gen.close()


def test_a_store_that_fails_now_and_then_says_so_once(tmp_path, mocker, caplog):
    """A nearly full disk takes some batches and fails others: one line for the outage, not one
    "failing" and one "recovered" per batch; "recovered" once no batch failed for a while."""
    outcomes = iter([False, True] * 5 + [True])

    async def flapping_then_quiet() -> None:
        store = Store(tmp_path / "broker.db")
        write = store._write

        def nearly_full_disk(batch: list[tuple[str, tuple[object, ...]]]) -> None:  # cannot be made here
            if not next(outcomes):
                msg = "database or disk is full"
                raise sqlite3.OperationalError(msg)
            write(batch)

        mocker.patch.object(store, "_write", side_effect=nearly_full_disk)
        store.start()
        for seq in range(11):
            if seq == 10:  # the last batch comes after a quiet spell
                mocker.patch("radio.broker.store.RECOVERED_AFTER", 0.0, create=True)
            mark = store.pending
            store.queue("listener", seq, "networks/A", b"{}", 1)
            answered = asyncio.get_running_loop().create_future()
            store.after_commit(answered.set_result, since=mark)
            await answered
        await store.close()

    with caplog.at_level(logging.WARNING, logger="radio.broker"):
        asyncio.run(flapping_then_quiet())
    said = [record.getMessage() for record in caplog.records]
    failing = [line for line in said if line.startswith("cannot write the broker's store")]
    recovered = [line for line in said if line.startswith("the broker's store") and "written again" in line]
    assert len(failing) == 1
    assert len(recovered) == 1
    assert said[-1] == recovered[0]


def test_each_change_is_written_on_its_own(broker, home):
    """Each change is written on its own, a sample as one row, never the whole state again."""
    leave_queued(broker.mqtt_port, home.secrets, count=50)

    async def written() -> int:
        store = broker.broker.radio.store
        assert store is not None
        done = __import__("asyncio").get_running_loop().create_future()
        store.after_commit(done.set_result)
        await done
        return store.written

    before = broker.call(written)
    gen = Client("tcp", broker.mqtt_port, "gen", home.secrets["gen"])
    assert gen.connect() == 0
    gen.publish("networks/A", b'{"one": "more"}', qos=1)
    gen.close()
    assert broker.call(written) - before == 1  # the one queued row, not the 50 before it


def test_of_a_topics_retained_values_in_one_batch_only_the_last_is_written(tmp_path):
    """A network publishing thousands of samples a second costs one retained row per batch."""

    async def batch_then_reopen() -> tuple[int, list[tuple[str, bytes, int]]]:
        store = Store(tmp_path / "broker.db")
        for n in range(5):  # recorded before the writer runs: one batch
            store.retain("networks/A", b'{"n": %d}' % n, 1)
        store.retain("networks/B", b'{"kept": true}', 1)
        store.retain("networks/C", b'{"gone": true}', 1)
        store.retain("networks/C", b"", 0)  # cleared within the batch: nothing of C is kept
        store.start()
        committed = asyncio.get_running_loop().create_future()
        store.after_commit(committed.set_result)
        assert await committed is True
        written = store.written
        await store.close()
        return written, Store(tmp_path / "broker.db").load().retained

    written, retained = asyncio.run(batch_then_reopen())
    assert written == 3  # A's last value, B, and C's clearing: not the 8 changes recorded
    assert sorted(retained) == [("networks/A", b'{"n": 4}', 1), ("networks/B", b'{"kept": true}', 1)]


def test_a_sample_whose_changes_went_out_in_a_failed_batch_is_never_acknowledged(tmp_path, mocker):
    """The writer takes batches whenever it is ready: a publish's change may leave in one batch and
    its PUBACK's wait ride the next. If the first failed, the wait gets False all the same."""

    async def split_publish() -> list[bool]:
        store = Store(tmp_path / "broker.db")
        taken = threading.Event()

        def failing_disk(batch: list[object]) -> None:  # a disk error cannot be made here for real
            taken.set()
            msg = "disk I/O error"
            raise sqlite3.OperationalError(msg)

        write = mocker.patch.object(store, "_write", side_effect=failing_disk)
        store.start()
        mark = store.pending  # as Connection._on_publish does, before the publish records anything
        store.queue("listener", 1, "networks/A", b"{}", 1)
        await asyncio.to_thread(taken.wait, 10)  # the writer took it, before the PUBACK's wait
        write.side_effect = None  # the disk is back: the wait's own batch is written
        answers: list[bool] = []
        answered = asyncio.get_running_loop().create_future()
        store.after_commit(lambda ok: (answers.append(ok), answered.set_result(None)), since=mark)
        await answered
        await store.close()
        return answers

    assert asyncio.run(split_publish()) == [False]


def test_a_change_sqlite_cannot_take_fails_its_batch_and_the_writer_goes_on(tmp_path):
    """Any error in a batch is that batch's failure: the writer must live to answer the next."""

    async def too_large_then_fine() -> tuple[list[bool], list[int]]:
        store = Store(tmp_path / "broker.db")
        store.start()
        answers: list[bool] = []
        for seq in (2**64, 2):  # SQLite integers stop at 2**63 - 1: OverflowError, not sqlite3.Error
            mark = store.pending
            store.queue("listener", seq, "networks/A", b"{}", 1)
            answered = asyncio.get_running_loop().create_future()
            store.after_commit(
                lambda ok, done=answered: (answers.append(ok), done.set_result(None)), since=mark
            )
            await asyncio.wait_for(answered, 10)
        await asyncio.wait_for(store.close(), 10)
        kept = [seq for (seq,) in sqlite3.connect(tmp_path / "broker.db").execute("SELECT seq FROM queued")]
        return answers, kept

    assert asyncio.run(too_large_then_fine()) == ([False, True], [2])


def start_broker_process(home) -> tuple[subprocess.Popen[str], int]:
    process = broker_process(home)
    assert process.stdout is not None
    for line in process.stdout:
        if match := re.search(r"mqtt://127\.0\.0\.1:(\d+)", line):
            return process, int(match[1])
    pytest.fail("the broker printed no MQTT address")


def stop(process: subprocess.Popen[str], *, kill: bool = False) -> None:
    if kill:
        process.kill()
    else:
        process.terminate()
    process.wait(10)
    assert process.stdout is not None
    process.stdout.close()


def publish_until_killed(home, port: int, broker: subprocess.Popen[str]) -> set[int]:
    """Publish 2,000 retained QoS 1 samples, 64 in flight; SIGKILL the broker after the 200th PUBACK.

    Returns the numbers of the samples the broker acknowledged.
    """
    acked: set[int] = set()
    sent: dict[int, int] = {}
    killed = threading.Event()

    def on_publish(_c, _u, mid, _rc, _p) -> None:
        acked.add(sent[mid])
        if len(acked) >= 200 and not killed.is_set():
            killed.set()
            broker.kill()  # mid-stream: later samples are still in flight

    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="loader")
    publisher.username_pw_set("gen", home.secrets["gen"])
    publisher.max_inflight_messages_set(64)
    publisher.on_publish = on_publish
    publisher.connect("127.0.0.1", port)
    publisher.loop_start()
    try:
        for n in range(2_000):
            info = publisher.publish("networks/A", json.dumps({"n": n}), qos=1, retain=True)
            sent[info.mid] = n
        assert killed.wait(30)
    finally:
        publisher.loop_stop()
        publisher.disconnect()
        if (sock := publisher.socket()) is not None:
            sock.close()
    return set(acked)


@pytest.mark.slow
def test_no_acknowledged_sample_is_lost_to_kill_9(home):
    """Every PUBACKed sample reaches an offline persistent subscriber, even past a kill -9."""
    broker, port = start_broker_process(home)
    try:
        away = Client(
            "tcp", port, "reader_a", home.secrets["reader_a"], client_id="durable", clean_session=False
        )
        assert away.connect() == 0
        assert away.subscribe("networks/A", qos=1) == 1
        away.close()
        acked = publish_until_killed(home, port, broker)
    finally:
        stop(broker, kill=True)
    assert len(acked) >= 200

    broker, port = start_broker_process(home)
    try:
        back = Client(
            "tcp", port, "reader_a", home.secrets["reader_a"], client_id="durable", clean_session=False
        )
        try:
            assert back.connect() == 0
            received = {json.loads(m.payload)["n"] for m in barrier(port, back, home.secrets)}
        finally:
            back.close()
        assert acked - received == set()  # every acknowledged sample survived the kill
        late = Client("tcp", port, "reader_a", home.secrets["reader_a"])
        try:
            assert late.connect() == 0
            assert late.subscribe("networks/A", qos=1) == 1
            retained = json.loads(late.expect(1)[0].payload)["n"]
        finally:
            late.close()
        assert retained >= max(acked)  # the retained value did not roll back
    finally:
        stop(broker)
