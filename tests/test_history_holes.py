"""A hole in the history is visible: samples the broker dropped from the recorder's queue keep their
numbers out of the history, and `radio listen --since` says so in one line."""

from __future__ import annotations

import json

import pytest
from history_fixtures import recording, wait_for_last, with_history
from mqtt_client import Client
from test_history_answers import written_before
from test_history_listen import Listening

from radio.config import load_settings

SMALL_QUEUES = "[broker]\nrecorder_max_queued = 5\nmax_queued = 5\n\n"


@pytest.fixture
def home(home):
    """conftest's platform, the recorder's and keyed sessions bounded to 5 samples: they overflow."""
    return with_history(home, before=SMALL_QUEUES, publish=["pub"])


def listen_since_0(home, broker, bridge, *, until: int) -> tuple[list[dict], list[str]]:
    """`radio listen pub --since 0` until sample ``until``: what it printed, and its stderr."""
    listening = Listening(
        home, "pub", "--since", "0", "--http", bridge.url, "--url", f"mqtt://127.0.0.1:{broker.mqtt_port}"
    )
    try:
        got = listening.until(lambda s: s.get("seq") == until)
    finally:
        listening.stop()
    return got, listening.stderr


@pytest.mark.slow
def test_samples_dropped_from_the_recorders_queue_leave_a_hole_that_listen_since_reports(
    home, broker, bridge, caplog
):
    publisher = Client("tcp", broker.mqtt_port, "gen_all", home.secrets["gen_all"])
    assert publisher.connect() == 0
    try:
        with recording(home, broker.mqtt_port):
            for i in range(3):
                publisher.publish("networks/pub", json.dumps({"i": i}), qos=1)
            wait_for_last(bridge, "pub", 3)
        # The recorder is away; its persistent session keeps the newest 5 and drops 15.
        for i in range(3, 23):
            publisher.publish("networks/pub", json.dumps({"i": i}), qos=1)
        with recording(home, broker.mqtt_port):
            body = wait_for_last(bridge, "pub", 23)
            publisher.publish("networks/pub", json.dumps({"i": 23}), qos=1)
            wait_for_last(bridge, "pub", 24)
    finally:
        publisher.close()
    assert body["last"] == 23
    assert any("numbers 4 to 18 are left out" in r.getMessage() for r in caplog.records)

    got, stderr = listen_since_0(home, broker, bridge, until=24)
    assert [(s["seq"], s["data"]["i"]) for s in got] == [
        (1, 0),
        (2, 1),
        (3, 2),
        *((seq, seq - 1) for seq in range(19, 25)),  # the newest 5 of the 20, then one more
    ]
    holes = [line for line in stderr if "misses samples" in line]
    assert len(holes) == 1, stderr
    assert "misses samples 4 to 18" in holes[0]
    assert holes[0].count("\n") == 1


def test_a_keyed_listeners_session_gets_no_report_of_what_it_missed(home, broker):
    """Only the recorder's session is told: any other client's overflow is MQTT as it always was."""

    def reader():
        return Client(
            "tcp", broker.mqtt_port, "reader_a", home.secrets["reader_a"], client_id="r1", clean_session=False
        )

    away = reader()
    assert away.connect() == 0
    assert away.subscribe("networks/pub", qos=1) == 1
    away.close()
    publisher = Client("tcp", broker.mqtt_port, "admin", home.secrets["admin"])
    assert publisher.connect() == 0
    try:
        for i in range(30):  # 25 more than its queue keeps
            publisher.publish("networks/pub", json.dumps({"i": i}), qos=1)
        back = reader()
        assert back.connect() == 0
        publisher.publish("networks/pub", json.dumps({"i": 30}), qos=1)
        got = back.expect(6)
        back.close()
    finally:
        publisher.close()
    assert [(m.topic, json.loads(m.payload)["i"]) for m in got] == [
        ("networks/pub", i) for i in range(25, 31)
    ]


def test_listen_since_skips_a_stored_sample_that_is_not_strict_json_in_one_line(home, broker, bridge):
    written_before(load_settings(home.config).history_path, "pub", ['{"i": 0}', '{"i": NaN}', '{"i": 2}'])
    got, stderr = listen_since_0(home, broker, bridge, until=3)
    assert [(s["seq"], s["data"]) for s in got] == [(1, {"i": 0}), (3, {"i": 2})]
    skipped = [line for line in stderr if "skipped sample" in line]
    assert len(skipped) == 1, stderr
    assert skipped[0].startswith("radio listen: skipped sample 2 of pub: not strict JSON (NaN, ")
    assert skipped[0].count("\n") == 1
    assert not any("misses samples" in line for line in stderr)
