"""The HTTP door against slow clients, numbers JSON cannot carry, and bad ``radio bridge`` options.

Slow clients are tested against ``radio bridge`` itself (its own process, real sockets) with one
worker: on a server where a half-sent request holds a worker, the normal POST would wait for it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
from typing import Any

import pytest
import requests
from bridge_client import InProcessBridge, serve_in_thread
from conftest import start_bridge
from polling import until

from radio.bridge.app import create_asgi_app
from radio.bridge.asgi import INLINE, TO_A_THREAD, BufferedWSGI

NOT_JSON = {"error": "POST data is not JSON"}


@pytest.fixture
def bridge(home, broker):
    running = InProcessBridge(str(home.config), broker.mqtt_port, body_timeout=0.5)
    yield running
    running.stop()


def envelope(data: str, extra: str = "") -> str:
    return '{"network": "A", ' + extra + '"data": ' + data + "}"


@pytest.mark.parametrize(
    "payload",
    [
        envelope('{"x": 1e999999}'),
        envelope('{"x": -1e400}'),
        envelope('{"x": [1.5, 2e308]}'),
        envelope("{}", '"extra": 1e999, '),
        envelope('{"x": NaN}'),
        envelope('{"x": Infinity}'),
        envelope('{"x": -Infinity}'),
        envelope('{"x": ' + "9" * 4301 + "}"),
        envelope('{"x": ' + "[" * 5000 + "]" * 5000 + "}"),
        envelope('{"x": ' + '{"y": ' * 5000 + "1" + "}" * 5000 + "}"),
        envelope('{"x": "\\ud800"}'),
        envelope('{"x": "\\udc00 and \\ud83d"}'),
        envelope('{"\\ud800": 1}'),
    ],
    ids=[
        "1e999999",
        "-1e400",
        "2e308-in-a-list",
        "infinite-outside-data",
        "NaN",
        "Infinity",
        "-Infinity",
        "4301-digits",
        "5000-deep-lists",
        "5000-deep-objects",
        "lone-high-surrogate",
        "lone-low-surrogates",
        "surrogate-key",
    ],
)
def test_what_json_cannot_carry_is_refused_as_not_json_and_publishes_nothing(
    bridge, home, everything, payload
):
    response = bridge.post(payload.encode("utf-8"), {"API-KEY": home.secrets["gen"]})
    assert (response.status_code, response.json()) == (400, NOT_JSON)
    marker = {"network": "A", "data": {"marker": 1}}
    assert bridge.post(json.dumps(marker), {"API-KEY": home.secrets["gen"]}).status_code == 200
    assert [json.loads(m.payload) for m in everything.expect(1)] == [marker["data"]]


def test_invalid_utf8_is_not_json(bridge, home):
    response = bridge.post(envelope('{"x": "\xff"}').encode("latin-1"), {"API-KEY": home.secrets["gen"]})
    assert (response.status_code, response.json()) == (400, NOT_JSON)


def test_large_finite_numbers_and_real_characters_go_through_as_valid_json(bridge, home, everything):
    data = '{"big": 1.7e308, "small": -1e-320, "digits": ' + "9" * 4300 + ', "smile": "\\ud83d\\ude00"}'
    response = bridge.post(envelope(data), {"API-KEY": home.secrets["gen"]})
    assert response.status_code == 200
    payload = everything.expect(1)[0].payload
    published = json.loads(payload, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
    assert published == json.loads(data)
    assert published["smile"] == "\N{GRINNING FACE}"
    payload.decode("utf-8")  # RFC 8259: JSON text is UTF-8


def read_answer(sock: socket.socket) -> tuple[str, dict[str, object]]:
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    head, _, payload = answer.decode().partition("\r\n\r\n")
    return head, json.loads(payload)


def stalled_body(port: int, secret: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(
        b"POST /publish HTTP/1.1\r\nHost: x\r\nAPI-KEY: "
        + secret.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    )
    return sock


def test_a_body_that_stalls_is_answered_408_json_after_the_body_timeout_in_process(bridge, home):
    port = int(bridge.url.rsplit(":", 1)[1])
    with stalled_body(port, home.secrets["gen"]) as sock:
        head, answer = read_answer(sock)
    assert head.startswith("HTTP/1.1 408")
    assert "application/json" in head
    assert answer == {"error": "request body not received within 0.5 s"}


@pytest.mark.slow  # seconds of waiting: the fast tier stays under two minutes
def test_slow_and_stalled_clients_cost_radio_bridge_no_worker(home, broker, everything):
    """One worker; 50 clients trickling headers and 5 stalling mid-body; a normal POST still gets 200."""
    running = start_bridge(home, broker.mqtt_port, "--workers", "1", "--body-timeout", "3")
    port = int(running.url.rsplit(":", 1)[1])
    slow = []
    try:
        for n in range(50):
            sock = socket.create_connection(("127.0.0.1", port), timeout=60)
            sock.sendall(b"POST /publish HTTP/1.1\r\nHost: x\r\nX-Slow: %d\r\n" % n)
            slow.append(sock)
        stalled = [stalled_body(port, home.secrets["gen"]) for _ in range(5)]
        slow += stalled

        response = running.post(
            json.dumps({"network": "A", "data": {"n": 1}}), {"API-KEY": home.secrets["gen"]}
        )
        assert (response.status_code, response.json()) == (200, {"message": "OK"})
        assert json.loads(everything.expect(1)[0].payload) == {"n": 1}
        for sock in slow[:50]:
            sock.sendall(b"X-Still: open\r\n")  # the slow ones are still connected, still unanswered

        for sock in stalled:
            head, answer = read_answer(sock)
            assert head.startswith("HTTP/1.1 408")
            assert answer == {"error": "request body not received within 3 s"}
    finally:
        for sock in slow:
            sock.close()
        stderr = running.stop()
    assert "Traceback" not in stderr, stderr


SMALL_SOFT_LIMIT = 256
"""A soft limit on open files below what the waiting connections of a few sources hold."""


@pytest.mark.skipif(
    resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 4 * SMALL_SOFT_LIMIT,
    reason="a hard limit too low to raise to",
)
def test_a_bridge_started_under_a_low_open_files_limit_raises_it(home, broker, everything):
    """`radio bridge` started under a soft limit on open files (systemd's and a shell's default is
    1,024) raises it to the hard one: connections from a few sources, each within its own cap of
    waiting connections, holding more than that soft limit leave another client a way in."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    command = [sys.executable, "-m", "radio", "bridge", "--config", str(home.config), "--workers", "1"]
    process = subprocess.Popen(
        [*command, "--listen", "127.0.0.1:0", "--broker", f"mqtt://127.0.0.1:{broker.mqtt_port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=functools.partial(  # noqa: PLW1509 - the child's own limit, set before it runs Python
            resource.setrlimit, resource.RLIMIT_NOFILE, (SMALL_SOFT_LIMIT, hard)
        ),
    )
    waiting: list[socket.socket] = []
    try:
        assert process.stdout is not None
        url = next(
            m[1]
            for line in process.stdout
            if (m := re.search(r"POST (http://127\.0\.0\.1:\d+)/publish", line))
        )
        port = int(url.rsplit(":", 1)[1])
        for source in range(2, 7):  # 5 sources x 60 waiting connections, each source under its cap of 64
            for _ in range(60):
                sock = socket.create_connection(
                    ("127.0.0.1", port), timeout=10, source_address=(f"127.0.0.{source}", 0)
                )
                waiting.append(sock)
                sock.sendall(b"POST /publish HTTP/1.1\r\nHost: x\r\n")  # the rest never comes
        answer = requests.post(
            url + "/publish",
            json={"network": "A", "data": {"n": 1}},
            headers={"API-KEY": home.secrets["gen"]},
            timeout=10,
        )
        assert (answer.status_code, answer.json()) == (200, {"message": "OK"})
        assert json.loads(everything.expect(1)[0].payload) == {"n": 1}
    finally:
        for sock in waiting:
            sock.close()
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    assert "Traceback" not in stderr, stderr


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--workers", "0"),
        ("--workers", "-1"),
        ("--workers", "many"),
        ("--threads", "0"),
        ("--timeout", "-1"),
        ("--timeout", "0"),
        ("--timeout", "nan"),
        ("--timeout", "inf"),
        ("--body-timeout", "0"),
        ("--body-timeout", "-5"),
    ],
)
def test_out_of_range_options_are_refused_with_exit_status_2(home, option, value):
    result = subprocess.run(
        [sys.executable, "-m", "radio", "bridge", "--config", str(home.config), f"{option}={value}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()  # one line, as every command's refusals
    assert line.startswith(f"radio bridge: argument {option}: '{value}' is not")


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("0", "the integer 0"),
        ("-1", "the integer -1"),
        ("nan", "the number nan"),
        ('"10"', "the string '10'"),
        ("100000", "the integer 100000"),
    ],
)
def test_a_bad_bridge_body_timeout_in_the_configuration_is_one_line_and_exit_status_2(home, value, shown):
    home.config.write_text(home.config.read_text() + f"\n[bridge]\nbody_timeout = {value}\n")
    result = subprocess.run(
        [sys.executable, "-m", "radio", "bridge", "--config", str(home.config), "--listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"radio: {home.config}: [bridge] body_timeout must be a number from 0.1 to 3600, not {shown}"
    ]


@pytest.mark.parametrize("size", [0, 100, 200, 20_000, 60_000])
def test_samples_of_every_length_class_reach_listeners_byte_for_byte(bridge, home, everything, size):
    """The bridge frames its own MQTT packets: 1-, 2- and 3-byte remaining lengths."""
    data = {"blob": "x" * size}
    response = bridge.post(json.dumps({"network": "A", "data": data}), {"API-KEY": home.secrets["gen"]})
    assert response.status_code == 200
    got = everything.expect(1)[0]
    assert (got.topic, got.payload) == ("networks/A", json.dumps(data).encode())


def test_endless_headers_are_answered_431_and_cost_no_more_memory(home, broker, everything):
    """httptools keeps a header until it ends: past 64 KiB of request head, 431 and the door shuts."""
    running = start_bridge(home, broker.mqtt_port, "--workers", "1")
    port = int(running.url.rsplit(":", 1)[1])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"POST /publish HTTP/1.1\r\nHost: x\r\nX-Big: ")
            with contextlib.suppress(ConnectionError):  # closed while still sending: that is the point
                for _ in range(64):
                    sock.sendall(b"a" * 16384)
            head, answer = read_answer(sock)
        assert head.startswith("HTTP/1.1 431")
        assert answer == {"error": "request line and headers over 65536 bytes"}
        # A head over the limit that comes whole, in the read that begins it, is refused too.
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(
                b"POST /publish HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n"
                b"Content-Length: 2\r\n\r\n{}"
            )
            head, answer = read_answer(sock)
        assert head.startswith("HTTP/1.1 431")
        assert answer == {"error": "request line and headers over 65536 bytes"}
        # A long but bounded head still works, and so does everyone else.
        response = running.post(
            json.dumps({"network": "A", "data": {"n": 2}}),
            {"API-KEY": home.secrets["gen"], "X-Long": "b" * 30_000},
        )
        assert (response.status_code, response.json()) == (200, {"message": "OK"})
        assert json.loads(everything.expect(1)[0].payload) == {"n": 2}
    finally:
        stderr = running.stop()
    assert "Traceback" not in stderr, stderr


