"""Mosquitto as the production broker: what holds there beyond the rights shared with the embedded one."""

from __future__ import annotations

import pytest
from conftest import running_broker
from mqtt_client import Client, away_while_published, listening

pytestmark = pytest.mark.mosquitto


def test_retained_samples_and_persistent_sessions_survive_a_restart(home):
    """The rendered configuration turns persistence on, in a folder the broker's user owns."""
    durable = ("reader_a", home.secrets["reader_a"])
    with running_broker("mosquitto", home) as broker:
        away_while_published(broker.mqtt_port, home.secrets)
    assert (home.path / "mosquitto" / "mosquitto.db").exists()

    with running_broker("mosquitto", home) as broker:
        with listening(broker.mqtt_port, "reader_b", home.secrets["reader_b"], "networks/pub") as late:
            assert late.expect(1)[0].payload == b'{"last": "value"}'
        back = Client("tcp", broker.mqtt_port, *durable, client_id="durable", clean_session=False)
        try:
            assert back.connect() == 0
            assert back.expect(1)[0].payload == b'{"queued": "while away"}'
        finally:
            back.close()


def test_a_slow_subscriber_loses_nothing_that_was_accepted(home):
    """Mosquitto's default max_queued_messages (1000) dropped QoS 1 messages silently; Radio's is 0."""
    with running_broker("mosquitto", home) as broker:
        slow = Client(
            "tcp",
            broker.mqtt_port,
            *("reader_a", home.secrets["reader_a"]),
            client_id="slow",
            clean_session=False,
        )
        assert slow.connect() == 0
        assert slow.subscribe("networks/A", qos=1) == 1
        slow.close()  # offline: everything published now is queued for it
        gen = Client("tcp", broker.mqtt_port, "gen", home.secrets["gen"])
        assert gen.connect() == 0
        for n in range(1500):
            gen._paho.publish("networks/A", b'{"n": %d}' % n, qos=1)
        gen.publish("networks/A", b'{"n": "last"}', qos=1)
        gen.close()
        back = Client(
            "tcp",
            broker.mqtt_port,
            *("reader_a", home.secrets["reader_a"]),
            client_id="slow",
            clean_session=False,
        )
        try:
            assert back.connect() == 0
            payloads = [m.payload for m in back.expect(1501, timeout=30)]
        finally:
            back.close()
    assert payloads == [b'{"n": %d}' % n for n in range(1500)] + [b'{"n": "last"}']
