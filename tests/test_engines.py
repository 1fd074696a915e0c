"""One set of promises, every engine: what the embedded broker, Mosquitto and NATS keep over MQTT.

Each test is one promise of docs/access.md's table "What each engine keeps", run against each
engine. Where an engine cannot keep a promise the test is a strict expected failure whose reason
is the table's cell, word for word (``test_the_docs_table_is_the_suite_s_marks`` checks both
ways), so the table cannot promise what an engine does not do, and a gap closed shows up as an
unexpected pass.

Each engine runs once per module and worker (NATS as one node: rights and reloads are the same on
one node as on three, ``test_nats_cluster.py`` covers the cluster), with its keys made up front;
a test that changes keys makes its own.
"""

from __future__ import annotations

import ast
import functools
import json
import queue
import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import polling
import pytest
from conftest import CONFIG as BASE_CONFIG
from conftest import Home, require_mosquitto
from mqtt_client import NOT_AUTHORIZED, Client, Message
from paho.mqtt.client import MQTT_ERR_SUCCESS
from syntax import trees
from test_nats_cluster import require_nats

from radio.bridge.identity import bridge_credentials
from radio.broker.mosquitto import MosquittoBroker, MosquittoError
from radio.broker.nats import NatsCluster
from radio.broker.nats_conf import NatsError
from radio.broker.thread import BrokerThread
from radio.config import Address, load_settings
from radio.keys import Terms
from radio.registry import LiveRegistry
from radio.usage import report, usage_path

pytestmark = pytest.mark.slow

DOCS = Path(__file__).parent.parent / "docs" / "access.md"
WITHIN = 2.0
"""Seconds for a key change to reach a running engine, as promised to operators."""
SLACK = 1.0
"""What a loaded test machine adds to that before a test calls it broken."""
NAMES = ("a", "a.b", "a-b", "a_b")
"""Network names that differ only where a subject-based engine could confuse them."""

CONFIG = (
    """\
[broker]
mqtt = "127.0.0.1:0"
websocket = "127.0.0.1:0"

"""
    + BASE_CONFIG
    + """
[networks.typed]
public = false
schema = "typed.schema.json"
max_payload = 64
"""
    + "".join(f'\n[networks."{n}"]\npublic = false\n' for n in NAMES)
)

SCHEMA = {"type": "object", "properties": {"speed": {"type": "number", "minimum": 0}}, "required": ["speed"]}

# The promises, in the order of the docs table. Each maps engines that cannot keep it to the
# reason, which is also the table's cell after "✗ ".
NOT_ENFORCED = "not enforced by the engine: HTTP door only"
PROMISES: dict[str, dict[str, str]] = {
    "read-live": {},
    "read-retained": {},
    "read-queued": {},
    "publish-rights": {},
    "refused-kept": {},
    "names-apart": {},
    "names-unseen": {},
    "will-rights": {},
    "will-checked": {"mosquitto": NOT_ENFORCED, "nats": NOT_ENFORCED},
    "revocation": {},
    "rotation": {},
    "expiry": {},
    "edit": {},
    "unchanged-stay": {},
    "revoked-session": {
        "mosquitto": "Mosquitto hands the old key's sessions, and what was queued for them before the revocation, to a new key under its name",
    },
    "queued-after-right-removed": {
        "mosquitto": "Mosquitto checks a queued sample against the rights at delivery only",
    },
    "session-owner": {
        "mosquitto": "Mosquitto hands a session to any key that sends its client id",
        "nats": "nats-server hands a session to any key that sends its client id",
    },
    "shared-groups": {
        "mosquitto": "Mosquitto's groups are global: another key that may read the network joins one and takes a share of its samples",
        "nats": "nats-server has no shared subscriptions: a `$share/` filter is refused (SUBACK 0x80)",
    },
    "rate": {"mosquitto": NOT_ENFORCED, "nats": NOT_ENFORCED},
    "quota": {"mosquitto": NOT_ENFORCED, "nats": NOT_ENFORCED},
    "schema": {"mosquitto": NOT_ENFORCED, "nats": NOT_ENFORCED},
    "strict-json": {"mosquitto": NOT_ENFORCED, "nats": NOT_ENFORCED},
    "max-payload": {"mosquitto": NOT_ENFORCED, "nats": NOT_ENFORCED},
    "metering": {"mosquitto": "not counted: HTTP door only", "nats": "not counted: HTTP door only"},
    "mqtt5": {"nats": "nats-server speaks MQTT 3.1.1 only"},
}
HTTP_TESTS: dict[str, str] = {
    "publish-rights": "test_bridge.py::test_each_refusal_of_the_article_answers_to_the_letter_and_publishes_nothing",
    "refused-kept": "test_bridge.py::test_each_refusal_of_the_article_answers_to_the_letter_and_publishes_nothing",
    "names-apart": "test_bridge.py::test_networks_a_dot_dash_and_underscore_apart_are_four_networks",
    "names-unseen": "test_history.py::test_an_unknown_network_is_refused_as_a_private_one_is",
    "revocation": "test_bridge.py::test_a_revoked_key_is_refused_within_two_seconds",
    "rotation": "test_admin_api.py::test_a_rotated_secret_stops_working_and_its_connections_close",
    "expiry": "test_access.py::test_http_an_expired_key_is_not_valid",
    "edit": "test_bridge.py::test_a_publish_right_taken_away_is_403_once_the_edit_returns",
    "rate": "test_access.py::test_http_over_the_rate_is_429_with_rate_limit_headers",
    "quota": "test_access.py::test_a_quota_is_shared_by_both_doors_and_shown_in_usage",
    "schema": "test_access.py::test_http_a_sample_against_the_schema_is_400_naming_the_field",
    "strict-json": "test_bridge_door.py::test_what_json_cannot_carry_is_refused_as_not_json_and_publishes_nothing",
    "max-payload": "test_bridge.py::test_a_sample_over_the_networks_max_payload_is_413",
    "metering": "test_gate.py::test_the_gate_holds_on_every_path",
}
"""The test of each promise the HTTP door keeps (its cell a ✓): the bridge is the same in front of
every engine, so each is one test of the bridge's own, not a row of this module."""
ENGINES = ("embedded", "mosquitto", "nats")
MARKS: dict[str, list[pytest.MarkDecorator]] = {
    "embedded": [],
    "mosquitto": [pytest.mark.mosquitto],
    "nats": [pytest.mark.nats],
}


