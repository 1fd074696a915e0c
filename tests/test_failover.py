"""Clients given several broker URLs move to the next when theirs goes away, round the list.

Two embedded brokers on free ports with the same keys stand for a cluster's nodes: the first is
stopped, and each client must carry on through the second.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import Home, start_bridge
from embedded import embedded_broker
from mqtt_client import Client
from polling import until
from test_nats_cluster import FAILOVER, make_home, require_nats, start_cluster
from test_platform import left_behind, start_up

from radio.broker.thread import BrokerThread
from radio.config import Address, load_settings
from radio.history_store import HistoryStore
from radio.recorder.identity import recorder_credentials
from radio.recorder.recorder import Recorder
from radio.registry import LiveRegistry
from radio.subscribers.listener import Listener, Refused
from radio.urls import BrokerURL, parse_urls

SAMPLE = {"network": "A", "data": {"speed": 42}}


@pytest.fixture
def two(home: Home) -> Iterator[tuple[BrokerThread, BrokerThread]]:
    """Two brokers sharing ``home``'s keys; a test may stop either (stopping twice is harmless)."""
    first, second = embedded_broker(home).start(), embedded_broker(home).start()
    try:
        yield first, second
    finally:
        first.stop()
        second.stop()


def _reader(port: int, home: Home) -> Client:
    reader = Client("tcp", port, "reader_a", home.secrets["reader_a"])
    assert reader.connect() == 0
    assert reader.subscribe("networks/A") == 0
    return reader


def test_a_list_of_urls_is_read_in_order_and_mixed_transports_are_refused() -> None:
    assert parse_urls("mqtt://a:1, mqtt://b:2") == [BrokerURL("tcp", "a", 1), BrokerURL("tcp", "b", 2)]
    with pytest.raises(ValueError, match="mixes transports"):
        parse_urls("mqtt://a:1,ws://b:2/mqtt")
    with pytest.raises(ValueError, match="mixes transports"):
        parse_urls("mqtt://a:1,mqtts://b:2")
    with pytest.raises(ValueError, match="names no broker"):
        parse_urls(" , ")
    assert parse_urls("ws://a/mqtt") == [BrokerURL("websockets", "a", 8080)]  # no port: the default
    with pytest.raises(ValueError, match="has port 0, which no server listens on"):
        parse_urls("ws://a:0/mqtt")  # not the default: that would be another server


