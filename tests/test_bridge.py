"""The HTTP bridge forwarding to a real broker, seen by a real listener; each test on both brokers.

Most tests use the fast tier (``bridge``: the production app under the production server in this
process, real HTTP on a free port, the broker link on the server's event loop: the publish path
``radio bridge`` takes). ``served`` is ``radio bridge`` itself, a separate process with two
workers, for what only it can show: metrics summed over worker processes, the service key made on
first start, recovery, and one end-to-end path per broker.

"Publishes nothing" is checked with a barrier, never a sleep: after the refused requests one valid
POST is sent; requests are answered one after another, so anything the refused ones had published
would reach the listener before the valid sample does.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import itertools
import json
import logging
import signal
import socket
import ssl
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import flask
import psutil
import pytest
import requests
import uvloop
from bridge_client import InProcessBridge
from conftest import CONFIG, ENGINES, Bridge, Home, running_broker, start_bridge
from embedded import embedded_broker
from in_process import in_process_bridge
from mqtt_client import Client, unused_port
from polling import until
from test_tls import make_certs, use_tls

from radio import wire
from radio.bridge import broker_connection
from radio.bridge.broker_connection import BrokerConnection
from radio.bridge.identity import bridge_credentials
from radio.bridge.publisher import BrokerUnavailable, Publisher
from radio.config import Address, load_settings
from radio.keys import read_keys
from radio.tls import client_context

VALID = {"network": "A", "data": {"speed": 42, "street": "Main"}}


@pytest.fixture(params=ENGINES)
def broker(request, home):
    """The bridge end to end on both brokers: the embedded one, and Mosquitto with exported rights."""
    with running_broker(request.param, home) as running:
        yield running


bridge = pytest.fixture(name="bridge")(in_process_bridge)


@pytest.fixture
def served(home, broker):
    """`radio bridge` in its own process: gunicorn's arbiter, two workers, real HTTP."""
    running = start_bridge(home, broker.mqtt_port)
    yield running
    stderr = running.stop()
    assert "Traceback" not in stderr, stderr


def body(value) -> str:
    return json.dumps(value)


def assert_nothing_published_before(bridge, home, everything):
    """Send one valid sample: it must be the first and only thing the listener gets."""
    marker = {"network": "A", "data": {"marker": time.monotonic_ns()}}
    assert bridge.post(body(marker), {"API-KEY": home.secrets["gen"]}).status_code == 200
    got = everything.expect(1)
    assert (got[0].topic, json.loads(got[0].payload)) == ("networks/A", marker["data"])
    assert everything.received_so_far() == []


@pytest.mark.parametrize(
    ("headers", "payload", "status", "error"),
    [
        ({}, body(VALID), 400, "API-KEY missing in headers"),
        ({"API-KEY": "not-a-key"}, body(VALID), 400, "API-KEY not valid"),
        ({"API-KEY": ""}, body(VALID), 400, "API-KEY not valid"),
        ({"Authorization": "Bearer not-a-key"}, body(VALID), 400, "API-KEY not valid"),
        ({"API-KEY": "gen"}, "{not json", 400, "POST data is not JSON"),
        ({"API-KEY": "gen"}, b"\xff\xfe{}", 400, "POST data is not JSON"),
        ({"API-KEY": "gen"}, "", 400, "POST data is not JSON"),
        ({"API-KEY": "gen"}, '{"network": "A", "data": {"x": NaN}}', 400, "POST data is not JSON"),
        ({"API-KEY": "gen"}, body({"data": {"x": 1}}), 400, "*network* key missing"),
        ({"API-KEY": "gen"}, body([1, 2]), 400, "*network* key missing"),
        ({"API-KEY": "gen"}, body("network"), 400, "*network* key missing"),
        ({"API-KEY": "gen"}, body({"network": "B", "data": {}}), 403, "You cannot broadcast to this channel"),
        (
            {"API-KEY": "gen"},
            body({"network": "nosuch", "data": {}}),
            403,
            "You cannot broadcast to this channel",
        ),
        (
            {"API-KEY": "gen"},
            body({"network": ["A"], "data": {}}),
            403,
            "You cannot broadcast to this channel",
        ),
        (
            {"API-KEY": "gen"},
            body({"network": "A/x", "data": {}}),
            403,
            "You cannot broadcast to this channel",
        ),
        ({"API-KEY": "reader_a"}, body(VALID), 403, "You cannot broadcast to this channel"),
        ({"API-KEY": "gen"}, body({"network": "A"}), 400, "*data* key missing"),
        ({"API-KEY": "gen"}, body({"network": "A", "data": [1]}), 400, "Can only broadcast json data"),
        ({"API-KEY": "gen"}, body({"network": "A", "data": "x"}), 400, "Can only broadcast json data"),
        ({"API-KEY": "gen"}, body({"network": "A", "data": None}), 400, "Can only broadcast json data"),
    ],
)
def test_each_refusal_of_the_article_answers_to_the_letter_and_publishes_nothing(
    bridge, home, everything, headers, payload, status, error
):
    # The table's keys are names; the requests carry their secrets.
    headers = {name: home.secrets.get(value, value) for name, value in headers.items()}
    response = bridge.post(payload, headers)
    assert (response.status_code, response.json()) == (status, {"error": error})
    assert response.headers["Content-Type"] == "application/json"
    assert_nothing_published_before(bridge, home, everything)