T = TypeVar("T", bound=Callable[..., object])
"""A test function."""

INTERMITTENT = "not always: "
"""A gap that shows in some runs only: its expected failure is not strict (a pass proves nothing)."""


def promise(name: str) -> Callable[[T], T]:
    """Run the test on every engine, an engine's gap marked as an expected failure (strict, unless
    the gap is ``INTERMITTENT``); the test is named the promise's (``promises_run``)."""
    gaps = PROMISES[name]
    params = [
        pytest.param(
            engine,
            id=engine,
            marks=[
                *MARKS[engine],
                *(
                    [pytest.mark.xfail(strict=not gaps[engine].startswith(INTERMITTENT), reason=gaps[engine])]
                    if engine in gaps
                    else []
                ),
            ],
        )
        for engine in ENGINES
    ]
    parametrize = pytest.mark.parametrize("engine", params, indirect=True)

    def run(test: T) -> T:
        test.promise = name  # type: ignore[attr-defined]
        return parametrize(test)  # type: ignore[no-any-return]

    return run


def promises_run() -> dict[str, list[str]]:
    """The promises this module's tests run, each with its tests: what pytest collects (``test_``)."""
    found: dict[str, list[str]] = {}
    for name, test in globals().items():
        if name.startswith("test_") and callable(test) and hasattr(test, "promise"):
            found.setdefault(test.promise, []).append(name)
    return found


@dataclass
class Platform:
    """One running engine with its platform folder; clients opened through it are closed per test."""

    engine: str
    home: Home
    port: int
    monitor: Address | None = None
    """NATS's monitoring endpoint, which tells when a dropped connection is gone."""
    opened: list[Client] = field(default_factory=list)

    def client(
        self,
        key: str | None = None,
        *,
        expect: int | None = 0,
        secret: str | None = None,
        **options: Any,
    ) -> Client:
        password = secret if secret is not None else self.home.secrets.get(key or "")
        client = Client("tcp", self.port, key, password if key else None, **options)
        self.opened.append(client)
        if expect is not None:
            assert client.connect() == expect
        return client

    def add_key(self, name: str, **rights: Any) -> str:
        """A new key, once the engine lets it in (it applies registry changes on a timer)."""
        secret = self.home.add_key(name, **rights)
        self.wait_for_key(name, secret)
        return secret

    def wait_for_key(self, name: str, secret: str) -> None:
        def admitted() -> bool:
            client = Client("tcp", self.port, name, secret)
            try:
                return client.connect() == 0
            finally:
                client.close()

        assert eventually(admitted), f"{name} was not admitted within {WITHIN + SLACK:g}s"

    def settle(self, dropped: Client, key: str | None) -> None:
        """Return once the broker has dealt with a dropped connection, and so fired its will."""
        if self.monitor is None:
            # The same client id again: the old connection is closed before this one is answered.
            self.client(key, client_id=dropped.client_id)
            return
        url = f"http://{self.monitor}/connz?mqtt_client={dropped.client_id}"

        def gone() -> bool:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return bool(json.load(answer)["num_connections"] == 0)

        assert eventually(gone, within=10)

    def refused(self, name: str, secret: str) -> bool:
        client = Client("tcp", self.port, name, secret)
        try:
            return client.connect() == NOT_AUTHORIZED
        finally:
            client.close()


