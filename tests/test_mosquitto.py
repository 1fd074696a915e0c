"""Mosquitto as the production broker: what holds there beyond the rights shared with the embedded one."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import require_mosquitto, running, running_broker
from mqtt_client import Client, away_while_published, listening
from polling import eventually, until

from radio.broker import mosquitto as mosquitto_runner
from radio.broker.mosquitto import MosquittoBroker
from radio.config import Address
from radio.registry import LiveRegistry

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
    """Mosquitto's default max_queued_messages (1000) dropped QoS 1 messages silently; Radio's is
    the larger of [broker] max_queued and recorder_max_queued (1,000,000 by default)."""
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


def mosquitto_child(runner: psutil.Process, other_than: int | None = None) -> psutil.Process:
    """The Mosquitto a runner started (a new one, if ``other_than`` names the last), once it exists."""

    def found() -> psutil.Process | None:
        return next((c for c in runner.children() if c.name() == "mosquitto" and c.pid != other_than), None)

    child = eventually(found, within=20, every=0.05)
    if child is None:
        pytest.fail("no Mosquitto child appeared")
    return child


def runner_command(home) -> list[str]:
    """`radio broker --engine mosquitto` as an operator types it, on free ports."""
    ports = ["--mqtt", "127.0.0.1:0", "--ws", "127.0.0.1:0"]
    return [
        sys.executable,
        "-m",
        "radio",
        "broker",
        "--engine",
        "mosquitto",
        "--config",
        str(home.config),
        *ports,
    ]


def accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def test_a_killed_mosquitto_is_restarted_on_the_same_ports(home):
    """kill -9 of Mosquitto: the runner notices, says so, and serves again where it did."""
    require_mosquitto()
    runner = subprocess.Popen(
        runner_command(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert runner.stdout is not None
        port = next(
            int(m[1]) for line in runner.stdout if (m := re.search(r"mqtt://127\.0\.0\.1:(\d+)", line))
        )
        first = mosquitto_child(psutil.Process(runner.pid))
        first.kill()
        second = mosquitto_child(psutil.Process(runner.pid), other_than=first.pid)
        assert until(lambda: accepts(port), within=20, every=0.05), "the restarted Mosquitto never listened"
        with listening(port, "reader_a", home.secrets["reader_a"], "networks/A") as reader:
            gen = Client("tcp", port, "gen", home.secrets["gen"])
            assert gen.connect() == 0
            gen.publish("networks/A", b'{"after": "restart"}', qos=1)
            gen.close()
            assert reader.expect(1)[0].payload == b'{"after": "restart"}'
        assert second.is_running()
    finally:
        runner.send_signal(signal.SIGINT)
        _, stderr = runner.communicate(timeout=30)
    assert runner.returncode == 0, stderr
    assert "Mosquitto exited on its own (status -9): restarting it in 0.5s" in stderr
    assert "Mosquitto restarted" in stderr


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the kernel's parent-death signal is Linux's"
)
def test_mosquitto_ends_with_a_runner_killed_with_kill_9(home):
    """kill -9 of the runner: Mosquitto stops too. Left running, it would admit a key revoked
    since for good (nobody exports the files again) and hold the ports the next runner needs."""
    require_mosquitto()
    runner = subprocess.Popen(runner_command(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert runner.stdout is not None
        next(line for line in runner.stdout if "mqtt://" in line)
        engine = mosquitto_child(psutil.Process(runner.pid))
        runner.kill()
        runner.wait(timeout=10)
        assert until(lambda: not running(engine), within=10, every=0.05), "Mosquitto outlived its runner"
    finally:
        runner.kill()
        runner.communicate(timeout=10)
        with contextlib.suppress(NameError, psutil.NoSuchProcess):
            engine.kill()


def test_a_mosquitto_that_cannot_come_back_is_given_up_and_said(home, caplog, monkeypatch):
    """Dead, and every restart fails: the runner stops trying and reports it (the command exits 1)."""
    gave_up = threading.Event()
    with running_broker("mosquitto", home) as mosquitto:
        assert isinstance(mosquitto, MosquittoBroker)
        mosquitto.restart_delays = (0.05, 0.05)
        mosquitto.on_failure = gave_up.set
        monkeypatch.setenv("RADIO_MOSQUITTO", "/bin/false")  # a broker that exits at once
        assert mosquitto.process is not None
        mosquitto.process.kill()
        assert gave_up.wait(10)
        assert mosquitto.failed
    assert sum("Mosquitto did not come back" in r.getMessage() for r in caplog.records) == 2
    assert any("giving up" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)


def test_a_free_port_taken_before_mosquitto_binds_it_is_replaced(home, mocker, caplog):
    """Another process takes the port chosen for a listener first: Mosquitto starts on another.

    The race cannot be timed for real, so the first choice is made a port already bound here.
    """
    require_mosquitto()
    choices = iter([taken_ports])
    real = mosquitto_runner.concrete

    def first_taken(*addresses: Address) -> list[Address]:
        return next(choices, real)(*addresses)

    mocker.patch.object(mosquitto_runner, "concrete", side_effect=first_taken)
    mosquitto = MosquittoBroker(
        LiveRegistry(home.config),
        home.path / "mosquitto",
        mqtt=Address("127.0.0.1", 0),
        websocket=Address("127.0.0.1", 0),
    )
    try:
        with (home.path / "mosquitto.log").open("wb") as log:
            mosquitto.start(stderr=log.fileno())
        assert mosquitto.mqtt.port not in TAKEN
        gen = Client("tcp", mosquitto.mqtt.port, "gen", home.secrets["gen"])
        assert gen.connect() == 0
        gen.close()
    finally:
        mosquitto.stop()
        for sock in TAKEN.values():
            sock.close()
    assert any("starting it again on other free ports" in r.getMessage() for r in caplog.records)


TAKEN: dict[int, socket.socket] = {}
"""Ports bound (not listening) by this process, as another process could have bound them."""


def taken_ports(*addresses: Address) -> list[Address]:
    chosen = []
    for address in addresses:
        sock = socket.socket()
        sock.bind((address.host, 0))
        TAKEN[sock.getsockname()[1]] = sock
        chosen.append(Address(address.host, sock.getsockname()[1]))
    return chosen


def test_a_broker_that_cannot_start_ends_the_command_with_one_line(home):
    require_mosquitto()
    result = subprocess.run(
        runner_command(home),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "RADIO_MOSQUITTO": "/bin/false"},
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "radio: Mosquitto exited at start (status 1); see its log above"
    )


@pytest.mark.slow
def test_an_acknowledged_sample_is_on_disk_within_the_save_interval_the_readme_states(home):
    """On Mosquitto a PUBACK (and the HTTP door's 200) is on disk at its next save, which the README
    times: samples queued for an offline session survive a kill -9 once that time has passed."""
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    stated = int(re.search(r"`mosquitto.db` every (\d+) seconds \(`autosave_interval`\)", readme)[1])
    with running_broker("mosquitto", home) as mosquitto:
        assert isinstance(mosquitto, MosquittoBroker)
        rendered = (home.path / "mosquitto" / "mosquitto.conf").read_text()
        assert re.search(r"(?m)^autosave_interval (\d+)$", rendered)[1] == str(stated)
        assert re.search(r"(?m)^autosave_on_changes false$", rendered)
        durable = ("tcp", mosquitto.mqtt_port, "reader_a", home.secrets["reader_a"])
        away = Client(*durable, client_id="durable", clean_session=False)
        assert away.connect() == 0
        assert away.subscribe("networks/A", qos=1) == 1
        away.close()
        gen = Client("tcp", mosquitto.mqtt_port, "gen", home.secrets["gen"])
        assert gen.connect() == 0
        for n in range(40):
            gen.publish("networks/A", b'{"n": %d}' % n, qos=1)  # each acknowledged
        gen.close()
        acknowledged = time.time_ns()
        store = home.path / "mosquitto" / "mosquitto.db"
        saved = until(
            lambda: store.exists() and store.stat().st_mtime_ns > acknowledged,
            within=stated + 5,  # a loaded machine's slack
            every=0.1,
        )
        assert saved, f"Mosquitto did not save within {stated} s"
        assert mosquitto.process is not None
        mosquitto.process.kill()
        assert until(lambda: mosquitto.restarts > 0, within=20, every=0.05), (
            "the runner did not restart Mosquitto"
        )
        back = Client(*durable, client_id="durable", clean_session=False)
        try:
            assert back.connect() == 0
            assert [m.payload for m in back.expect(40)] == [b'{"n": %d}' % n for n in range(40)]
        finally:
            back.close()
