"""Key and network changes reach a running broker within 2 seconds, with no restart (design 3).

On both brokers: the embedded one reloads the registry itself; for Mosquitto, `radio broker
--engine mosquitto` (here the fixture's ``MosquittoBroker``) exports the files again and sends
SIGHUP, and Mosquitto drops the connections whose credentials no longer hold.
"""

from __future__ import annotations

import functools
import json
import os
import queue

import polling
import pytest
from conftest import ENGINES, running_broker
from mqtt_client import NOT_AUTHORIZED, Client, away_while_published

from radio import registry
from radio.config import load_settings
from radio.confirmations import running_servers, wait_for_servers
from radio.keys import load_keys

WITHIN = 2.0  # seconds, as promised to operators


SLOW_CELLS = ({"broker": "mosquitto", "transport": "ws"},)
"""Mosquitto reloads one password and ACL file for every listener and closes the connections they
no longer allow whatever carries them: its WebSocket runs repeat the TCP ones (the embedded
broker's do not: it closes each transport itself). Mosquitto's WebSocket door is in the fast tier
in ``test_rights.py`` and ``test_tls.py``."""


@pytest.fixture(params=ENGINES)
def broker(request, home):
    with running_broker(request.param, home) as running:
        yield running


eventually = functools.partial(polling.eventually, within=WITHIN, every=0.05)
"""Retry until truthy: what is awaited here shows no event a test could wait on."""


def test_a_revoked_keys_open_connection_is_closed_and_new_ones_refused(connect, home):
    client = connect("gen")
    home.radio_main("keys", "revoke", "gen")
    assert client.disconnected.wait(WITHIN)
    connect("gen", expect=NOT_AUTHORIZED)


def test_a_revoked_key_sends_no_will(connect, broker, home, transport):
    reader = connect("reader_a")
    assert reader.subscribe("networks/A/#") == 0
    port = broker.ws_port if transport == "ws" else broker.mqtt_port
    gen = Client(transport, port, "gen", home.secrets["gen"])
    gen.will_set("networks/A/status", b"offline")
    assert gen.connect() == 0
    home.radio_main("keys", "revoke", "gen")
    assert gen.disconnected.wait(WITHIN)
    gen.close()
    connect("admin").publish("networks/A/x", b'{"sentinel": 1}')
    assert [m.payload for m in reader.expect(1)] == [b'{"sentinel": 1}']


def test_a_rotated_key_works_only_with_its_new_secret(connect, home):
    client = connect("gen")
    new_secret = home.radio_main("keys", "rotate", "gen").stdout.strip()
    assert client.disconnected.wait(WITHIN)
    connect("gen", expect=NOT_AUTHORIZED)
    connect("gen", secret=new_secret).publish("networks/A", b"{}")


def test_a_new_key_can_connect_within_two_seconds(broker, home, transport):
    secret = home.radio_main("keys", "add", "late", "--publish", "A").stdout.strip()
    port = broker.ws_port if transport == "ws" else broker.mqtt_port

    def try_connect() -> bool:
        client = Client(transport, port, "late", secret)
        try:
            return client.connect() == 0
        finally:
            client.close()

    assert eventually(try_connect)


def test_a_network_made_public_can_be_read_anonymously_within_two_seconds(connect, broker, home):
    anonymous = connect()
    assert anonymous.subscribe("networks/B") == (0x80 if broker.engine == "embedded" else 0)
    admin = connect("admin")
    home.config.write_text(
        home.config.read_text().replace("[networks.B]\npublic = false", "[networks.B]\npublic = true")
    )

    def reads_b() -> bool:
        if anonymous.subscribe("networks/B") != 0:
            return False
        admin.publish("networks/B", b'{"now": "public"}', qos=1)
        try:
            return anonymous.messages.get(timeout=0.2).payload == b'{"now": "public"}'
        except queue.Empty:
            return False

    assert eventually(reads_b)


