"""Rights on the embedded broker, over TCP and WebSocket, with real paho clients (design section 3).

"Nobody receives it" is never a sleep: after the refused publishes, the same publisher (or, for an
anonymous one, a SUBSCRIBE round trip) is followed by a permitted sentinel, and an admin listening
to every topic must see the sentinel and nothing before it. Messages from one connection are
handled in order, so anything that leaked would have arrived first.
"""

from __future__ import annotations

import json

import pytest
from mqtt_client import NOT_AUTHORIZED, Client

REFUSED = 0x80


def sentinel(n: int = 0) -> bytes:
    return json.dumps({"sentinel": n}).encode()


def everything(connect):
    """An admin listening to every topic, $SYS included."""
    admin = connect("admin")
    assert admin.subscribe("#") == 0
    assert admin.subscribe("$SYS/#") == 0
    return admin


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


def test_a_publish_outside_the_keys_networks_reaches_nobody_and_is_not_retained(connect):
    admin = everything(connect)
    reader_b = connect("reader_b")
    assert reader_b.subscribe("networks/B/#") == 0

    gen = connect("gen")
    for topic in ("networks/B", "networks/B/s1", "other/x", "$SYS/x", "networks", "networksA/x"):
        gen.publish(topic, b'{"leak": true}', qos=1, retain=True)
    gen.publish("networks/A", sentinel())

    assert admin.expect(1)[0].payload == sentinel()
    assert admin.received_so_far() == []
    assert reader_b.received_so_far() == []

    # Nothing was stored as retained: a newcomer subscribing to everything gets only what follows.
    late = everything(connect)
    assert late.subscribe("other/#") == 0
    late.publish("networks/A", sentinel(1))
    assert [m.payload for m in late.expect(1)] == [sentinel(1)]


def test_the_connection_survives_a_refused_publish(connect):
    """A refused $ topic used to end amqtt's message loop with the socket left open."""
    admin = everything(connect)
    gen = connect("gen")
    gen.publish("$SYS/broker/uptime", b"0", qos=1)
    assert gen.subscribe("networks/pub") == 0  # still served
    gen.publish("networks/A", sentinel())
    assert admin.expect(1)[0].payload == sentinel()


def test_an_anonymous_client_publishes_nothing(connect):
    admin = everything(connect)
    anonymous = connect()
    for topic in ("networks/pub", "networks/A", "networks/pub/s1", "other/x"):
        anonymous.publish(topic, b'{"anonymous": true}', qos=1, retain=True)
    # Its own publishes are handled before its next SUBSCRIBE is answered.
    assert anonymous.subscribe("networks/pub") == 0

    connect("gen").publish("networks/A", sentinel())
    assert [m.payload for m in admin.expect(1)] == [sentinel()]
    assert anonymous.received_so_far() == []


def test_an_anonymous_subscription_to_a_private_network_is_refused(connect):
    anonymous = connect()
    assert anonymous.subscribe("networks/A/#") == REFUSED
    assert anonymous.subscribe("networks/A") == REFUSED
    assert anonymous.subscribe("networks/nosuch") == REFUSED
    assert anonymous.subscribe("other/#") == REFUSED
    assert anonymous.subscribe("$SYS/#") == REFUSED
    assert anonymous.subscribe("networks/pub/#") == 0


def test_a_key_reads_only_its_own_private_networks(connect):
    reader_b = connect("reader_b")
    assert reader_b.subscribe("networks/A/#") == REFUSED
    assert reader_b.subscribe("networks/B/#") == 0
    assert reader_b.subscribe("networks/pub") == 0


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


def test_a_network_that_does_not_retain_keeps_no_last_sample(connect):
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
def test_bad_credentials_are_refused(connect, key, secret):
    refused = connect(key, secret=secret, expect=NOT_AUTHORIZED)
    assert refused.disconnected.wait(10)


def test_a_secret_alone_identifies_its_key_whatever_the_username(connect, home):
    """Clients given only a secret connect with any username, and get that key's rights."""
    labelled = connect("any-label", secret=home.secrets["reader_a"])
    assert labelled.subscribe("networks/A") == 0
    assert labelled.subscribe("networks/B") == 0x80


def test_a_will_may_only_go_where_the_key_may_publish(connect, broker, home, transport):
    admin = everything(connect)
    port = broker.ws_port if transport == "ws" else broker.mqtt_port
    sneaky = Client(transport, port, "gen", home.secrets["gen"])
    sneaky.will_set("networks/B/status", b"offline", retain=True)
    assert sneaky.connect() == NOT_AUTHORIZED
    sneaky.close()

    honest = Client(transport, port, "gen", home.secrets["gen"])
    honest.will_set("networks/A/status", b"offline")
    assert honest.connect() == 0
    honest.close()
    connect("gen").publish("networks/A", sentinel())
    assert [m.payload for m in admin.expect(1)] == [sentinel()]
