"""MQTT.js, the client of the live pages and of most web listeners, at MQTT 3.1.1 and MQTT 5.

Each client is one Node process running tests/node/mqttjs_client.mjs, driven with JSON lines in
and reporting, as JSON lines out, the packets MQTT.js received: CONNACK and SUBACK codes, PUBACKs,
messages with their retain flag. Its secret travels in its environment, never on a command line.

The version is the one the live pages serve (bridge/static/vendor/mqtt.min.js). Every test runs on
the embedded broker and on Mosquitto (each started once per module and xdist worker) at MQTT 3.1.1
and MQTT 5; connecting and receiving also over WebSocket (``ws://.../mqtt``, as a browser does).
Each test uses topics of its own, so retained samples left by one test never reach another.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CONFIG, Home, running_broker

from radio.broker.mosquitto import MosquittoBroker
from radio.broker.thread import BrokerThread

pytestmark = [pytest.mark.mqttjs, pytest.mark.slow]  # a Node process per client: about 40 of them

NODE = Path(__file__).parent / "node"
VENDORED = Path(__file__).parent.parent / "bridge" / "static" / "vendor" / "mqtt.min.js"
SCRIPT = NODE / "mqttjs_client.mjs"
INSTALL = "npm ci --prefix tests/node"
TIMEOUT = 10.0

if shutil.which("node") is None or not (NODE / "node_modules" / "mqtt").is_dir():
    if os.environ.get("CI"):
        pytest.fail(f"node or MQTT.js is missing: .ci/run installs them ({INSTALL})", pytrace=False)
    pytest.skip(f"MQTT.js is not installed (Node 18+ and npm, then: {INSTALL})", allow_module_level=True)

V4_REFUSED_CONNECT = {4, 5}
"""MQTT 3.1.1's CONNACK return codes for a bad user name or password (4) and not authorised (5)."""
V5_REFUSED_CONNECT = {0x86, 0x87}
"""MQTT 5's CONNACK reason codes for a bad user name or password (0x86) and not authorised (0x87)."""
REFUSED_FILTER = {4: 0x80, 5: 0x87}
"""The SUBACK code of a refused filter: 3.1.1's Failure, 5's Not authorised."""

TRANSPORTS = ["tcp", "ws"]
WRONG = "not-the-secret-of-gen"
ACCEPTED = {0, 0x10}
"""PUBACK codes of an accepted sample: 3.1.1 has none (0); MQTT 5 may add 0x10, no matching subscribers."""

MOSQUITTO_GRANTS = "Mosquitto grants every SUBSCRIBE and filters each delivery (docs/access.md)"


def cells(**gaps: str) -> pytest.MarkDecorator:
    """Run a test on each engine at each protocol level (``engine`` and ``protocol``).

    A cell named in ``gaps`` (``embedded_v5=...``) is a strict expected failure for that reason, so
    a gap closed shows up as an unexpected pass. Each engine starts once per module and worker.
    """
    params = []
    for engine in ("embedded", "mosquitto"):
        for protocol in (4, 5):
            cell = f"{engine}_v{protocol}"
            marks = [pytest.mark.mosquitto] if engine == "mosquitto" else []
            if cell in gaps:
                marks.append(pytest.mark.xfail(strict=True, reason=gaps[cell]))
            params.append(pytest.param(engine, protocol, id=f"{engine}-v{protocol}", marks=marks))
    return pytest.mark.parametrize(("engine", "protocol"), params, indirect=["engine"])


