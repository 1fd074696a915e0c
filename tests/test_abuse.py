"""One source cannot fill the disk, stall publishers or lock others out of the embedded broker.

Each test is an attack scaled down to run in CI (bench/abuse.py runs the full-size ones), from
127.0.0.1, with the well-behaved clients on another loopback address, 127.0.0.2.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from embedded import embedded_broker
from mqtt_client import Client, connected, listening
from polling import until
from raw_mqtt import (
    closed_by_peer,
    connect,
    connect5,
    packet,
    puback,
    publish,
    publish5,
    published,
    read_packet,
    read_websocket,
    session5,
    subscribe,
    websocket_frame,
    websocket_upgrade,
)
from test_broker_limits import metric as scrape
from test_mqtt5 import persistent
from test_tls import make_certs, use_tls

from radio import memory, wire
from radio.broker.store import SCHEMA
from radio.broker.thread import BrokerThread
from radio.config import Address
from radio.logsummary import Summary
from radio.registry import LiveRegistry
from radio.tls import client_context
from radio.wire.reasons import QUOTA_EXCEEDED

ATTACKER = "127.0.0.1"
OTHER = "127.0.0.2"
DISCONNECT = packet(0xE0, b"")
PINGREQ = packet(0xC0, b"")


def platform(home, *settings: str, networks: str = "") -> BrokerThread:
    """The broker with these [broker] settings and its metrics served; not started yet."""
    text = home.config.read_text() + networks
    home.config.write_text(text + "[broker]\n" + "\n".join([*settings, 'metrics = "127.0.0.1:0"']) + "\n")
    return embedded_broker(home)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_certs(tmp_path_factory.mktemp("certs"))


def every_listener(home, certs: Path, *settings: str) -> BrokerThread:
    """``platform`` with the TLS listeners too (mqtts, wss), on free ports; not started yet."""
    use_tls(home, certs)
    anywhere = Address("127.0.0.1", 0)
    text = home.config.read_text()
    home.config.write_text(text + "[broker]\n" + "\n".join([*settings, 'metrics = "127.0.0.1:0"']) + "\n")
    return embedded_broker(home, mqtts=anywhere, wss=anywhere)


def metric(broker: BrokerThread, name: str, labels: str = "") -> float:
    assert broker.broker is not None
    assert broker.broker.metrics_port is not None
    return scrape(broker.broker.metrics_port, name, labels)


def publish_padded(
    port: int, secret: str, count: int, user: str = "admin", topic: str = "networks/pub/x", pad: int = 1000
) -> None:
    """``count`` samples of about ``pad`` bytes (1 KB) to ``topic``, QoS 1, each acknowledged."""
    publisher = Client("tcp", port, user, secret)
    try:
        assert publisher.connect() == 0
        for n in range(count):
            publisher.publish(topic, b'{"n": %d, "pad": "%s"}' % (n, b"x" * pad), qos=1)
    finally:
        publisher.close()


def dial(port: int, source: str = ATTACKER) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))


def connack(
    port: int,
    client_id: str,
    user: str | None = None,
    secret: str | None = None,
    *,
    source: str = ATTACKER,
    clean: bool = True,
) -> tuple[socket.socket, int, bool]:
    """Connect; the socket, the CONNACK's return code and its session-present flag."""
    sock = dial(port, source)
    sock.sendall(connect(client_id, user, secret, clean=clean))
    first, body = read_packet(sock)
    assert first == 0x20
    return sock, body[1], bool(body[0] & 1)


def anonymous_persistent(port: int, client_id: str, topic_filter: str, source: str = ATTACKER) -> int:
    """Open an anonymous persistent session subscribed at QoS 1, then leave; the CONNACK code."""
    sock, code, _ = connack(port, client_id, source=source, clean=False)
    with sock:
        if code == 0:
            sock.sendall(subscribe(topic_filter, qos=1))
            assert read_packet(sock)[0] == 0x90
            sock.sendall(DISCONNECT)
    return code


def store_size(home) -> int:
    return sum(p.stat().st_size for p in home.path.glob("broker.db*"))


def on_loop(broker: BrokerThread, read: Callable[[], object]) -> object:
    async def call() -> object:
        return read()

    return broker.call(call)


# Anonymous persistent sessions.
def test_anonymous_persistent_sessions_are_capped_per_address_and_in_all(home):
    with platform(home, "anonymous_max_sessions_per_address = 3", "anonymous_max_sessions = 5") as broker:
        port = broker.mqtt_port
        codes = [anonymous_persistent(port, f"a{n}", "networks/pub/#") for n in range(5)]
        assert codes == [0, 0, 0, 3, 3]  # CONNACK 3, server unavailable, past 3 from one address
        assert [anonymous_persistent(port, f"b{n}", "networks/pub/#", OTHER) for n in range(3)] == [0, 0, 3]
        # What is not a new anonymous persistent session is not refused: resuming one, a clean
        # session, a key's persistent session.
        sock, code, present = connack(port, "a1", clean=False)
        sock.close()
        assert (code, present) == (0, True)
        sock, code, _ = connack(port, "c0")
        sock.close()
        assert code == 0
        sock, code, _ = connack(port, "r0", "reader_a", home.secrets["reader_a"], clean=False)
        sock.close()
        assert code == 0
        per_address = '{reason="anonymous_sessions_per_address"}'
        assert metric(broker, "radio_broker_refused_connects_total", per_address) == 2
        assert metric(broker, "radio_broker_refused_connects_total", '{reason="anonymous_sessions"}') == 1
        assert metric(broker, "radio_broker_anonymous_sessions") == 5


def test_anonymous_clients_of_one_address_cannot_fill_a_listener(home):
    """A CONNECT without a key is as cheap as a socket: past the cap an address's next anonymous
    client is refused, while its keyed clients and other addresses still get in."""
    settings = ("max_connections = 8", "anonymous_max_connections_per_address = 5")
    with platform(home, *settings) as broker, contextlib.ExitStack() as sockets:
        port = broker.mqtt_port
        held = []
        for n in range(6):
            sock, code, _ = connack(port, f"crowd-{n}")
            if code == 0:
                held.append(sockets.enter_context(sock))
            else:
                sock.close()
        assert len(held) == 5  # the sixth got CONNACK 3, and left the listener its other places
        sock, code, _ = connack(port, "device", "gen", home.secrets["gen"])
        sockets.enter_context(sock)
        assert code == 0
        sock, code, _ = connack(port, "neighbour", source=OTHER)
        sockets.enter_context(sock)
        assert code == 0
        held.pop(0).close()  # one of the five leaves: its place is the address's again
        connected = broker.broker.radio.router.anonymous_connections
        assert until(lambda: len(connected) == 5)  # four of the address's, one of its neighbour's
        sock, code, _ = connack(port, "crowd-again")
        sockets.enter_context(sock)
        assert code == 0
        reason = '{reason="anonymous_connections_per_address"}'
        assert metric(broker, "radio_broker_refused_connects_total", reason) == 1