@pytest.mark.parametrize(
    ("command", "setting"),
    [
        (["listen", "pub"], 'websocket = "127.0.0.1:0"'),
        (["device", "sensors", "--network", "A"], 'mqtt = "127.0.0.1:0"'),
        (["device", "traffic", "--network", "A"], 'mqtt = "127.0.0.1:0"'),
    ],
)
def test_a_listener_configured_on_port_0_is_no_address_to_reach(
    home: Home, command: list[str], setting: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`radio up --ws 127.0.0.1:0` serves on a port only its banner names: a client reading the
    configuration must not go to the default port, where another server (with the key's secret
    as its password) may listen."""
    home.config.write_text(home.config.read_text() + f"[broker]\n{setting}\n")
    monkeypatch.setenv("RADIO_KEY", home.secrets["gen"])  # the key the commands would send
    result = home.radio(*command, check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("radio: '"), result.stderr
    assert "has port 0, which no server listens on" in result.stderr
    assert "give --url with the port it took" in result.stderr


@pytest.mark.parametrize(
    ("command", "url"),
    [
        (["listen", "A", "--url"], "mqtt://127.0.0.1:1,ws://127.0.0.1:2/mqtt"),
        (["device", "sensors", "--network", "A", "--url"], "mqtt://127.0.0.1:1,nope"),
        (["bridge", "--broker"], "mqtt://127.0.0.1:1,127.0.0.1:x"),
        (["device", "traffic", "--network", "A", "--url"], "http://127.0.0.1:1,http://127.0.0.1:2"),
    ],
)
def test_a_bad_url_list_is_one_line_and_status_2(home: Home, command: list[str], url: str) -> None:
    result = home.radio(*command, url, check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("radio")


def test_the_bridge_publishes_through_the_second_broker_once_the_first_is_gone(
    home: Home, two: tuple[BrokerThread, BrokerThread]
) -> None:
    first, second = two
    urls = f"mqtt://127.0.0.1:{first.mqtt_port},mqtt://127.0.0.1:{second.mqtt_port}"
    bridge = start_bridge(home, first.mqtt_port, "--broker", urls, "--timeout", "1", "--workers", "1")
    try:
        key = {"API-KEY": home.secrets["gen"]}
        assert bridge.post(json.dumps(SAMPLE), key).status_code == 200
        reader = _reader(second.mqtt_port, home)
        first.stop()
        deadline = time.monotonic() + 15
        while (status := bridge.post(json.dumps(SAMPLE), key).status_code) != 200:
            assert status == 503
            assert time.monotonic() < deadline, "the bridge did not fail over"
        assert requests.get(bridge.url + "/healthz", timeout=10).status_code == 200
        got = reader.expect(1)
        assert json.loads(got[0].payload) == SAMPLE["data"]
        reader.close()
    finally:
        stderr = bridge.stop()
    assert "Traceback" not in stderr
    assert f"127.0.0.1:{second.mqtt_port}" in stderr


def _notices_until(notices: queue.Queue[str], text: str) -> None:
    deadline = time.monotonic() + 20
    while text not in notices.get(timeout=max(deadline - time.monotonic(), 0.01)):
        pass


def test_a_listener_moves_to_the_next_broker_when_its_own_goes_away(
    home: Home, two: tuple[BrokerThread, BrokerThread]
) -> None:
    first, second = two
    urls = f"mqtt://127.0.0.1:{first.mqtt_port},mqtt://127.0.0.1:{second.mqtt_port}"
    notices: queue.Queue[str] = queue.Queue()
    gen = Client("tcp", second.mqtt_port, "gen", home.secrets["gen"])
    assert gen.connect() == 0
    with Listener(["A"], urls, home.secrets["reader_a"], notice=notices.put) as listener:
        _notices_until(notices, f"on mqtt://127.0.0.1:{first.mqtt_port}")
        first.stop()
        _notices_until(notices, f"listening to A on mqtt://127.0.0.1:{second.mqtt_port}")
        gen.publish("networks/A", b'{"n": 1}', qos=1)
        assert next(iter(listener)).data == {"n": 1}
    gen.close()


@pytest.fixture
def unavailable() -> Iterator[int]:
    """A server that answers every CONNECT with "server unavailable" (no broker says it on demand)."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(4096)
                conn.sendall(b"\x20\x02\x00\x03")  # CONNACK, return code 3: server unavailable

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(5)
    server.close()


def test_a_broker_answering_server_unavailable_is_passed_over_not_final(
    home: Home, broker: BrokerThread, unavailable: int
) -> None:
    urls = f"mqtt://127.0.0.1:{unavailable},mqtt://127.0.0.1:{broker.mqtt_port}"
    notices: queue.Queue[str] = queue.Queue()
    gen = Client("tcp", broker.mqtt_port, "gen", home.secrets["gen"])
    assert gen.connect() == 0
    with Listener(["A"], urls, home.secrets["reader_a"], notice=notices.put) as listener:
        _notices_until(notices, f"listening to A on mqtt://127.0.0.1:{broker.mqtt_port}")
        gen.publish("networks/A", b'{"n": 2}', qos=1)
        assert next(iter(listener)).data == {"n": 2}
    gen.close()


def test_a_bad_key_stays_final_with_several_brokers(
    home: Home, two: tuple[BrokerThread, BrokerThread]
) -> None:
    first, second = two
    urls = f"mqtt://127.0.0.1:{first.mqtt_port},mqtt://127.0.0.1:{second.mqtt_port}"
    with (
        Listener(["A"], urls, "not-a-key") as listener,
        pytest.raises(Refused, match="refused the connection"),
    ):
        next(iter(listener))


def test_the_traffic_generator_keeps_publishing_through_the_second_broker(
    home: Home, two: tuple[BrokerThread, BrokerThread]
) -> None:
    first, second = two
    urls = f"mqtt://127.0.0.1:{first.mqtt_port},mqtt://127.0.0.1:{second.mqtt_port}"
    device = subprocess.Popen(
        [
            *(sys.executable, "-m", "radio", "device", "traffic", "--network", "A", "--period", "0.1"),
            *("--url", urls, "--seed", "1", "--config", str(home.config)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "RADIO_KEY": home.secrets["gen"]},
    )
    try:
        on_first = _reader(first.mqtt_port, home)
        assert "tick" in json.loads(on_first.expect(1)[0].payload)  # it publishes to the first broker
        on_first.close()
        on_second = _reader(second.mqtt_port, home)  # A is retained: nothing there before failover
        first.stop()
        ticks = {json.loads(m.payload)["tick"] for m in on_second.expect(5)}
        assert len(ticks) >= 4  # samples keep coming through the second
        on_second.close()
    finally:
        device.send_signal(signal.SIGINT)
        _, err = device.communicate(timeout=20)
    assert "Traceback" not in err
    assert "lost the broker" in err


@pytest.mark.nats
@pytest.mark.slow
def test_the_recorder_numbers_samples_through_the_second_broker_once_the_first_is_gone(
    two: tuple[BrokerThread, BrokerThread], home: Home
) -> None:
    first, second = two
    settings = load_settings(home.config)
    store = HistoryStore(settings.history_path)
    brokers = [Address("127.0.0.1", first.mqtt_port), Address("127.0.0.1", second.mqtt_port)]
    recorder = Recorder(LiveRegistry(home.config), store, brokers, *recorder_credentials(settings))
    gen_first = Client("tcp", first.mqtt_port, "gen", home.secrets["gen"])
    gen_second = Client("tcp", second.mqtt_port, "gen", home.secrets["gen"])
    recorder.start()
    try:
        assert recorder.subscribed.wait(10)
        assert gen_first.connect() == 0
        gen_first.publish("networks/A", b'{"on": "first"}', qos=1)
        gen_first.close()
        first.stop()
        moved = until(lambda: recorder.subscribed.is_set() and recorder.broker == brokers[1], within=15)
        assert moved, "the recorder never moved to the second broker"
        assert gen_second.connect() == 0
        gen_second.publish("networks/A", b'{"on": "second"}', qos=1)

        def recorded() -> list[str]:
            with contextlib.closing(sqlite3.connect(settings.history_path)) as db:
                rows = db.execute("SELECT payload FROM samples WHERE network = 'A' ORDER BY seq")
                return [json.loads(payload)["on"] for (payload,) in rows]

        assert until(lambda: recorded() == ["first", "second"]), recorded()
    finally:
        gen_second.close()
        recorder.stop()
        store.close()


def test_radio_up_on_a_cluster_hands_every_node_to_its_bridge_and_simulator(tmp_path: Path) -> None:
    require_nats()
    up = start_up(tmp_path, "nats")
    try:
        lines = [child.cmdline() for child in up.children]
        bridge = next(line for line in lines if "bridge" in line)
        traffic = next(line for line in lines if "traffic" in line)
        recorder = next(line for line in lines if "recorder" in line)
        every = bridge[bridge.index("--broker") + 1]
        ports = re.findall(r"mqtt://127\.0\.0\.1:(\d+)", every)
        assert len(set(ports)) == 3, every  # the default cluster: three nodes
        assert up.value(r"mqtt://127\.0\.0\.1:(\d+)") in ports
        assert traffic[traffic.index("--url") + 1] == every
        assert recorder[recorder.index("--broker") + 1] == every
    finally:
        up.process.send_signal(signal.SIGINT)
        _, err = up.process.communicate(timeout=60)
    assert up.process.returncode == 0, err
    assert not left_behind(up.children)


@pytest.mark.nats
@pytest.mark.slow
def test_the_bridge_carries_on_through_a_cluster_when_its_node_is_killed(tmp_path: Path) -> None:
    """SIGKILL of the node the bridge is linked to, as a crashed machine: its POSTs go on via another."""
    home = make_home(tmp_path)
    cluster = start_cluster(home)
    bridge = None
    try:
        ports = [node.mqtt.port for node in cluster.nodes]
        urls = ",".join(f"mqtt://127.0.0.1:{port}" for port in ports)
        bridge = start_bridge(home, ports[0], "--broker", urls, "--timeout", "2", "--workers", "1")
        key = {"API-KEY": home.secrets["gen"]}
        assert bridge.post(json.dumps(SAMPLE), key).status_code == 200
        cluster.processes[1].kill()  # node 1, the first URL: keyed by node number
        cluster.processes[1].wait()
        deadline = time.monotonic() + FAILOVER
        while (status := bridge.post(json.dumps(SAMPLE), key).status_code) != 200:
            assert status == 503
            assert time.monotonic() < deadline, "the bridge did not fail over to a live node"
        assert requests.get(bridge.url + "/healthz", timeout=10).status_code == 200
    finally:
        stderr = bridge.stop() if bridge is not None else ""
        cluster.stop()
    assert "Traceback" not in stderr
    assert "lost the broker" in stderr
