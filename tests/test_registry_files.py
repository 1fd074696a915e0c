"""A keys file that is missing or empty is an error, never "no keys"; first start on a fresh machine.

Every running server (the embedded broker, the Mosquitto runner, each bridge worker) reloads through
``LiveRegistry.refresh()``: these tests drive it directly. tests/test_live_changes.py does the same
to a running broker with connected clients.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import stat
import time

import pytest
import requests
from commands import BROKER_ON_ANY_PORTS, radio_in, radio_main, read_banner, started_in
from conftest import CONFIG, Home, start_bridge
from mqtt_client import Client

from radio.config import load_settings
from radio.errors import KeyStoreError, MissingRegistry
from radio.keys import KeyStore, load_keys, read_keys
from radio.registry import LiveRegistry, Registry


@pytest.fixture
def live(home: Home) -> LiveRegistry:
    return LiveRegistry(home.config)


def errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.slow  # seconds of waiting: the fast tier stays under two minutes
def test_an_emptied_deleted_then_restored_keys_file(home, live, caplog):
    before = live.current
    original = home.keys.read_bytes()
    with caplog.at_level(logging.INFO, logger="radio.registry"):
        home.keys.write_text("")
        assert live.refresh() is False
        assert live.refresh() is False
        home.keys.unlink()
        assert live.refresh() is False
        assert live.refresh() is False
        assert live.current is before
        assert live.current.access("gen").may_publish("networks/A")
        assert errors(caplog) == [
            (
                "registry not reloaded, previous rights stay in force: "
                f"{home.keys}: the key registry is empty (a registry without keys is an empty [keys] "
                "table, as 'radio keys' writes it)"
            ),
            (
                "registry not reloaded, previous rights stay in force: "
                f"{home.keys}: no key registry (the file is missing; on a fresh machine 'radio keys add' "
                "makes it)"
            ),
        ]
        # Restored, it is read again, and so is the next change.
        home.keys.write_bytes(original)
        assert live.refresh() is True
        assert live.current.keys == before.keys
        home.radio_main("keys", "revoke", "gen")
        assert live.refresh() is True
        assert "gen" not in live.current.keys


def test_an_explicit_registry_without_keys_takes_effect(home, live):
    home.keys.write_text("[keys]\n")
    assert live.refresh() is True
    assert live.current.keys == {}
    assert not live.current.access("gen").may_publish("networks/A")


def test_a_configuration_emptied_or_deleted_after_the_start_changes_nothing(home, live, caplog):
    # Its defaults would make sample_net public and let anonymous clients in.
    home.config.write_text("[broker]\nallow_anonymous = false\n" + CONFIG)
    assert live.refresh() is True
    before = live.current
    with caplog.at_level(logging.ERROR, logger="radio.registry"):
        home.config.write_text("")
        assert live.refresh() is False
        home.config.unlink()
        assert live.refresh() is False
    assert live.current is before
    assert not live.current.allow_anonymous
    assert [m.split(": ", 2)[-1] for m in errors(caplog)] == [
        "the configuration file is empty (delete it to run with the defaults)",
        "no such configuration file",
    ]


def test_no_registry_file_is_an_error_for_the_registry_and_no_keys_for_the_first_writer(tmp_path):
    path = tmp_path / "keys.toml"
    with pytest.raises(MissingRegistry, match="no key registry"):
        load_keys(path)
    assert read_keys(path) == {}  # what `radio keys add` and `radio keys list` start from
    KeyStore(path, ["A"]).add("first", publish=["A"])
    assert set(load_keys(path)) == {"first"}


def test_an_emptied_file_is_refused_by_the_writers_too(tmp_path):
    path = tmp_path / "keys.toml"
    path.write_text("")
    with pytest.raises(KeyStoreError, match="the key registry is empty"):
        KeyStore(path, ["A"]).add("first")
    assert path.read_text() == ""  # never overwritten


def test_the_registry_snapshot_needs_the_file(home):
    home.keys.unlink()
    with pytest.raises(MissingRegistry):
        Registry.from_settings(load_settings(home.config))


# --- First start on a fresh machine -------------------------------------------------------------


def test_keys_list_in_an_empty_folder_says_so_and_writes_nothing(tmp_path):
    result = radio_in(tmp_path, "keys", "list")
    assert result.returncode == 0
    assert result.stdout == ""
    assert result.stderr.startswith(f"No keys: {tmp_path / 'keys.toml'} does not exist yet.")
    assert list(tmp_path.iterdir()) == []
    json_list = radio_in(tmp_path, "keys", "list", "--json")
    assert (json_list.returncode, json_list.stdout) == (0, "")


def test_a_registry_in_a_folder_that_does_not_exist_is_refused_and_nothing_is_made(tmp_path):
    """A mistyped --keys would otherwise make a folder and a registry no server reads, and the key
    made there would work nowhere."""
    mistyped = tmp_path / "radoi" / "keys.toml"
    result = radio_in(tmp_path, "--keys", str(mistyped), "keys", "add", "first")
    assert result.returncode == 2
    assert result.stdout == ""  # no secret for a key that was not made
    assert result.stderr == (
        f"radio: {mistyped}: its folder {mistyped.parent} does not exist (--keys or RADIO_KEYS "
        "mistyped?); make the folder first to keep the keys there\n"
    )
    assert not mistyped.parent.exists()


def test_broker_then_bridge_start_in_an_empty_folder(tmp_path):
    """`radio broker` starts without keys and writes nothing; `radio bridge` makes the file with its key.

    A server never writes the registry: one restarting while the file is deleted would otherwise
    write an empty registry that every other running server would apply.
    """
    broker = started_in(tmp_path, *BROKER_ON_ANY_PORTS)
    try:
        banner = read_banner(broker)
        port = int(re.search(r"mqtt://127\.0\.0\.1:(\d+)", banner)[1])
        assert f"keys:                 {tmp_path / 'keys.toml'} (0 keys)" in banner
        assert not (tmp_path / "keys.toml").exists()
        assert radio_in(tmp_path, "keys", "list").stderr.startswith("No keys: ")

        bridge = started_in(
            tmp_path, "bridge", "--listen", "127.0.0.1:0", "--broker", f"mqtt://127.0.0.1:{port}"
        )
        try:
            assert bridge.stdout is not None
            url = next(m[1] for line in bridge.stdout if (m := re.search(r"POST (http://\S+)/publish", line)))
            assert set(load_keys(tmp_path / "keys.toml")) == {"bridge"}
            # The broker loads the file that appeared: the bridge's key connects.
            deadline = time.monotonic() + 20
            while requests.get(url + "/healthz", timeout=10).status_code != 200:
                assert time.monotonic() < deadline, "the bridge never reached the broker"
                time.sleep(0.05)
        finally:
            bridge.send_signal(signal.SIGINT)
            _, bridge_err = bridge.communicate(timeout=30)
        assert "Traceback" not in bridge_err
        anonymous = Client("tcp", port)
        assert anonymous.connect() == 0
        anonymous.close()
    finally:
        broker.send_signal(signal.SIGINT)
        _, stderr = broker.communicate(timeout=30)
    assert broker.returncode == 0
    assert (
        f"no key registry at {tmp_path / 'keys.toml'} yet: no keys until 'radio keys add' makes one" in stderr
    )
    assert "registry reloaded: 1 networks, 1 keys" in stderr
    assert "Traceback" not in stderr


# --- The bridge: each worker reloads on its own --------------------------------------------------


@pytest.mark.slow  # seconds of waiting: the fast tier stays under two minutes
def test_the_bridge_keeps_its_rights_when_the_keys_file_is_emptied_or_deleted(broker, home):
    # One worker: a worker still booting when the file is emptied fails to start (gunicorn then
    # stops the bridge), a limit of the bridge's per-worker loading, not what this test is about.
    bridge = start_bridge(home, broker.mqtt_port, "--workers", "1")
    try:
        check_bridge(bridge, home)
    finally:
        stderr = bridge.stop()
    lines = [line for line in stderr.splitlines() if "registry not reloaded" in line]
    assert len(lines) == 2, lines  # one per event
    assert "the key registry is empty" in lines[0]
    assert "no key registry" in lines[1]
    assert "Traceback" not in stderr


def check_bridge(bridge, home) -> None:
    sample = json.dumps({"network": "A", "data": {"n": 1}})
    gen = {"API-KEY": home.secrets["gen"]}
    assert bridge.post(sample, gen).status_code == 200
    original = home.keys.read_bytes()
    for damage in (lambda: home.keys.write_text(""), home.keys.unlink):
        damage()
        # Each worker looks at the files at most every 0.25 s: sample well past that.
        done = time.monotonic() + 1.5
        statuses = set()
        while time.monotonic() < done:
            statuses.add(bridge.post(sample, gen).status_code)
        assert statuses == {200}
    home.keys.write_bytes(original)
    home.radio_main("keys", "revoke", "gen")
    deadline = time.monotonic() + 2.5
    while bridge.post(sample, gen).status_code != 400:
        assert time.monotonic() < deadline, "a change after the restore was not applied"


def test_a_server_started_before_any_key_runs_without_keys_and_loads_the_file_when_it_appears(
    tmp_path, caplog
):
    config = tmp_path / "radio.toml"
    config.write_text("[networks.A]\n")
    with caplog.at_level(logging.INFO, logger="radio.registry"):
        live = LiveRegistry(config)
        assert live.current.keys == {}
        assert not (tmp_path / "keys.toml").exists()  # a server never writes the registry
        # Still no keys file: a change of the configuration applies all the same.
        config.write_text("[networks.A]\n[networks.B]\npublic = true\n")
        assert live.refresh() is True
        assert set(live.current.networks) == {"A", "B"}
        KeyStore(tmp_path / "keys.toml", ["A", "B"]).add("first", publish=["A"])
        assert live.refresh() is True
        assert live.current.access("first").may_publish("networks/A")
        # From now on the file is in force: its absence is an error, not "no keys".
        (tmp_path / "keys.toml").unlink()
        assert live.refresh() is False
        assert live.current.access("first").may_publish("networks/A")
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO", "INFO", "ERROR"]
    assert caplog.records[0].getMessage() == (
        f"no key registry at {tmp_path / 'keys.toml'} yet: no keys until 'radio keys add' makes one"
    )


def test_no_registry_is_made_where_a_running_server_holds_the_keys_of_one_gone_missing(tmp_path):
    """The server keeps the keys of the file it read; a new file, made by the next `radio keys add`
    (the very command `radio keys list` suggested), would be read as the registry instead and every
    other key revoked at once, Radio's own service keys with them. The first key of a folder whose
    server started before any key is made as ever."""
    config = tmp_path / "radio.toml"
    config.write_text("[networks.A]\n")
    keys = tmp_path / "keys.toml"
    live = LiveRegistry(config)
    try:
        KeyStore(keys, ["A"], config).add("first", publish=["A"])  # no keys in force yet: made
        assert live.refresh() is True
        keys.unlink()
        assert live.refresh() is False
        refused = radio_main("keys", "add", "second", "--publish", "A", "--config", str(config))
        assert refused.returncode == 2
        assert re.fullmatch(
            rf"radio: {re.escape(str(keys))} is missing, and .+ \(pid {os.getpid()}\) still holds the "
            r"keys it had: restore the file \(from a backup\) rather than make a new one, which would "
            r"revoke every other key at once; to start a new registry, stop the servers first\n",
            refused.stderr,
        ), refused.stderr
        assert not keys.exists()
        listed = radio_main("keys", "list", "--config", str(config))
        assert listed.stderr.endswith("still holds the keys it had: restore the file from a backup\n")
        assert live.current.access("first").may_publish("networks/A")
    finally:
        live.close()


def test_every_exported_file_that_names_a_key_is_private(home, tmp_path):
    """The Mosquitto and NATS exports list the keys and their rights: only their owner may read them."""
    from radio.broker import mosquitto, nats_conf  # noqa: PLC0415

    settings = load_settings(home.config)
    registry = Registry.from_settings(settings)
    mosquitto.export(settings, registry, tmp_path / "mosquitto")
    nats_conf.export(settings, registry, tmp_path / "nats", nats_conf.plan(settings, 2))
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    naming = [p for p in files if "reader_a" in p.read_text(encoding="utf-8")]
    assert {p.name for p in naming} >= {"acl", "passwd", "users.conf"}
    for path in naming:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