def test_anonymous_sessions_from_one_address_cannot_fill_the_store(home):
    """300 anonymous persistent sessions on networks/pub/# from one address, then 200 x 1 KB."""
    with platform(home) as broker:
        port = broker.mqtt_port
        before = store_size(home)
        codes = [anonymous_persistent(port, f"flood-{n}", "networks/pub/#") for n in range(300)]
        assert codes.count(0) == 10  # the default per address
        assert codes.count(3) == 290
        publish_padded(port, home.secrets["admin"], 200)
        # Each session keeps at most its 64 KiB: ten of them, under 1 MiB, and a write-ahead log
        # of a few MiB (300 sessions took 20 MB before).
        assert store_size(home) - before < 8 * 1024 * 1024
        assert metric(broker, "radio_broker_anonymous_queued_bytes") <= 10 * 64 * 1024 + 2048


def test_the_store_gives_space_back_once_sessions_expire(home):
    with platform(home, "anonymous_session_expiry = 1", "anonymous_max_sessions_per_address = 60") as broker:
        port = broker.mqtt_port
        # A payload is stored once for all the sessions it waits for: one of 60 KB for each.
        assert all(anonymous_persistent(port, f"gone-{n}", f"networks/pub/{n}") == 0 for n in range(60))
        for n in range(60):
            publish_padded(port, home.secrets["admin"], 1, topic=f"networks/pub/{n}", pad=60_000)
        full = store_size(home)
        assert full > 3 * 1024 * 1024
        assert until(lambda: on_loop(broker, lambda: len(broker.broker.radio.router.sessions)) == 0)
        # Expired: the WAL is checkpointed and truncated, the freed pages handed back.
        assert until(lambda: store_size(home) < 512 * 1024), store_size(home)
        assert metric(broker, "radio_broker_store_compactions_total") > 0


# Sessions belong to (key, client id).
def test_an_anonymous_session_does_not_lock_a_key_out_of_its_client_id(home):
    with platform(home) as broker:
        port = broker.mqtt_port
        assert anonymous_persistent(port, "sensor-42", "networks/pub") == 0
        device, code, present = connack(
            port, "sensor-42", "gen", home.secrets["gen"], source=OTHER, clean=False
        )
        assert (code, present) == (0, False)  # the key's own session, not the anonymous one
        # An anonymous reconnect with that id resumes the anonymous session and leaves the key's
        # connection alone.
        anon, code, present = connack(port, "sensor-42", clean=False)
        assert (code, present) == (0, True)
        anon.close()
        device.sendall(PINGREQ)
        assert read_packet(device)[0] == 0xD0
        device.close()


def test_no_client_resumes_another_keys_session(home):
    """reader_a's persistent session "dev" keeps its samples for reader_a alone."""
    with platform(home) as broker:
        port = broker.mqtt_port
        owner, code, _ = connack(port, "dev", "reader_a", home.secrets["reader_a"], source=OTHER, clean=False)
        owner.sendall(subscribe("networks/A", qos=1))
        assert read_packet(owner)[0] == 0x90
        owner.sendall(DISCONNECT)
        owner.close()
        gen = Client("tcp", port, "gen", home.secrets["gen"])
        try:
            assert gen.connect() == 0
            for n in range(3):
                gen.publish("networks/A", b'{"n": %d}' % n, qos=1)
        finally:
            gen.close()
        for user in (None, "reader_b"):  # anonymous, and another key
            sock, code, present = connack(port, "dev", user, home.secrets.get(user or ""), clean=False)
            assert (code, present) == (0, False)
            sock.sendall(PINGREQ)
            assert read_packet(sock)[0] == 0xD0  # a PINGRESP, and no sample before it
            sock.close()
        owner, code, present = connack(
            port, "dev", "reader_a", home.secrets["reader_a"], source=OTHER, clean=False
        )
        assert (code, present) == (0, True)
        got = []
        for _ in range(3):
            _, body = read_packet(owner)
            got.append(published(body, 1)[1])
            owner.sendall(puback(int.from_bytes(body[2 + body[1] : 4 + body[1]], "big")))
        assert got == [b'{"n": %d}' % n for n in range(3)]
        owner.close()


def test_sessions_of_one_client_id_under_two_keys_survive_a_restart_and_a_revocation(home):
    def held(broker: BrokerThread) -> list[tuple[str | None, str]]:
        return sorted(on_loop(broker, lambda: list(broker.broker.radio.router.sessions)), key=str)  # type: ignore[arg-type]

    with platform(home) as broker:
        port = broker.mqtt_port
        assert anonymous_persistent(port, "dev", "networks/pub") == 0
        sock, code, _ = connack(port, "dev", "reader_a", home.secrets["reader_a"], clean=False)
        sock.close()
        assert code == 0
        assert len(held(broker)) == 2
    again = BrokerThread(
        LiveRegistry(home.config), mqtt=Address("127.0.0.1", 0), websocket=Address("127.0.0.1", 0)
    )
    with again as broker:
        assert [client_id for _, client_id in held(broker)] == ["dev", "dev"]
        home.radio_main("keys", "revoke", "reader_a")  # waits until the broker has it in force
        assert held(broker) == [(None, "dev")]
        sock, code, present = connack(broker.mqtt_port, "dev", clean=False)
        sock.close()
        assert (code, present) == (0, True)


def test_a_store_written_before_sessions_were_kept_per_key_is_restored(home):
    """Rows under a bare client id are renamed on restore, with their queued samples."""
    key_id = home.store().keys()["reader_a"].id
    attributes = {"radio.key": "reader_a", "radio.key_id": key_id, "offline_since": time.time()}
    with contextlib.closing(sqlite3.connect(home.path / "broker.db")) as db, db:
        db.executescript(SCHEMA)
        db.execute(
            "INSERT INTO sessions VALUES (?, ?, ?)",
            ("old-dev", json.dumps(attributes), '[["networks/A", 1]]'),
        )
        db.execute(
            "INSERT INTO queued VALUES (?, ?, ?, ?, ?)", ("old-dev", 7, "networks/A", b'{"kept": 1}', 1)
        )
    with platform(home) as broker:
        sock, code, present = connack(
            broker.mqtt_port, "old-dev", "reader_a", home.secrets["reader_a"], clean=False
        )
        with sock:
            assert (code, present) == (0, True)
            first, body = read_packet(sock)
            assert (first & 0xF6, published(body, 1)) == (0x32, ("networks/A", b'{"kept": 1}'))
    with contextlib.closing(sqlite3.connect(home.path / "broker.db")) as db:
        assert db.execute("SELECT client_id FROM sessions").fetchall() == [(f"{key_id}\x00old-dev",)]