def test_anonymous_clients_are_closed_when_anonymous_access_is_turned_off(connect, home):
    anonymous = connect()
    home.config.write_text("[broker]\nallow_anonymous = false\n" + home.config.read_text())
    assert anonymous.disconnected.wait(WITHIN)
    connect(expect=NOT_AUTHORIZED)
    connect("gen")


def test_a_broken_keys_file_leaves_the_previous_rights_in_force(connect, home, broker, caplog):
    gen = connect("gen")
    home.keys.write_text("this is [not toml")
    # The broker notices (it logs the error), keeps the old rights, and closes nobody.
    assert eventually(lambda: "registry not reloaded" in caplog.text)
    connect("reader_a")
    assert not gen.disconnected.is_set()


# --- A keys file emptied or deleted under a running broker changes nothing -------------------


def not_reloaded(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "registry not reloaded" in r.getMessage()]


def test_an_emptied_then_deleted_keys_file_keeps_every_right_and_session(
    connect, broker, home, caplog, transport
):
    away_while_published(broker.mqtt_port, home.secrets)  # a persistent session, with a sample queued for it
    gen = connect("gen")
    reader = connect("reader_a")
    assert reader.subscribe("networks/A", qos=1) == 1
    original = home.keys.read_bytes()

    def rights_hold(tag: bytes) -> None:
        gen.publish("networks/A", tag, qos=1)
        assert [m.payload for m in reader.expect(1)] == [tag]
        connect("reader_b")  # new connections are still judged by the previous keys

    home.keys.write_text("")
    assert eventually(lambda: any("is empty" in line for line in not_reloaded(caplog)))
    rights_hold(b'{"step": "emptied"}')
    home.keys.unlink()
    assert eventually(lambda: any("no key registry" in line for line in not_reloaded(caplog)))
    rights_hold(b'{"step": "deleted"}')
    assert not gen.disconnected.is_set()
    assert not reader.disconnected.is_set()
    lines = not_reloaded(caplog)
    assert len(lines) == 2, lines  # one line per event, however often the watcher looked

    home.keys.write_bytes(original)
    # The persistent session outlived both: its queued sample is still there.
    durable = Client(
        "tcp",
        broker.mqtt_port,
        "reader_a",
        home.secrets["reader_a"],
        client_id="durable",
        clean_session=False,
    )
    try:
        assert durable.connect() == 0
        assert [m.payload for m in durable.expect(1)] == [b'{"queued": "while away"}']
    finally:
        durable.close()
    # Restored, the file is read again: a change to it applies.
    home.radio_main("keys", "revoke", "gen")
    assert gen.disconnected.wait(WITHIN)
    assert len(not_reloaded(caplog)) == 2


# --- radio keys edit reaches open connections within 2 seconds ----------------------------------


def _sample(kind: str, tag: str) -> bytes:
    """A sample naming what it is for and which step of the test sent it."""
    return json.dumps({kind: tag}).encode()


def seen_before_sentinel(observer: Client, sentinel: Client, tag: str) -> list[bytes]:
    """What ``observer`` received before a sample ``sentinel`` publishes now to ``pub`` (public).

    Once the sentinel arrives, anything published before it would have arrived too (one broker,
    one order), so absence is shown without waiting for a timeout.
    """
    sentinel.publish("networks/pub", _sample("sentinel", tag), qos=1)
    seen = []
    while (message := observer.messages.get(timeout=10)).payload != _sample("sentinel", tag):
        seen.append(message.payload)
    return seen


def delivered(publisher: Client, topic: str, observer: Client, sentinel: Client, tag: str) -> bool:
    """Whether ``observer`` receives a sample ``publisher`` sends to ``topic`` now."""
    publisher.publish(topic, _sample("probe", tag), qos=1)
    return _sample("probe", tag) in seen_before_sentinel(observer, sentinel, tag)


def counter():
    count = iter(range(1_000_000))
    return lambda: str(next(count))


