"""`radio listen --since SEQ`: the history after SEQ, then live, with no duplicate and no hole."""

from __future__ import annotations

import contextlib
import http.server
import json
import queue
import signal
import subprocess
import sys
import threading

import history_fixtures
import pytest
import requests
from history_fixtures import start_recorder, wait_for_last

from radio.subscribers.listener import Listener

home = history_fixtures.home
publisher = history_fixtures.publisher
recorder = history_fixtures.recorder

TIMEOUT = 30


class Listening:
    """`radio listen` in a subprocess; its lines read on a thread, so a test waits on a queue."""

    def __init__(self, home, *args):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "radio", "listen", *args, "--config", str(home.config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[dict] = queue.Queue()
        self.stderr: list[str] = []
        self.listening = threading.Event()
        self.readers = [threading.Thread(target=self._read), threading.Thread(target=self._read_stderr)]
        for reader in self.readers:
            reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.put(json.loads(line))

    def _read_stderr(self):
        for line in self.process.stderr:
            self.stderr.append(line)
            if "listening to" in line:
                self.listening.set()

    def until(self, predicate):
        got = []
        while True:
            try:
                sample = self.lines.get(timeout=TIMEOUT)
            except queue.Empty:
                pytest.fail(f"waited in vain; got {[(s.get('seq'), s['data']) for s in got]}")
            got.append(sample)
            if predicate(sample):
                return got

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)
        for reader in self.readers:
            reader.join(timeout=30)
        self.process.stdout.close()
        self.process.stderr.close()
        assert self.process.returncode == 0, "".join(self.stderr)


def test_listen_since_replays_then_goes_live_without_duplicates_or_holes(
    home, broker, recorder, bridge, publisher
):
    for i in range(5):
        publisher.publish("networks/pub", json.dumps({"i": i}), qos=1, retain=True)
    wait_for_last(bridge, "pub", 5)

    # Samples keep coming while the listener joins: the seam between history and live is crossed.
    stop = threading.Event()
    count = [5]

    def publish_on():
        while not stop.is_set():
            publisher.publish("networks/pub", json.dumps({"i": count[0]}), qos=1, retain=True)
            count[0] += 1

    publishing = threading.Thread(target=publish_on)
    publishing.start()
    listening = Listening(
        home, "pub", "--since", "2", "--http", bridge.url, "--url", f"mqtt://127.0.0.1:{broker.mqtt_port}"
    )
    try:
        assert listening.listening.wait(TIMEOUT)
        joined = count[0]  # published from here on: after the subscription, live
        got = listening.until(lambda s: s["data"]["i"] >= joined + 5)  # the seam is behind
        stop.set()
        publishing.join()
        final = count[0]
        if got[-1]["data"]["i"] != final - 1:
            got += listening.until(lambda s: s["data"]["i"] == final - 1)
    finally:
        stop.set()
        listening.stop()
    numbers = [s["data"]["i"] for s in got]
    assert numbers == list(range(2, final)), numbers  # seq 3 is sample i=2: every one once, in order
    # Replayed and live alike carry their number where the history had it within the wait.
    numbered = [(s["seq"], s["data"]["i"]) for s in got if "seq" in s]
    assert all(seq == i + 1 for seq, i in numbered), numbered
    assert numbered[0] == (3, 2), "nothing was replayed from the history"
    assert numbered[-1][1] >= joined, "no live sample was numbered"
    assert not any("no longer reaches back" in line for line in listening.stderr)