# Retained samples.
CAPPED = """
[networks.capped]
public = true
max_retained = 5
"""


def test_a_network_retains_at_most_max_retained_topics(home):
    with platform(home, networks=CAPPED) as broker:
        port = broker.mqtt_port
        with (
            listening(port, None, None, "networks/capped/#") as live,
            connected(port, "admin", home.secrets["admin"]) as publisher,
        ):
            for n in range(8):
                publisher.publish(f"networks/capped/t{n}", b'{"v": %d}' % n, qos=1, retain=True)
            publisher.publish("networks/capped/t0", b'{"v": 100}', qos=1, retain=True)  # replacing works
            publisher.publish("networks/capped/t10", b'{"v": 10}', qos=1, retain=True)  # refused
            publisher.publish("networks/capped", b'{"v": 0}', qos=1, retain=True)  # the network's own: kept
            publisher.publish("networks/capped/plain", b'{"v": -1}', qos=1)  # not retained: delivered
            live_topics = sorted(m.topic for m in live.expect(8))
        assert "networks/capped/t5" not in live_topics  # a refused publish reaches nobody
        with listening(port, None, None, "networks/capped/#") as late:
            retained = {m.topic: m.payload for m in late.expect(6)}
        assert retained == {
            "networks/capped": b'{"v": 0}',
            "networks/capped/t0": b'{"v": 100}',
            **{f"networks/capped/t{n}": b'{"v": %d}' % n for n in (1, 2, 3, 4)},
        }
        assert metric(broker, "radio_broker_refused_retained_total") == 4
        meter = broker.broker.radio.meter
        assert meter.totals[("admin", "mqtt", "capped")][0] == 8  # refused at the gate: not charged
        assert meter.refused[("admin", "mqtt", "max_retained")] == 4
        # An empty retained PUBLISH clears a topic, and so frees its place for another (the six
        # kept count the network's own topic, which is never refused but takes a place).
        publisher = Client("tcp", port, "admin", home.secrets["admin"])
        try:
            assert publisher.connect() == 0
            publisher.publish("networks/capped/t1", b"", qos=1, retain=True)
            publisher.publish("networks/capped/t2", b"", qos=1, retain=True)
            publisher.publish("networks/capped/t11", b'{"v": 11}', qos=1, retain=True)
        finally:
            publisher.close()
        late = Client("tcp", port)
        try:
            assert late.connect() == 0
            assert late.subscribe("networks/capped/#", qos=1) == 1
            topics = sorted(m.topic for m in late.expect(5))
        finally:
            late.close()
        assert topics == [f"networks/capped{t}" for t in ("", "/t0", "/t11", "/t3", "/t4")]


# Clients that never read.
@pytest.mark.slow  # seconds of waiting: the fast tier stays under two minutes
def test_an_anonymous_client_that_reads_nothing_is_read_no_further_than_its_room(home):
    """Everything an anonymous client sends asks for an answer: unread past its room, it is read no
    more (TCP then holds it back) until they drain, rather than answered without bound."""
    with platform(home, "send_buffer = 65536") as broker:
        deaf = socket.socket()
        deaf.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        deaf.connect(("127.0.0.1", broker.mqtt_port))
        with deaf:
            deaf.sendall(connect5("deaf", None, None))
            assert read_packet(deaf)[0] == 0x20  # and from now on it reads nothing
            # 160 KB of QoS 1 PUBLISHes, each refused with a PUBACK 0x87 and its reason string
            refused = b"".join(publish5("a", b"", 1, n) for n in range(1, 20_001))
            deaf.settimeout(2)
            sent = 0
            with contextlib.suppress(TimeoutError):  # the broker stopped reading: TCP holds the sender
                while sent < 20_000_000:
                    deaf.sendall(refused)
                    sent += len(refused)

            def waiting() -> int:
                return max(
                    c.waiting
                    for c in broker.broker.radio.connections
                    if c.session and c.session.key_name is None
                )

            # Its room, and the answers to one read of its socket (up to 256 KiB): 93 MB before.
            assert on_loop(broker, waiting) < 4_000_000, f"{sent:,} bytes sent"
        with dial(broker.mqtt_port, OTHER) as other:
            other.sendall(connect("other"))
            assert read_packet(other)[0] == 0x20


def test_subscribes_that_bring_many_retained_samples_give_the_others_their_turn(home):
    """Each SUBSCRIBE brings every retained sample its filter matches, however often it comes: one
    read of an anonymous client's pipelined SUBSCRIBEs to a network's 1,000 retained topics was a
    million samples walked before any other client was read, and the broker answered nobody for
    seconds. What they bring counts against the client's turn (``READ_TURN``), its other packets
    wait for the next one, and none while what it was sent waits unread past its room."""
    with platform(home) as broker:
        port = broker.mqtt_port
        with connected(port, "admin", home.secrets["admin"]) as admin:
            for n in range(1_000):
                admin.publish(f"networks/pub/r/{n}", b'{"pad": "%s"}' % (b"x" * 1_000), qos=1, retain=True)
        router = broker.broker.radio.router
        sock, code, _ = connack(port, "greedy")
        assert code == 0
        with sock, dial(port, OTHER) as other:
            other.sendall(connect("other"))
            assert read_packet(other)[0] == 0x20
            sock.sendall(b"".join(subscribe("networks/pub/#", qos=0, packet_id=n) for n in range(1, 2_001)))
            other.sendall(PINGREQ)
            assert read_packet(other)[0] == 0xD0  # answered among the SUBSCRIBEs, not after them all
            other.sendall(PINGREQ)
            assert read_packet(other)[0] == 0xD0
            walked = on_loop(broker, lambda: router.stats.dropped_slow)
    assert walked < 100 * 1_000  # 2,000 SUBSCRIBEs: a few were handled, the rest wait for it to read