def test_a_listener_that_loses_a_network_stops_receiving_it(connect, home):
    reader = connect("reader_a")
    assert reader.subscribe("networks/A", qos=1) == 1
    assert reader.subscribe("networks/pub", qos=1) == 1
    admin = connect("admin")
    tag = counter()
    assert delivered(admin, "networks/A", reader, admin, tag())
    home.radio_main("keys", "edit", "reader_a", "--subscribe", "B")
    assert eventually(lambda: not delivered(admin, "networks/A", reader, admin, tag()))
    assert not delivered(admin, "networks/A", reader, admin, tag())
    assert not reader.disconnected.is_set()  # still connected: only the right changed
    assert reader.subscribe("networks/B", qos=1) == 1
    assert delivered(admin, "networks/B", reader, admin, tag())


def reaches(publisher: Client, topic: str, observer: Client, tag: str) -> bool:
    """Whether ``observer`` receives a QoS 0 sample ``publisher`` sends to ``topic`` now.

    The sample is fanned out before its PUBACK; a SUBACK the observer asks for after that comes
    behind it on the observer's connection, so absence is shown without waiting for a timeout,
    and no other sample reaches the observer in between.
    """
    publisher.publish(topic, _sample("probe", tag), qos=1)
    observer.subscribe("networks/fleeting/nothing")
    return _sample("probe", tag) in [m.payload for m in observer.received_so_far()]


def test_a_network_made_private_stops_reaching_its_anonymous_listeners_at_once(connect, home):
    """The read verdict fan-out remembers per session holds for one registry: a change asks again."""
    anonymous = connect()
    assert anonymous.subscribe("networks/fleeting") == 0  # QoS 0, and nothing else
    admin = connect("admin")
    tag = counter()
    assert reaches(admin, "networks/fleeting", anonymous, tag())
    assert reaches(admin, "networks/fleeting", anonymous, tag())
    home.config.write_text(
        home.config.read_text().replace(
            "[networks.fleeting]\npublic = true", "[networks.fleeting]\npublic = false"
        )
    )
    assert eventually(lambda: not reaches(admin, "networks/fleeting", anonymous, tag()))
    assert not reaches(admin, "networks/fleeting", anonymous, tag())
    assert not anonymous.disconnected.is_set()  # still connected: only the right changed


def test_a_listener_that_gains_a_network_can_subscribe_to_it(connect, broker, home):
    reader = connect("reader_b")
    assert reader.subscribe("networks/pub", qos=1) == 1
    admin = connect("admin")
    tag = counter()
    # The embedded broker refuses the SUBSCRIBE itself; Mosquitto grants every SUBSCRIBE and
    # filters each delivery. Either way, nothing of A reaches this key before the change.
    refused_or_filtered = 0x80 if broker.engine == "embedded" else 1
    assert reader.subscribe("networks/A", qos=1) == refused_or_filtered
    assert not delivered(admin, "networks/A", reader, admin, tag())
    home.radio_main("keys", "edit", "reader_b", "--subscribe", "A,B")
    assert eventually(
        lambda: (
            reader.subscribe("networks/A", qos=1) == 1
            and delivered(admin, "networks/A", reader, admin, tag())
        )
    )
    assert not reader.disconnected.is_set()


def test_a_publisher_that_loses_a_network_can_no_longer_publish_there(connect, broker, home):
    gen = connect("gen")
    everything = connect("admin")
    assert everything.subscribe("networks/#", qos=1) == 1
    tag = counter()
    assert delivered(gen, "networks/A", everything, everything, tag())
    home.radio_main("keys", "edit", "gen", "--publish", "B")
    # On every engine the refused PUBLISH is acknowledged and dropped; the connection stays open.
    assert eventually(lambda: not delivered(gen, "networks/A", everything, everything, tag()))
    assert not gen.disconnected.is_set()
    # The key publishes where it now may, on the same connection.
    assert delivered(gen, "networks/B", everything, everything, tag())