def test_the_checks_run_in_the_articles_order(bridge, home):
    """A request wrong in several ways gets the first error of the article's list."""
    gen = {"API-KEY": home.secrets["gen"]}
    assert bridge.post("{bad", {"API-KEY": "wrong"}).json() == {"error": "API-KEY not valid"}
    assert bridge.post(body({"data": 5}), gen).json() == {"error": "*network* key missing"}
    assert bridge.post(body({"network": "B"}), gen).json() == {
        "error": "You cannot broadcast to this channel"
    }
    assert bridge.post(body({"network": "A", "data": 5}), gen).json() == {
        "error": "Can only broadcast json data"
    }


def test_end_to_end_a_sample_posted_to_radio_bridge_reaches_a_listener(served, home, everything):
    response = served.post(body(VALID), {"API-KEY": home.secrets["gen"], "Content-Type": "application/json"})
    assert (response.status_code, response.json()) == (200, {"message": "OK"})
    got = everything.expect(1)[0]
    assert (got.topic, got.payload) == ("networks/A", json.dumps(VALID["data"]).encode())


def test_a_valid_sample_reaches_listeners_exactly_and_is_retained(bridge, home, everything, broker):
    response = bridge.post(body(VALID), {"API-KEY": home.secrets["gen"], "Content-Type": "application/json"})
    assert (response.status_code, response.json()) == (200, {"message": "OK"})
    # Byte for byte what Flask's jsonify(message="OK") gives, as legacy clients may compare it.
    with bridge.app.app_context():
        expected = flask.jsonify(message="OK")
    assert response.text == expected.get_data(as_text=True)
    assert response.headers["Content-Type"] == expected.headers["Content-Type"]
    got = everything.expect(1)[0]
    assert got.topic == "networks/A"
    assert got.payload == json.dumps(VALID["data"]).encode()  # the article's json.dumps(body['data'])

    late = Client("tcp", broker.mqtt_port, "reader_a", home.secrets["reader_a"])
    assert late.connect() == 0
    assert late.subscribe("networks/A") == 0
    retained = late.expect(1)[0]
    assert (retained.retain, json.loads(retained.payload)) == (True, VALID["data"])
    late.close()


def test_a_network_that_does_not_retain_gets_no_retained_sample(bridge, home, everything, broker):
    admin = {"API-KEY": home.secrets["admin"]}
    assert bridge.post(body({"network": "fleeting", "data": {"n": 1}}), admin).status_code == 200
    assert everything.expect(1)[0].topic == "networks/fleeting"
    anonymous = Client("tcp", broker.mqtt_port)
    assert anonymous.connect() == 0
    assert anonymous.subscribe("networks/fleeting") == 0
    assert bridge.post(body({"network": "fleeting", "data": {"n": 2}}), admin).status_code == 200
    assert [json.loads(m.payload) for m in anonymous.expect(1)] == [{"n": 2}]
    anonymous.close()


def test_a_bearer_token_is_accepted_like_an_api_key(bridge, home, everything):
    response = bridge.post(body(VALID), {"Authorization": f"Bearer {home.secrets['gen']}"})
    assert response.status_code == 200
    assert json.loads(everything.expect(1)[0].payload) == VALID["data"]


def test_the_articles_own_publish_function_works_unchanged(bridge, home, everything):
    class secret:  # noqa: N801 - stands in for the article's `secret` module
        URL = bridge.url + "/publish"
        API_KEYS = {"A": home.secrets["gen"]}

    # From the article, unchanged but for the URL and key above (its `resp =` line, cut off in
    # the text, posts the payload as JSON).
    def publish(net_name, jdata):
        url = secret.URL
        headers = {"content-type": "application/json"}
        headers["API-KEY"] = secret.API_KEYS[net_name]
        payload = {"network": net_name}
        payload["data"] = jdata
        resp = requests.post(url, data=json.dumps(payload), headers=headers)  # noqa: S113
        return resp.status_code

    for tick in range(3):
        assert publish("A", {"tick": tick, "density": {"Main St": 0.25}}) == 200
    assert [json.loads(m.payload)["tick"] for m in everything.expect(3)] == [0, 1, 2]


def test_a_sample_over_the_networks_max_payload_is_413(home, broker, everything):
    home.config.write_text(
        home.config.read_text().replace("[networks.A]\n", "[networks.A]\nmax_payload = 100\n")
    )
    bridge = InProcessBridge(str(home.config), broker.mqtt_port)
    try:
        big = {"network": "A", "data": {"blob": "x" * 200}}
        response = bridge.post(body(big), {"API-KEY": home.secrets["gen"]})
        assert response.status_code == 413
        assert "network 'A' accepts at most 100" in response.json()["error"]
        assert_nothing_published_before(bridge, home, everything)
    finally:
        bridge.stop()