def test_a_filter_named_many_times_in_one_subscribe_brings_its_retained_samples_once(home):
    """MQTT handles a SUBSCRIBE's filters as SUBSCRIBEs of their own, each bringing its retained
    samples: one packet of 60 KB naming one filter 3,500 times was 3.5 million samples walked, the
    broker answering no one meanwhile, and no turn to give way at. A filter's last grant in a
    SUBSCRIBE brings them, once."""
    with platform(home) as broker:
        port = broker.mqtt_port
        with connected(port, "admin", home.secrets["admin"]) as admin:
            for n in range(1_000):
                admin.publish(f"networks/pub/r/{n}", b'{"n": %d}' % n, qos=1, retain=True)
        sock, code, _ = connack(port, "greedy")
        assert code == 0
        with sock:
            sock.sendall(packet(0x82, b"\x00\x01" + (wire.string("networks/pub/#") + b"\x00") * 3_500))
            first, body = read_packet(sock)
            assert (first, body[2:]) == (0x90, b"\x00" * 3_500)
            topics = {published(read_packet(sock)[1], 0)[0] for _ in range(1_000)}
            assert topics == {f"networks/pub/r/{n}" for n in range(1_000)}
            sock.sendall(PINGREQ)
            assert read_packet(sock)[0] == 0xD0  # and no second copy of any


def test_the_clients_of_one_address_that_read_nothing_share_one_room(home):
    """A client is given ``send_buffer`` of room for what waits unread; a source's clients past 32
    share 32 times that between them, so an address's anonymous clients that never read cannot
    each hold their own (1,000 of them held 1.7 GB of the broker's memory). No room is granted for
    bursts here (``send_buffer_total``), which a client that reads nothing gives back in 10 s."""
    with platform(home, "send_buffer = 65536", "send_buffer_total = 0") as broker:
        deaf = []
        for n in range(128):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.bind((ATTACKER, 0))
            sock.connect(("127.0.0.1", broker.mqtt_port))
            deaf.append(sock)
            sock.sendall(connect(f"deaf-{n}"))
            assert read_packet(sock)[0] == 0x20
            sock.sendall(subscribe("networks/pub/#"))
            assert read_packet(sock)[0] == 0x90  # and from now on it reads nothing
        router = broker.broker.radio

        def anonymous() -> list:
            return [c for c in router.connections if c.session and c.session.key_name is None]

        def small_kernel_buffers() -> None:  # what the kernel takes before the broker holds the rest
            for c in anonymous():
                c.link.transport.get_extra_info("socket").setsockopt(
                    socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
                )

        on_loop(broker, small_kernel_buffers)
        try:
            secret = home.secrets["reader_b"]
            with listening(broker.mqtt_port, "reader_b", secret, "networks/pub/#", qos=1) as reader:
                publish_padded(broker.mqtt_port, home.secrets["admin"], 300)  # 300 KB for each client
                assert len(reader.expect(300)) == 300  # a client that reads loses nothing
            waiting = on_loop(broker, lambda: sum(c.waiting for c in anonymous()))
            # 32 rooms of 64 KiB and a sample each: 8 MB before, 64 KiB for each client.
            assert waiting < 32 * 65536 + 128 * 1100, waiting
        finally:
            for sock in deaf:
                sock.close()


def resident() -> int:
    """Bytes of this process's memory in RAM now."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError


@pytest.mark.slow  # 10 s, and some 700 MB held for a while
@pytest.mark.skipif(not memory.give_back(), reason="a C library without malloc_trim")
def test_what_was_held_for_clients_that_are_gone_goes_back_to_the_system(home):
    """400 clients that read nothing hold hundreds of MB of unread samples; once they are gone, the
    broker's process gives that memory back within ``memory.EVERY`` seconds. It kept it before,
    for as long as it ran, whatever it held since (730 MB resident for 74 MB before them)."""
    with platform(home) as broker:
        deaf = []
        for n in range(400):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", broker.mqtt_port))
            deaf.append(sock)
            sock.sendall(connect(f"deaf-{n}"))
            assert read_packet(sock)[0] == 0x20
            sock.sendall(subscribe("networks/pub/#"))
            assert read_packet(sock)[0] == 0x90
        memory.give_back()
        before = resident()
        publisher = Client("tcp", broker.mqtt_port, "admin", home.secrets["admin"])
        try:
            assert publisher.connect() == 0
            for n in range(300):
                publisher.publish("networks/pub/x", b'{"n": %d, "pad": "%s"}' % (n, b"x" * 60_000))
        finally:
            publisher.close()
        router = broker.broker.radio
        held = on_loop(broker, lambda: sum(c.waiting for c in router.connections))
        assert held > 100_000_000
        for sock in deaf:
            sock.close()
        assert until(lambda: on_loop(broker, lambda: len(router.connections)) == 0)
        assert until(lambda: resident() < before + held / 4, within=memory.EVERY + 5), (before, resident())


# Sockets that never send their CONNECT.
def test_sockets_that_never_connect_do_not_lock_out_another_address(home):
    with (
        platform(home, "max_connections = 60", "max_connecting_per_address = 20") as broker,
        contextlib.ExitStack() as sockets,
    ):
        port = broker.mqtt_port
        idle = [sockets.enter_context(dial(port)) for _ in range(70)]  # past max_connections, if all kept
        refused = [s for s in idle[20:] if closed_by_peer(s)]
        assert len(refused) == 50  # closed at once, past 20 from that address
        for n in range(5):
            sock, code, _ = connack(port, f"legit-{n}", "reader_a", home.secrets["reader_a"], source=OTHER)
            sock.close()
            assert code == 0
        assert metric(broker, "radio_broker_refused_sockets_total", '{reason="connecting_per_address"}') == 50
        # Completing its CONNECT frees an address's slot.
        idle[0].sendall(connect("late"))
        assert read_packet(idle[0]) == (0x20, b"\x00\x00")
        late = sockets.enter_context(dial(port))
        late.settimeout(0.5)
        with pytest.raises(TimeoutError):
            late.recv(1)  # kept, not closed


def connack_over(listener: str, port: int, certs: Path, client_id: str, source: str = ATTACKER) -> int:
    """A client that completes its handshake (TLS, WebSocket upgrade) and its CONNECT: the CONNACK's code."""
    sock = dial(port, source)
    if listener in {"mqtts", "wss"}:
        sock = client_context(certs / "ca.pem").wrap_socket(sock, server_hostname="localhost")
    with sock:
        if listener in {"ws", "wss"}:
            websocket_upgrade(sock)
            sock.sendall(websocket_frame(connect(client_id)))
            answer = read_websocket(sock)
            assert answer[0] == 0x20
            return answer[3]
        sock.sendall(connect(client_id))
        first, body = read_packet(sock)
        assert first == 0x20
        return body[1]


def closed_at_once(sock: socket.socket) -> bool:
    """Whether the broker closes ``sock`` now, rather than when a timeout ends it (10 s here)."""
    sock.settimeout(2)
    try:
        return closed_by_peer(sock)
    except TimeoutError:
        return False


NOT_A_HANDSHAKE = b"garbage\r\n\r\n"
"""Neither a TLS ClientHello nor an HTTP request: the socket's handshake fails."""


