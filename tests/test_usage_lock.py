"""A usage or rate file another process holds locked stalls nobody but the keys that use it.

``usage.db`` is shared by the broker and every bridge worker, and anyone with access to the folder
can open it. While it is locked, a quota cannot be checked: the keys that have one wait (the MQTT
door holds their PUBLISH, the HTTP door waits in a thread at most a second, then answers 503), and
everybody else, on both doors, goes on as if nothing happened. The rate file the broker and the
bridge's workers share likewise, for keys with a rate. Real components: the embedded broker and the
bridge's real ASGI stack in this process, a real SQLite lock taken by another connection.
"""

from __future__ import annotations

import fcntl
import json
import sqlite3
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
import requests
from bridge_client import InProcessBridge
from conftest import Home
from embedded import embedded_broker
from mqtt_client import Client, listening
from polling import until

from radio import usage
from radio.bridge.access import RATES_UNAVAILABLE, USAGE_UNAVAILABLE
from radio.bridge.state import state_of
from radio.errors import Busy
from radio.keys import Key, Terms


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """The file's write lock, held by another connection (as another process would) until the end."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        db.execute("ROLLBACK")
        db.close()


def inside(function: str) -> bool:
    """Whether a thread of this process is in ``function`` of the usage module (waiting on the file)."""
    for top in sys._current_frames().values():
        frame: FrameType | None = top
        while frame is not None:
            if frame.f_code.co_filename == usage.__file__ and frame.f_code.co_name == function:
                return True
            frame = frame.f_back
    return False


def retry_later(answer: Any, message: str) -> None:
    """A 503 that tells the client to send the sample again in a second: nothing was published."""
    assert answer.status_code == 503
    assert answer.json() == {"error": message}
    assert answer.headers["Retry-After"] == "1"


def body(data: object) -> str:
    return json.dumps({"network": "A", "data": data})


@pytest.fixture
def bridge(home: Home, broker) -> Iterator[InProcessBridge]:
    running = InProcessBridge(str(home.config), broker.mqtt_port)
    yield running
    running.stop()


def add_key(home: Home, name: str, *terms: str) -> str:
    """``radio keys add NAME --publish A TERMS``: its secret, once every running server has it."""
    return home.radio_main("keys", "add", name, "--publish", "A", *terms).stdout.strip()


def test_a_locked_usage_file_stalls_neither_door_for_keys_without_a_quota(home: Home, broker, bridge) -> None:
    metered = add_key(home, "metered", "--quota", "2/day")  # so small that every sample asks the file
    gate = broker.broker.radio.router.gate
    url = bridge.url

    def post(secret: str, n: str) -> requests.Response:
        return requests.post(url + "/publish", data=body({"n": n}), headers={"API-KEY": secret}, timeout=30)

    with listening(broker.mqtt_port, "reader_a", home.secrets["reader_a"], "networks/A/#") as reader:
        answers: list[requests.Response] = []
        with locked(home.path / "usage.db"):
            waiter = threading.Thread(target=lambda: answers.append(post(metered, "http 1")))
            waiter.start()
            assert until(lambda: inside("take")), "the metered request never reached its quota"
            # A key without a quota is answered meanwhile: the event loop is not stalled.
            assert post(home.secrets["gen"], "free").status_code == 200
            # MQTT: likewise, the metered key's PUBLISH waits, not the broker.
            publisher = Client("tcp", broker.mqtt_port, "metered", metered)
            assert publisher.connect() == 0
            held = publisher._paho.publish("networks/A/m", b'{"n": "mqtt 1"}', qos=1)
            assert until(lambda: gate.quota_waits > 0), "the broker never held the metered PUBLISH"
            other = Client("tcp", broker.mqtt_port, "gen", home.secrets["gen"])
            assert other.connect() == 0
            other.publish("networks/A/g", b'{"n": "other"}', qos=1)
            got = sorted(json.loads(m.payload)["n"] for m in reader.expect(2))
            assert got == ["free", "other"]
            assert not held.is_published()
            other.close()
            # The metered request waited a bounded time in its thread, then was told to retry.
            waiter.join(30)
            assert [(a.status_code, a.json()) for a in answers] == [(503, {"error": USAGE_UNAVAILABLE})]
        # The file free again, the held MQTT sample goes through: late, not lost.
        held.wait_for_publish(10)
        assert held.is_published()
        assert [json.loads(m.payload)["n"] for m in reader.expect(1)] == ["mqtt 1"]
        assert post(metered, "http 2").status_code == 200
        assert [json.loads(m.payload)["n"] for m in reader.expect(1)] == ["http 2"]
        # The 503 took nothing: the two samples of the day went through, one by each door.
        assert post(metered, "http 3").status_code == 429
        assert reader.received_so_far() == []
        publisher.close()


def test_a_usage_file_locked_past_its_timeout_is_503_for_keys_with_a_quota(
    home: Home, bridge, everything
) -> None:
    quota = add_key(home, "metered", "--quota", "50/day")
    with locked(home.path / "usage.db"):
        retry_later(bridge.post(body({"n": 1}), headers={"API-KEY": quota}), USAGE_UNAVAILABLE)
    assert bridge.post(body({"n": 2}), headers={"API-KEY": quota}).status_code == 200
    assert [json.loads(m.payload) for m in everything.expect(1)] == [{"n": 2}]
    assert everything.received_so_far() == []  # the 503 was not published


def test_an_event_loop_never_waits_for_a_quota_lease(tmp_path: Path) -> None:
    meter = usage.Meter(tmp_path / "usage.db")
    key = Key("metered", "ab" * 32, "", terms=Terms(quota=2))
    try:
        with locked(tmp_path / "usage.db"), pytest.raises(Busy):  # "ask again", no waiting
            meter.take(key, within=0)
        first, second, third = (meter.take(key, within=0) for _ in range(3))
        assert isinstance(first, usage.Unit)
        assert isinstance(second, usage.Unit)
        assert isinstance(third, usage.QuotaState)
        assert (third.used, third.limit, third.exceeded) == (2, 2, True)
        meter.give_back(second)  # its sample failed: the key may spend it again
        assert isinstance(meter.take(key, within=0), usage.Unit)
    finally:
        meter.close()


def test_a_rate_file_locked_by_another_process_is_503_for_keys_with_a_rate(
    home: Home, bridge, everything
) -> None:
    limited = add_key(home, "limited", "--rate", "100/s")
    with state_of(bridge.app).buckets.path.open("rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a stuck process would hold it
        retry_later(bridge.post(body({"n": 1}), headers={"API-KEY": limited}), RATES_UNAVAILABLE)
        assert bridge.post(body({"n": 2}), headers={"API-KEY": home.secrets["gen"]}).status_code == 200
    assert bridge.post(body({"n": 3}), headers={"API-KEY": limited}).status_code == 200
    assert [json.loads(m.payload) for m in everything.expect(2)] == [{"n": 2}, {"n": 3}]
    assert everything.received_so_far() == []


def test_a_rate_file_locked_by_another_process_holds_the_keys_mqtt_samples_not_the_broker(
    home: Home, broker, bridge
) -> None:
    """The broker takes rate tokens from the file the bridge's workers share: locked, a key with a
    rate has its PUBLISH held (asked again every 50 ms), and every other client goes on."""
    limited = add_key(home, "limited", "--rate", "100/s")
    gate = broker.broker.radio.router.gate
    with listening(broker.mqtt_port, "reader_a", home.secrets["reader_a"], "networks/A/#") as reader:
        publisher = Client("tcp", broker.mqtt_port, "limited", limited)
        assert publisher.connect() == 0
        with state_of(bridge.app).buckets.path.open("rb") as held:
            fcntl.flock(held, fcntl.LOCK_EX)  # as a stuck process would hold it
            waits = gate.quota_waits
            sent = publisher._paho.publish("networks/A/limited", b'{"n": "limited"}', qos=1)
            assert until(lambda: gate.quota_waits > waits + 1), "the broker never held the PUBLISH"
            other = Client("tcp", broker.mqtt_port, "gen", home.secrets["gen"])
            assert other.connect() == 0
            other.publish("networks/A/g", b'{"n": "other"}', qos=1)
            other.close()
            assert [json.loads(m.payload)["n"] for m in reader.expect(1)] == ["other"]
            assert not sent.is_published()
        sent.wait_for_publish(10)  # the file free again: late, not lost
        assert sent.is_published()
        assert [json.loads(m.payload)["n"] for m in reader.expect(1)] == ["limited"]
        publisher.close()


def test_a_rate_file_that_cannot_be_opened_leaves_both_doors_up_each_holding_the_rate(
    home: Home, caplog: pytest.LogCaptureFixture
) -> None:
    """A shared rate file another user made, say, that this one cannot open: the broker and the
    bridge each say so and hold keys to their rates on their own, rather than not start."""
    limited = add_key(home, "limited", "--rate", "1/min", "--burst", "1")
    (home.path / "running" / "rates.bin").mkdir(parents=True)  # no file can be opened there
    with embedded_broker(home) as broker:
        bridge = InProcessBridge(str(home.config), broker.mqtt_port)
        try:
            gate = broker.broker.radio.router.gate
            assert gate.buckets is None
            with listening(broker.mqtt_port, "reader_a", home.secrets["reader_a"], "networks/A/#") as reader:
                assert bridge.post(body({"n": 1}), headers={"API-KEY": limited}).status_code == 200
                assert bridge.post(body({"n": 2}), headers={"API-KEY": limited}).status_code == 429
                publisher = Client("tcp", broker.mqtt_port, "limited", limited)
                assert publisher.connect() == 0
                publisher.publish("networks/A/limited", b'{"n": 3}', qos=1)  # the broker's own bucket
                waits = gate.rate_waits
                publisher._paho.publish("networks/A/limited", b'{"n": 4}', qos=1)
                assert until(lambda: gate.rate_waits > waits)
                assert [json.loads(m.payload)["n"] for m in reader.expect(2)] == [1, 3]
                publisher.close()
        finally:
            bridge.stop()
    said = [r.getMessage() for r in caplog.records if "rates are held per door" in r.getMessage()]
    assert len(said) == 2, said  # the broker's line and the bridge's


def test_units_one_process_leaves_unspent_go_back_for_the_others(tmp_path: Path) -> None:
    """Two processes of one platform (say the broker and a bridge worker) share a quota of 64: the
    first takes a lease of 4 and spends 1; once it idles, the second can spend the other 63."""
    first = usage.Meter(tmp_path / "usage.db", lease_idle=0)  # idle at once, rather than in 2 s
    second = usage.Meter(tmp_path / "usage.db")
    key = Key("shared", "ab" * 32, "", terms=Terms(quota=64))
    try:
        assert isinstance(first.take(key), usage.Unit)
        taken = [second.take(key) for _ in range(63)]
        assert isinstance(taken[-1], usage.QuotaState)  # 3 units are still the first's
        assert sum(isinstance(unit, usage.Unit) for unit in taken) == 60
        first.flush()  # what its writer does once a second
        assert [isinstance(second.take(key), usage.Unit) for _ in range(4)] == [True, True, True, False]
    finally:
        first.close()
        second.close()


def test_a_quota_made_monthly_counts_the_whole_month(tmp_path: Path) -> None:
    """A daily quota on the 1st, used on the 3rd, then a monthly one on the 6th: the month counts
    every sample since the 1st, not only the 1st's (whose quota row begins on the same day)."""
    meter = usage.Meter(tmp_path / "usage.db")
    daily = Key("switched", "ab" * 32, "", terms=Terms(quota=5))
    monthly = Key("switched", "ab" * 32, "", terms=Terms(quota=12, quota_period="month"))
    try:
        for day in (1, 3):
            meter.clock = lambda day=day: datetime(2026, 12, day, 12, tzinfo=UTC).timestamp()
            for _ in range(5):
                assert isinstance(meter.take(daily), usage.Unit)
                meter.record(daily, "mqtt", "A", 10)
            assert isinstance(meter.take(daily), usage.QuotaState)
        meter.close()  # written, and every unit not spent given back
        meter = usage.Meter(tmp_path / "usage.db")
        meter.clock = lambda: datetime(2026, 12, 6, 12, tzinfo=UTC).timestamp()
        taken = [meter.take(monthly) for _ in range(3)]
        assert [isinstance(unit, usage.Unit) for unit in taken] == [True, True, False]  # 10 used of 12
    finally:
        meter.close()
