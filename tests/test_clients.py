"""Generators and listeners against the real broker: radio listen, the traffic simulator, sensors."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from conftest import ENGINES, running_broker
from embedded import embedded_broker
from mqtt_client import Client, said_while_unreachable, unused_port
from raw_mqtt import read_packet

from radio import wire
from radio.devices.link import MqttLink
from radio.registry import LiveRegistry
from radio.subscribers.listener import BadSample, Listener, Refused
from radio.urls import BrokerURL


def radio(home, *args, secret=None, **kwargs):
    """The real command; a key goes in its environment (RADIO_KEY), never in its arguments."""
    env = {k: v for k, v in os.environ.items() if k != "RADIO_KEY"}
    return subprocess.Popen(
        [sys.executable, "-m", "radio", *args, "--config", str(home.config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**env, "PYTHONUNBUFFERED": "1", **({"RADIO_KEY": secret} if secret else {})},
        **kwargs,
    )


def traffic_on_a(home, url: str, *extra: str) -> subprocess.Popen[str]:
    """The traffic simulator publishing to A every 0.2 s with gen's key."""
    return radio(
        home,
        "device",
        "traffic",
        "--network",
        "A",
        "--period",
        "0.2",
        "--url",
        url,
        *extra,
        secret=home.secrets["gen"],
    )


def lines(stream, into: queue.Queue) -> threading.Thread:
    thread = threading.Thread(target=lambda: [into.put(line) for line in stream], daemon=True)
    thread.start()
    return thread


def test_radio_listen_prints_one_json_line_per_sample_and_stops_cleanly(home, broker, transport):
    url = (
        f"ws://127.0.0.1:{broker.ws_port}/mqtt"
        if transport == "ws"
        else f"mqtt://127.0.0.1:{broker.mqtt_port}"
    )
    key_file = home.path / "reader_a.key"
    key_file.write_text(home.secrets["reader_a"] + "\n")
    key_file.chmod(0o600)
    listen = radio(home, "listen", "A", "pub", "--url", url, "--key-file", str(key_file))
    out: queue.Queue[str] = queue.Queue()
    lines(listen.stdout, out)
    admin = Client("tcp", broker.mqtt_port, "admin", home.secrets["admin"])
    assert admin.connect() == 0
    try:
        # Publish until the listener is subscribed (it says so on stderr; stdout is for samples only).
        deadline = time.monotonic() + 20
        while out.empty():
            assert time.monotonic() < deadline
            admin.publish("networks/pub", b'{"hello": 1}', qos=1)
            time.sleep(0.1)
        admin.publish("networks/A/s1", b"not json at all", qos=1)  # dropped by the broker's gate
        admin.publish("networks/A", b'{"n": 2}', qos=1)
        seen = []
        while not seen or seen[-1]["data"] != {"n": 2}:
            seen.append(json.loads(out.get(timeout=10)))
        assert {"network", "topic", "received_at", "data"} == set(seen[-1])
        assert seen[-1]["network"] == "A"
        assert seen[0] == {**seen[0], "network": "pub", "topic": "networks/pub", "data": {"hello": 1}}
        assert all(s["topic"] != "networks/A/s1" for s in seen)
    finally:
        admin.close()
        listen.send_signal(signal.SIGTERM)
        _, err = listen.communicate(timeout=20)
    assert listen.returncode == 0
    assert "skipped" not in err  # the broker never handed it over
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "key", "message"),
    [
        (["B"], "reader_a", "not entitled to read network 'B'"),
        (["A"], None, "not entitled to read network 'A'"),
        (["A"], "wrong-secret", "refused the connection"),
    ],
)
def test_radio_listen_refused_is_one_line_and_exit_2(home, broker, args, key, message):
    secret = home.secrets.get(key, key) if key else None
    listen = radio(home, "listen", *args, "--url", f"mqtt://127.0.0.1:{broker.mqtt_port}", secret=secret)
    out, err = listen.communicate(timeout=30)
    assert listen.returncode == 2
    assert out == ""
    refusals = [line for line in err.splitlines() if line.startswith("radio: ")]
    assert len(refusals) == 1
    assert message in refusals[0]
    assert "Traceback" not in err