@pytest.mark.parametrize("listener", ["ws", "mqtts", "wss"])
def test_sockets_that_never_handshake_count_against_their_address_from_the_accept(
    home, certs, caplog, listener
):
    """A socket of a TLS or WebSocket listener counts against ``max_connecting_per_address`` from
    its TCP accept, as a plain one does: one address opening sockets and never starting their
    handshake would otherwise hold as many as it could open within the handshake timeout."""
    caplog.set_level(logging.INFO)
    connecting = "radio_broker_connecting"
    with (
        every_listener(home, certs, "max_connecting_per_address = 3") as broker,
        contextlib.ExitStack() as held,
    ):
        assert broker.broker is not None
        port = broker.broker.port(listener)
        silent = [held.enter_context(dial(port)) for _ in range(3)]
        assert until(lambda: metric(broker, connecting) == 3)
        with dial(port) as fourth:
            assert closed_at_once(fourth)  # before any TLS or HTTP: its address has its fill
        refused = '{reason="connecting_per_address"}'
        assert metric(broker, "radio_broker_refused_sockets_total", refused) == 1
        assert connack_over(listener, port, certs, "neighbour", OTHER) == 0
        # A socket whose handshake fails stops counting: its address may open another.
        silent[0].sendall(NOT_A_HANDSHAKE)
        assert closed_at_once(silent[0])  # WebSocket: shut for writing until the client closes it
        silent[0].close()
        assert until(lambda: metric(broker, connecting) == 2)
        assert connack_over(listener, port, certs, "back") == 0
        # One that completed its handshake and its CONNECT stopped counting as it did on TCP.
        assert metric(broker, connecting) == 2
        assert metric(broker, "radio_broker_refused_sockets_total", refused) == 1
        # A failed upgrade is one warning line; a failed TLS handshake is dropped without any.
        failures = [
            r
            for r in caplog.records
            if r.levelno >= logging.WARNING and "closed a connection from" not in r.getMessage()
        ]
    assert not [r for r in failures if r.exc_info]
    assert len(failures) == (1 if listener == "ws" else 0), [r.getMessage() for r in failures]


@pytest.mark.parametrize("listener", ["ws", "mqtts", "wss"])
def test_a_socket_whose_handshake_times_out_stops_counting(home, certs, caplog, listener):
    """Counted from its accept, a silent socket is closed by the handshake timeout, without a log
    line, and stops counting: its address is served again."""
    caplog.set_level(logging.INFO)
    settings = ("max_connecting_per_address = 2", "connect_timeout = 2")
    with every_listener(home, certs, *settings) as broker, contextlib.ExitStack() as held:
        assert broker.broker is not None
        port = broker.broker.port(listener)
        silent = [held.enter_context(dial(port)) for _ in range(2)]
        assert until(lambda: metric(broker, "radio_broker_connecting") == 2)
        assert all(closed_by_peer(sock) for sock in silent)  # the handshake timeout
        assert until(lambda: metric(broker, "radio_broker_connecting") == 0)
        assert connack_over(listener, port, certs, "after") == 0
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_socket_has_connect_timeout_from_its_accept_to_its_connect_whatever_lies_between(home, certs):
    """A client that takes its time over its TLS handshake or WebSocket upgrade, then sends no
    CONNECT, is closed ``connect_timeout`` after its accept: each step's own timeout, counted
    from the step before it, would hold the socket twice or three times as long."""
    timeout = 3.0
    with (
        every_listener(home, certs, f"connect_timeout = {timeout:g}") as broker,
        contextlib.ExitStack() as held,
    ):
        assert broker.broker is not None
        accepted = time.monotonic()
        socks = {name: dial(broker.broker.port(name)) for name in ("ws", "mqtts", "wss")}
        time.sleep(timeout * 2 / 3)  # the client's slowness, not a wait for the broker
        for name in ("mqtts", "wss"):
            socks[name] = client_context(certs / "ca.pem").wrap_socket(
                socks[name], server_hostname="localhost"
            )
        for sock in socks.values():
            held.enter_context(sock)
        for name in ("ws", "wss"):
            websocket_upgrade(socks[name])
        for name, sock in socks.items():
            sock.settimeout(timeout * 3)
            try:
                first = sock.recv(1)
            except ConnectionResetError:
                first = b""
            assert first in (b"", b"\x88"), name  # closed, or a WebSocket's close frame
            # Past the deadline only by the time a loaded machine takes to notice, never by a
            # second timeout.
            assert time.monotonic() - accepted < timeout * 1.5, name


def test_a_stop_closes_sockets_still_in_their_handshake_at_once(home, certs):
    """Silent sockets, and one that sent half its HTTP upgrade, cannot hold a stop for their
    ``connect_timeout``: each listener closes what it accepted and never opened, as it stops."""
    with every_listener(home, certs, "connect_timeout = 60") as broker, contextlib.ExitStack() as held:
        assert broker.broker is not None
        ports = {name: broker.broker.port(name) for name in ("default", "ws", "mqtts", "wss")}
        silent = {name: held.enter_context(dial(port)) for name, port in ports.items()}
        half = held.enter_context(dial(ports["ws"]))
        half.sendall(b"GET /mqtt HTTP/1.1\r\nHost: radio\r\n")  # the rest never comes
        assert until(lambda: metric(broker, "radio_broker_connecting") == 5)
        stopping = threading.Thread(target=broker.stop)
        stopping.start()
        for name, sock in [*silent.items(), ("ws, half an upgrade", half)]:
            assert closed_at_once(sock), name
        stopping.join(10)
        assert not stopping.is_alive(), "the stop waited on sockets that never opened a connection"


def test_a_stop_is_not_held_by_clients_that_never_answer_its_close(home, certs):
    """Clients that never answer a close (a TLS close_notify, a WebSocket close frame, the linger
    after an MQTT 5 DISCONNECT) have a short grace, then are cut: a stop must end. A TLS socket
    left open held a stop for ever (the event loop cannot close while a socket is open)."""
    with every_listener(home, certs, "connect_timeout = 1") as broker, contextlib.ExitStack() as held:
        assert broker.broker is not None
        timed_out = client_context(certs / "ca.pem").wrap_socket(
            dial(broker.broker.port("mqtts")), server_hostname="localhost"
        )
        held.enter_context(timed_out)
        timed_out.settimeout(10)
        assert timed_out.recv(1) == b""  # closed for its CONNECT; this client never closes its side
        clients = [held.enter_context(session5(broker.mqtt_port, "v5", None, None)[0])]
        for listener in ("ws", "wss"):
            sock = dial(broker.broker.port(listener))
            if listener == "wss":
                sock = client_context(certs / "ca.pem").wrap_socket(sock, server_hostname="localhost")
            held.enter_context(sock)
            websocket_upgrade(sock)
            sock.sendall(websocket_frame(connect(listener)))
            assert read_websocket(sock)[:4] == b"\x20\x02\x00\x00"
            clients.append(sock)
        stopping = threading.Thread(target=broker.stop, daemon=True)  # not waited for if it hangs
        stopping.start()
        stopping.join(20)
        assert not stopping.is_alive(), "the stop waited on clients that never answer its close"


