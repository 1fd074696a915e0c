"""Rights on both brokers, over TCP and WebSocket, with real paho clients (design section 3).

Each test runs on the embedded broker and on Mosquitto with the files `radio mosquitto export`
writes, with MQTT 3.1.1 clients and with MQTT 5 clients (refused with MQTT 5's codes: the
embedded broker answers SUBACK 0x87 and CONNACK 0x86 for a key that is not valid). Where the two legitimately differ, the test says so and checks what matters on both:
- Mosquitto's acl_file grants every SUBSCRIBE and filters on delivery: SUBACK 0x80 is the
  embedded broker's; "nothing reaches a client not entitled to it" is checked on both;
- a refused PUBLISH is acknowledged (MQTT 5: PUBACK 0x87) and dropped on both, and the
  connection is kept: the same publisher's next permitted sample goes through, so a generator
  never loops reconnecting and sending the refused sample again.

"Nobody receives it" is never a sleep: after the refused publishes, the same publisher (or, for an
anonymous one, a SUBSCRIBE round trip) is followed by a permitted sentinel, and an admin listening
to every topic must see the sentinel and nothing before it. Messages from one connection are
handled in order, so anything that leaked would have arrived first.
"""

from __future__ import annotations

import json

import pytest
from conftest import ENGINES, running_broker
from mqtt_client import BAD_CREDENTIALS, NOT_AUTHORIZED, Client
from raw_mqtt import session

from radio.credentials import secret_username

SLOW_CELLS = ({"broker": "mosquitto-v5", "transport": "ws"},)
"""Mosquitto applies one password and ACL file to every listener: MQTT 5 over its WebSocket
listener takes no path that MQTT 5 over TCP and MQTT 3.1.1 over WebSocket do not (and each of its
WebSocket connections waits 0.2 s for Mosquitto's handshake)."""


@pytest.fixture(params=[*ENGINES, "embedded-v5", pytest.param("mosquitto-v5", marks=pytest.mark.mosquitto)])
def broker(request, home):
    """Every rights test runs on the embedded broker and on Mosquitto with the exported files,
    with MQTT 3.1.1 clients and with MQTT 5 clients."""
    with running_broker(request.param.removesuffix("-v5"), home) as running:
        yield running


@pytest.fixture
def protocol(request):
    """MQTT 5 clients for the -v5 runs, 3.1.1 ones otherwise."""
    callspec = getattr(request.node, "callspec", None)
    return 5 if callspec is not None and str(callspec.params.get("broker")).endswith("-v5") else 4


def sentinel(n: int = 0) -> bytes:
    return json.dumps({"sentinel": n}).encode()


def everything(connect):
    """An admin listening to every topic, and to the $SYS topic the tests try to write.

    Not $SYS/#: Mosquitto publishes its own statistics there.
    """
    admin = connect("admin")
    assert admin.subscribe("#") == 0
    assert admin.subscribe("$SYS/x") == 0
    return admin


def refused_publish(connect, broker, key, topic, payload=b'{"leak": true}'):
    """A PUBLISH (QoS 1, retained) the key may not make: acknowledged, dropped, the connection kept.

    Returns the client, still connected, once the broker has dealt with the PUBLISH.
    """
    del broker  # the same on every engine
    client = connect(key)
    client.publish(topic, payload, qos=1, retain=True)  # waits for its PUBACK
    assert not client.disconnected.is_set()
    return client


def not_readable(client, broker, topic_filter, publisher):
    """``client`` gets nothing from ``topic_filter``: refused at SUBSCRIBE, or filtered on delivery."""
    granted = client.subscribe(topic_filter)
    if broker.engine == "embedded":
        assert granted == client.refused
        return
    assert granted == 0
    network = topic_filter.removesuffix("/#")
    publisher.publish(network, b'{"not": "for you"}', qos=1, retain=True)
    assert client.subscribe("networks/pub") == 0
    publisher.publish("networks/pub", sentinel(), qos=1)
    assert [m.payload for m in client.expect(1)] == [sentinel()]


def test_a_publisher_reaches_every_reader_of_its_network(connect):
    by_key = connect("reader_a")
    assert by_key.subscribe("networks/A/#") == 0
    by_wildcard = connect("reader_a")
    assert by_wildcard.subscribe("networks/+/#") == 0
    admin = everything(connect)

    gen = connect("gen")
    gen.publish("networks/A", b'{"n": 1}')
    gen.publish("networks/A/s1", b'{"n": 2}')

    for reader in (by_key, by_wildcard, admin):
        got = reader.expect(2)
        assert [(m.topic, m.payload) for m in got] == [
            ("networks/A", b'{"n": 1}'),
            ("networks/A/s1", b'{"n": 2}'),
        ]


