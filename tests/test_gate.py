"""Every way a sample enters the embedded broker passes the same admission gate, with every check.

The table this module runs: each path a sample can take (a PUBLISH at QoS 0, 1 and 2, a retained
PUBLISH, a last will when it fires, ``POST /publish``) against each check (rights, size, strict
JSON, schema, rate, quota, metering). A new way in, or a check skipped on one of them, shows up
here as one failing cell. ``docs/access.md`` has the same table, and
``test_the_docs_table_is_the_one_this_module_runs`` keeps the two in step.

Real components: the embedded broker and the bridge's ASGI stack in this process on free ports,
real paho clients, and a raw socket for the will (a client library cannot drop its connection
without a DISCONNECT on demand). A refusal is awaited on the gate's own counters, then a sentinel
published behind it shows that nothing reached the listener.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from bridge_client import InProcessBridge
from conftest import Home
from mqtt_client import Client, Message, listening
from polling import until
from raw_mqtt import closed_by_peer, connect, connect5, open_socket, publish, read_packet

from radio.bridge.identity import bridge_credentials
from radio.bridge.state import state_of
from radio.broker import access
from radio.broker.thread import BrokerThread
from radio.config import Address, load_settings
from radio.keys import Terms
from radio.registry import LiveRegistry
from radio.usage import Meter

SCHEMA = {"type": "object", "properties": {"speed": {"type": "number", "minimum": 0}}}
CONFIG = """\
[networks.A]
schema = "speed.schema.json"
max_payload = 200

[networks.B]
"""
MQTT5_PATHS = ["qos0-v5", "qos1-v5", "qos2-v5", "retained-v5", "will-v5"]
"""The same MQTT paths taken by MQTT 5 clients: every check holds for them too."""
PATHS = ["qos0", "qos1", "qos2", "retained", "will", "http", *MQTT5_PATHS]
CHECKS = ["rights", "size", "json", "schema", "rate", "quota", "metering"]
GOOD = b'{"speed": 4}'
TOO_LARGE = json.dumps({"speed": 1, "pad": "x" * 250}).encode()
NOT_JSON = [b'{"speed": NaN}', b'{"speed": 1e999}', b'{"speed": -Infinity}', b"speed four", b"[1, 2]"]
OFF_SCHEMA = b'{"speed": -5}'


@dataclass
class Platform:
    home: Home
    broker: BrokerThread
    bridge: InProcessBridge

    @property
    def broker_meter(self) -> Meter:
        meter = self.broker.broker.radio.meter
        assert meter is not None
        return meter

    @property
    def bridge_meter(self) -> Meter:
        meter: Meter = state_of(self.bridge.app).meter
        return meter

    def meter(self, path: str) -> Meter:
        return self.bridge_meter if path == "http" else self.broker_meter

    def door(self, path: str) -> str:
        return "http" if path == "http" else "mqtt"


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """One broker and one bridge for the whole table; each cell has keys of its own."""
    home = Home(tmp_path_factory.mktemp("gate"))
    home.config.write_text(CONFIG)
    (home.path / "speed.schema.json").write_text(json.dumps(SCHEMA))
    home.add_key("reader", subscribe=["A"])
    home.add_key("admin", admin=True)
    for path in PATHS:
        home.add_key(f"gen-{path}", publish=["A"])
        home.add_key(f"out-{path}", publish=["B"])
        home.add_key(f"meter-{path}", publish=["A"])
        home.add_key(f"slow-{path}", publish=["A"], terms=Terms(rate=1 / 60, burst=1))
        home.add_key(f"quota-{path}", publish=["A"], terms=Terms(quota=1))
    bridge_credentials(load_settings(home.config))
    with BrokerThread(
        LiveRegistry(home.config), mqtt=Address("127.0.0.1", 0), websocket=Address("127.0.0.1", 0)
    ) as broker:
        bridge = InProcessBridge(str(home.config), broker.mqtt_port)
        try:
            yield Platform(home, broker, bridge)
        finally:
            bridge.stop()


def send(platform: Platform, path: str, key: str, payload: bytes, topic: str) -> int | None:
    """Push one sample of ``key`` to ``topic`` along ``path``: the HTTP status, or a will's CONNACK."""
    secret = platform.home.secrets[key]
    if path == "http":
        try:
            data = json.loads(payload)
        except ValueError:  # what a legacy generator would send as the body itself
            body = b'{"network": "A", "data": ' + payload + b"}"
        else:
            body = json.dumps({"network": "A", "data": data}).encode()
        assert topic == "networks/A", "the HTTP door publishes to the network's own topic"
        answer = requests.post(
            platform.bridge.url + "/publish", data=body, headers={"API-KEY": secret}, timeout=10
        )
        return answer.status_code
    path, protocol = kind(path)
    if path == "will":
        sock = open_socket(platform.broker.mqtt_port)
        hello = connect5 if protocol == 5 else connect
        sock.sendall(hello(f"will-{uuid.uuid4().hex[:8]}", key, secret, will=(topic, payload)))
        first, body = read_packet(sock)
        assert first == 0x20
        sock.close()  # no DISCONNECT: the will fires
        return body[1]
    client = Client("tcp", platform.broker.mqtt_port, key, secret, protocol=protocol)
    assert client.connect() == 0
    qos = {"qos0": 0, "qos1": 1, "qos2": 2, "retained": 1}[path]
    info = client._paho.publish(topic, payload, qos, retain=path == "retained")
    info.wait_for_publish(5)
    client.close()
    return None