def test_sockets_still_in_their_handshake_count_in_max_connections(home, certs):
    settings = ("max_connections = 2", "max_connecting_per_address = 100")
    with every_listener(home, certs, *settings) as broker, contextlib.ExitStack() as held:
        assert broker.broker is not None
        for listener in ("ws", "mqtts", "wss"):
            port = broker.broker.port(listener)
            held.enter_context(dial(port))
            held.enter_context(dial(port, OTHER))
            with dial(port, OTHER) as third:
                assert closed_at_once(third), listener  # the listener is full, whoever asks


def test_a_connect_loop_does_not_grow_the_log_without_bound(home, caplog):
    caplog.set_level(logging.INFO, logger="radio.broker")
    with platform(home, "log_repeats = 5") as broker:
        port = broker.mqtt_port
        for n in range(60):
            sock, code, _ = connack(port, f"loop-{n}")
            sock.sendall(DISCONNECT)
            sock.close()
            assert code == 0
        assert metric(broker, "radio_broker_log_lines_summarised_total") >= 55
    accepted = [r for r in caplog.records if r.getMessage().startswith("accepted client")]
    assert len(accepted) == 5
    summary = [r.getMessage() for r in caplog.records if r.getMessage().startswith("… ")]
    assert len(summary) == 1
    assert "55 more in the last minute like: accepted client 'loop-59'" in summary[0]


def test_a_client_id_or_topic_of_60_kb_is_cut_short_in_the_log(home, caplog):
    """MQTT allows 65,535 bytes of each: a client in a loop must not write lines that long."""
    caplog.set_level(logging.INFO, logger="radio.broker")
    long = "x" * 60_000
    with platform(home) as broker:
        port = broker.mqtt_port
        sock, code, _ = connack(port, long)
        assert code == 0
        sock.sendall(publish("networks/A/" + long, b'{"a": 1}', qos=1, packet_id=1))
        assert read_packet(sock) == (0x40, b"\x00\x01")  # dropped (no right), acknowledged
        sock.sendall(publish("networks/pub/" + long + "/#", b'{"a": 1}'))
        assert closed_by_peer(sock)  # a PUBLISH to a wildcard topic closes the connection
        sock.close()
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("radio.broker")]
    assert any("wildcard topic 'networks/pub/xxx" in line for line in lines)
    assert any("dropped a sample of client 'xxx" in line for line in lines)
    assert max(len(line) for line in lines) < 1_000


def test_a_protocol_name_or_will_topic_of_60_kb_is_cut_short_in_the_log(home, caplog):
    """Both are quoted when a CONNECT is refused for them: cut short like a client id."""
    caplog.set_level(logging.INFO, logger="radio.broker")
    long = "x" * 60_000
    with platform(home) as broker:
        port = broker.mqtt_port
        with dial(port) as sock:
            sock.sendall(connect("named", protocol=long))
            assert closed_by_peer(sock)  # not MQTT: closed unanswered (MQTT-3.1.2-1)
        with dial(port) as sock:
            sock.sendall(connect("willing", will=("networks/A/" + long, b"{}")))
            first, body = read_packet(sock)
            assert (first, body[1]) == (0x20, 5)  # anonymous clients may publish nothing, a will neither
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("radio.broker")]
    assert any("protocol name 'xxx" in line for line in lines)
    assert any("its will to 'networks/A/xxx" in line for line in lines)
    assert max(len(line) for line in lines) < 1_000


def test_a_filter_or_topic_of_more_than_200_levels_is_refused(home):
    """Each level of a wildcard filter is a node of the subscription index, each of a retained topic
    one of the retained index: one SUBSCRIBE of a 64 KB filter of 32,000 levels held megabytes."""
    deepest = "networks/+/" + "/".join(["x"] * 198)  # 200 levels
    with platform(home) as broker:
        port = broker.mqtt_port
        sock, code, _ = connack(port, "deep")
        assert code == 0
        with sock:
            for n, topic_filter in enumerate([deepest, deepest + "/x", "$share/g/" + deepest + "/x"], 1):
                sock.sendall(subscribe(topic_filter, qos=0, packet_id=n))
                assert read_packet(sock)[1][2] == (0 if n == 1 else 0x80)
        sock, code, _ = connack(port, "deep-gen", "gen", home.secrets["gen"])
        assert code == 0
        with sock:
            topic = "networks/A/" + "/".join(["x"] * 198)
            sock.sendall(publish(topic, b'{"a": 1}', qos=1, packet_id=1))
            assert read_packet(sock) == (0x40, b"\x00\x01")
            sock.sendall(publish(topic + "/x", b'{"a": 1}', qos=1, packet_id=2, first_byte=0x33))  # retained
            assert closed_by_peer(sock)
        with dial(port) as sock:
            sock.sendall(connect("deep-will", "gen", home.secrets["gen"], will=(topic + "/x", b"{}")))
            assert closed_by_peer(sock)
        assert on_loop(broker, lambda: len(broker.broker.radio.router.retained)) == 0


def test_a_client_s_filters_have_at_most_65_536_characters_and_1_000_levels_in_all(home):
    """A persistent session's filters are written to the store whole at each SUBSCRIBE: 100
    filters of 65 KB made each SUBSCRIBE hold the event loop 26 ms. Each level of a wildcard
    filter is a node of the subscription index: 100 filters of 200 levels took 8 MB."""
    with platform(home) as broker:
        port = broker.mqtt_port
        sock, code, _ = connack(port, "wide", clean=False)
        assert code == 0
        with sock:
            codes = []
            for n in range(4):
                sock.sendall(subscribe(f"networks/pub/{n}/" + "x" * 20_000, qos=0, packet_id=n + 1))
                codes.append(read_packet(sock)[1][2])
            assert codes == [0, 0, 0, 0x80]  # 60,051 characters, then one too many
        sock, code, _ = connack(port, "deep")
        assert code == 0
        with sock:
            codes = []
            for n in range(6):
                topic_filter = "networks/+/" + "/".join(["x"] * 196) + f"/{n}"  # 199 levels
                sock.sendall(subscribe(topic_filter, qos=0, packet_id=n + 1))
                codes.append(read_packet(sock)[1][2])
            assert codes == [0, 0, 0, 0, 0, 0x80]  # 995 levels, then one filter too many
            sock.sendall(subscribe(topic_filter.removesuffix("/5") + "/0", qos=1, packet_id=7))
            assert read_packet(sock)[1][2] == 1  # one it holds: granted again
            sock.sendall(packet(0xA2, b"\x00\x08" + wire.string(topic_filter.removesuffix("/5") + "/0")))
            assert read_packet(sock)[0] == 0xB0  # UNSUBACK: its levels are free again
            sock.sendall(subscribe(topic_filter, qos=0, packet_id=9))
            assert read_packet(sock)[1][2] == 0