def test_a_body_too_large_for_any_network_is_refused_before_it_is_read(bridge, home):
    port = int(bridge.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /publish HTTP/1.1\r\nHost: x\r\nAPI-KEY: "
            + home.secrets["gen"].encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n{"
        )
        answer = b""
        while chunk := sock.recv(65536):  # the bridge answers and closes without reading the body
            answer += chunk
    head, _, payload = answer.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 413")
    assert json.loads(payload) == {"error": "request body too large: at most 196608 bytes"}


def test_other_methods_and_paths_get_json_errors(bridge):
    for method, path, status in (
        ("GET", "/publish", 405),
        ("PUT", "/publish", 405),
        ("OPTIONS", "/publish", 405),
        ("GET", "/nowhere", 404),
        ("POST", "/publish/x", 404),
        ("DELETE", "/healthz", 405),
    ):
        response = requests.request(method, bridge.url + path, timeout=10)
        assert response.status_code == status
        assert response.headers["Content-Type"] == "application/json"
        assert set(response.json()) == {"error"}


def test_a_path_with_repeated_slashes_is_redirected_in_json_to_a_path_of_this_bridge(bridge, home):
    """Werkzeug answers such a path with a 308 to the path with its slashes merged: its HTML body,
    and a Location naming whatever host the request's Host header said, are not the door's. (The
    admin API asks for its key first, as it does of any request.)"""
    admin = {"Authorization": f"Bearer {home.secrets['admin']}"}
    for path, merged, key in (
        ("/networks//pub/samples", "/networks/pub/samples", {}),
        ("/admin//keys", "/admin/keys", admin),
    ):
        response = requests.get(
            bridge.url + path + "?limit=1",
            headers={"Host": "elsewhere.example", **key},
            allow_redirects=False,
            timeout=10,
        )
        assert response.status_code == 308
        assert response.headers["Content-Type"] == "application/json"
        assert response.headers["Location"] == merged + "?limit=1"
        assert response.json() == {"error": f"moved: the path is {merged} (one slash between its parts)"}


def test_a_revoked_key_is_refused_within_two_seconds(bridge, home):
    gen = {"API-KEY": home.secrets["gen"]}
    assert bridge.post(body(VALID), gen).status_code == 200
    home.radio_main("keys", "revoke", "gen")
    revoked = time.monotonic()
    # Each worker re-reads the registry on its own: sample both for the whole promised window.
    answers = []
    while (sent := time.monotonic()) < revoked + 2.5:
        response = bridge.post(body(VALID), gen)
        answers.append((sent - revoked, response.status_code, response.json()))
    late = [(status, answer) for after, status, answer in answers if after >= 2.0]
    assert late
    assert set(map(str, late)) == {str((400, {"error": "API-KEY not valid"}))}


def test_a_publish_right_taken_away_is_403_once_the_edit_returns(bridge, home, everything):
    """`radio keys edit` returns once the servers have the change in force: from then on the key
    publishes nowhere it lost, and still where it kept its right."""
    gen = {"API-KEY": home.secrets["gen"]}
    assert bridge.post(body(VALID), gen).status_code == 200
    home.radio_main("keys", "edit", "gen", "--publish", "B")
    refused = bridge.post(body(VALID), gen)
    assert (refused.status_code, refused.json()) == (403, {"error": "You cannot broadcast to this channel"})
    assert bridge.post(body({"network": "B", "data": {"n": 2}}), gen).status_code == 200
    assert [json.loads(m.payload) for m in everything.expect(2)] == [VALID["data"], {"n": 2}]
    assert everything.received_so_far() == []


NAMES = ("a", "a.b", "a-b", "a_b")
"""Network names that differ only where a subject-based engine could confuse them."""


def test_networks_a_dot_dash_and_underscore_apart_are_four_networks(bridge, home, everything):
    """A key that may publish to one of them is refused (403) by the other three."""
    with home.config.open("a") as config:
        config.write("".join(f'\n[networks."{name}"]\npublic = false\n' for name in NAMES))
    secrets = {
        name: home.radio_main("keys", "add", f"w-{name}", "--publish", name).stdout.strip() for name in NAMES
    }
    codes = {
        (writer, network): bridge.post(
            body({"network": network, "data": {"by": writer}}), {"API-KEY": secrets[writer]}
        ).status_code
        for writer in NAMES
        for network in NAMES
    }
    assert codes == {(w, n): 200 if w == n else 403 for w in NAMES for n in NAMES}
    got = [(m.topic, json.loads(m.payload)) for m in everything.expect(len(NAMES))]
    assert got == [(f"networks/{name}", {"by": name}) for name in NAMES]
    assert everything.received_so_far() == []


def test_200_concurrent_posts_each_reach_the_listener_exactly_once(bridge, home, everything):
    gen = {"API-KEY": home.secrets["gen"]}

    def send(n):
        return bridge.post(body({"network": "A", "data": {"n": n}}), gen).status_code

    with ThreadPoolExecutor(max_workers=32) as pool:
        codes = list(pool.map(send, range(200)))
    assert codes == [200] * 200
    received = sorted(json.loads(m.payload)["n"] for m in everything.expect(200))
    assert received == list(range(200))
    assert everything.received_so_far() == []


def test_metrics_count_outcomes_and_time_to_puback(served, home):
    bridge = served  # two worker processes: the counts are summed over both
    gen = {"API-KEY": home.secrets["gen"]}
    for _ in range(3):
        assert bridge.post(body(VALID), gen).status_code == 200
    assert bridge.post(body(VALID), {"API-KEY": "nope"}).status_code == 400
    assert bridge.post(body({"network": "B", "data": {}}), gen).status_code == 403
    admin = {"Authorization": f"Bearer {home.secrets['admin']}"}  # /metrics names keys: not public
    text = requests.get(bridge.url + "/metrics", headers=admin, timeout=10).text
    assert 'radio_bridge_publishes_total{outcome="accepted"} 3.0' in text
    assert 'radio_bridge_publishes_total{outcome="invalid_key"} 1.0' in text
    assert 'radio_bridge_publishes_total{outcome="forbidden"} 1.0' in text
    assert "radio_bridge_puback_seconds_count 3.0" in text
    # Counted per key once the broker confirmed, before the 200 went out (Publisher.on_confirmed).
    size = len(json.dumps(VALID["data"]).encode())
    assert 'radio_key_samples_total{door="http",key="gen",network="A"} 3.0' in text
    assert f'radio_key_bytes_total{{door="http",key="gen",network="A"}} {3.0 * size}' in text


def test_broker_down_is_503_within_the_timeout_and_the_bridge_recovers_alone(home):
    first = embedded_broker(home, 0).start()
    port = first.mqtt_port
    bridge = start_bridge(home, port, "--timeout", "1")
    try:
        assert bridge.post(body(VALID), {"API-KEY": home.secrets["gen"]}).status_code == 200
        first.stop()

        started = time.monotonic()
        response = bridge.post(body(VALID), {"API-KEY": home.secrets["gen"]})
        assert time.monotonic() - started < 5
        assert response.status_code == 503
        # Refused at once (the link is known to be down), or the link dropped under the request,
        # or no PUBACK in time: each a 503 that says to retry.
        assert any(
            reason in response.json()["error"]
            for reason in ("nothing was published", "the broker link dropped", "did not confirm")
        )
        assert requests.get(bridge.url + "/healthz", timeout=10).status_code == 503

        with embedded_broker(home, port) as second:
            listener = Client("tcp", second.mqtt_port, "reader_a", home.secrets["reader_a"])
            assert listener.connect() == 0
            assert listener.subscribe("networks/A") == 0
            deadline = time.monotonic() + 15
            unconfirmed = set()  # a 503 for a sample the broker did not confirm in time: it may come
            for attempt in itertools.count():
                sample = {"network": "A", "data": {"attempt": attempt}}
                response = bridge.post(body(sample), {"API-KEY": home.secrets["gen"]})
                if response.status_code == 200:
                    break
                assert response.status_code == 503
                if "did not confirm" in response.json()["error"]:
                    unconfirmed.add(attempt)
                assert time.monotonic() < deadline, "the bridge did not reconnect"
            # The sample accepted before the outage, kept as the network's last value across the
            # restart, then the one accepted now, after none but those the broker may have taken
            # unconfirmed (on one link, in order): nothing refused at once was sent late.
            retained = listener.expect(1)[0]
            assert (json.loads(retained.payload), retained.retain) == (VALID["data"], True)
            before = []
            while (got := json.loads(listener.expect(1)[0].payload)["attempt"]) != attempt:
                before.append(got)
            assert set(before) <= unconfirmed
            assert listener.received_so_far() == []
            listener.close()
    finally:
        bridge.stop()


def test_first_start_makes_the_service_key_and_its_secret_file(tmp_path, broker):
    home = Home(tmp_path / "fresh")  # tmp_path itself holds the broker fixture's home
    home.path.mkdir()
    home.config.write_text(CONFIG)
    assert "bridge" not in read_keys(home.keys)
    running = start_bridge(home, broker.mqtt_port, healthy=False)
    try:
        secret_file = home.path / "bridge.key"
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        key = read_keys(home.keys)["bridge"]
        assert key.publish_all
        assert not key.admin
        assert key.matches(secret_file.read_text().strip())
    finally:
        running.stop()


def test_a_slow_client_does_not_stop_other_requests(bridge, home, everything):
    """One worker busy with a client that sends half a request; the other still serves."""
    port = int(bridge.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
        slow.sendall(b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        done = threading.Event()
        codes = []

        def post():
            codes.append(bridge.post(body(VALID), {"API-KEY": home.secrets["gen"]}).status_code)
            done.set()

        threading.Thread(target=post).start()
        assert done.wait(20)
    assert codes == [200]


def test_stopping_the_publisher_while_it_waits_for_connack_closes_its_socket():
    """A broker that accepts the connection and never answers: stop() must still close it cleanly.

    The half-made link must be closed by the stop too: left open, closing the loop under it would
    raise in the link's thread (``filterwarnings = error`` turns that into a failure here).
    """
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    arrived = threading.Event()

    def accept() -> None:
        conn, _ = server.accept()
        accepted.append(conn)
        conn.recv(1024)  # the CONNECT, never answered
        arrived.set()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    publisher = Publisher(Address("127.0.0.1", server.getsockname()[1]), "bridge", "secret", timeout=5)
    publisher.start()
    try:
        assert arrived.wait(10), "the publisher never sent its CONNECT"
        assert not publisher.connected
    finally:
        publisher.stop()
    accepted[0].settimeout(10)
    assert accepted[0].recv(1024) == b"", "the broker side still sees an open connection"
    for conn in (*accepted, server):
        conn.close()


@pytest.fixture
def embedded(home):
    """One broker is enough where the bridge's process handling, not the broker, is under test."""
    with running_broker("embedded", home) as running:
        yield running


def test_sigquit_stops_radio_bridge_without_waiting_for_the_kill(home, embedded):
    """gunicorn's quick stop is SIGQUIT to each worker: they must leave, not wait for SIGKILL.

    The arbiter kills workers still alive ``graceful_timeout`` (10 s) after asking; a worker that
    ignored the request would hold the stop for that long.
    """
    running = start_bridge(home, embedded.mqtt_port)
    assert running.post(body(VALID), {"API-KEY": home.secrets["gen"]}).status_code == 200
    running.process.send_signal(signal.SIGQUIT)
    try:
        _, stderr = running.process.communicate(timeout=8)
    except subprocess.TimeoutExpired:
        running.process.kill()
        running.process.communicate()
        pytest.fail("radio bridge was still running 8 s after SIGQUIT")
    assert "Traceback" not in stderr, stderr


def test_the_workers_of_a_killed_radio_bridge_stop_by_themselves(home, embedded):
    """``kill -9`` of the main process: its workers stop, rather than serve on with nobody to stop them."""
    running = start_bridge(home, embedded.mqtt_port)
    workers = psutil.Process(running.process.pid).children()
    assert len(workers) == 2
    running.process.kill()
    running.process.wait()
    gone, alive = psutil.wait_procs(workers, timeout=15)
    for worker in alive:
        worker.kill()
    assert not alive, f"{len(alive)} workers still running 15 s after their main process was killed"
    assert len(gone) == 2
    running.process.communicate(timeout=10)


@contextlib.contextmanager
def killed_if_left(running: Bridge) -> Iterator[Bridge]:
    """The bridge, killed with its workers if the test ends with it still running (a failure)."""
    try:
        yield running
    finally:
        if running.process.poll() is None:
            for worker in psutil.Process(running.process.pid).children():
                worker.kill()
            running.process.kill()
            running.process.communicate()


def _sigterm_waits_in(pid: int) -> bool:
    """Whether a SIGTERM sent to the process is pending, not yet handled (the process is stopped)."""
    status = Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines()
    pending = next(line for line in status if line.startswith("ShdPnd:"))
    return bool(int(pending.split()[1], 16) & 1 << (signal.SIGTERM - 1))


def _answer_or_end(conn: socket.socket) -> str:
    """All that came back on a connection until it ended; "reset" if it was reset with nothing."""
    conn.settimeout(10)
    received = b""
    with contextlib.suppress(ConnectionResetError, ssl.SSLError):
        while chunk := conn.recv(65536):
            received += chunk
    return received.decode() if received else "reset"


@pytest.mark.slow  # seconds of waiting: the fast tier stays under two minutes
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_every_request_the_kernel_took_before_a_stop_is_answered(home, embedded, tmp_path, scheme):
    """Requests sent before a stop and not yet read (on a new connection not yet accepted, or on a
    kept-alive one) get an answer, a 200 or a JSON 503, never a reset: their clients could not tell
    whether the sample was published. A connection made once the door has closed is refused.
    (Over HTTPS a new connection sends its request only after its handshake: a kept-alive one here.)"""
    if scheme == "https":
        use_tls(home, make_certs(tmp_path / "certs"))
    running = start_bridge(home, embedded.mqtt_port, "--workers", "1", healthy=scheme == "http")
    with killed_if_left(running):
        port = int(running.url.rsplit(":", 1)[1])
        request = (
            f"POST /publish HTTP/1.1\r\nHost: x\r\nAPI-KEY: {home.secrets['gen']}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body(VALID))}\r\n\r\n{body(VALID)}"
        ).encode()
        first = (
            http.client.HTTPSConnection(
                "localhost", port, timeout=10, context=client_context(tmp_path / "certs" / "ca.pem")
            )
            if scheme == "https"
            else http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        )
        assert until(lambda: _published(first, home.secrets["gen"]))  # once the worker's link is up
        kept = first.sock  # kept alive: the next request goes on it
        assert kept is not None
        (worker,) = psutil.Process(running.process.pid).children()
        worker.suspend()  # its event loop reads nothing: the requests wait in the kernel
        waiting: list[socket.socket] = []
        try:
            # Stopped before the SIGTERM comes: a SIGTERM pending beside the SIGSTOP is taken first.
            assert until(lambda: worker.status() == psutil.STATUS_STOPPED)
            if scheme == "http":
                waiting = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(20)]
            for conn in [kept, *waiting]:
                conn.sendall(request)
            running.process.send_signal(signal.SIGTERM)
            assert until(lambda: _sigterm_waits_in(worker.pid)), "the worker was never asked to stop"
            # Past the worker's tick (0.1 s), which it has no event for: it wakes to the stop first.
            time.sleep(0.3)
            worker.resume()
            answers = [_answer_or_end(conn) for conn in [kept, *waiting]]
        finally:
            worker.resume()
            for conn in [kept, *waiting]:
                conn.close()
        _, stderr = running.process.communicate(timeout=20)
        assert "Traceback" not in stderr, stderr
        stopping = json.dumps({"error": "the bridge is stopping: retry"})
        for answer in answers:
            assert answer.startswith("HTTP/1.1 200 OK") or (
                answer.startswith("HTTP/1.1 503 Service Unavailable") and answer.endswith(stopping)
            ), answer
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=10)


def _published(connection: http.client.HTTPConnection, secret: str) -> bool:
    """One publish on the connection, answered 200 (and read, so that the next can follow)."""
    connection.request("POST", "/publish", body(VALID), {"API-KEY": secret})
    response = connection.getresponse()
    return (response.status, response.read()) == (200, b'{"message":"OK"}\n')


def _closes_the_link_at_each_publish(server: socket.socket, done: threading.Event) -> None:
    """A broker whose store cannot be written: it accepts the link, and closes it at each sample."""
    server.settimeout(0.2)
    while not done.is_set():
        try:
            link, _ = server.accept()
        except TimeoutError:
            continue
        with link:
            link.settimeout(10)
            with contextlib.suppress(OSError):
                link.recv(65536)  # CONNECT
                link.sendall(b"\x20\x02\x00\x00")  # CONNACK, accepted
                while link.recv(65536)[:1] == b"\xc0":  # PINGREQs, until a PUBLISH
                    link.sendall(b"\xd0\x00")


@pytest.mark.slow  # seconds of waiting: the fast tier stays under two minutes
def test_a_link_lost_at_every_request_writes_a_bounded_log(home):
    """A broker that cannot store a sample closes the bridge's link at each one: the bridge's
    lines about it are summed up past 20 a minute, not written three times per request."""
    done = threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as server:
        broker = threading.Thread(target=_closes_the_link_at_each_publish, args=(server, done))
        broker.start()
        try:
            with killed_if_left(start_bridge(home, server.getsockname()[1], "--workers", "1")) as running:
                answers = [running.post(body(VALID), {"API-KEY": home.secrets["gen"]}) for _ in range(60)]
                stderr = running.stop()
        finally:
            done.set()
            broker.join()
    assert {a.status_code for a in answers} == {503}
    lines = stderr.splitlines()
    summed = [line for line in lines if "more in the last minute like: lost the broker" in line]
    assert len(summed) == 1, stderr
    assert 1 <= len([line for line in lines if "lost the broker" in line]) - len(summed) <= 20, stderr


@pytest.mark.slow  # seconds of waiting: the fast tier stays under two minutes
def test_a_stop_answers_publishes_waiting_for_an_absent_broker_at_once(home):
    """A publish waits up to the PUBACK timeout for a broker link that is down; a stop answers it
    503 at once instead of holding the stop that long (here 30 s, past gunicorn's 10 s: the worker
    was killed, the request unanswered)."""
    with socket.create_server(("127.0.0.1", 0)) as silent:  # a broker that never answers CONNECT
        running = start_bridge(
            home, silent.getsockname()[1], "--workers", "1", "--timeout", "30", healthy=False
        )
        with killed_if_left(running):
            health = running.url + "/healthz"
            assert until(lambda: requests.get(health, timeout=10).status_code == 503)  # serving, link down
            with ThreadPoolExecutor(1) as pool:
                waiting = pool.submit(running.post, body(VALID), {"API-KEY": home.secrets["gen"]})
                # Its one worker answers this once it read what came before: the publish waits by then.
                assert requests.get(health, timeout=10).status_code == 503
                began = time.monotonic()
                running.process.send_signal(signal.SIGTERM)
                _, stderr = running.process.communicate(timeout=30)
                took = time.monotonic() - began
                answer = waiting.result(timeout=30)
    assert "Traceback" not in stderr, stderr
    assert answer.status_code == 503, answer.text
    assert took < 5, f"the stop took {took:.1f} s"


async def publish_on_the_links_loop(publisher: Publisher, *, connected_first: bool = False) -> None:
    """One ``publish_async`` as ``radio bridge`` makes it: the link on the loop that awaits."""
    publisher.start(asyncio.get_running_loop())
    try:
        if connected_first:
            assert await asyncio.to_thread(publisher.wait_connected, 10)
        await publisher.publish_async("networks/A", b"{}", retain=False)
    finally:
        await asyncio.to_thread(publisher.stop)


def publish_from_a_thread(publisher: Publisher) -> None:
    """One ``publish`` as any WSGI server's request thread makes it: the link on a thread of its own."""
    publisher.start()
    try:
        assert publisher.wait_connected(10)
        publisher.publish("networks/A", b"{}", retain=False)
    finally:
        publisher.stop()


def test_publish_async_from_a_loop_other_than_the_links_is_refused_at_once():
    """The awaited path runs on the link's own loop only; any other caller uses ``publish``."""
    publisher = Publisher(Address("127.0.0.1", 1), "bridge", "secret", timeout=0.5)
    publisher.start()
    try:
        with pytest.raises(RuntimeError, match="own loop"):
            asyncio.run(publisher.publish_async("networks/A", b"{}", retain=False))
    finally:
        publisher.stop()


def test_an_awaited_publish_without_a_broker_link_is_broker_unavailable():
    """The event-loop path answers like the blocking one: after the timeout, nothing left queued."""
    server = socket.create_server(("127.0.0.1", 0))  # accepts, never answers the CONNECT
    publisher = Publisher(Address("127.0.0.1", server.getsockname()[1]), "bridge", "secret", timeout=0.5)
    try:
        with pytest.raises(BrokerUnavailable, match="nothing was published"):
            asyncio.run(publish_on_the_links_loop(publisher))
    finally:
        server.close()


@pytest.mark.slow  # seconds of waiting: the fast tier stays under two minutes
def test_with_the_broker_down_every_post_is_503_in_time_and_none_goes_out_later(home):
    """Many POSTs while the link is down: each answered 503 within the timeout, none sent once it is back.

    The barrier: once the broker is back, one more sample is accepted; anything refused before it
    and sent late would reach the listener first.
    """
    first = embedded_broker(home, 0).start()
    port = first.mqtt_port
    bridge = start_bridge(home, port, "--timeout", "1")
    try:
        first.stop()
        key = {"API-KEY": home.secrets["gen"]}
        with ThreadPoolExecutor(40) as pool:
            answers = list(pool.map(lambda _: _timed_post(bridge, key), range(40)))
        assert {status for status, _ in answers} == {503}
        assert max(seconds for _, seconds in answers) < 3, answers  # 1 s timeout, 40 at once
        with embedded_broker(home, port) as second:
            listener = Client("tcp", second.mqtt_port, "reader_a", home.secrets["reader_a"])
            assert listener.connect() == 0
            assert listener.subscribe("networks/A") == 0
            sentinel = body({"network": "A", "data": {"sentinel": True}})
            deadline = time.monotonic() + 15
            while bridge.post(sentinel, key).status_code != 200:
                assert time.monotonic() < deadline, "the bridge did not reconnect"
            assert [json.loads(m.payload) for m in listener.expect(1)] == [{"sentinel": True}]
            listener.close()
    finally:
        bridge.stop()


def _timed_post(bridge, headers: dict[str, str]) -> tuple[int, float]:
    started = time.monotonic()
    status = bridge.post(body(VALID), headers).status_code
    return status, time.monotonic() - started


def _hand_built_broker(
    then: Callable[[socket.socket], None] = lambda _conn: None,
) -> tuple[socket.socket, list[socket.socket]]:
    """A listener on a free port whose first client gets CONNACK 0, then whatever ``then`` does."""
    server = socket.create_server(("127.0.0.1", 0))
    connections: list[socket.socket] = []

    def serve() -> None:
        conn, _ = server.accept()
        connections.append(conn)
        conn.recv(1024)  # CONNECT
        conn.sendall(b"\x20\x02\x00\x00")  # CONNACK accepted
        then(conn)

    threading.Thread(target=serve, daemon=True).start()
    return server, connections


@pytest.mark.parametrize("path", ["thread", "event loop"])
def test_a_sample_the_broker_does_not_confirm_in_time_drops_the_link(path):
    """A stalled broker: the 503 comes with a reset link, so nothing more is sent to it."""
    server, connections = _hand_built_broker()  # never a PUBACK
    publisher = Publisher(Address("127.0.0.1", server.getsockname()[1]), "bridge", "secret", timeout=0.5)
    try:
        if path == "thread":
            publish = publish_from_a_thread
        else:
            publish = lambda p: asyncio.run(publish_on_the_links_loop(p, connected_first=True))  # noqa: E731
        with pytest.raises(BrokerUnavailable, match="did not confirm"):
            publish(publisher)
        assert _how_it_ends(connections[0]) == "reset"
    finally:
        for conn in (*connections, server):
            conn.close()


def test_on_the_links_own_loop_pubacks_in_any_split_answer_and_the_rest_expire():
    """radio bridge's path: PUBACKs however the reads cut them, between other packets, answer
    their samples; a sample never acknowledged fails on its deadline and resets the link."""

    def broker(conn: socket.socket) -> None:
        received = b""
        while received.count(b"networks/A") < 4:  # the four PUBLISHes, packet ids 1 to 4
            received += conn.recv(65536)
        # PUBACK 1, a PINGRESP, PUBACK 2 cut in two reads, PUBACK 4; never a PUBACK for 3.
        conn.sendall(b"\x40\x02\x00\x01\xd0\x00\x40\x02\x00")
        time.sleep(0.05)  # lets the link read the first part on its own (either way it must work)
        conn.sendall(b"\x02\x40\x02\x00\x04")

    server, connections = _hand_built_broker(broker)

    async def four_samples() -> list[BaseException | None]:
        publisher = Publisher(Address("127.0.0.1", server.getsockname()[1]), "bridge", "secret", timeout=1)
        publisher.start(asyncio.get_running_loop())
        try:
            return await asyncio.gather(
                *(publisher.publish_async("networks/A", b"{}", retain=False) for _ in range(4)),
                return_exceptions=True,
            )
        finally:
            await asyncio.to_thread(publisher.stop)

    try:
        outcomes = asyncio.run(four_samples())
        assert [type(outcome).__name__ for outcome in outcomes] == [
            "NoneType",
            "NoneType",
            "BrokerUnavailable",
            "NoneType",
        ]
        assert "did not confirm" in str(outcomes[2])
        assert _how_it_ends(connections[0]) == "reset"
    finally:
        for conn in (*connections, server):
            conn.close()


def test_a_sample_is_either_counted_and_answered_200_or_answered_503_never_both():
    """A request thread that times out and a PUBACK read at the same moment: whichever comes
    first decides, and the other side sees it (the thread path: any WSGI server, the test client)."""
    publisher = Publisher(Address("127.0.0.1", 1), "bridge", "secret")
    counted: list[object] = []
    publisher.on_confirmed = counted.extend

    gave_up: Future[None] = Future()  # the thread timed out first, as publish() does on its timeout
    publisher._waiting[1] = (gave_up, "answered 503")
    assert gave_up.cancel()
    publisher._acknowledged(1)
    publisher._report_confirmed()
    assert counted == []

    confirmed: Future[None] = Future()  # the PUBACK is being handled when the thread times out
    publisher._waiting[2] = (confirmed, "answered 200")
    publisher._acknowledged(2)
    assert not confirmed.cancel()  # too late to give up: publish() then takes the result
    assert not confirmed.done()  # and it waits until the sample is counted
    publisher._report_confirmed()
    assert confirmed.result(0) is None
    assert counted == ["answered 200"]


def test_samples_handed_over_as_the_broker_closes_the_link_are_not_written_to_it():
    """uvloop refuses a write on a closed transport: the flush of what was handed over just before
    must leave it be (its samples are answered 503 with the link's loss), not raise on the loop."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    async def flush_after_close() -> None:
        publisher = Publisher(Address("127.0.0.1", port), "bridge", "secret")
        loop = asyncio.get_running_loop()
        link = publisher.broker_connection
        transport, connection = await loop.create_connection(link.new_connection, "127.0.0.1", port)
        link.connection = connection
        transport.close()  # as when the broker closed it: the link is gone, its loss not yet handled
        await connection.closed
        publisher._outgoing.append(wire.publish(b"networks/A", b"{}", 1, 1))
        publisher._flush()

    try:
        uvloop.run(flush_after_close())
    finally:
        server.close()


def _how_it_ends(conn: socket.socket) -> str:
    """Read until the peer closes (FIN: "closed") or resets ("reset") the connection."""
    conn.settimeout(10)
    try:
        while conn.recv(65536):  # the PUBLISH, then the end
            pass
    except ConnectionResetError:
        return "reset"
    return "closed"


def test_a_lost_secret_file_gives_the_service_key_a_new_secret(home):
    """The way back the refusal to rotate a service key names: delete its file and restart."""
    settings = load_settings(home.config)
    _, first = bridge_credentials(settings)
    (home.path / "bridge.key").unlink()
    _, second = bridge_credentials(settings)
    key = read_keys(home.keys)["bridge"]
    assert second != first
    assert key.matches(second)
    assert key.publish_all


@pytest.mark.slow  # seconds of waiting: the fast tier stays under two minutes
def test_a_broker_that_cannot_be_reached_is_said_once_per_outage(monkeypatch, caplog):
    """A bridge whose broker cannot be reached (started first, or a wrong --broker) answers 503 and
    says why in its log: once, however many rounds of attempts fail."""
    monkeypatch.setattr(broker_connection, "RECONNECT_DELAY", 0.01)
    caplog.set_level(logging.WARNING, logger="radio.bridge")
    port = unused_port()
    link = BrokerConnection(
        [Address("127.0.0.1", port)],
        "bridge",
        "secret",
        tls=None,
        on_acknowledged=print,
        on_lost=lambda: None,
    )
    attempts = []
    session = link._session

    async def counted(loop, lost):
        attempts.append(1)
        await session(loop, lost)

    link._session = counted
    link.start()
    try:
        assert until(lambda: len(attempts) >= 3)
    finally:
        link.stop()
    said = [r.getMessage() for r in caplog.records if "cannot reach" in r.getMessage()]
    assert said == [
        f"cannot reach the broker at 127.0.0.1:{port} (Connection refused); retrying, answering 503 meanwhile"
    ]