def kind(path: str) -> tuple[str, int]:
    """The path without its protocol, and the protocol level of its client (5 for ``-v5``)."""
    return path.removesuffix("-v5"), 5 if path.endswith("-v5") else 4


def publish_held(platform: Platform, path: str, key: str, payloads: list[bytes], topic: str) -> Client:
    """Publish several samples on one connection without waiting for their acknowledgements."""
    path, protocol = kind(path)
    client = Client("tcp", platform.broker.mqtt_port, key, platform.home.secrets[key], protocol=protocol)
    assert client.connect() == 0
    qos = {"qos0": 0, "qos1": 1, "qos2": 2, "retained": 1}[path]
    for payload in payloads:
        client._paho.publish(topic, payload, qos, retain=path == "retained")
    return client


@contextlib.contextmanager
def reading(platform: Platform, path: str, cell: str) -> Iterator[tuple[Client, str]]:
    """A reader of a topic of the cell's own, and that topic: no retained sample of another cell
    reaches it. The HTTP door publishes to the network's topic, which no other path uses."""
    topic = "networks/A" if path == "http" else f"networks/A/{path}/{cell}"
    with listening(platform.broker.mqtt_port, "reader", platform.home.secrets["reader"], topic) as reader:
        yield reader, topic


def counted(meter: Meter, key: str, door: str, reason: str) -> Callable[[], int]:
    return lambda: meter.refused.get((key, door, reason), 0)


def delivered_before_sentinel(platform: Platform, reader: Client, topic: str) -> list[bytes]:
    """What ``reader`` got up to a sentinel published now: anything sent before would be there."""
    token = json.dumps({"sentinel": uuid.uuid4().hex}).encode()
    admin = Client("tcp", platform.broker.mqtt_port, "admin", platform.home.secrets["admin"])
    assert admin.connect() == 0
    admin.publish(topic, token, qos=1)
    admin.close()
    got = []
    while (message := live(reader)).payload != token:
        got.append(message.payload)
    return got


def live(reader: Client) -> Message:
    """The next sample published while ``reader`` listened: not a retained one of an earlier cell."""
    while (message := reader.expect(1)[0]).retain:
        pass
    return message


def refused(
    platform: Platform, path: str, cell: str, key: str, reason: str, payloads: list[bytes], status: int
) -> None:
    """Each payload, sent along ``path`` by ``key``, is refused for ``reason`` and reaches nobody."""
    meter, door = platform.meter(path), platform.door(path)
    with reading(platform, path, cell) as (reader, topic):
        before = counted(meter, key, door, reason)()
        for number, payload in enumerate(payloads, 1):
            answer = send(platform, path, key, payload, topic)
            if path == "http":
                assert answer == status, payload
                if status == 400 and reason == "json":
                    continue  # the article's check 3: refused before the key's sample is looked at
            elif kind(path)[0] == "will" and reason == "rights":
                assert answer in (5, 0x87)  # CONNACK 5 (0x87 in MQTT 5): refused at CONNECT already
                continue
            assert until(lambda n=number: counted(meter, key, door, reason)() >= before + n), payload
        assert delivered_before_sentinel(platform, reader, topic) == []
    samples, size = meter.totals.get((key, door, "A"), [0, 0])
    assert (samples, size) == (0, 0)  # a refusal is never metered as a sample


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("check", CHECKS)
def test_the_gate_holds_on_every_path(platform: Platform, path: str, check: str) -> None:
    if check == "rights":
        refused(platform, path, check, f"out-{path}", "rights", [GOOD], 403)
    elif check == "size":
        refused(platform, path, check, f"gen-{path}", "too_large", [TOO_LARGE], 413)
    elif check == "json":
        if path == "http":
            refused(platform, path, check, f"gen-{path}", "json", NOT_JSON[:3], 400)
        else:
            refused(platform, path, check, f"gen-{path}", "not_json", NOT_JSON, 0)
    elif check == "schema":
        refused(platform, path, check, f"gen-{path}", "schema", [OFF_SCHEMA], 400)
    elif check == "rate":
        over_the_rate(platform, path)
    elif check == "quota":
        past_the_quota(platform, path)
    else:
        metered(platform, path)