def test_a_keyed_listener_gets_what_was_published_while_it_was_away(home, broker):
    url = f"mqtt://127.0.0.1:{broker.mqtt_port}"
    gen = Client("tcp", broker.mqtt_port, "gen", home.secrets["gen"])
    assert gen.connect() == 0
    try:
        with Listener(["A"], url, home.secrets["reader_a"]) as first:
            assert first.subscribed.wait(10)
            gen.publish("networks/A", b'{"n": 0}', qos=1)
            assert next(iter(first)).data == {"n": 0}
        for n in (1, 2, 3):  # nobody connected: the broker keeps them for the persistent session
            gen.publish("networks/A", json.dumps({"n": n}).encode(), qos=1)
        with Listener(["A"], url, home.secrets["reader_a"]) as again:
            received = iter(again)
            assert [next(received).data for _ in range(3)] == [{"n": 1}, {"n": 2}, {"n": 3}]
    finally:
        gen.close()


def test_the_listener_library_refuses_clearly(home, broker):
    with (
        Listener(["B"], f"mqtt://127.0.0.1:{broker.mqtt_port}", home.secrets["reader_a"]) as listener,
        pytest.raises(Refused, match="not entitled to read network 'B'"),
    ):
        next(iter(listener))


@pytest.mark.slow  # seconds of waiting: the fast tier stays under two minutes
def test_the_traffic_simulator_loses_no_tick_over_a_broker_outage(home):
    """Broker down for a few periods: the simulator keeps its samples and sends them when it is back.

    The generator is paused (SIGSTOP) while the broker restarts and resumed once the listener is
    subscribed again: the restarted broker has no memory of the listener, so only this order
    shows what the generator kept, without a race between the two reconnecting.
    """
    registry = LiveRegistry(home.config)
    first = embedded_broker(registry).start()
    port = first.mqtt_port
    url = f"mqtt://127.0.0.1:{port}"
    device = traffic_on_a(home, url, "--seed", "1")
    listener = Listener(["A"], url, home.secrets["reader_a"]).start()
    second = None
    try:
        samples = iter(listener)
        ticks = [next(samples).data["tick"] for _ in range(3)]
        first.stop()
        time.sleep(1.0)  # the outage itself: about five publish periods with no broker
        assert not listener.subscribed.is_set()
        os.kill(device.pid, signal.SIGSTOP)
        second = embedded_broker(registry, port).start()
        assert listener.subscribed.wait(30)
        os.kill(device.pid, signal.SIGCONT)
        while len(ticks) < 20:
            ticks.append(next(samples).data["tick"])
        unique = sorted(set(ticks))
        assert unique == list(range(unique[0], unique[0] + 10 * len(unique), 10)), ticks  # no gap
    finally:
        os.kill(device.pid, signal.SIGCONT)
        device.send_signal(signal.SIGINT)
        _, err = device.communicate(timeout=20)
        listener.stop()
        if second is not None:
            second.stop()
        first.stop()
    assert device.returncode == 0, err
    assert "lost the broker" in err
    assert "buffered sample" in err


def test_the_traffic_simulator_stops_at_once_while_it_simulates(home, broker):
    """A day of a town per sample is some 5 s of steps: SIGINT ends them, not the sample after."""
    device = traffic_on_a(home, f"mqtt://127.0.0.1:{broker.mqtt_port}", "--speed", "86400")
    try:
        assert device.stderr is not None
        for line in device.stderr:  # its stop is in place once it says what it simulates
            if "traffic simulator on network" in line:
                break
        device.send_signal(signal.SIGINT)
        device.wait(timeout=2)
    finally:
        device.kill()
        device.communicate(timeout=20)
    assert device.returncode == 0