def test_a_session_re_subscribing_in_a_loop_is_written_once_per_batch(home):
    """A persistent session is written to the store whole, up to 64 KiB of filters, whenever it
    changes. Written at every SUBSCRIBE, an anonymous client re-subscribing in a loop had each one
    turned into JSON on the event loop and written to disk, and every other client's PINGREQ waited
    seconds behind it. Only its last state in a batch is written, made into JSON by the writer."""
    with platform(home) as broker:
        store = broker.broker.radio.store

        async def on_disk() -> tuple[int, int]:
            done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            store.after_commit(done.set_result)
            await done
            return store.written, store.batches

        sock, code, _ = connack(broker.mqtt_port, "looping", clean=False)
        assert code == 0
        with sock:
            sock.sendall(subscribe("networks/pub/" + "x" * 60_000, qos=0, packet_id=1))
            assert read_packet(sock)[0] == 0x90
            written, batches = broker.call(on_disk)
            sock.sendall(b"".join(subscribe("networks/pub", qos=0, packet_id=n) for n in range(1, 2_001)))
            for _ in range(2_000):
                assert read_packet(sock)[0] == 0x90
            now_written, now_batches = broker.call(on_disk)
    assert 0 < now_written - written <= now_batches - batches  # one row per batch, not per SUBSCRIBE


def test_a_summary_is_written_once_its_minute_is_over(caplog):
    """The held-back count comes with the next line of its kind after the minute, or at a sweep."""
    now = [0.0]
    summary = Summary(2, clock=lambda: now[0])
    log = logging.getLogger("radio.broker")
    caplog.set_level(logging.INFO, logger="radio.broker")
    log.addFilter(summary)
    try:
        for n in range(5):
            log.warning("refused %s", n)
        log.warning("another kind")
        now[0] = 61.0
        log.warning("refused %s", 5)
        for n in range(6, 9):
            log.warning("refused %s", n)
        now[0] = 122.0
        summary.flush()
    finally:
        log.removeFilter(summary)
    assert [r.getMessage() for r in caplog.records] == [
        "refused 0",
        "refused 1",
        "another kind",
        "… 3 more in the last minute like: refused 4",
        "refused 5",
        "refused 6",
        "… 2 more in the last minute like: refused 8",
    ]
    assert summary.suppressed == 5


def test_one_key_holds_at_most_max_connections_per_key_clients_at_once(home):
    """A key is one buyer's: its clients, from any addresses, leave room for the other keys'."""
    with platform(home, "max_connections_per_key = 3") as broker:
        port, secret = broker.mqtt_port, home.secrets["reader_a"]
        held = []
        for n in range(3):
            sock, code, _ = connack(port, f"r{n}", "reader_a", secret, source=f"127.0.0.{20 + n}")
            held.append(sock)
            assert code == 0
        sock, code, _ = connack(port, "r3", "reader_a", secret, source="127.0.0.30")
        sock.close()
        assert code == 3  # the fourth at once, from yet another address: CONNACK 3
        # Taking over its own client id's connection leaves the count as it was: not refused.
        sock, code, _ = connack(port, "r0", "reader_a", secret)
        assert code == 0
        assert held[0].recv(1) == b""  # the connection it took over is closed
        held[0].close()
        held[0] = sock
        other, code, _ = connack(port, "b0", "reader_b", home.secrets["reader_b"])  # another key's
        other.close()
        assert code == 0
        held.pop().close()  # one goes: the key may connect one more
        key_id = home.store().keys()["reader_a"].id
        router = broker.broker.radio.router
        assert until(lambda: on_loop(broker, lambda: router.key_connections.held(key_id)) == 2)
        sock, code, _ = connack(port, "r4", "reader_a", secret)
        held.append(sock)
        assert code == 0
        assert metric(broker, "radio_broker_refused_connects_total", '{reason="connections_per_key"}') == 1
        for sock in held:
            sock.close()


def test_one_key_holds_at_most_max_sessions_per_key_persistent_sessions(home):
    """A cheap read-only key cannot fill the store with sessions under ever new client ids."""
    with platform(home, "max_sessions_per_key = 3") as broker:
        port, secret = broker.mqtt_port, home.secrets["reader_a"]

        def persistent(client_id: str, user: str = "reader_a", key: str = secret) -> tuple[int, bool]:
            sock, code, present = connack(port, client_id, user, key, clean=False)
            with sock:
                sock.sendall(DISCONNECT)
            return code, present

        assert [persistent(f"r{n}")[0] for n in range(4)] == [0, 0, 0, 3]  # the fourth: CONNACK 3
        assert persistent("r1") == (0, True)  # resuming one of its own is never refused
        sock, code, _ = connack(port, "r9", "reader_a", secret)  # a clean session keeps nothing
        sock.close()
        assert code == 0
        assert persistent("b0", "reader_b", home.secrets["reader_b"]) == (0, False)  # another key's
        assert metric(broker, "radio_broker_refused_connects_total", '{reason="sessions_per_key"}') == 1


def leave_sessions_on_a(port: int, sessions: list[tuple[str, str, str]], home, samples: int) -> None:
    """Open these persistent sessions (user, secret, client id) on networks/A/# at QoS 1, leave,
    then publish ``samples`` of about 1 KB there, each acknowledged."""
    for user, key, client_id in sessions:
        sock, code, _ = connack(port, client_id, user, key, clean=False)
        with sock:
            assert code == 0
            sock.sendall(subscribe("networks/A/#", qos=1))
            assert read_packet(sock)[0] == 0x90
            sock.sendall(DISCONNECT)
    publish_padded(port, home.secrets["gen"], samples, "gen", "networks/A/x")