def over_the_rate(platform: Platform, path: str) -> None:
    """A key may take one sample a minute: the first goes through, the second does not, now."""
    key, meter, door = f"slow-{path}", platform.meter(path), platform.door(path)
    first, second = b'{"speed": 1}', b'{"speed": 2}'
    with reading(platform, path, "rate") as (reader, topic):
        if kind(path)[0] in ("http", "will"):
            assert send(platform, path, key, first, topic) in (200, 0)
            assert live(reader).payload == first
            assert send(platform, path, key, second, topic) in (429, 0)
            assert until(lambda: counted(meter, key, door, "rate")() == 1)  # a will has nobody to slow
            assert delivered_before_sentinel(platform, reader, topic) == []
            return
        gate = platform.broker.broker.radio.router.gate
        waits = gate.rate_waits
        client = publish_held(platform, path, key, [first, second], topic)
        try:
            assert live(reader).payload == first
            assert until(lambda: gate.rate_waits > waits)  # held, not dropped: TCP pushes back
            assert delivered_before_sentinel(platform, reader, topic) == []
        finally:
            client.close()


def past_the_quota(platform: Platform, path: str) -> None:
    """A key with one sample a day: the first goes through, the second is refused and counted."""
    key, meter, door = f"quota-{path}", platform.meter(path), platform.door(path)
    with reading(platform, path, "quota") as (reader, topic):
        assert send(platform, path, key, b'{"speed": 1}', topic) in (200, 0, None)
        assert live(reader).payload == b'{"speed": 1}'
        assert send(platform, path, key, b'{"speed": 2}', topic) in (429, 0, None)
        assert until(lambda: counted(meter, key, door, "quota")() == 1)
        assert delivered_before_sentinel(platform, reader, topic) == []
    assert meter.totals[(key, door, "A")] == [1, len(b'{"speed": 1}')]


def metered(platform: Platform, path: str) -> None:
    """An admitted sample is counted once, with its size, under its key, door and network."""
    key, meter, door = f"meter-{path}", platform.meter(path), platform.door(path)
    with reading(platform, path, "metering") as (reader, topic):
        assert send(platform, path, key, GOOD, topic) in (200, 0, None)
        assert live(reader).payload == GOOD
    assert until(lambda: meter.totals.get((key, door, "A")) == [1, len(GOOD)])


def test_a_qos_2_sample_sent_again_is_delivered_and_charged_once(platform: Platform) -> None:
    """A resend with DUP and the same packet id, before PUBREL, is the same sample."""
    key = "quota-qos2-resend"
    platform.home.add_key(key, publish=["A"], terms=Terms(quota=3))
    reader_port, secret = platform.broker.mqtt_port, platform.home.secrets[key]
    registry = platform.broker.broker.radio.registry
    assert until(lambda: key in registry.current.keys)
    with listening(reader_port, "reader", platform.home.secrets["reader"], "networks/A/r") as reader:
        sock = open_socket(reader_port)
        sock.sendall(connect("resender", key, secret))
        assert read_packet(sock)[0] == 0x20
        body = b"\x00\x0cnetworks/A/r\x00\x07" + GOOD
        for attempt in range(10):
            first = 0x34 | (0x08 if attempt else 0)  # QoS 2, DUP from the second send on
            sock.sendall(bytes((first, len(body))) + body)
            assert read_packet(sock) == (0x50, b"\x00\x07")  # PUBREC each time
        assert live(reader).payload == GOOD
        sock.sendall(b"\x62\x02\x00\x07")  # PUBREL
        assert read_packet(sock) == (0x70, b"\x00\x07")
        sock.close()
        assert delivered_before_sentinel(platform, reader, "networks/A/r") == []
    assert platform.broker_meter.totals[(key, "mqtt", "A")] == [1, len(GOOD)]