def test_listen_since_says_so_when_the_history_no_longer_reaches_back(
    home, broker, recorder, bridge, publisher
):
    for i in range(10):
        publisher.publish("networks/short", json.dumps({"i": i}), qos=1)
    wait_for_last(bridge, "short", 10)
    listening = Listening(
        home, "short", "--since", "2", "--http", bridge.url, "--url", f"mqtt://127.0.0.1:{broker.mqtt_port}"
    )
    try:
        got = listening.until(lambda s: s.get("seq") == 10)
        assert listening.listening.wait(TIMEOUT)
        publisher.publish("networks/short", json.dumps({"i": 10}), qos=1)
        got += listening.until(lambda s: s["data"]["i"] == 10)
    finally:
        listening.stop()
    assert [s["data"]["i"] for s in got] == [7, 8, 9, 10]
    gaps = [line for line in listening.stderr if "no longer reaches back" in line]
    assert len(gaps) == 1
    assert "samples 3 to 7 are gone" in gaps[0]
    assert gaps[0].count("\n") == 1


def test_listen_since_a_private_network_needs_a_key_that_may_read_it(
    home, broker, recorder, bridge, tmp_path
):
    key_file = tmp_path / "b.key"
    key_file.write_text(home.secrets["reader_b"])
    key_file.chmod(0o600)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "radio",
            "listen",
            "A",
            "--since",
            "0",
            "--http",
            bridge.url,
            "--key-file",
            str(key_file),
            "--config",
            str(home.config),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "not entitled to read network 'A'" in result.stderr  # the registry at hand says so first


@pytest.mark.parametrize(
    "value",
    [
        "-1",
        "x",
        "1.5",
        pytest.param(str(2**62 + 1), id="past 2**62"),
        pytest.param("9" * 5000, id="5,000 digits"),
    ],
)
def test_a_bad_since_is_one_line_and_status_2(home, value):
    result = home.radio("listen", "pub", "--since", value, check=False)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert f"is not a sample number (a whole number from 0 to {2**62})" in result.stderr


def test_the_listener_library_replays_with_seq_then_live(home, broker, recorder, bridge, publisher):
    for i in range(3):
        publisher.publish("networks/pub", json.dumps({"i": i}), qos=1)
    wait_for_last(bridge, "pub", 3)
    with Listener(["pub"], f"mqtt://127.0.0.1:{broker.mqtt_port}", since=0, http=bridge.url) as listener:
        assert listener.subscribed.wait(TIMEOUT)
        samples = iter(listener)
        replayed = [next(samples) for _ in range(3)]
        publisher.publish("networks/pub", json.dumps({"i": 3}), qos=1)
        live = next(samples)
    assert [(s.seq, s.data["i"]) for s in replayed] == [(1, 0), (2, 1), (3, 2)]
    assert (live.seq, live.data) == (4, {"i": 3})


@contextlib.contextmanager
def held_history(bridge_url, release):
    """A real HTTP hop in front of the bridge that holds every replay request until ``release`` is set."""
    held = threading.Event()

    class Hop(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if "after=" in self.path:
                held.set()
                release.wait(TIMEOUT)
            answer = requests.get(bridge_url + self.path, headers=dict(self.headers), timeout=10)
            self.send_response(answer.status_code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer.content)))
            self.end_headers()
            self.wfile.write(answer.content)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hop)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", held
    finally:
        release.set()
        server.shutdown()
        thread.join()
        server.server_close()


def test_live_samples_the_replay_also_brings_are_dropped_and_repeats_are_kept(
    home, broker, recorder, bridge, publisher
):
    """The seam, made certain: samples arrive live while the replay is held, and are recorded too."""
    for i in range(3):
        publisher.publish("networks/pub", json.dumps({"i": i}), qos=1)
    wait_for_last(bridge, "pub", 3)
    release = threading.Event()
    with (
        held_history(bridge.url, release) as (url, held),
        Listener(["pub"], f"mqtt://127.0.0.1:{broker.mqtt_port}", since=1, http=url) as listener,
    ):
        assert held.wait(TIMEOUT), "the listener never asked for the history"
        # Live and recorded at once; the same content twice counts twice.
        for data in ({"i": 3}, {"i": 4}, {"i": 4}):
            publisher.publish("networks/pub", json.dumps(data), qos=1)
        wait_for_last(bridge, "pub", 6)
        release.set()
        samples = iter(listener)
        got = [next(samples) for _ in range(5)]
        publisher.publish("networks/pub", json.dumps({"i": 5}), qos=1)
        got.append(next(samples))
        assert listener._samples.empty()
    assert [(s.seq, s.data["i"]) for s in got] == [(2, 1), (3, 2), (4, 3), (5, 4), (6, 4), (7, 5)]