class MqttJs:
    """One MQTT.js client in its own Node process; its events are awaited, never slept on."""

    def __init__(
        self,
        url: str,
        protocol: int,
        username: str | None,
        secret: str | None,
        secret_file: Path | None = None,
    ) -> None:
        env = {k: v for k, v in os.environ.items() if k != "RADIO_SECRET"}
        if secret is not None:
            env["RADIO_SECRET"] = secret
        identity = ["--username", username] if username is not None else []
        if secret_file is not None:
            identity += ["--secret-file", str(secret_file)]
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        self.process = subprocess.Popen(
            ["node", str(SCRIPT), "--url", url, "--protocol-version", str(protocol), *identity],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            encoding="utf-8",
            env=env,
        )
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._held: list[dict[str, Any]] = []
        """Events read while awaiting another kind, in the order they came."""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                self._events.put(json.loads(line))
            except json.JSONDecodeError:
                self._events.put({"event": "garbage", "line": line})
        self._events.put(None)

    def send(self, **command: object) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def next(self, *kinds: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The first event of one of ``kinds`` not yet taken; others are kept for later calls."""
        for held in self._held:
            if held["event"] in kinds:
                self._held.remove(held)
                return held
        while True:
            try:
                event = self._events.get(timeout=timeout)
            except queue.Empty:
                pytest.fail(f"MQTT.js reported no {'/'.join(kinds)} within {timeout:g} s; {self._story()}")
            if event is None:
                self._events.put(None)  # stays at the end for any later call
                pytest.fail(f"MQTT.js exited before any {'/'.join(kinds)}; {self._story()}")
            if event["event"] in kinds:
                return event
            self._held.append(event)

    def subscribe(self, topic_filter: str, qos: int = 1) -> list[int]:
        """The SUBACK's codes for one filter (SUBACKs come in the order of the SUBSCRIBEs)."""
        self.send(subscribe=topic_filter, qos=qos)
        return list(self.next("suback")["granted"])

    def publish(self, topic: str, payload: str, *, retain: bool = False) -> dict[str, Any]:
        """A QoS 1 PUBLISH; returns its PUBACK, or the close of a connection the broker dropped."""
        self.send(publish=topic, payload=payload, qos=1, retain=retain)
        return self.next("puback", "close")

    def messages(self, count: int) -> list[tuple[str, str, bool]]:
        """The next ``count`` messages as (topic, payload, retain)."""
        return [(m["topic"], m["payload"], m["retain"]) for m in (self.next("message") for _ in range(count))]

    def close(self) -> list[dict[str, Any]]:
        """End the connection and the process; returns the events it reported that nothing took."""
        if self._stderr.closed:
            return []
        with contextlib.suppress(BrokenPipeError, OSError):
            self.send(end=True)
        try:
            self.process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=TIMEOUT)
        left = list(self._held)
        while (event := self._events.get_nowait()) is not None:
            left.append(event)
        if self.process.stdin is not None:
            self.process.stdin.close()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._stderr.close()
        return left

    def _story(self) -> str:
        self._stderr.seek(0)
        stderr = self._stderr.read().decode(errors="replace")[-2000:]
        return f"events not taken: {self._held}; stderr: {stderr or '(empty)'}"


Broker = BrokerThread | MosquittoBroker
Open = Callable[..., MqttJs]


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    """The module's platform folder: networks A, B and pub; keys gen, reader_a, reader_b, admin."""
    home = Home(tmp_path_factory.mktemp("mqttjs"))
    home.config.write_text(CONFIG)
    home.add_key("gen", publish=["A"])
    home.add_key("reader_a", subscribe=["A"])
    home.add_key("reader_b", subscribe=["B"])
    home.add_key("admin", admin=True)
    return home


@pytest.fixture(scope="module")
def engine(request: pytest.FixtureRequest, shared_home: Home) -> Iterator[Broker]:
    """Each engine once per module (and xdist worker), on free ports; tests choose it with ``cells``."""
    with running_broker(str(request.param), shared_home) as running:
        yield running


@pytest.fixture
def mqttjs(engine: Broker, shared_home: Home) -> Iterator[Open]:
    """Start MQTT.js clients as a key of the module's home (or anonymously); all closed after the test.

    A client's secret goes in its environment, or the file ``secret_file`` names.
    """
    clients: list[MqttJs] = []

    def _open(
        key: str | None = None,
        *,
        protocol: int,
        transport: str,
        secret: str | None = None,
        secret_file: Path | None = None,
        expect: int | None = 0,
    ) -> MqttJs:
        if transport == "ws":
            url = f"ws://127.0.0.1:{engine.ws_port}/mqtt"
        else:
            url = f"mqtt://127.0.0.1:{engine.mqtt_port}"
        password = secret if secret is not None else shared_home.secrets.get(key or "")
        if secret_file is not None:
            password = None  # the client reads it from the file
        client = MqttJs(url, protocol, key, password if key else None, secret_file)
        clients.append(client)
        if expect is not None:
            assert client.next("connack")["code"] == expect
        return client

    yield _open
    for client in clients:
        client.close()