def test_a_refused_qos_2_sample_sent_again_is_refused_once(platform: Platform) -> None:
    """A refused QoS 2 sample sent again with the same packet id, before PUBREL, is the same
    sample: one refusal in the key's usage, not one per send."""
    key = "refused-qos2-resend"
    platform.home.add_key(key, publish=["A"])
    registry = platform.broker.broker.radio.registry
    assert until(lambda: key in registry.current.keys)
    sock = open_socket(platform.broker.mqtt_port)
    sock.sendall(connect("refused-resender", key, platform.home.secrets[key]))
    assert read_packet(sock)[0] == 0x20
    for pid, topic, payload in ((7, "networks/B/r", GOOD), (8, "networks/A/r", b"not json")):
        for attempt in range(3):
            sock.sendall(
                publish(topic, payload, qos=2, packet_id=pid, first_byte=0x34 | (0x08 if attempt else 0))
            )
            assert read_packet(sock) == (0x50, pid.to_bytes(2, "big"))  # PUBREC each time
        sock.sendall(b"\x62\x02" + pid.to_bytes(2, "big"))  # PUBREL
        assert read_packet(sock) == (0x70, pid.to_bytes(2, "big"))
    sock.close()
    refused = platform.broker_meter.refused
    assert (refused[(key, "mqtt", "rights")], refused[(key, "mqtt", "not_json")]) == (1, 1)