def test_a_keyed_listener_replays_a_private_network_once(home, broker, recorder, bridge, publisher):
    secret = home.secrets["reader_a"]
    url = f"mqtt://127.0.0.1:{broker.mqtt_port}"
    # A persistent session from an earlier run, which missed the samples below.
    with Listener(["A"], url, secret) as earlier:
        assert earlier.subscribed.wait(TIMEOUT)
    for i in range(3):
        publisher.publish("networks/A", json.dumps({"i": i}), qos=1)
    wait_for_last(bridge, "A", 3, {"API-KEY": secret})
    with Listener(["A"], url, secret, since=0, http=bridge.url) as listener:
        assert listener.subscribed.wait(TIMEOUT)
        samples = iter(listener)
        got = [next(samples) for _ in range(3)]
        publisher.publish("networks/A", json.dumps({"i": 3}), qos=1)
        got.append(next(samples))
        assert listener._samples.empty()
    assert [(s.seq, s.data["i"]) for s in got] == [(1, 0), (2, 1), (3, 2), (4, 3)]  # live ones too


@pytest.mark.slow  # seconds of waiting: the fast tier stays under two minutes
def test_a_since_past_the_end_of_the_history_is_said_and_replays_nothing(
    home, broker, recorder, bridge, publisher
):
    for i in range(2):
        publisher.publish("networks/pub", json.dumps({"i": i}), qos=1)
    wait_for_last(bridge, "pub", 2)
    notices: list[str] = []
    said = threading.Event()

    def notice(line):
        notices.append(line)
        if "before 10" in line:
            said.set()

    url = f"mqtt://127.0.0.1:{broker.mqtt_port}"
    with Listener(["pub"], url, since=10, http=bridge.url, notice=notice) as listener:
        assert said.wait(TIMEOUT), notices
        samples = iter(listener)
        publisher.publish("networks/pub", json.dumps({"i": 2}), qos=1)
        live = next(samples)
    assert (live.seq, live.data) == (3, {"i": 2})
    assert any("ends at 2, before 10" in line for line in notices), notices


def test_listen_since_has_no_hole_when_the_recorder_lags_behind_the_join(home, broker, bridge, publisher):
    """Samples published just before the listener subscribed, and not yet numbered when it read the
    history, reach it through the history once the recorder catches up: no hole at the seam."""
    recorder = start_recorder(home, broker.mqtt_port)
    try:
        for i in range(5):
            publisher.publish("networks/pub", json.dumps({"i": i}), qos=1)
        wait_for_last(bridge, "pub", 5)
        recorder.send_signal(signal.SIGSTOP)  # it lags: what is published now is numbered later
        for i in range(5, 10):
            publisher.publish("networks/pub", json.dumps({"i": i}), qos=1)
        listening = Listening(
            home, "pub", "--since", "2", "--http", bridge.url, "--url", f"mqtt://127.0.0.1:{broker.mqtt_port}"
        )
        try:
            got = listening.until(lambda s: s["data"]["i"] == 4)  # the history as it stood at the join
            for i in range(10, 13):
                publisher.publish("networks/pub", json.dumps({"i": i}), qos=1)
            recorder.send_signal(signal.SIGCONT)
            got += listening.until(lambda s: s["data"]["i"] == 12)
        finally:
            listening.stop()
    finally:
        recorder.send_signal(signal.SIGCONT)
        recorder.terminate()
        recorder.communicate(timeout=30)
    assert [s["data"]["i"] for s in got] == list(range(2, 13))
    assert [s.get("seq") for s in got] == list(range(3, 14))  # the live ones found once numbered
