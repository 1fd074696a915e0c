"""The clients over MQTT 5 (``--mqtt-version 5``), against both brokers that speak it.

Over MQTT 5 a broker says why it refuses: a CONNACK reason code for a key it does not take, a
PUBACK reason code for a sample it does not take. A generator prints both; a listener receives
what a 3.1.1 listener receives, and keeps its persistent session between runs the same way.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import signal
import threading
import time

import pytest
from conftest import running_broker
from mqtt_client import Client
from polling import until
from test_clients import WRONG_SECRET, lines, one_refusal, radio

from radio.devices.link import MqttLink
from radio.subscribers.listener import Listener
from radio.urls import BrokerURL


@pytest.fixture(params=["embedded", pytest.param("mosquitto", marks=pytest.mark.mosquitto)])
def broker5(request, home):
    """A broker that speaks MQTT 5: the embedded one, and Mosquitto."""
    with running_broker(request.param, home) as running:
        yield running


def _start_listening(home, port: int, version: str, out: queue.Queue[str], *networks: str):
    key_file = home.path / "reader_a.key"
    key_file.write_text(home.secrets["reader_a"] + "\n")
    key_file.chmod(0o600)
    process = radio(
        home,
        *("listen", *networks, "--url", f"mqtt://127.0.0.1:{port}"),
        *("--key-file", str(key_file), "--mqtt-version", version),
    )
    lines(process.stdout, out)
    return process


def test_a_listener_at_mqtt_5_receives_what_a_3_1_1_listener_receives(home, broker5):
    outputs = {version: queue.Queue() for version in ("3.1.1", "5")}
    # A keyed listener's client id comes from its key and networks: two with both the same would
    # take the session from each other in turn. The 3.1.1 one listens to pub too.
    networks = {"3.1.1": ("A", "pub"), "5": ("A",)}
    listeners = {
        v: _start_listening(home, broker5.mqtt_port, v, out, *networks[v]) for v, out in outputs.items()
    }
    admin = Client("tcp", broker5.mqtt_port, "admin", home.secrets["admin"])
    assert admin.connect() == 0
    try:
        # Publish a marker until both print it: each is then subscribed.
        deadline = time.monotonic() + 30
        for out in outputs.values():
            while out.empty():
                assert time.monotonic() < deadline, "a listener never printed a sample"
                admin.publish("networks/A", b'{"ready": true}', qos=1)
                time.sleep(0.1)
        sent = [{"n": n, "nested": {"list": [n, str(n)]}} for n in range(5)]
        for data in sent:
            admin.publish("networks/A/s1", json.dumps(data).encode(), qos=1)
        received = {}
        for version, out in outputs.items():
            seen = []
            while len(seen) < len(sent):
                try:
                    sample = json.loads(out.get(timeout=10))
                except queue.Empty:
                    listeners[version].send_signal(signal.SIGTERM)
                    err = listeners[version].communicate(timeout=10)[1]
                    raise AssertionError(version, seen, err) from None
                if sample["network"] == "A" and "ready" not in sample["data"]:
                    seen.append((sample["network"], sample["topic"], sample["data"]))
            received[version] = seen
    finally:
        admin.close()
        for process in listeners.values():
            process.send_signal(signal.SIGTERM)
        errors = {v: p.communicate(timeout=20)[1] for v, p in listeners.items()}
    assert received["5"] == received["3.1.1"] == [("A", "networks/A/s1", data) for data in sent]
    for version, process in listeners.items():
        assert process.returncode == 0, errors[version]
        assert "Traceback" not in errors[version]


@pytest.mark.slow  # each broker holds the session across two listener runs: 15 s
def test_a_keyed_listener_at_mqtt_5_gets_what_was_published_while_it_was_away(home, broker5):
    """MQTT 5 asks for the persistent session at connect time: without a session expiry it ends
    with the connection, and what was published meanwhile is lost."""
    url = f"mqtt://127.0.0.1:{broker5.mqtt_port}"
    gen = Client("tcp", broker5.mqtt_port, "gen", home.secrets["gen"])
    assert gen.connect() == 0
    try:
        with Listener(["A"], url, home.secrets["reader_a"], version="5") as first:
            assert first.subscribed.wait(10)
            gen.publish("networks/A", b'{"n": 0}', qos=1)
            assert next(iter(first)).data == {"n": 0}
        for n in (1, 2, 3):  # nobody connected: the broker keeps them for the session
            gen.publish("networks/A", json.dumps({"n": n}).encode(), qos=1)
        with Listener(["A"], url, home.secrets["reader_a"], version="5") as again:
            give_up = threading.Timer(15, again.stop)  # ends the iteration if they never come
            give_up.start()
            received = [sample.data for sample, _ in zip(again, range(3), strict=False)]
            give_up.cancel()
        assert received == [{"n": 1}, {"n": 2}, {"n": 3}]
    finally:
        gen.close()


@pytest.mark.parametrize("generator", [["traffic", "--period", "0.1"], ["sensors", "--count", "3"]])
def test_a_generator_with_a_wrong_key_at_mqtt_5_prints_the_connack_reason(home, broker5, generator):
    process = radio(
        home,
        *("device", *generator, "--network", "A", "--mqtt-version", "5"),
        *("--url", f"mqtt://127.0.0.1:{broker5.mqtt_port}"),
        secret=WRONG_SECRET,
    )
    refusal = one_refusal(
        process
    )  # Mosquitto says "not authorized"; other brokers, "bad user name or password"
    assert re.search(r"refused the key: [\w ]+ \(reason code 0x8[67]\) \(is the key right\?\)", refusal), (
        refusal
    )


def test_a_sample_refused_at_mqtt_5_is_said_once_with_its_puback_reason(home, broker5, caplog):
    """The key may not publish to B: over MQTT 5 the broker answers each sample's PUBACK with
    "not authorized", and the generator says so once, not once per sample."""
    link = MqttLink(
        BrokerURL("tcp", "127.0.0.1", broker5.mqtt_port), home.secrets["gen"], "gen-mqtt5", version="5"
    )
    caplog.set_level(logging.INFO, logger="radio.device")
    link.start()
    try:
        assert link.wait_connected(10)
        for n in range(20):
            link.publish("networks/B", json.dumps({"n": n}).encode())
        assert until(lambda: link.publish_refusals), "no PUBACK refusal came back"
        link.publish("networks/A", b'{"fine": true}')  # acknowledged after the 20 refusals: all are in
        assert until(lambda: any("refused a sample" in r.getMessage() for r in caplog.records))
    finally:
        link.stop()
    refusals = [r.getMessage() for r in caplog.records if "refused a sample" in r.getMessage()]
    where = f"mqtt://127.0.0.1:{broker5.mqtt_port}"
    assert refusals == [
        f"the broker at {where} refused a sample: Not authorized (reason code 0x87) (said once per reason)"
    ]
    assert link.publish_refusals == {0x87}


def test_mqtt_5_through_the_bridge_is_refused_in_one_line(home):
    process = radio(
        home,
        *("device", "traffic", "--network", "A", "--via", "http", "--mqtt-version", "5"),
        secret=home.secrets["gen"],
    )
    assert "--mqtt-version 5 is for MQTT" in one_refusal(process)