def test_a_publish_outside_the_keys_networks_reaches_nobody_and_is_not_retained(connect, broker):
    admin = everything(connect)
    reader_b = connect("reader_b")
    assert reader_b.subscribe("networks/B/#") == 0

    gen = connect("gen")
    for topic in ("networks/B", "networks/B/s1", "other/x", "$SYS/x", "networks", "networksA/x"):
        refused_publish(connect, broker, "gen", topic)
        gen.publish(topic, b'{"leak": "at QoS 0"}')
    gen.publish("networks/A", sentinel())  # the same connection, after six refusals

    assert admin.expect(1)[0].payload == sentinel()
    assert admin.received_so_far() == []
    assert reader_b.received_so_far() == []

    # Nothing was stored as retained: a newcomer subscribing to everything gets only what follows.
    late = everything(connect)
    assert late.subscribe("other/#") == 0
    late.publish("networks/A", sentinel(1))
    assert [m.payload for m in late.expect(1)] == [sentinel(1)]


def test_after_a_refused_publish_the_connection_is_kept_and_served(connect, broker):
    """Kept and served on every engine: a refused $ topic must not leave the connection's loop dead
    with the socket open, nor close it (the client would send the refused sample again)."""
    del broker
    admin = everything(connect)
    gen = connect("gen")
    for qos in (0, 1, 2):
        gen.publish("$SYS/broker/uptime", b"0", qos=qos)
    assert gen.subscribe("networks/pub") == 0  # still served
    gen.publish("networks/A", sentinel())
    assert admin.expect(1)[0].payload == sentinel()
    assert not gen.disconnected.is_set()


def test_an_anonymous_client_publishes_nothing(connect, broker):
    admin = everything(connect)
    anonymous = connect()
    assert anonymous.subscribe("networks/pub") == 0
    for topic in ("networks/pub", "networks/A", "networks/pub/s1", "other/x"):
        refused_publish(connect, broker, None, topic, b'{"anonymous": true}')
    anonymous.publish("other/y", b'{"anonymous": true}', qos=1)  # and its own connection is kept
    assert anonymous.subscribe("networks/pub/s2") == 0

    connect("gen").publish("networks/A", sentinel())
    assert [m.payload for m in admin.expect(1)] == [sentinel()]
    assert anonymous.received_so_far() == []


@pytest.mark.parametrize("topic_filter", ["networks/A/#", "networks/A", "networks/nosuch", "other/#"])
def test_an_anonymous_client_reads_no_private_network(connect, broker, topic_filter):
    not_readable(connect(), broker, topic_filter, publisher=connect("admin"))


def test_an_anonymous_client_may_not_subscribe_to_sys(connect, broker):
    anonymous = connect()
    granted = anonymous.subscribe("$SYS/#")
    assert granted == (anonymous.refused if broker.engine == "embedded" else 0)  # Mosquitto: filtered later


def test_a_key_reads_only_its_own_private_networks(connect, broker):
    reader_b = connect("reader_b")
    assert reader_b.subscribe("networks/B/#") == 0
    not_readable(reader_b, broker, "networks/A/#", publisher=connect("admin"))


@pytest.mark.parametrize("topic_filter", ["networks/+/#", "#", "+/+", "networks/#"])
def test_an_anonymous_wildcard_receives_public_networks_only_live_and_retained(connect, topic_filter):
    reader_a = connect("reader_a")
    assert reader_a.subscribe("networks/A") == 0
    admin = connect("admin")
    admin.publish("networks/A", b'{"retained": "A"}', qos=1, retain=True)
    admin.publish("networks/pub", b'{"retained": "pub"}', qos=1, retain=True)
    assert reader_a.expect(1)[0].payload == b'{"retained": "A"}'

    anonymous = connect()
    assert anonymous.subscribe(topic_filter) == 0
    retained = anonymous.expect(1)
    assert [(m.topic, m.payload, m.retain) for m in retained] == [
        ("networks/pub", b'{"retained": "pub"}', True)
    ]

    gen = connect("gen")
    gen.publish("networks/A", b'{"live": "A"}')
    admin.publish("networks/pub", b'{"live": "pub"}')
    live = anonymous.expect(1)
    assert [(m.topic, m.payload, m.retain) for m in live] == [("networks/pub", b'{"live": "pub"}', False)]
    # gen's live sample went out to every subscriber at once: once reader_a has it and the sentinel
    # after it, anything that leaked to the anonymous client would have arrived.
    gen.publish("networks/A", sentinel())
    assert [m.payload for m in reader_a.expect(2)] == [b'{"live": "A"}', sentinel()]
    assert anonymous.received_so_far() == []