def fresh(network: str) -> str:
    """A topic of ``network`` no other test uses: the brokers live for the whole module."""
    return f"networks/{network}/{uuid.uuid4().hex[:12]}"


def accepted(outcome: dict[str, Any]) -> bool:
    return outcome["event"] == "puback" and outcome["code"] in ACCEPTED


@pytest.mark.parametrize("transport", TRANSPORTS)
@cells()
def test_v4_and_v5_listeners_receive_the_same_samples_retained_and_live(mqttjs, protocol, transport):
    """The generator speaks ``protocol``; a listener at each level sees what the other sees."""
    topic = fresh("A")
    gen = mqttjs("gen", protocol=protocol, transport=transport)
    assert accepted(gen.publish(topic, '{"n": 0}', retain=True))
    listeners = {level: mqttjs("reader_a", protocol=level, transport=transport) for level in (4, 5)}
    for listener in listeners.values():
        assert listener.subscribe(topic) == [1]
        assert listener.messages(1) == [(topic, '{"n": 0}', True)]
    for n, where in ((1, topic), (2, topic + "/s1"), (3, topic)):
        assert accepted(gen.publish(where, f'{{"n": {n}}}'))
    seen = {level: listener.messages(2) for level, listener in listeners.items()}
    assert seen[4] == seen[5] == [(topic, '{"n": 1}', False), (topic, '{"n": 3}', False)]


@pytest.mark.parametrize("transport", TRANSPORTS)
@cells()
def test_a_wrong_secret_is_refused_at_connack(mqttjs, protocol, transport):
    client = mqttjs("gen", protocol=protocol, transport=transport, secret=WRONG, expect=None)
    assert client.next("connack")["code"] in (V5_REFUSED_CONNECT if protocol == 5 else V4_REFUSED_CONNECT)
    client.next("close")


@pytest.mark.parametrize(("engine", "protocol"), [("embedded", 4)], indirect=["engine"])
def test_a_secret_read_from_a_file_lets_the_key_in(mqttjs, shared_home, protocol, tmp_path):
    """The other way to hand the client its secret: a file only its owner reads."""
    secret_file = tmp_path / "gen.secret"
    secret_file.touch(mode=0o600)
    secret_file.write_text(shared_home.secrets["gen"] + "\n")
    mqttjs("gen", protocol=protocol, transport="tcp", secret_file=secret_file)


@cells(mosquitto_v4=MOSQUITTO_GRANTS, mosquitto_v5=MOSQUITTO_GRANTS)
def test_a_filter_on_a_network_the_key_may_not_read_is_refused(mqttjs, protocol):
    """Over TCP only: a SUBSCRIBE is decided after the transport is taken off, the same for both."""
    reader_b = mqttjs("reader_b", protocol=protocol, transport="tcp")
    assert reader_b.subscribe(fresh("A") + "/#") == [REFUSED_FILTER[protocol]]
    assert reader_b.subscribe(fresh("B")) == [1]  # still connected, and its own network granted


@cells()
def test_a_publish_outside_the_key_s_rights_reaches_no_listener(mqttjs, protocol):
    """gen may publish to A only. Its sample to B is decided on before its PUBACK (or the close of
    its connection) comes back; the listener's own sample, published after that, comes next.
    Over TCP only, as the SUBSCRIBE above; deliveries over WebSocket are tested with the samples."""
    forbidden, after = fresh("B"), fresh("B")
    listener = mqttjs("admin", protocol=protocol, transport="tcp")
    assert listener.subscribe(forbidden) == [1]
    assert listener.subscribe(after) == [1]
    gen = mqttjs("gen", protocol=protocol, transport="tcp")
    outcome = gen.publish(forbidden, '{"leak": 1}')
    if protocol == 5:
        assert outcome == {"event": "puback", "code": 0x87}
    assert accepted(listener.publish(after, '{"after": 1}'))
    assert listener.messages(1) == [(after, '{"after": 1}', False)]
    assert not [event for event in listener.close() if event["event"] == "message"]


def test_the_tests_run_the_mqtt_js_the_live_pages_serve():
    locked = json.loads((NODE / "package-lock.json").read_text())["packages"]["node_modules/mqtt"]
    # The bundle keeps MQTT.js's package.json as a module of its own: {version: "..."}.
    served = re.findall(r'exports=\{version:"([^"]+)"\}', VENDORED.read_text())
    assert served == [locked["version"]]