def test_a_killed_sensor_agent_leaves_its_sensors_offline(home, broker):
    watcher = Client("tcp", broker.mqtt_port, "reader_a", home.secrets["reader_a"])
    assert watcher.connect() == 0
    assert watcher.subscribe("networks/A/+/status", qos=1) == 1
    agent = radio(
        home,
        "device",
        "sensors",
        "--network",
        "A",
        "--count",
        "3",
        "--rate",
        "5",
        "--url",
        f"mqtt://127.0.0.1:{broker.mqtt_port}",
        secret=home.secrets["gen"],
    )
    try:
        status = {}
        while len(status) < 3 or set(status.values()) != {"online"}:
            message = watcher.expect(1, timeout=20)[0]
            status[message.topic] = json.loads(message.payload)["status"]
        agent.kill()  # no goodbye: only the last wills can tell
        agent.wait(timeout=10)
        while set(status.values()) != {"offline"}:
            message = watcher.expect(1, timeout=20)[0]
            status[message.topic] = json.loads(message.payload)["status"]
        assert sorted(status) == [f"networks/A/sensor-000{n}/status" for n in range(3)]
    finally:
        if agent.poll() is None:
            agent.kill()
        agent.communicate(timeout=10)
        watcher.close()


@pytest.mark.slow  # seconds of waiting: the fast tier stays under two minutes
def test_a_generator_that_cannot_reach_its_broker_says_so_once_per_outage(home, caplog):
    """A generator whose broker cannot be reached (a wrong --url, a broker not started) says so:
    retrying and buffering in silence would hide the mistake for hours. Once however many attempts
    fail, and once however many links of the process (a hundred sensors) fail to reach it."""
    caplog.set_level(logging.WARNING, logger="radio.device")
    port = unused_port()
    url = BrokerURL.parse(f"mqtt://127.0.0.1:{port}")
    links = [MqttLink(url, home.secrets["gen"], f"outage-test-{n}") for n in range(2)]

    def start() -> None:
        for link in links:
            link.start()

    def stop() -> None:
        for link in links:
            link.stop()

    said = said_while_unreachable(caplog, links[1]._client, start, stop)
    line = f"cannot reach the broker at mqtt://127.0.0.1:{port} (Connection refused); retrying, samples are kept meanwhile"
    assert said == [line]


@pytest.mark.slow  # seconds of waiting: the fast tier stays under two minutes
def test_a_full_buffer_drops_the_oldest_samples_and_counts_them(home, caplog):
    """No broker yet: the link keeps the newest `buffer` samples and delivers them once it is up.

    Each sample goes to a subtopic of its own, retained, so a reader arriving later still sees
    exactly which ones reached the broker, whoever connected first.
    """
    registry = LiveRegistry(home.config)
    probe = embedded_broker(registry).start()
    port = probe.mqtt_port
    probe.stop()  # a port that nothing listens on, until the broker below starts there
    link = MqttLink(BrokerURL.parse(f"mqtt://127.0.0.1:{port}"), home.secrets["gen"], "buffer-test", buffer=3)
    link.start()
    try:
        for n in range(5):
            link.publish(f"networks/A/s{n}", json.dumps({"n": n}).encode(), retain=True)
        assert link.dropped == 2
        assert "dropped 1 oldest" in caplog.text
        with embedded_broker(registry, port) as broker:
            assert link.wait_connected(30)
            link.publish("networks/A/s5", b'{"n": 5}', retain=True)
            reader = Client("tcp", broker.mqtt_port, "reader_a", home.secrets["reader_a"])
            assert reader.connect() == 0
            assert reader.subscribe("networks/A/#", qos=1) == 1
            received = {json.loads(m.payload)["n"] for m in reader.expect(4, timeout=20)}
            reader.close()
    finally:
        link.stop()
    assert received == {2, 3, 4, 5}


DEEP = b"[" * 5000 + b"]" * 5000
"""Valid JSON that Python's parser cannot take: it raised RecursionError on the network thread."""


@pytest.fixture
def lax_broker(home):
    """Mosquitto, which passes on payloads that are not samples: Radio's listener must survive them.

    (The embedded broker drops them at its gate, so they cannot be published to it.)
    """
    with running_broker("mosquitto", home) as running:
        yield running