NOT_HTTP = [
    b"GARBAGE / HTTP/1.1\r\n\x00\x01\r\n\r\n",
    b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"POST /publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n",
    b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}x",
]


def test_a_request_that_is_not_http_is_answered_json_and_costs_no_log_line(home, broker, everything):
    """Every error of the door is JSON, and no client can make the bridge log a line per request."""
    running = start_bridge(home, broker.mqtt_port, "--workers", "1")
    port = int(running.url.rsplit(":", 1)[1])
    upgrade = b"GET /publish HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    try:
        for request in NOT_HTTP * 5:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.sendall(request)
                head, answer = read_answer(sock)
            assert head.startswith("HTTP/1.1 400"), request
            assert answer == {"error": "the request is not valid HTTP/1.1"}
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.sendall(upgrade)
                assert sock.recv(65536).startswith(b"HTTP/1.1 ")
        response = running.post(
            json.dumps({"network": "A", "data": {"n": 4}}), {"API-KEY": home.secrets["gen"]}
        )
        assert (response.status_code, response.json()) == (200, {"message": "OK"})
        assert json.loads(everything.expect(1)[0].payload) == {"n": 4}
    finally:
        stderr = running.stop()
    assert "Invalid HTTP request" not in stderr, stderr
    assert "Unsupported upgrade" not in stderr, stderr
    assert "Traceback" not in stderr, stderr