eventually = functools.partial(polling.eventually, within=WITHIN + SLACK, every=0.05)
"""Retry until truthy: what is awaited here shows no event a test could wait on."""

E = TypeVar("E", MosquittoBroker, NatsCluster)


def make_home(path: Path) -> Home:
    home = Home(path)
    home.config.write_text(CONFIG)
    (path / "typed.schema.json").write_text(json.dumps(SCHEMA))
    home.add_key("gen", publish=["A"])
    home.add_key("reader_a", subscribe=["A"])
    home.add_key("reader_b", subscribe=["B"])
    home.add_key("buyer_b", subscribe=["A"])  # another buyer's key, on the same network
    home.add_key("admin", admin=True)
    home.add_key("typist", publish=["typed"])
    home.add_key("slow", publish=["A"], terms=Terms(rate=2.0, burst=1))
    home.add_key("frugal", publish=["A"], terms=Terms(quota=2))
    home.add_key("meter", publish=["A"])
    for name in NAMES:
        home.add_key(f"w-{name}", publish=[name])
        home.add_key(f"r-{name}", subscribe=[name])
    bridge_credentials(load_settings(home.config))
    return home


@pytest.fixture(scope="module")
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """One engine, started once for every test of the module that names it."""
    name = request.param
    home = make_home(tmp_path_factory.mktemp(f"engine-{name}"))
    registry = LiveRegistry(home.config)
    local = Address("127.0.0.1", 0)
    if name == "embedded":
        with BrokerThread(registry, mqtt=local, websocket=local) as embedded:
            yield Platform(name, home, embedded.mqtt_port)
    elif name == "mosquitto":
        require_mosquitto()
        with (home.path / "mosquitto.log").open("wb") as log:
            mosquitto = started(
                lambda: MosquittoBroker(registry, home.path / "mosquitto", mqtt=local, websocket=local),
                lambda broker: broker.start(stderr=log.fileno()),
            )
            try:
                yield Platform(name, home, mosquitto.mqtt_port)
            finally:
                mosquitto.stop()
    else:
        require_nats()
        cluster = started(lambda: NatsCluster(registry, home.path / "nats", nodes=1), NatsCluster.start)
        try:
            yield Platform(name, home, cluster.mqtt_port, monitor=cluster.nodes[0].monitor.local())
        finally:
            cluster.stop()


def started(make: Callable[[], E], start: Callable[[E], object], attempts: int = 3) -> E:
    """An engine started on free ports, tried again on others if one was taken meanwhile.

    A free port is found by binding port 0 and letting it go, so that the engine can bind it:
    on a machine running many tests at once, another process can take it in between.
    """
    for attempt in range(attempts):
        engine = make()
        try:
            start(engine)
        except (MosquittoError, NatsError):
            if attempt == attempts - 1:
                raise
            continue
        return engine
    raise AssertionError  # not reached


@pytest.fixture
def platform(engine: Platform) -> Iterator[Platform]:
    yield engine
    for client in engine.opened:
        client.close()
    engine.opened.clear()