@pytest.mark.mosquitto
def test_radio_listen_skips_bad_retained_samples_with_one_line_each_and_goes_on(home, lax_broker):
    broker = lax_broker
    admin = Client("tcp", broker.mqtt_port, "admin", home.secrets["admin"])
    assert admin.connect() == 0
    listen = None
    try:
        admin.publish("networks/pub", DEEP, qos=1, retain=True)
        admin.publish("networks/pub/latin1", "café".encode("latin-1"), qos=1, retain=True)
        admin.publish("networks/pub/nan", b'{"value": NaN}', qos=1, retain=True)
        listen = radio(home, "listen", "pub", "--url", f"mqtt://127.0.0.1:{broker.mqtt_port}")
        err: queue.Queue[str] = queue.Queue()
        out: queue.Queue[str] = queue.Queue()
        readers = [lines(listen.stderr, err), lines(listen.stdout, out)]
        seen = []
        while not any("listening to pub" in line for line in seen):
            seen.append(err.get(timeout=20))
        admin.publish("networks/pub", b'{"good": 1}', qos=1, retain=True)
        assert json.loads(out.get(timeout=20))["data"] == {"good": 1}
        assert listen.poll() is None
    finally:
        admin.close()
        if listen is not None:
            listen.send_signal(signal.SIGTERM)
            listen.wait(timeout=20)
            for reader in readers:
                reader.join(timeout=20)
            listen.stdout.close()
            listen.stderr.close()
    assert listen.returncode == 0
    while not err.empty():
        seen.append(err.get())
    skipped = sorted(line for line in seen if "skipped" in line)
    assert skipped == [
        "radio listen: skipped a payload on networks/pub (10000 bytes): nested too deep\n",
        "radio listen: skipped a payload on networks/pub/latin1 (4 bytes): not UTF-8\n",
        "radio listen: skipped a payload on networks/pub/nan (14 bytes): not JSON\n",
    ]
    assert out.empty()
    assert not any("Traceback" in line for line in seen)


@pytest.mark.mosquitto
def test_the_listener_library_hands_bad_samples_to_the_caller_and_goes_on(home, lax_broker):
    broker = lax_broker
    admin = Client("tcp", broker.mqtt_port, "admin", home.secrets["admin"])
    assert admin.connect() == 0
    bad: queue.Queue[BadSample] = queue.Queue()
    try:
        admin.publish("networks/pub", DEEP, qos=1, retain=True)
        with Listener(["pub"], f"mqtt://127.0.0.1:{broker.mqtt_port}", on_bad_sample=bad.put) as listener:
            assert bad.get(timeout=20) == BadSample("networks/pub", "nested too deep", len(DEEP))
            admin.publish("networks/pub", b'{"good": 1}', qos=1)
            assert next(iter(listener)).data == {"good": 1}
    finally:
        admin.close()


# paho leaves the socket of a WebSocket handshake it refuses to the garbage collector.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_listener_on_another_websocket_path_than_mqtt_is_told_where_mqtt_is(broker):
    """The broker answers 404 to an upgrade anywhere but /mqtt: the listener, which retries as for
    any failed connect, says which path to use rather than a bare "not upgraded"."""
    notices: queue.Queue[str] = queue.Queue()
    with Listener(["pub"], f"ws://127.0.0.1:{broker.ws_port}/mqt", notice=notices.put):
        notice = notices.get(timeout=20)
    assert notice.startswith(f"cannot reach ws://127.0.0.1:{broker.ws_port}/mqt ("), notice
    assert "Radio's brokers serve MQTT over WebSocket at /mqtt, not /mqt" in notice, notice


def test_a_forced_reconnect_prints_no_sample_twice_and_waits_briefly(home, broker):
    """Another client takes the listener's client id: it is thrown out, and comes back at once.

    The resubscription brings the retained sample back; it is not a new sample. Every reconnect
    follows a connection that worked, so each waits the shortest backoff (at most 0.5 s).
    """
    admin = Client("tcp", broker.mqtt_port, "admin", home.secrets["admin"])
    assert admin.connect() == 0
    notices: queue.Queue[str] = queue.Queue()
    try:
        admin.publish("networks/pub", b'{"n": 1}', qos=1, retain=True)
        with Listener(["pub"], f"mqtt://127.0.0.1:{broker.mqtt_port}", notice=notices.put) as listener:
            samples = iter(listener)
            assert next(samples).data == {"n": 1}
            client_id = listener._client._client_id.decode()
            delays = []
            for _ in range(4):
                while "listening" not in notices.get(timeout=20):
                    pass
                intruder = Client("tcp", broker.mqtt_port, client_id=client_id)
                assert intruder.connect() == 0
                while "lost" not in (notice := notices.get(timeout=20)):
                    pass
                delays.append(float(notice.rsplit("reconnecting in ", 1)[1].split()[0]))
                intruder.close()
            while "listening" not in notices.get(timeout=20):
                pass
            admin.publish("networks/pub", b'{"n": 2}', qos=1, retain=True)
            assert next(samples).data == {"n": 2}
    finally:
        admin.close()
    assert all(delay <= 0.5 for delay in delays), delays


