"""A usage or rate file another process holds locked stalls nobody but the keys that use it.

``usage.db`` is shared by the broker and every bridge worker, and anyone with access to the folder
can open it. While it is locked, a quota cannot be checked: the keys that have one wait (the MQTT
door holds their PUBLISH, the HTTP door waits in a thread at most a second, then answers 503), and
everybody else, on both doors, goes on as if nothing happened. The bridge's shared rate file
likewise. Real components: the embedded broker and the
bridge's real ASGI stack in this process, a real SQLite lock taken by another connection.
"""

from __future__ import annotations

import fcntl
import json
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
import requests
from bridge_client import InProcessBridge
from conftest import Home
from mqtt_client import Client, listening

from radio import usage
from radio.bridge.access import RATES_UNAVAILABLE, USAGE_UNAVAILABLE
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


def until(condition, within: float = 10.0) -> bool:
    """Poll a condition another thread makes true (there is no event to await from outside)."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


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
    return home.radio("keys", "add", name, "--publish", "A", *terms).stdout.strip()


def test_a_locked_usage_file_stalls_neither_door_for_keys_without_a_quota(home: Home, broker, bridge) -> None:
    metered = add_key(home, "metered", "--quota", "50/day")
    gate = broker.broker.radio.router.gate
    url = bridge.url

    def post(secret: str, n: str) -> requests.Response:
        return requests.post(url + "/publish", data=body({"n": n}), headers={"API-KEY": secret}, timeout=30)

    with listening(broker.mqtt_port, "reader_a", home.secrets["reader_a"], "networks/A/#") as reader:
        answers: list[requests.Response] = []
        with locked(home.path / "usage.db"):
            # Within 100 samples of its quota's end, each of the key's samples is to be written
            # at once: the first goes through, and the bridge's writer then waits for the file.
            assert post(metered, "http 1").status_code == 200
            waiter = threading.Thread(target=lambda: answers.append(post(metered, "http 2")))
            waiter.start()
            assert until(lambda: inside("quota")), "the second metered request never reached its check"
            # A key without a quota is answered meanwhile: the event loop is not stalled.
            assert post(home.secrets["gen"], "free").status_code == 200
            # MQTT: likewise, the metered key's PUBLISH waits, not the broker.
            publisher = Client("tcp", broker.mqtt_port, "metered", metered)
            assert publisher.connect() == 0
            publisher.publish("networks/A/m", b'{"n": "mqtt 1"}', qos=1)
            held = publisher._paho.publish("networks/A/m", b'{"n": "mqtt 2"}', qos=1)
            assert until(lambda: gate.quota_waits > 0), "the broker never held the metered PUBLISH"
            other = Client("tcp", broker.mqtt_port, "gen", home.secrets["gen"])
            assert other.connect() == 0
            other.publish("networks/A/g", b'{"n": "other"}', qos=1)
            got = sorted(json.loads(m.payload)["n"] for m in reader.expect(4))
            assert got == ["free", "http 1", "mqtt 1", "other"]
            assert not held.is_published()
            other.close()
            # The metered request waited a bounded time in its thread, then was told to retry.
            waiter.join(30)
            assert [(a.status_code, a.json()) for a in answers] == [(503, {"error": USAGE_UNAVAILABLE})]
        # The file free again, the held MQTT sample goes through: late, not lost.
        held.wait_for_publish(10)
        assert held.is_published()
        assert [json.loads(m.payload)["n"] for m in reader.expect(1)] == ["mqtt 2"]
        assert post(metered, "http 3").status_code == 200
        assert [json.loads(m.payload)["n"] for m in reader.expect(1)] == ["http 3"]
        assert reader.received_so_far() == []  # the 503 was not published
        publisher.close()


def test_a_usage_file_locked_past_its_timeout_is_503_for_keys_with_a_quota(
    home: Home, bridge, everything
) -> None:
    quota = add_key(home, "metered", "--quota", "50/day")
    with locked(home.path / "usage.db"):
        # In the last 100 samples of its quota, each check first writes what was counted.
        assert bridge.post(body({"n": 1}), headers={"API-KEY": quota}).status_code == 200
        retry_later(bridge.post(body({"n": 2}), headers={"API-KEY": quota}), USAGE_UNAVAILABLE)
    assert bridge.post(body({"n": 3}), headers={"API-KEY": quota}).status_code == 200
    assert [json.loads(m.payload) for m in everything.expect(2)] == [{"n": 1}, {"n": 3}]
    assert everything.received_so_far() == []  # the 503 was not published


def test_near_a_quota_end_neither_counting_nor_a_loop_check_waits_for_a_locked_file(tmp_path: Path) -> None:
    meter = usage.Meter(tmp_path / "usage.db")
    key = Key("metered", "ab" * 32, "", terms=Terms(quota=10))
    try:
        assert meter.quota(key) is not None  # read once, unlocked
        with locked(tmp_path / "usage.db"):
            meter.record(key, "http", "A", 10)  # in the last 100: the writer's to write, soon
            with pytest.raises(usage.Busy):  # what an event loop asks: no waiting, "ask again"
                meter.quota(key, within=0)
        state = meter.quota(key)  # in a thread that may wait: written, then read back
        assert state is not None
        assert state.used == 1
    finally:
        meter.close()


def test_a_rate_file_locked_by_another_process_is_503_for_keys_with_a_rate(
    home: Home, bridge, everything
) -> None:
    limited = add_key(home, "limited", "--rate", "100/s")
    with bridge.app.extensions["radio.buckets"].path.open("rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a stuck process would hold it
        retry_later(bridge.post(body({"n": 1}), headers={"API-KEY": limited}), RATES_UNAVAILABLE)
        assert bridge.post(body({"n": 2}), headers={"API-KEY": home.secrets["gen"]}).status_code == 200
    assert bridge.post(body({"n": 3}), headers={"API-KEY": limited}).status_code == 200
    assert [json.loads(m.payload) for m in everything.expect(2)] == [{"n": 2}, {"n": 3}]
    assert everything.received_so_far() == []
