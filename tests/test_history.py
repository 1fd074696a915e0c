"""The recorder numbers what each network accepts; the bridge serves it back with the read rights."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import history_fixtures
import pytest
from history_fixtures import history, history_app, recording, start_recorder, wait_for_last
from mqtt_client import Client, said_while_unreachable, unused_port
from polling import until

from radio.broker.mosquitto import acl_text
from radio.config import Address, load_settings
from radio.history_store import HistoryStore
from radio.recorder.identity import recorder_credentials
from radio.recorder.recorder import Recorder
from radio.registry import LiveRegistry, Registry

app = history_fixtures.app
home = history_fixtures.home
publisher = history_fixtures.publisher
recorder = history_fixtures.recorder


def post(app, home, key, network, data):
    response = app.post(
        "/publish", json={"network": network, "data": data}, headers={"API-KEY": home.secrets[key]}
    )
    assert response.status_code == 200, response.get_json()


def test_samples_from_both_doors_are_numbered_consecutively_per_network(home, recorder, app, publisher):
    for i in range(6):
        if i % 2:
            post(app, home, "gen_all", "pub", {"i": i})
        else:
            publisher.publish("networks/pub/sensor-1", json.dumps({"i": i}), qos=1)
        publisher.publish("networks/A", json.dumps({"a": i}), qos=1)

    body = wait_for_last(app, "pub", 6)
    assert [s["seq"] for s in body["samples"]] == [1, 2, 3, 4, 5, 6]
    assert [s["data"] for s in body["samples"]] == [{"i": i} for i in range(6)]
    assert [s["topic"] for s in body["samples"]][:2] == ["networks/pub/sensor-1", "networks/pub"]
    assert all(s["received_at"].endswith("Z") for s in body["samples"])
    assert (body["first"], body["last"]) == (1, 6)
    private = wait_for_last(app, "A", 6, {"API-KEY": home.secrets["reader_a"]})
    assert [(s["seq"], s["data"]["a"]) for s in private["samples"]] == [(n + 1, n) for n in range(6)]


def test_the_history_file_is_private(home, recorder):
    mode = stat.S_IMODE(load_settings(home.config).history_path.stat().st_mode)
    assert mode == 0o600
    assert stat.S_IMODE((home.path / "recorder.key").stat().st_mode) == 0o600


def test_only_the_last_history_samples_are_kept_and_numbering_goes_on(home, recorder, app, publisher):
    for i in range(7):
        publisher.publish("networks/short", json.dumps({"i": i}), qos=1)
    body = wait_for_last(app, "short", 7)
    assert [s["seq"] for s in body["samples"]] == [5, 6, 7]
    assert (body["first"], body["last"]) == (5, 7)
    db = sqlite3.connect(load_settings(home.config).history_path)
    assert db.execute("SELECT COUNT(*) FROM samples WHERE network = 'short'").fetchone() == (3,)


def test_retained_samples_a_subscription_brings_are_not_numbered_again(home, broker, app, publisher):
    publisher.publish("networks/pub", json.dumps({"old": True}), qos=1, retain=True)
    with recording(home, broker.mqtt_port):
        publisher.publish("networks/pub", json.dumps({"new": True}), qos=1)
        body = wait_for_last(app, "pub", 1)
    assert [s["data"] for s in body["samples"]] == [{"new": True}]


def stop(process):
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr


def test_radio_recorder_survives_a_restart_numbering_on_and_catching_up(home, broker, app, publisher):
    recorder = start_recorder(home, broker.mqtt_port)
    try:
        for i in range(3):
            publisher.publish("networks/pub", json.dumps({"i": i}), qos=1)
        wait_for_last(app, "pub", 3)
    finally:
        stop(recorder)
    # Published while it is away: its persistent session keeps them for it.
    for i in range(3, 5):
        publisher.publish("networks/pub", json.dumps({"i": i}), qos=1)
    recorder = start_recorder(home, broker.mqtt_port)
    try:
        for i in range(5, 7):
            post(app, home, "gen_all", "pub", {"i": i})
        body = wait_for_last(app, "pub", 7)
    finally:
        stop(recorder)
    assert [(s["seq"], s["data"]["i"]) for s in body["samples"]] == [(n + 1, n) for n in range(7)]


@pytest.mark.parametrize(
    ("key", "status"),
    [(None, 401), ("nonsense", 401), ("reader_b", 403), ("gen", 403), ("reader_a", 200), ("admin", 200)],
)
def test_a_private_networks_history_needs_the_read_right(home, recorder, app, publisher, key, status):
    publisher.publish("networks/A", json.dumps({"secret": 1}), qos=1)
    wait_for_last(app, "A", 1, {"API-KEY": home.secrets["admin"]})
    headers = {} if key is None else {"API-KEY": home.secrets.get(key, key)}
    code, body = history(app, "A", headers)
    assert code == status, body
    if status == 200:
        assert body["samples"][0]["data"] == {"secret": 1}
    else:
        assert set(body) == {"error"}
        assert "secret" not in json.dumps(body)


def test_bearer_works_like_api_key_and_public_networks_need_no_key(home, recorder, app, publisher):
    publisher.publish("networks/A", json.dumps({"x": 1}), qos=1)
    publisher.publish("networks/pub", json.dumps({"y": 1}), qos=1)
    body = wait_for_last(app, "A", 1, {"Authorization": "Bearer " + home.secrets["reader_a"]})
    assert body["samples"][0]["data"] == {"x": 1}
    assert wait_for_last(app, "pub", 1)["samples"][0]["data"] == {"y": 1}


def test_a_key_that_is_not_valid_is_refused_for_a_public_network_too(home, recorder, app, publisher):
    publisher.publish("networks/pub", json.dumps({"y": 1}), qos=1)
    wait_for_last(app, "pub", 1)
    refused = (401, {"error": "API-KEY not valid"})
    assert history(app, "pub", {"API-KEY": "nonsense"}) == refused
    assert history(app, "pub", {"API-KEY": home.secrets["reader_b"]})[0] == 200
    home.store().revoke("reader_b")
    assert until(lambda: history(app, "pub", {"API-KEY": home.secrets["reader_b"]}) == refused)


def test_without_anonymous_clients_a_public_network_is_read_with_a_key_only(home, broker, recorder):
    """As over MQTT, where a client without a key is not let in: history, lists and pages agree."""
    with history_app(home, broker.mqtt_port, "[broker]\nallow_anonymous = false\n") as app:
        status, body = history(app, "pub")
        assert status == 401
        assert "send one in API-KEY" in body["error"]
        assert history(app, "pub", {"API-KEY": home.secrets["reader_b"]})[0] == 200
        assert app.get("/networks").get_json() == {"networks": []}
        assert 'data-public="false"' in app.get("/networks/pub").get_data(as_text=True)
        listed = app.get("/networks", headers={"API-KEY": home.secrets["reader_b"]}).get_json()
        assert [n["name"] for n in listed["networks"]] == ["B", "fleeting", "pub", "short"]


def test_limit_and_after_page_through_the_history(home, recorder, app, publisher):
    for i in range(10):
        publisher.publish("networks/pub", json.dumps({"i": i}), qos=1)
    wait_for_last(app, "pub", 10)
    assert [s["seq"] for s in history(app, "pub", limit=3)[1]["samples"]] == [8, 9, 10]
    assert [s["seq"] for s in history(app, "pub", after=4, limit=3)[1]["samples"]] == [5, 6, 7]
    assert [s["seq"] for s in history(app, "pub", after=8)[1]["samples"]] == [9, 10]
    assert history(app, "pub", after=10)[1]["samples"] == []
    assert len(history(app, "pub")[1]["samples"]) == 10


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "abc"},
        {"limit": "-1"},
        {"after": "-1"},
        {"after": "1.5"},
        {"since": "3"},
        {"limit": "٣"},
    ],
)
def test_bad_parameters_are_400_json(home, recorder, app, params):
    status, body = history(app, "pub", **params)
    assert status == 400
    assert set(body) == {"error"}


@pytest.mark.parametrize("key", [None, "reader_b", "gen"])
def test_an_unknown_network_is_refused_as_a_private_one_is(home, broker, key):
    """A network's name may be confidential: who may not read it cannot tell it from a name no
    network has, with or without a key, on a platform that lets clients without one in or not."""
    headers = {} if key is None else {"API-KEY": home.secrets[key]}
    for extra in ("", "[broker]\nallow_anonymous = false\n"):
        with history_app(home, broker.mqtt_port, extra) as app:
            # Without a key, a public network is not read either where such clients are not let in.
            for network in ["A", "pub"] if extra and key is None else ["A"]:
                status, body = history(app, network, headers)
                assert status == (401 if key is None else 403), body
                assert history(app, "nowhere", headers) == (
                    status,
                    {"error": body["error"].replace(repr(network), repr("nowhere"))},
                )


def test_an_unknown_network_is_404_to_who_would_read_it_and_a_name_no_network_has_to_all(home, app):
    admin = {"API-KEY": home.secrets["admin"]}
    assert history(app, "nowhere", admin) == (404, {"error": "no network 'nowhere'"})
    assert history(app, "a%20b") == (404, {"error": "no network 'a b'"})
    assert history(app, "nowhere", {"API-KEY": "nonsense"}) == (401, {"error": "API-KEY not valid"})


def test_without_a_recorder_the_history_is_503_json(home, broker, app):
    status, body = history(app, "pub")
    assert status == 503
    assert "recorder" in body["error"]


def test_the_recorder_key_reads_every_network_and_publishes_nothing(home, broker, everything):
    username, secret = recorder_credentials(load_settings(home.config))
    client = Client("tcp", broker.mqtt_port, username, secret)
    assert client.connect() == 0
    try:
        assert client.subscribe("networks/A", qos=1) == 1
        assert client.subscribe("networks/B/#", qos=1) == 1
        client.publish("networks/pub", "{}", qos=1)  # acknowledged, as MQTT 3.1.1 requires, and dropped
        admin = Client("tcp", broker.mqtt_port, "admin", home.secrets["admin"])
        assert admin.connect() == 0
        admin.publish("networks/pub", '{"marker": 1}', qos=1)
        admin.close()
        assert everything.expect(1)[0].payload == b'{"marker": 1}'
    finally:
        client.close()
    assert "recorder" in home.radio_main("keys", "list").stdout
    edit = home.radio_main("keys", "edit", "recorder", "--publish", "A", check=False)
    assert edit.returncode == 2
    assert "service key" in edit.stderr


def test_the_mosquitto_acl_lets_the_recorder_read_every_network(home):
    acl = acl_text(Registry.from_settings(load_settings(home.config)))
    block = acl.split("user recorder\n")[1].split("\n\n")[0]
    assert "topic read networks/A/#" in block
    assert "topic read networks/B" in block
    assert "write" not in block


def test_history_setting_is_type_checked(home):
    home.config.write_text(home.config.read_text().replace("history = 3", 'history = "3"'))
    result = home.radio_main("keys", "list", check=False)
    assert result.returncode == 2
    assert "history must be a whole number" in result.stderr
    assert os.linesep not in result.stderr.strip()


@pytest.mark.mosquitto
def test_the_recorder_numbers_samples_on_mosquitto_too(home):
    from conftest import running_broker  # noqa: PLC0415 - conftest's helper, not a fixture

    with (
        running_broker("mosquitto", home) as mosquitto,
        recording(home, mosquitto.mqtt_port),
        history_app(home, mosquitto.mqtt_port) as client,
    ):
        publisher = Client("tcp", mosquitto.mqtt_port, "gen_all", home.secrets["gen_all"])
        assert publisher.connect() == 0
        try:
            publisher.publish("networks/pub", json.dumps({"i": 0}), qos=1)
            post(client, home, "gen_all", "pub", {"i": 1})
            publisher.publish("networks/A", json.dumps({"a": 0}), qos=1)
            body = wait_for_last(client, "pub", 2)
            private = wait_for_last(client, "A", 1, {"API-KEY": home.secrets["reader_a"]})
        finally:
            publisher.close()
    assert [(s["seq"], s["data"]) for s in body["samples"]] == [(1, {"i": 0}), (2, {"i": 1})]
    assert private["samples"][0]["data"] == {"a": 0}


def test_a_sample_the_recorder_cannot_write_is_not_acknowledged_and_comes_back(
    home, broker, app, publisher, monkeypatch, caplog
):
    """A full disk: nothing is acknowledged, and the recorder, still running, tries again until
    the sample is written. A recorder that stopped for good would stop ``radio up`` with it."""
    with recording(home, broker.mqtt_port) as failing:
        # A full disk cannot be made for real here (the tests may run as root): inject the error.
        tries = []

        def full(*_args, **_kwargs):
            tries.append(1)
            msg = "database or disk is full"
            raise sqlite3.OperationalError(msg)

        written = failing.store.append
        monkeypatch.setattr(failing.store, "append", full)
        publisher.publish("networks/pub", json.dumps({"kept": True}), qos=1)
        assert until(lambda: len(tries) >= 2), "the recorder did not try again"  # the broker sent it again
        status, body = history(app, "pub")
        assert (status, body["last"]) == (200, 0)
        monkeypatch.setattr(failing.store, "append", written)
        body = wait_for_last(app, "pub", 1)
    assert [(s["seq"], s["data"]) for s in body["samples"]] == [(1, {"kept": True})]
    said = [
        r.getMessage() for r in caplog.records if r.name == "radio.recorder" and r.levelno >= logging.WARNING
    ]
    assert len([m for m in said if "disk is full" in m]) == 1, said  # once per outage
    assert any(m.endswith("can be written again") for m in said), said


@pytest.mark.slow
def test_the_recorder_benchmark_runs_in_its_smoke_mode():
    bench = Path(__file__).resolve().parent.parent / "bench" / "recorder.py"
    result = subprocess.run(
        [sys.executable, str(bench), "--smoke"], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    rounds = [json.loads(line) for line in result.stdout.splitlines() if line.startswith('{"round"')]
    assert len(rounds) == 1
    assert rounds[0]["recorder_per_s"] > 0
    assert "median_recorder_over_listener" in result.stdout


@pytest.mark.slow  # seconds of waiting: the fast tier stays under two minutes
def test_a_recorder_that_cannot_reach_its_broker_says_so_once_per_outage(home, caplog):
    """A recorder whose broker cannot be reached says so in its log, once however many attempts fail."""
    caplog.set_level(logging.WARNING, logger="radio.recorder")
    port = unused_port()
    settings = load_settings(home.config)
    store = HistoryStore(settings.history_path)
    recorder = Recorder(
        LiveRegistry(home.config), store, Address("127.0.0.1", port), *recorder_credentials(settings)
    )
    try:
        said = said_while_unreachable(caplog, recorder._client, recorder.start, recorder.stop)
    finally:
        store.close()
    assert said == [f"cannot reach the broker at 127.0.0.1:{port} (Connection refused); retrying"]