def test_a_stop_answers_a_half_sent_body_at_once_instead_of_waiting_for_it(home, broker, everything):
    """Ctrl-C with a client stalled mid-body: 503 for it now, not a stop held for body_timeout (10 s)."""
    running = start_bridge(home, broker.mqtt_port, "--workers", "1")
    port = int(running.url.rsplit(":", 1)[1])
    with stalled_body(port, home.secrets["gen"]) as sock:
        # One worker, one event loop: by the time this POST is answered, the stalled head was read.
        response = running.post(
            json.dumps({"network": "A", "data": {"n": 3}}), {"API-KEY": home.secrets["gen"]}
        )
        assert response.status_code == 200
        stderr = running.stop(timeout=6)
        head, answer = read_answer(sock)
    assert head.startswith("HTTP/1.1 503")
    assert answer == {"error": "the bridge is stopping: retry"}
    assert "Traceback" not in stderr, stderr


def test_small_publishes_run_on_the_event_loop_and_everything_else_in_the_pool(home):
    """A small publish is not handed to a thread and back; a large one, another route, or a request
    the app finds it would wait for, are."""
    assert create_asgi_app({"RADIO_CONFIG": str(home.config)}).inline == {"/publish"}
    ran_in: dict[str, list[tuple[threading.Thread, bytes]]] = {}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = environ["wsgi.input"].read()
        ran_in.setdefault(environ["QUERY_STRING"], []).append((threading.current_thread(), body))
        if environ.get(INLINE) and environ["QUERY_STRING"] == "would-wait":
            environ[TO_A_THREAD] = True
            return []
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok " + body[:2]]

    asgi = BufferedWSGI(
        app, body_timeout=1.0, body_limit=lambda: 1 << 20, threads=2, inline=("/publish",), inline_body=100
    )
    server, thread, url = serve_in_thread(asgi)
    try:
        for name, path, data in (
            ("small", "/publish", b"{}"),
            ("other-route", "/healthz", b"{}"),
            ("not-a-prefix", "/publish/x", b"{}"),
            ("large", "/publish", b"[]" + b" " * 100),
            ("would-wait", "/publish", b"{}"),
        ):
            answer = requests.post(f"{url}{path}?{name}", data=data, timeout=5)
            assert answer.content == b"ok " + data[:2], name
    finally:
        server.stop()
        thread.join(10)
    assert [t for t, _ in ran_in["small"]] == [thread]  # the server's own thread: its event loop
    for name in ("other-route", "not-a-prefix", "large"):
        assert [t.name[:12] for t, _ in ran_in[name]] == ["radio-bridge"], name
    # Run inline first, then again in a thread, from the start: the body is there both times.
    (first, body), (second, again) = ran_in["would-wait"]
    assert first is thread
    assert second.name.startswith("radio-bridge")
    assert body == again == b"{}"