def sample(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def payloads(client: Client, count: int) -> list[bytes]:
    return [m.payload for m in client.expect(count)]


def readable(client: Client, topic: str) -> None:
    """Subscribe where the key may read: granted at QoS 1."""
    assert client.subscribe(topic, qos=1) == 1


def try_subscribe(client: Client, topic: str) -> None:
    """Subscribe where the key may not read: refused (NATS) or granted and filtered (the others)."""
    assert client.subscribe(topic, qos=1) in (0, 1, 0x80)


def drop(client: Client) -> None:
    """Lose the connection without DISCONNECT, so the broker fires the will."""
    sock = client._paho.socket()
    assert sock is not None
    sock.shutdown(2)
    assert client.disconnected.wait(10)


def cut_off(platform: Platform, listener: Client, topic: str, control: str) -> bool:
    """Whether ``listener`` stops receiving ``topic`` within the promised time.

    Each round an admin publishes to ``topic``, then to ``control`` (which the listener may
    read); a round whose control sample arrives with nothing of ``topic`` before it shows the
    change applied. A listener the change disconnected receives nothing either. The samples go
    at QoS 0: one connection's QoS 0 samples reach a listener in order on every engine, where
    NATS delivers QoS 1 ones to each subscription from a consumer of its own, in no order
    between them.
    """
    admin = platform.client("admin")
    deadline = time.monotonic() + WITHIN + SLACK
    round_ = 0
    while time.monotonic() < deadline:
        round_ += 1
        admin.publish(topic, sample(probe=round_), qos=0)
        admin.publish(control, sample(control=round_), qos=0)
        got: list[Message] = []
        if not collect(listener, got, "control", round_):
            return True
        if all(m.topic == control for m in got):
            return True
    return False


def collect(listener: Client, got: list[Message], field: str, value: int) -> bool:
    """Add what arrives to ``got`` until the sample whose ``field`` is ``value``.

    False if the listener was disconnected first: the engine ended its connection for the change.
    """
    deadline = time.monotonic() + 10
    while not got or json.loads(got[-1].payload).get(field) != value:
        try:
            got += listener.expect(1, timeout=0.1)
        except queue.Empty:
            if listener.disconnected.is_set():
                return False
            assert time.monotonic() < deadline, f"the {field} sample never arrived"
    return True


def reads_again(platform: Platform, key: str, topic: str) -> bool:
    """Whether a fresh client of ``key`` can read ``topic`` (a right given back) within the time."""
    admin = platform.client("admin")

    def reads() -> bool:
        client = Client("tcp", platform.port, key, platform.home.secrets[key])
        try:
            if client.connect() != 0 or client.subscribe(topic, qos=1) != 1:
                return False
            admin.publish(topic, sample(probe=True), qos=1)
            try:
                client.expect(1, timeout=0.5)
            except queue.Empty:
                return False
            return True
        finally:
            client.close()

    return eventually(reads)


def refused_alone(client: Client, topic: str, payload: bytes) -> None:
    """Publish at QoS 1 where the client may not; return once the broker has dealt with it.

    Acknowledged (and dropped, MQTT 3.1.1 having no refusal), or the connection closed for it
    (which ``refused-kept`` would catch): either way, what is published from now on comes after it.
    """
    info = client._paho.publish(topic, payload, qos=1)
    deadline = time.monotonic() + 10
    while info.rc == MQTT_ERR_SUCCESS and not client.disconnected.is_set():
        try:
            if info.is_published():
                return
        except RuntimeError:  # paho: the connection went while it waited for the PUBACK
            return
        assert time.monotonic() < deadline, "neither acknowledged nor disconnected"
        time.sleep(0.01)


def refused_then(client: Client, topic: str, payload: bytes, then: tuple[str, bytes]) -> bool:
    """Publish where the key may not, then ``then`` on the same connection, which comes after it.

    False when the broker closed the connection for the refused one (which ``refused-kept``
    would catch): it was dropped, and what is published from now on comes after it.
    """
    client._paho.publish(topic, payload, qos=0)
    info = client._paho.publish(*then, qos=1)
    if info.rc != MQTT_ERR_SUCCESS:  # the close for the refused one came before this was sent
        return False
    deadline = time.monotonic() + 10
    while not client.disconnected.is_set():
        try:
            if info.is_published():
                return True
        except RuntimeError:  # paho: the connection went while it waited for the PUBACK
            return False
        assert time.monotonic() < deadline, "neither acknowledged nor disconnected"
        time.sleep(0.01)
    return False


# Rights: live, retained, publishing, names.


@promise("read-live")
def test_read_live(platform):
    reader = platform.client("reader_a")
    try_subscribe(reader, "networks/B/live")
    readable(reader, "networks/A/live")
    admin = platform.client("admin")
    admin.publish("networks/B/live", sample(private=True), qos=1)
    admin.publish("networks/A/live", sample(sentinel=1), qos=1)
    assert payloads(reader, 1) == [sample(sentinel=1)]


@promise("read-retained")
def test_read_retained(platform):
    admin = platform.client("admin")
    admin.publish("networks/B/kept", sample(private=True), qos=1, retain=True)
    admin.publish("networks/A/kept", sample(sentinel=1), qos=1, retain=True)
    reader = platform.client("reader_a")
    try_subscribe(reader, "networks/B/kept")
    readable(reader, "networks/A/kept")
    assert payloads(reader, 1) == [sample(sentinel=1)]


@promise("read-queued")
def test_read_queued(platform):
    """A persistent session is queued only what its key may read, whatever it subscribed to."""
    away = platform.client("reader_a", client_id="queued-reads", clean_session=False)
    try_subscribe(away, "networks/B/held")
    readable(away, "networks/A/held")
    away.close()
    admin = platform.client("admin")
    admin.publish("networks/B/held", sample(private=True), qos=1)
    admin.publish("networks/A/held", sample(sentinel=1), qos=1)
    back = platform.client("reader_a", client_id="queued-reads", clean_session=False)
    assert payloads(back, 1) == [sample(sentinel=1)]


@promise("publish-rights")
def test_publish_rights(platform):
    """Refused: a key publishing outside its networks, and a key or an anonymous client that may
    publish nowhere (NATS reads an empty list of subjects as every subject)."""
    admin = platform.client("admin")
    readable(admin, "networks/+/forged")
    gen = platform.client("gen")
    if not refused_then(
        gen, "networks/B/forged", sample(forged=True), ("networks/A/forged", sample(sentinel=1))
    ):
        platform.client("admin").publish("networks/A/forged", sample(sentinel=1), qos=1)
    assert payloads(admin, 1) == [sample(sentinel=1)]
    for n, key in enumerate(["reader_b", None]):
        refused_alone(platform.client(key), "networks/A/forged", sample(forged=n))
    platform.client("admin").publish("networks/A/forged", sample(sentinel=2), qos=1)
    assert payloads(admin, 1) == [sample(sentinel=2)]


@promise("refused-kept")
def test_refused_kept(platform):
    """A PUBLISH outside the key's networks, at each QoS, is dropped and its connection kept: the
    same connection's next sample goes through. A client closed for it would send it again on
    reconnecting, and be closed again, for as long as it kept the sample."""
    admin = platform.client("admin")
    readable(admin, "networks/+/after-refusal")
    gen = platform.client("gen")
    for qos in (0, 1, 2):
        gen.publish("networks/B/after-refusal", sample(refused=qos), qos=qos)  # returns once acknowledged
    gen.publish("networks/A/after-refusal", sample(sentinel=1), qos=1)
    assert payloads(admin, 1) == [sample(sentinel=1)]
    assert not gen.disconnected.is_set()


@promise("names-apart")
def test_names_apart(platform):
    """Each of a, a.b, a-b, a_b is its own network: to read, to publish, both ways."""
    readers = {}
    for name in NAMES:
        readers[name] = platform.client(f"r-{name}")
        readable(readers[name], f"networks/{name}/#")  # the network's topic and those below it
    writers = {name: platform.client(f"w-{name}") for name in NAMES}
    # Network a's topic, by a key that may publish to a.b only: refused.
    if not refused_then(writers["a.b"], "networks/a/b", sample(into="a"), ("networks/a.b/x", b"{}")):
        writers["a.b"] = platform.client("w-a.b")
    else:
        assert payloads(readers["a.b"], 1) == [b"{}"]
    for name in NAMES:
        writers[name].publish(f"networks/{name}", sample(network=name), qos=1)
    for name in NAMES:
        writers[name].publish(f"networks/{name}/end", sample(end=name), qos=1)
    for name in NAMES:
        assert payloads(readers[name], 2) == [sample(network=name), sample(end=name)], name


@promise("names-unseen")
def test_names_unseen(platform):
    """A network's very name may be confidential: a client that may not read it is answered as
    for a name no network has, and its connection is kept either way."""
    for key in ("reader_b", None):
        client = platform.client(key)
        private = client.subscribe("networks/A", qos=1)
        assert client.subscribe("networks/nowhere", qos=1) == private, key
        assert not client.disconnected.is_set(), key


# Wills.


@promise("will-rights")
def test_will_rights(platform):
    """A will goes only where its key may publish (refused at CONNECT, or dropped when it fires).

    Tried by a key with another network to publish to, a key with none, and an anonymous client.
    """
    admin = platform.client("admin")
    readable(admin, "networks/+/will")
    for n, (key, network) in enumerate([("gen", "B"), ("reader_b", "A"), (None, "A")]):
        forger = platform.client(key, expect=None, client_id=f"forger-{n}-{time.monotonic_ns()}")
        forger.will_set(f"networks/{network}/will", sample(forged=n), qos=1)
        if forger.connect() == 0:
            drop(forger)
            platform.settle(forger, key)
    platform.client("admin").publish("networks/A/will", sample(sentinel=1), qos=1)
    assert payloads(admin, 1) == [sample(sentinel=1)]


@promise("will-rights")
@pytest.mark.parametrize("change", ["revoke", "rotate"])
def test_will_rights_end_with_the_key(platform, change):
    """A key revoked or rotated while connected may publish nowhere under its old secret: the
    engine closes its connection, and the will it left goes nowhere."""
    name = f"willed-{change}"
    platform.add_key(name, publish=["A"])
    admin = platform.client("admin")
    readable(admin, f"networks/A/{name}")
    willed = platform.client(name, expect=None, client_id=f"{name}-{time.monotonic_ns()}")
    willed.will_set(f"networks/A/{name}", sample(will=change), qos=1)
    assert willed.connect() == 0
    getattr(platform.home.store(), change)(name)
    assert willed.disconnected.wait(WITHIN + SLACK)
    platform.settle(willed, "admin")
    platform.client("admin").publish(f"networks/A/{name}", sample(sentinel=1), qos=1)
    assert payloads(admin, 1) == [sample(sentinel=1)]


@promise("will-checked")
def test_will_checked(platform):
    """A will is a sample like any other: one that fails the network's schema reaches nobody."""
    admin = platform.client("admin")
    readable(admin, "networks/typed/will")
    typist = platform.client("typist", expect=None, client_id=f"will-{time.monotonic_ns()}")
    typist.will_set("networks/typed/will", sample(speed=-5), qos=1)
    if typist.connect() == 0:
        drop(typist)
        platform.settle(typist, "typist")
    platform.client("admin").publish("networks/typed/will", sample(speed=1), qos=1)
    assert payloads(admin, 1) == [sample(speed=1)]


# Key changes.


@promise("revocation")
def test_revocation(platform):
    secret = platform.add_key("revoked", subscribe=["A"])
    live = platform.client("revoked")
    platform.home.store().revoke("revoked")
    assert live.disconnected.wait(WITHIN + SLACK)
    assert platform.refused("revoked", secret)


@promise("rotation")
def test_rotation(platform):
    old = platform.add_key("rotated", subscribe=["A"])
    live = platform.client("rotated")
    new = platform.home.store().rotate("rotated")
    assert live.disconnected.wait(WITHIN + SLACK)
    assert platform.refused("rotated", old)
    platform.wait_for_key("rotated", new)


@promise("expiry")
def test_expiry(platform):
    expires = datetime.now(UTC) + timedelta(seconds=3)
    secret = platform.add_key("expiring", subscribe=["A"], terms=Terms(expires=expires))
    live = platform.client("expiring")
    assert not live.disconnected.is_set()
    to_expiry = (expires - datetime.now(UTC)).total_seconds()
    assert live.disconnected.wait(to_expiry + WITHIN + SLACK)
    assert datetime.now(UTC) >= expires
    assert platform.refused("expiring", secret)


@promise("edit")
def test_edit(platform):
    """A right taken away by `radio keys edit` ends the deliveries it allowed, live."""
    platform.add_key("edited", subscribe=["A", "B"])
    listener = platform.client("edited")
    readable(listener, "networks/A/edit")
    readable(listener, "networks/B/edit")
    platform.home.store().edit("edited", subscribe=["B"])
    assert cut_off(platform, listener, "networks/A/edit", "networks/B/edit")


@promise("unchanged-stay")
def test_unchanged_stay(platform):
    """Key changes leave alone the clients whose rights they did not take away: other keys',
    anonymous ones, and a key's own when a right was only added."""
    anonymous = platform.client()
    readable(anonymous, "networks/pub/stay")
    reader = platform.client("reader_a")
    readable(reader, "networks/A/stay")
    platform.add_key("grower", subscribe=["B"])
    grower = platform.client("grower")
    readable(grower, "networks/B/stay")
    platform.add_key("newcomer", subscribe=["B"])
    platform.home.store().edit("grower", subscribe=["A", "B"])
    assert reads_again(platform, "grower", "networks/A/stay-probe")
    platform.home.store().revoke("newcomer")
    assert eventually(lambda: platform.refused("newcomer", platform.home.secrets["newcomer"]))
    admin = platform.client("admin")
    for network in ("pub", "A", "B"):
        admin.publish(f"networks/{network}/stay", sample(still=network), qos=1)
    assert payloads(anonymous, 1) == [sample(still="pub")]
    assert payloads(reader, 1) == [sample(still="A")]
    assert payloads(grower, 1) == [sample(still="B")]
    assert not any(c.disconnected.is_set() for c in (anonymous, reader, grower))


@promise("unchanged-stay")
def test_a_key_change_leaves_alone_the_client_ids_another_key_took_over(platform):
    """Devices moved to a new key under the client ids they had, then the old key revoked: the new
    key's connection stays, and its persistent session keeps what was queued for it."""
    old_secret = platform.add_key("moved-from", subscribe=["A"])
    platform.add_key("moved-to", subscribe=["A"])
    for client_id in ("moved-live", "moved-away"):
        platform.client("moved-from", client_id=client_id, clean_session=False).close()
    live = platform.client("moved-to", client_id="moved-live", clean_session=False)
    readable(live, "networks/A/moved")
    away = platform.client("moved-to", client_id="moved-away", clean_session=False)
    readable(away, "networks/A/moved")
    away.close()
    platform.client("admin").publish("networks/A/moved", sample(queued=True), qos=1)
    assert payloads(live, 1) == [sample(queued=True)]
    platform.home.store().revoke("moved-from")
    assert eventually(lambda: platform.refused("moved-from", old_secret))
    platform.add_key("moved-barrier")  # let in once the engine has dealt with the revocation
    assert not live.disconnected.is_set()
    back = platform.client("moved-to", client_id="moved-away", clean_session=False)
    assert payloads(back, 1) == [sample(queued=True)]


def first_on_return(platform: Platform, key: str, client_id: str, topic: str) -> list[bytes]:
    """What the key's persistent session gets first on ``topic`` once it is back.

    A sentinel is published once it is back: anything kept for it from before would come first.
    """
    back = platform.client(key, client_id=client_id, clean_session=False)
    readable(back, topic)
    platform.client("admin").publish(topic, sample(sentinel=1), qos=1)
    return payloads(back, 1)


@promise("revoked-session")
def test_revoked_session(platform):
    """A key revoked and made again under the same name starts afresh: no session, nothing queued,
    whether it was queued before the revocation or after."""
    secret = platform.add_key("again", subscribe=["A"])
    away = platform.client("again", client_id="again-session", clean_session=False)
    readable(away, "networks/A/again")
    away.close()
    platform.client("admin").publish("networks/A/again", sample(queued="before"), qos=1)
    platform.home.store().revoke("again")
    assert eventually(lambda: platform.refused("again", secret))
    platform.client("admin").publish("networks/A/again", sample(queued="after"), qos=1)
    platform.add_key("again", subscribe=["A"])
    assert first_on_return(platform, "again", "again-session", "networks/A/again") == [sample(sentinel=1)]


@promise("queued-after-right-removed")
def test_queued_after_right_removed(platform):
    """Samples queued for a session whose read right was then taken away are not delivered later."""
    platform.add_key("queued", subscribe=["A", "B"])
    away = platform.client("queued", client_id="queued-session", clean_session=False)
    readable(away, "networks/A/queued")
    away.close()
    platform.client("admin").publish("networks/A/queued", sample(queued=True), qos=1)
    live = platform.client("queued")
    readable(live, "networks/A/queued-live")
    readable(live, "networks/B/queued-live")
    platform.home.store().edit("queued", subscribe=["B"])
    assert cut_off(platform, live, "networks/A/queued-live", "networks/B/queued-live")
    platform.home.store().edit("queued", subscribe=["A", "B"])
    assert reads_again(platform, "queued", "networks/A/queued-probe")
    assert first_on_return(platform, "queued", "queued-session", "networks/A/queued") == [sample(sentinel=1)]


@promise("session-owner")
def test_session_owner(platform):
    """A client id names a session of one key: another key can neither take it nor end it."""
    away = platform.client("reader_a", client_id="owned-session", clean_session=False)
    readable(away, "networks/A/owned")
    away.close()
    platform.client("admin").publish("networks/A/owned", sample(queued="for reader_a"), qos=1)
    for clean in (False, True):  # to resume it, or to discard it
        intruder = platform.client("reader_b", client_id="owned-session", clean_session=clean, expect=None)
        if intruder.connect() == 0:
            intruder.close()
    back = platform.client("reader_a", client_id="owned-session", clean_session=False)
    assert [m.payload for m in back.expect(1, timeout=3)] == [sample(queued="for reader_a")]


@promise("shared-groups")
def test_shared_groups(platform):
    """A shared group is its key's, as a session is: another key that may read the network and
    joins ``$share/`` with the same group name takes no share of the first key's samples."""
    worker = platform.client("reader_a")
    readable(worker, "$share/workers/networks/A/shared")
    other = platform.client("buyer_b")
    other.subscribe("$share/workers/networks/A/shared", qos=1)  # granted or refused: it takes nothing
    gen = platform.client("gen")
    sent = [sample(n=n) for n in range(4)]
    for payload in sent:
        gen.publish("networks/A/shared", payload, qos=1)
    assert [m.payload for m in worker.expect(4, timeout=3)] == sent


# What a key may spend, and what a sample must be.


@promise("rate")
def test_rate(platform):
    """Over MQTT a publisher over its rate (2/s, burst 1) is slowed down to it: 4 samples, 1.5 s."""
    slow = platform.client("slow")
    started = time.monotonic()
    for n in range(4):
        slow.publish("networks/A/rate", sample(n=n), qos=1)
    assert time.monotonic() - started >= 1.4


@promise("quota")
def test_quota(platform):
    """Past its quota (2 a day) a key's samples reach nobody."""
    admin = platform.client("admin")
    readable(admin, "networks/A/quota")
    frugal = platform.client("frugal")
    for n in range(3):
        frugal.publish("networks/A/quota", sample(n=n), qos=1)
    platform.client("admin").publish("networks/A/quota", sample(sentinel=1), qos=1)
    assert payloads(admin, 3) == [sample(n=0), sample(n=1), sample(sentinel=1)]


def first_delivered(platform: Platform, publisher: str, topic: str, *sent: bytes) -> bytes:
    """What an admin reading ``topic`` receives first once ``publisher`` sent these, in order."""
    admin = platform.client("admin")
    readable(admin, topic)
    client = platform.client(publisher)
    for payload in sent:
        client.publish(topic, payload, qos=1)
    [first] = payloads(admin, 1)
    return first


@promise("schema")
def test_schema(platform):
    typed = (sample(speed=-3), b"not json", sample(speed=3))
    assert first_delivered(platform, "typist", "networks/typed/schema", *typed) == sample(speed=3)


@promise("strict-json")
def test_strict_json(platform):
    """A sample is JSON as the HTTP door reads it: NaN and Infinity are not JSON."""
    sent = (b'{"x": NaN}', b'{"x": Infinity}', sample(x=1))
    assert first_delivered(platform, "gen", "networks/A/json", *sent) == sample(x=1)


@promise("max-payload")
def test_max_payload(platform):
    """A sample over its network's max_payload (64 bytes for typed) reaches nobody."""
    sent = (sample(speed=1, padding="x" * 80), sample(speed=2))
    assert first_delivered(platform, "typist", "networks/typed/size", *sent) == sample(speed=2)


@promise("metering")
def test_metering(platform):
    """Samples accepted over MQTT are counted per key in usage.db (`radio keys usage`)."""
    meter = platform.client("meter")
    for n in range(2):
        meter.publish("networks/A/meter", sample(n=n), qos=1)
    path = usage_path(load_settings(platform.home.config).state_dir)

    def counted() -> bool:
        rows, _ = report(path, "meter")
        return [(r.door, r.network, r.samples) for r in rows] == [("mqtt", "A", 2)]

    assert eventually(counted, within=3.0)


# The docs table and the marks above are one thing.


def docs_table() -> dict[str, dict[str, str]]:
    """docs/access.md's table "What each engine keeps": promise id -> column -> cell."""
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("## What each engine keeps", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    table = {}
    for line in rows[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        match = re.match(r"`([a-z0-9-]+)`", cells[0])
        assert match, f"a row of the table names no promise: {line}"
        table[match[1]] = dict(zip(header[1:], cells[1:], strict=True))
    return table


COLUMNS = {"embedded": "embedded broker", "mosquitto": "Mosquitto", "nats": "NATS"}


@functools.cache
def functions(module: Path) -> set[str]:
    """The names of a test module's functions, read from its source (without importing it)."""
    tree = trees([module])[module]
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


def test_the_docs_table_is_the_suite_s_marks():
    table = docs_table()
    assert list(table) == list(PROMISES), "the table's rows are the suite's promises, in order"
    running = promises_run()
    assert [name for name in PROMISES if name not in running] == [], "a row no test runs"
    kept = [name for name in PROMISES if table[name]["HTTP door"].startswith("✓")]
    assert sorted(HTTP_TESTS) == sorted(kept), "the HTTP door's ✓ cells are the ones with a test"
    for name, where in HTTP_TESTS.items():
        module, test = where.split("::")
        assert test.startswith("test_"), (name, where)
        assert test in functions(Path(__file__).parent / module), (name, where)
    for name, gaps in PROMISES.items():
        for engine, column in COLUMNS.items():
            cell = table[name][column]
            if engine in gaps:
                assert cell == f"✗ {gaps[engine]}", (name, engine)
            else:  # kept, with how, if the cell says
                assert cell == "✓" or cell.startswith("✓ "), (name, engine)
        assert table[name]["HTTP door"], name


@promise("mqtt5")
def test_mqtt5(platform):
    """An MQTT 5 client connects, and gets what an MQTT 3.1.1 publisher sends, within its rights."""
    reader = platform.client("reader_a", expect=None, protocol=5)
    assert reader.connect() == 0
    readable(reader, "networks/A/five")
    platform.client("gen").publish("networks/A/five", sample(n=5), qos=1)
    assert payloads(reader, 1) == [sample(n=5)]
