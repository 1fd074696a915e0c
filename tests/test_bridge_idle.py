"""Sockets that send no request: closed when idle, bounded per source address, counted in /metrics.

A worker of `radio bridge` (one, so that the per-worker bound is exact), abused from 127.0.0.1
while well-behaved clients come from other loopback addresses.
"""

from __future__ import annotations

import re
import signal
import socket
from urllib.parse import urlsplit

import psutil
import pytest
import requests
from conftest import start_bridge
from test_tls import make_certs, use_tls

LIMITS = "\n[bridge]\nidle_timeout = 1.5\nkeep_alive = 1\nmax_idle_per_source = 5\n"
WAIT = 20.0
"""Seconds a test waits for the server to close a socket before it fails."""


@pytest.fixture
def bridge(home, broker):
    home.config.write_text(home.config.read_text() + LIMITS)
    running = start_bridge(home, broker.mqtt_port, "--workers", "1")
    yield running
    stderr = running.stop()
    assert "Traceback" not in stderr, stderr


def address(bridge) -> tuple[str, int]:
    parts = urlsplit(bridge.url)
    return str(parts.hostname), int(parts.port or 80)


def connect(bridge, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(address(bridge), timeout=WAIT, source_address=(source, 0))
    sock.settimeout(WAIT)
    return sock


def closed_by_server(sock: socket.socket) -> bytes:
    """Everything the server sent until it closed the connection (a reset counts as a close)."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server kept the socket open {WAIT:g} s; it sent {received[:200]!r}")
    finally:
        sock.close()
    return received


def get(sock: socket.socket, path: str) -> bytes:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: radio\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(65536)
        assert chunk, f"closed before answering: {head!r}"
        head += chunk
    return head


@pytest.mark.slow
def test_silent_sockets_are_bounded_per_source_and_closed_when_idle(bridge):
    silent = [connect(bridge) for _ in range(5)]
    # Served in the order the kernel queued them: these five are the source's share.
    first = connect(bridge, "127.0.0.2")
    assert get(first, "/healthz").startswith(b"HTTP/1.1 200")
    first.close()

    # The sixth from the same address is closed at once, without an answer (it asked nothing).
    assert closed_by_server(connect(bridge)) == b""
    # Another address is served meanwhile.
    other = connect(bridge, "127.0.0.2")
    assert get(other, "/healthz").startswith(b"HTTP/1.1 200")
    other.close()

    # Those that never sent a byte are closed after idle_timeout, without an answer.
    for sock in silent:
        assert closed_by_server(sock) == b""


@pytest.fixture
def https_bridge(home, broker, tmp_path):
    certs = make_certs(tmp_path / "certs")
    use_tls(home, certs)
    home.config.write_text(home.config.read_text() + LIMITS)
    running = start_bridge(home, broker.mqtt_port, "--workers", "1", healthy=False)
    yield running, certs / "ca.pem"
    stderr = running.stop()
    assert "Traceback" not in stderr, stderr


@pytest.mark.slow
def test_silent_sockets_on_the_https_door_are_bounded_per_source_from_their_accept(https_bridge):
    """A socket that never begins its TLS handshake waits as one that never sends its request:
    counted against the source's bound from its accept, and closed after idle_timeout. Uncounted
    until its handshake, one address could hold such sockets by the thousand, 60 s each."""
    bridge, ca = https_bridge
    silent = [connect(bridge) for _ in range(5)]
    # An HTTPS request from another address is served: by then the five are counted.
    answer = requests.get(bridge.url.replace("127.0.0.1", "localhost") + "/healthz", timeout=WAIT, verify=ca)
    assert answer.status_code in {200, 503}  # answered; 503 while its broker link comes up

    # The sixth from the same address, silent, is closed within the grace, unanswered.
    assert closed_by_server(connect(bridge)) == b""
    # The five are closed after idle_timeout, as plain ones are.
    for sock in silent:
        assert closed_by_server(sock) == b""


def test_a_burst_of_requests_from_a_source_at_its_bound_is_answered_whole(bridge):
    silent = [connect(bridge) for _ in range(5)]  # the source's share of waiting sockets, held
    served = connect(bridge, "127.0.0.2")
    assert get(served, "/healthz").startswith(b"HTTP/1.1 200")  # the five are counted by now
    served.close()

    # The worker is held while ten clients of the same source connect and send their request:
    # when it accepts them, each has asked already, so none is a socket that asks nothing.
    (worker,) = psutil.Process(bridge.process.pid).children()
    worker.send_signal(signal.SIGSTOP)
    try:
        burst = [connect(bridge) for _ in range(10)]
        for sock in burst:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: radio\r\nConnection: close\r\n\r\n")
    finally:
        worker.send_signal(signal.SIGCONT)
    for sock in burst:
        assert closed_by_server(sock).startswith(b"HTTP/1.1 200")

    # A new socket of the source that has asked nothing is still closed at once, unanswered.
    assert closed_by_server(connect(bridge)) == b""
    for sock in silent:
        sock.close()


@pytest.mark.slow
def test_a_request_whose_headers_never_end_is_408_json_after_the_idle_timeout(bridge):
    slow = connect(bridge, "127.0.0.3")
    slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: radio\r\nX-Slow: ")
    answer = closed_by_server(slow)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b'{"error": "request headers not received within 1.5 s"}' in answer


@pytest.mark.slow
def test_a_kept_alive_connection_is_closed_after_keep_alive_and_all_of_it_is_counted(bridge, home):
    kept = connect(bridge, "127.0.0.4")
    assert get(kept, "/healthz").startswith(b"HTTP/1.1 200")
    assert b"HTTP/1.1" not in closed_by_server(kept)  # closed, idle, after keep_alive

    crowd = [connect(bridge, "127.0.0.5") for _ in range(6)]  # one past the bound
    admin = {"Authorization": f"Bearer {home.secrets['admin']}"}  # /metrics names keys: not public
    while_waiting = requests.get(bridge.url + "/metrics", headers=admin, timeout=10).text
    for sock in crowd:
        assert closed_by_server(sock) == b""  # the sixth at once, the others after idle_timeout
    metrics = requests.get(bridge.url + "/metrics", headers=admin, timeout=10).text

    def value(series: str, metrics: str = metrics) -> float:
        found = re.search(rf"^{re.escape(series)} (\S+)$", metrics, re.MULTILINE)
        assert found, f"{series} is not in /metrics"
        return float(found[1])

    assert value('radio_bridge_connections_closed_total{reason="source_limit"}') >= 1
    assert value('radio_bridge_connections_closed_total{reason="idle_timeout"}') >= 1
    assert value('radio_bridge_limit{setting="max_idle_per_source"}') == 5
    assert value('radio_bridge_limit{setting="idle_timeout"}') == 1.5
    assert value('radio_bridge_limit{setting="keep_alive"}') == 1
    assert value('radio_bridge_limit{setting="history_page_bytes"}') == 4 * 1024 * 1024
    assert value('radio_bridge_limit{setting="history_threads"}') == 2
    assert value("radio_bridge_waiting_connections", while_waiting) >= 5  # 127.0.0.5's five
    assert value("radio_bridge_waiting_connections") == 0


@pytest.mark.parametrize(
    ("table", "setting", "value"),
    [
        ("bridge", "idle_timeout", "0"),
        ("bridge", "keep_alive", '"5"'),
        ("bridge", "max_idle_per_source", "0"),
        ("bridge", "max_idle_per_source", "2.5"),
        ("bridge", "history_threads", "0"),
        ("bridge", "history_page_bytes", "1024"),
        ("broker", "recorder_max_queued", "0"),
        ("broker", "recorder_max_queued_bytes", "true"),
    ],
)
def test_each_new_limit_is_checked_when_the_configuration_is_read(home, table, setting, value):
    home.config.write_text(f"[{table}]\n{setting} = {value}\n\n" + home.config.read_text())
    result = home.radio_main("keys", "list", check=False)
    assert result.returncode == 2
    assert f"[{table}] {setting} must be" in result.stderr