def test_a_sample_sent_again_after_a_lost_acknowledgement_is_not_taken_twice():
    """A broker that did not get a listener's PUBACK before the connection went sends the sample
    again, with DUP, once the session resumes (MQTT-3.3.1-1): it was taken already.

    The broker here is a socket that plays that script, so that the acknowledgement is lost every
    time, not only when a connection happens to drop between a sample and its PUBACK.
    """
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(20)
    port = server.getsockname()[1]
    first = wire.publish("networks/pub", b'{"n": 1}', qos=1, packet_id=7)

    def session(*packets: bytes, present: bool) -> socket.socket:
        sock, _ = server.accept()
        sock.settimeout(20)
        assert read_packet(sock)[0] == 0x10  # CONNECT
        sock.sendall(wire.connack(present, 0))
        subscribe = read_packet(sock)
        assert subscribe[0] == 0x82
        sock.sendall(wire.suback(int.from_bytes(subscribe[1][:2], "big"), [1]))
        for packet in packets:
            sock.sendall(packet)
        return sock

    def broker() -> None:
        sock = session(first, present=False)
        assert read_packet(sock)[0] == 0x40  # the PUBACK, lost with the connection
        sock.close()
        sock = session(wire.publish("networks/pub", b'{"n": 1}', qos=1, packet_id=7, dup=True), present=True)
        sock.sendall(wire.publish("networks/pub", b'{"n": 2}', qos=1, packet_id=8))
        done.wait(20)
        sock.close()

    done = threading.Event()
    playing = threading.Thread(target=broker, daemon=True)
    playing.start()
    try:
        with Listener(["pub"], f"mqtt://127.0.0.1:{port}", "a-secret", http="http://127.0.0.1:1") as listener:
            samples = iter(listener)
            assert next(samples).data == {"n": 1}
            assert next(samples).data == {"n": 2}
    finally:
        done.set()
        playing.join(timeout=20)
        server.close()


def test_two_traffic_simulators_on_one_network_do_not_evict_each_other(home, broker, everything):
    url = f"mqtt://127.0.0.1:{broker.mqtt_port}"
    devices = [traffic_on_a(home, url) for _ in range(2)]
    try:
        everything.expect(15, timeout=30)  # 3 s of both publishing
    finally:
        errs = []
        for device in devices:
            device.send_signal(signal.SIGTERM)
            errs.append(device.communicate(timeout=20)[1])
    for device, err in zip(devices, errs, strict=True):
        assert device.returncode == 0, err
        assert "lost the broker" not in err
        assert err.count("connected to mqtt://") == 1, err


WRONG_SECRET = "not-a-key"  # noqa: S105 - no key has it
GENERATORS = {
    "traffic over MQTT": ["device", "traffic", "--period", "0.1"],
    "traffic over HTTP": ["device", "traffic", "--period", "0.1", "--via", "http"],
    "sensors": ["device", "sensors", "--count", "3", "--rate", "10"],
}


def one_refusal(process: subprocess.Popen[str], timeout: float = 30) -> str:
    """A command that must stop by itself: its one `radio:` line, once it exited with status 2."""
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 2, err
    assert out == ""
    assert "Traceback" not in err
    refusals = [line for line in err.splitlines() if line.startswith("radio: ")]
    assert len(refusals) == 1, err
    return refusals[0]