def test_the_persistent_sessions_of_one_key_queue_at_most_max_queued_bytes_per_key_in_all(home):
    """A read-only key's sessions left on a busy network cannot each copy every sample to disk.

    Twenty sessions under one key, 100 samples of about 1 KB: 2 MB queued without the bound, and
    as much in the store. With 256 KiB for the key, its sessions hold that plus a sample each,
    while another key's session, on the same network, keeps every sample.
    """
    home.add_key("reader_c", subscribe=["A"])
    with platform(home, "max_queued_bytes_per_key = 262144") as broker:
        port, secret = broker.mqtt_port, home.secrets["reader_a"]
        sessions = [("reader_a", secret, f"fleet-{n}") for n in range(20)]
        leave_sessions_on_a(port, [*sessions, ("reader_c", home.secrets["reader_c"], "other")], home, 100)
        router = broker.broker.radio.router

        def queued(user: str) -> tuple[int, int]:
            mine = [s for s in router.sessions.values() if s.key_name == user]
            return sum(s.queued_bytes for s in mine), sum(s.queued for s in mine)

        held, _ = on_loop(broker, lambda: queued("reader_a"))
        assert 256 * 1024 - 2048 < held <= 256 * 1024 + 20 * 1100
        key_id = on_loop(
            broker, lambda: next(s.key_id for s in router.sessions.values() if s.key_name == "reader_a")
        )
        assert on_loop(broker, lambda: router.keyed.queued_bytes(key_id)) == held  # the account is exact
        assert on_loop(broker, lambda: queued("reader_c"))[1] == 100
        assert metric(broker, "radio_broker_dropped_total", '{reason="queue_full"}') > 0


def test_a_sample_queued_for_many_sessions_is_written_to_the_store_once(home):
    """Each session's queue is a row per sample; the payload is written once, whatever their number.

    A key's sessions multiplied every sample of their network in the store: 100 of them made each
    60 KB sample 6 MB to write, and the broker took 6.7 s to acknowledge 400 such samples (0.8 s
    without them), so the bridge answered other keys 503.
    """
    with platform(home) as broker:
        fleet = [("reader_a", home.secrets["reader_a"], f"fleet-{n}") for n in range(40)]
        leave_sessions_on_a(broker.mqtt_port, fleet, home, 100)
    with contextlib.closing(sqlite3.connect(home.path / "broker.db")) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        written = sum(
            db.execute(f"SELECT coalesce(sum(length(data)), 0) FROM {table}").fetchone()[0]  # noqa: S608
            for table in ("queued", "payloads")
            if table in tables
        )
    assert written < 2 * 100 * 1024  # 100 samples of 1 KB: 4 MB when each of 4,000 rows held its own
    with embedded_broker(home) as broker:  # and every session has every sample after a restart
        router = broker.broker.radio.router

        def queued() -> list[int]:
            return sorted(len(s.queue or ()) for s in router.sessions.values())

        assert on_loop(broker, queued) == [100] * 40
        payload = on_loop(broker, lambda: next(iter(router.sessions.values())).queue[0].message.payload)
        assert payload.startswith(b'{"n": 0, "pad": "xxx')


def test_a_sample_queued_for_many_sessions_is_held_once_after_a_restart(home):
    """The store keeps a copy per session; restored, the sessions share one, as they did before.

    Otherwise a broker whose sessions held 60 MB of one key's samples in memory came back with
    that times the number of sessions.
    """
    with platform(home) as broker:
        port, secret = broker.mqtt_port, home.secrets["reader_a"]
        leave_sessions_on_a(port, [("reader_a", secret, f"fleet-{n}") for n in range(20)], home, 10)
    with embedded_broker(home) as broker:
        router = broker.broker.radio.router

        def copies() -> tuple[int, int]:
            queued = [d.message for s in router.sessions.values() for d in s.queue or ()]
            return len(queued), len({id(m.payload) for m in queued})

        assert on_loop(broker, copies) == (200, 10)


def test_one_source_holds_at_most_max_shared_per_source_shared_subscriptions(home):
    """Each shared group a sample's filter matches costs a delivery, where a session's overlapping
    filters cost one in all: one address's anonymous clients, each holding ``max_filters`` groups
    of their own, made every sample tens of thousands of deliveries. A source (an address's
    anonymous clients, a key's) holds at most ``max_shared_per_source`` at once, in all its
    sessions; one is free again at its UNSUBSCRIBE or its session's end."""
    with platform(home, "max_shared_per_source = 3") as broker:
        port, secret = broker.mqtt_port, home.secrets["reader_a"]
        first, second, third = (Client("tcp", port, protocol=5) for _ in range(3))
        keyed, keyed_too = (Client("tcp", port, "reader_a", secret, protocol=5) for _ in range(2))
        clients = [first, second, third, keyed, keyed_too]
        try:
            for client in clients:
                assert client.connect() == 0
            assert [first.subscribe(f"$share/g{n}/networks/pub") for n in range(2)] == [0, 0]
            assert second.subscribe("$share/g2/networks/pub") == 0
            assert second.subscribe("$share/g3/networks/pub") == QUOTA_EXCEEDED  # the address's fourth
            assert first.subscribe("$share/g0/networks/pub", qos=1) == 1  # one it holds: not refused
            assert second.subscribe("networks/pub") == 0  # a filter of its own is no group
            assert [keyed.subscribe(f"$share/g{n}/networks/A") for n in range(3)] == [0, 0, 0]  # its own
            assert keyed_too.subscribe("$share/g3/networks/A") == QUOTA_EXCEEDED  # the key's fourth
            assert second.unsubscribe("$share/g2/networks/pub") == 0
            assert third.subscribe("$share/g3/networks/pub") == 0  # the one given back
            assert third.subscribe("$share/g4/networks/pub") == QUOTA_EXCEEDED
            first.close()
            until(lambda: metric(broker, "radio_broker_shared_subscriptions") == 4)  # third's, keyed's
            assert [third.subscribe(f"$share/g{n}/networks/pub") for n in (4, 5)] == [0, 0]
            refused = metric(
                broker, "radio_broker_refused_subscriptions_total", '{reason="shared_per_source"}'
            )
            assert refused == 3
        finally:
            for client in clients:
                client.close()


def test_shared_subscriptions_a_persistent_session_keeps_across_a_restart_count_for_its_source(home):
    """The groups of a session restored from the store are held as before: no restart frees them."""
    with platform(home, "max_shared_per_source = 2") as broker:
        away = persistent(broker.mqtt_port, home, "away")
        assert away.connect() == 0
        assert [away.subscribe(f"$share/g{n}/networks/A", qos=1) for n in range(2)] == [1, 1]
        away.close()
    again = BrokerThread(
        LiveRegistry(home.config), mqtt=Address("127.0.0.1", 0), websocket=Address("127.0.0.1", 0)
    )
    with again as broker:
        client = Client("tcp", broker.mqtt_port, "reader_a", home.secrets["reader_a"], protocol=5)
        try:
            assert client.connect() == 0
            assert client.subscribe("$share/g2/networks/A") == QUOTA_EXCEEDED
        finally:
            client.close()