def test_one_source_has_at_most_the_history_pool_s_width_of_history_requests_in_hand(home):
    """History answers wait for their pool in turn; one address asking hundreds at once kept every
    other reader waiting behind them (15 s for 400). Past the pool's width, its next are 429."""
    release, entered = threading.Event(), []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        entered.append(environ["REMOTE_ADDR"])
        release.wait(10)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"page"]

    asgi = BufferedWSGI(
        app, body_timeout=1.0, body_limit=lambda: 1 << 20, threads=2, bulky=lambda _: True, bulky_threads=2
    )
    server, thread, url = serve_in_thread(asgi)
    port = int(url.rsplit(":", 1)[1])

    def ask(source: str) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
        sock.sendall(b"GET /networks/pub/samples HTTP/1.1\r\nHost: x\r\n\r\n")
        return sock

    asked: list[socket.socket] = []
    try:
        asked += [ask("127.0.0.1"), ask("127.0.0.1")]
        assert until(lambda: len(entered) == 2)  # both being answered
        with ask("127.0.0.1") as third:
            answer = third.recv(4096)
        assert answer.startswith(b"HTTP/1.1 429 ")
        assert b"retry-after: 1\r\n" in answer.lower()
        assert b'{"error": "2 history requests from this address are being answered' in answer
        asked.append(ask("127.0.0.2"))  # another address waits its turn, as before
        release.set()
        for sock in asked:
            assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
        assert entered[2:] == ["127.0.0.2"]
        with ask("127.0.0.1") as again:  # answered: the address's places are given back
            assert again.recv(4096).startswith(b"HTTP/1.1 200 ")
    finally:
        release.set()
        for sock in asked:
            sock.close()
        server.stop()
        thread.join(10)