@pytest.mark.parametrize("generator", GENERATORS)
@pytest.mark.parametrize(
    ("network", "message"),
    [
        ("B", "key 'gen' is not entitled to publish to network 'B': the broker would drop every sample"),
        ("nowhere", "no network 'nowhere' in"),
    ],
)
def test_a_generator_that_may_not_publish_to_its_network_says_so_and_exits_2(
    home, broker, generator, network, message
):
    """Over MQTT 3.1.1 a refused PUBLISH is acknowledged like any other: the generator must not
    run on publishing into nothing. The registry the brokers decide with tells it first."""
    url = f"mqtt://127.0.0.1:{broker.mqtt_port}" if "HTTP" not in generator else "http://127.0.0.1:1"
    process = radio(
        home, *GENERATORS[generator], "--network", network, "--url", url, secret=home.secrets["gen"]
    )
    assert message in one_refusal(process)


@pytest.mark.parametrize("generator", ["traffic over MQTT", "sensors"])
def test_a_generator_with_a_wrong_key_stops_retrying_with_one_line(home, broker, generator):
    url = f"mqtt://127.0.0.1:{broker.mqtt_port}"
    process = radio(home, *GENERATORS[generator], "--network", "A", "--url", url, secret=WRONG_SECRET)
    assert "refused the key" in one_refusal(process)


def test_a_generator_posting_with_a_wrong_key_or_to_a_forbidden_network_stops(home, bridge, tmp_path):
    """Through the bridge, the answers of the legacy contract that no retry cures end the generator.

    Run where no configuration is at hand: the bridge alone can tell."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for secret, network, answer in (
        (WRONG_SECRET, "A", "API-KEY not valid"),
        (home.secrets["gen"], "B", "You cannot broadcast to this channel"),
    ):
        process = subprocess.Popen(
            [sys.executable, "-m", "radio", "device", "traffic", "--network", network, "--url", bridge.url],
            cwd=elsewhere,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**{k: v for k, v in os.environ.items() if k != "RADIO_CONFIG"}, "RADIO_KEY": secret},
        )
        assert answer in one_refusal(process)


@pytest.mark.parametrize("engine", ENGINES)
def test_an_anonymous_listener_to_a_private_network_exits_2_on_every_engine(home, engine):
    """Mosquitto grants the SUBSCRIBE and delivers nothing: the listener must not wait for ever."""
    with running_broker(engine, home) as running:
        listen = radio(home, "listen", "A", "--url", f"mqtt://127.0.0.1:{running.mqtt_port}")
        assert "not entitled to read network 'A' anonymously" in one_refusal(listen)
        keyed = radio(
            home,
            "listen",
            "B",
            "--url",
            f"mqtt://127.0.0.1:{running.mqtt_port}",
            secret=home.secrets["reader_a"],
        )
        assert "not entitled to read network 'B'" in one_refusal(keyed)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_listener_that_lost_its_network_exits_2_when_it_reconnects_on_every_engine(home, engine):
    """Mosquitto grants a reconnecting listener's SUBSCRIBE to a network its key may no longer
    read, and delivers nothing: the listener asks the registry at every connection, not at its
    start only, so it says so and exits rather than claim to listen."""
    secret = home.secrets["reader_a"]
    with running_broker(engine, home) as running:
        listen = radio(home, "listen", "A", "--url", f"mqtt://127.0.0.1:{running.mqtt_port}", secret=secret)
        try:
            assert listen.stderr is not None
            assert listen.stderr.readline().startswith("radio listen: listening to A on ")
            home.radio_main("keys", "edit", "reader_a", "--subscribe", "")  # returns once in force
            # Its connection taken over (same key and client id), the listener connects again.
            client_id = "radio-listen-" + hashlib.sha256(f"{secret}|{['A']}".encode()).hexdigest()[:16]
            other = Client(
                "tcp", running.mqtt_port, "reader_a", secret, client_id=client_id, clean_session=False
            )
            assert other.connect() == 0
            other.close()
            assert "not entitled to read network 'A'" in one_refusal(listen)
        finally:
            if listen.poll() is None:  # a listener that listens on: stopped, not left behind
                listen.kill()
                listen.communicate()