def test_the_docs_table_is_the_one_this_module_runs() -> None:
    """docs/access.md's gate table has these paths as columns and these checks as rows, all ✓."""
    text = (Path(__file__).parent.parent / "docs" / "access.md").read_text()
    section = text.split("## One gate for every sample", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|") and "---" not in line]
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    columns = {"PUBLISH QoS 0": "qos0", "PUBLISH QoS 1": "qos1", "PUBLISH QoS 2": "qos2"}
    columns |= {"retained": "retained", "will": "will", "HTTP": "http"}
    doors = [path for path in PATHS if path not in MQTT5_PATHS]
    assert [columns[cell] for cell in header[1:]] == doors
    assert [f"{path}-v5" for path in doors if path != "http"] == MQTT5_PATHS  # MQTT 5 on each MQTT path
    # The cells are run by one test, over every path and every check: what pytest collects.
    runs = {mark.args[0]: mark.args[1] for mark in test_the_gate_holds_on_every_path.pytestmark}
    assert runs == {"path": PATHS, "check": CHECKS}
    names = {"right": "rights", "size": "size", "strict JSON": "json", "schema": "schema"}
    names |= {"rate": "rate", "quota": "quota", "metering": "metering"}
    checks = []
    for row in rows[1:]:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        checks.append(names[re.sub(r" \(.*\)$", "", cells[0])])
        assert all(cell.startswith("✓") for cell in cells[1:]), row
    assert checks == CHECKS


def test_a_payload_nested_5000_deep_is_dropped_and_the_broker_goes_on(platform: Platform) -> None:
    """Valid JSON that no Python parser can take: refused as not JSON, not a crash of the loop."""
    deep = b"[" * 5000 + b"]" * 5000
    meter = platform.broker_meter
    platform.home.add_key("reader-b", subscribe=["B"])
    registry = platform.broker.broker.radio.registry
    assert until(lambda: "reader-b" in registry.current.keys)
    with listening(
        platform.broker.mqtt_port, "reader-b", platform.home.secrets["reader-b"], "networks/B"
    ) as reader:
        before = counted(meter, "out-qos1", "mqtt", "not_json")()
        publisher = Client("tcp", platform.broker.mqtt_port, "out-qos1", platform.home.secrets["out-qos1"])
        assert publisher.connect() == 0
        publisher.publish("networks/B", deep, qos=1)
        publisher.publish("networks/B", GOOD, qos=1)
        publisher.close()
        assert live(reader).payload == GOOD
        assert counted(meter, "out-qos1", "mqtt", "not_json")() == before + 1


def test_an_empty_retained_publish_clears_its_topic_and_reaches_nobody(platform: Platform) -> None:
    """Clearing a retained topic costs nothing, so it must deliver nothing either: a key over its
    rate and past its quota would otherwise flood every listener with payloads none can parse."""
    key, topic = "clearer", "networks/A/cleared"
    platform.home.add_key(key, publish=["A"], terms=Terms(rate=1 / 60, burst=1, quota=1))
    registry = platform.broker.broker.radio.registry
    assert until(lambda: key in registry.current.keys)
    port, secret = platform.broker.mqtt_port, platform.home.secrets[key]
    with listening(port, "reader", platform.home.secrets["reader"], topic) as reader:
        publisher = Client("tcp", port, key, secret)
        assert publisher.connect() == 0
        publisher.publish(topic, GOOD, qos=1, retain=True)
        assert live(reader).payload == GOOD
        for _ in range(20):
            publisher.publish(topic, b"", qos=1, retain=True)
        publisher.close()
        assert delivered_before_sentinel(platform, reader, topic) == []
    assert topic not in platform.broker.broker.radio.router.retained  # cleared all the same
    assert platform.broker_meter.totals[(key, "mqtt", "A")] == [1, len(GOOD)]


def test_an_expired_key_is_refused_before_its_connections_are_closed(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between a key's expiry and the sweep that closes its connections, neither a PUBLISH nor the
    will of a connection lost in that moment gets through: the gate refuses the key itself."""
    monkeypatch.setattr(access, "EXPIRY_TICK", 60.0)  # the sweep's window, held open for the test
    expires = datetime.now(UTC) + timedelta(seconds=1)
    home.add_key("soon", publish=["A"], terms=Terms(expires=expires))
    with BrokerThread(
        LiveRegistry(home.config), mqtt=Address("127.0.0.1", 0), websocket=Address("127.0.0.1", 0)
    ) as broker:
        port, topic = broker.mqtt_port, "networks/A/last-words"
        with listening(port, "reader_a", home.secrets["reader_a"], topic) as reader:
            sock = open_socket(port)
            sock.sendall(connect("soon-1", "soon", home.secrets["soon"], will=(topic, b'{"will": 1}')))
            assert read_packet(sock) == (0x20, b"\x00\x00")
            assert until(lambda: datetime.now(UTC) >= expires + timedelta(milliseconds=50))
            sock.sendall(publish(topic, b'{"late": 1}', qos=1, packet_id=3))
            assert read_packet(sock) == (0x40, b"\x00\x03")  # acknowledged, as any dropped sample
            sock.close()  # no DISCONNECT: the will fires
            meter = broker.broker.radio.meter
            assert meter is not None
            assert until(lambda: meter.refused.get(("soon", "mqtt", "rights"), 0) == 2)
            admin = Client("tcp", port, "admin", home.secrets["admin"])
            assert admin.connect() == 0
            admin.publish(topic, b'{"sentinel": 1}', qos=1)
            admin.close()
            assert [m.payload for m in reader.expect(1)] == [b'{"sentinel": 1}']


def test_the_bridges_service_key_publishes_only_to_networks(platform: Platform) -> None:
    """The service key is not charged again by the broker, its samples having passed the gate at
    the HTTP door; the HTTP door publishes only to networks, so nothing else passes: its secret
    is a right to publish to every network, not to every topic."""
    name, secret = bridge_credentials(load_settings(platform.home.config))
    port = platform.broker.mqtt_port
    admin = Client("tcp", port, "admin", platform.home.secrets["admin"])
    assert admin.connect() == 0
    try:
        for topic_filter in ("#", "$SYS/#", "networks/nowhere/#"):
            assert admin.subscribe(topic_filter, qos=1) == 1
        service = Client("tcp", port, name, secret)
        assert service.connect() == 0
        for topic in ("other/x", "$SYS/radio/missed", "networks/nowhere/x"):  # nowhere: no such network
            service.publish(topic, b'{"forged": 1}', qos=1)
        service.publish("networks/B/service", b'{"sentinel": 1}', qos=1)
        service.close()
        got = [live(admin)]  # not the retained samples of other cells, which the filter brings
        while got[-1].payload != b'{"sentinel": 1}':
            got.append(live(admin))
        assert [(m.topic, m.payload) for m in got] == [("networks/B/service", b'{"sentinel": 1}')]
    finally:
        admin.close()


def test_a_qos_2_sample_past_max_incoming_qos2_is_not_charged(platform: Platform) -> None:
    """The broker closes a client leaving too many QoS 2 samples without PUBREL: the sample that
    closes it is not taken, so its key is not charged for it (metering nor quota)."""
    key, topic = "no-pubrel", "networks/A/no-pubrel"
    platform.home.add_key(key, publish=["A"], terms=Terms(quota=100))
    registry = platform.broker.broker.radio.registry
    assert until(lambda: key in registry.current.keys)
    most = platform.broker.broker.radio.router.limits.max_incoming_qos2
    sock = open_socket(platform.broker.mqtt_port)
    sock.sendall(connect("no-pubrel", key, platform.home.secrets[key]))
    assert read_packet(sock)[0] == 0x20
    for pid in range(1, most + 2):
        sock.sendall(publish(topic, GOOD, qos=2, packet_id=pid))
    for pid in range(1, most + 1):
        assert read_packet(sock) == (0x50, pid.to_bytes(2, "big"))  # PUBREC, and no PUBREL sent
    assert closed_by_peer(sock)
    sock.close()
    assert platform.broker_meter.totals[(key, "mqtt", "A")] == [most, most * len(GOOD)]