def test_retained_samples_obey_read_rights_for_keys_too(connect):
    admin = connect("admin")
    admin.publish("networks/B", b'{"secret": "B"}', qos=1, retain=True)
    admin.publish("networks/A", b'{"sample": "A"}', qos=1, retain=True)

    reader_a = connect("reader_a")
    assert reader_a.subscribe("networks/+") == 0
    got = reader_a.expect(1)
    assert [(m.topic, m.retain) for m in got] == [("networks/A", True)]
    admin.publish("networks/A", sentinel())
    assert reader_a.expect(1)[0].payload == sentinel()


def test_a_network_that_does_not_retain_keeps_no_last_sample(connect, broker):
    """Embedded only: Mosquitto keeps whatever a publisher marks retained. Radio's own publishers
    (the bridge, the generators) never mark a sample of such a network retained."""
    if broker.engine != "embedded":
        pytest.skip("Mosquitto has no per-topic retain setting: Radio's publishers enforce it")
    admin = connect("admin")
    admin.publish("networks/fleeting", b'{"n": 1}', qos=1, retain=True)
    admin.publish("networks/pub", b'{"n": 2}', qos=1, retain=True)

    anonymous = connect()
    assert anonymous.subscribe("networks/#") == 0
    assert [m.topic for m in anonymous.expect(1)] == ["networks/pub"]
    admin.publish("networks/fleeting", sentinel())
    assert [m.payload for m in anonymous.expect(1)] == [sentinel()]


@pytest.mark.parametrize(
    ("key", "secret"),
    [("gen", "not-the-secret"), ("nobody", "whatever"), ("gen", "")],
    ids=["wrong secret", "unknown key", "empty secret"],
)
def test_bad_credentials_are_refused(connect, broker, protocol, key, secret):
    """Refused at CONNACK: 3.1.1's code 5; over MQTT 5, the embedded broker's 0x86 (bad user name or
    password, the HTTP door's "API-KEY not valid") and Mosquitto's 0x87 (not authorized)."""
    v5 = BAD_CREDENTIALS if broker.engine == "embedded" else NOT_AUTHORIZED
    refused = connect(key, secret=secret, expect=NOT_AUTHORIZED if protocol == 4 else v5)
    assert refused.disconnected.wait(10)


def test_a_secret_alone_identifies_its_key_with_the_username_it_implies(connect, broker, home):
    """Clients given only a secret send ``key-<16 hex>`` (radio.credentials.secret_username): both brokers."""
    secret = home.secrets["reader_a"]
    aliased = connect(secret_username(secret), secret=secret)
    assert aliased.subscribe("networks/A") == 0
    not_readable(aliased, broker, "networks/B", publisher=connect("admin"))


def test_on_the_embedded_broker_any_username_is_a_label(connect, broker, home):
    """The embedded broker lets the secret alone name the key; Mosquitto checks the pair."""
    labelled = connect(
        "any-label",
        secret=home.secrets["reader_a"],
        expect=0 if broker.engine == "embedded" else NOT_AUTHORIZED,
    )
    if broker.engine == "embedded":
        assert labelled.subscribe("networks/A") == 0


def test_a_will_may_only_go_where_the_key_may_publish(connect, broker, home, transport, protocol):
    """Embedded: refused at CONNECT. Mosquitto: accepted, and the will is dropped when it fires."""
    admin = everything(connect)
    port = broker.ws_port if transport == "ws" else broker.mqtt_port
    if broker.engine == "embedded":
        sneaky = Client(transport, port, "gen", home.secrets["gen"], protocol=protocol)
        sneaky.will_set("networks/B/status", b"offline", retain=True)
        assert sneaky.connect() == NOT_AUTHORIZED
        sneaky.close()
    else:
        # Both closed without DISCONNECT, so both wills fire, sneaky's first: the honest will
        # reaching the admin first proves the sneaky one went nowhere.
        credentials = ("gen", home.secrets["gen"])
        sneaky = session(broker.mqtt_port, "sneaky", *credentials, will=("networks/B/status", b"offline"))
        honest = session(broker.mqtt_port, "honest", *credentials, will=("networks/A/status", b"gone"))
        sneaky.close()
        assert connect("gen").subscribe("networks/A") == 0  # Mosquitto has handled the close
        honest.close()
        assert [(m.topic, m.payload) for m in admin.expect(1)] == [("networks/A/status", b"gone")]

    honest = Client(transport, port, "gen", home.secrets["gen"], protocol=protocol)
    honest.will_set("networks/A/status", b"offline")
    assert honest.connect() == 0
    honest.close()
    connect("gen").publish("networks/A", sentinel())
    assert [m.payload for m in admin.expect(1)] == [sentinel()]