def test_edit_keeps_the_secret_and_open_connections(connect, home):
    gen = connect("gen")
    result = home.radio_main("keys", "edit", "gen", "--publish", "A,B", "--subscribe", "A")
    assert result.stdout == ""
    assert home.secrets["gen"] not in result.stderr
    connect("gen")  # the same secret still connects
    assert not gen.disconnected.is_set()


def test_a_key_rotated_while_a_server_loads_the_registry_is_waited_for_and_then_in_force(home, monkeypatch):
    """A server that starts while a key changes (a bridge worker booting) never keeps the old keys.

    It is on record as pending while it reads the files, so the writer's wait (the admin API's, ``radio
    keys``') counts it; and the files' version it keeps is the one from before it read them, so the
    change it missed is loaded on its next check. The change comes right after the keys are read:
    the one moment a real writer hits only now and then.
    """
    settings = load_settings(home.config)
    old, seen = home.secrets["gen"], {}

    def read_then_rotate(path):
        keys = load_keys(path)
        if not seen:
            seen["new"] = home.store().rotate("gen")
            seen["report"] = wait_for_servers(settings.path, settings.keys_path, timeout=0)
        return keys

    monkeypatch.setattr(registry, "load_keys", read_then_rotate)
    live = registry.LiveRegistry(home.config)
    monkeypatch.undo()
    assert [server.pid for server in seen["report"].pending] == [os.getpid()]
    assert live.current.authenticate("gen", old) is not None  # it read the keys before the change
    assert live.refresh()
    assert live.current.authenticate("gen", old) is None
    assert live.current.authenticate("gen", seen["new"]) is not None
    assert not live.refresh()  # the caller has applied what it was handed: now confirmed
    assert wait_for_servers(settings.path, settings.keys_path, timeout=0).pending == []


def test_a_server_that_applies_changes_itself_is_confirmed_only_once_it_has(home):
    """A broker applies a change itself (it closes what the change revokes) on its next ``refresh()``.

    One that has not called it since the change (busy, stalled) may have the change loaded by the
    registry's watcher, but is not confirmed in force until it has applied it: the writer's wait
    names it rather than answer early.
    """
    settings = load_settings(home.config)
    live = registry.LiveRegistry(home.config, idle_after=0.1)
    new = home.store().rotate("gen")
    assert polling.until(lambda: live.current.authenticate("gen", new) is not None, 5, every=0.05)
    with live._confirmer.lock:  # the watcher's step that loaded it is over
        pending = wait_for_servers(settings.path, settings.keys_path, timeout=0).pending
    assert [server.pid for server in pending] == [os.getpid()]
    assert live.refresh()  # handed over to the caller, who applies it now
    assert wait_for_servers(settings.path, settings.keys_path, timeout=0).pending != []
    assert not live.refresh()  # applied: confirmed
    assert wait_for_servers(settings.path, settings.keys_path, timeout=0).pending == []


def test_a_closed_registry_is_no_running_server_and_stays_off_record(home):
    """A registry whose server stopped, in a process that goes on, is not waited for by any change.

    Its watcher keeps reloading the files, but writes no record once it is closed: otherwise every
    key change made afterwards would wait for a server that never applies it.
    """
    settings = load_settings(home.config)
    live = registry.LiveRegistry(home.config, idle_after=0)
    home.store().rotate("gen")
    assert polling.until(
        lambda: (
            [s.pid for s in wait_for_servers(settings.path, settings.keys_path, timeout=0).confirmed]
            == [os.getpid()]
        ),
        5,
        every=0.05,
    )
    live.close()
    assert running_servers(settings.path, settings.keys_path) == []
    new = home.store().rotate("gen")
    assert polling.until(lambda: live.current.authenticate("gen", new) is not None, 5, every=0.05)
    with live._confirmer.lock:  # the watcher's step that loaded it is over
        assert running_servers(settings.path, settings.keys_path) == []
