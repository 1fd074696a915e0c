"""`radio health`: what the container's HEALTHCHECK runs, against a real bridge, with and without TLS."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
import requests
from conftest import Home, start_bridge
from polling import eventually
from test_tls import make_certs, use_tls

UNHEALTHY = 1
"""Docker and podman read exit 1 as unhealthy; 2 is reserved."""


def health(home: Home, *args: str) -> subprocess.CompletedProcess[str]:
    # A busy test machine may take longer than the 4 s a container's check allows.
    return subprocess.run(
        [sys.executable, "-m", "radio", "health", "--config", str(home.config), "--timeout", "30", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def port_of(url: str) -> str:
    return url.rsplit(":", 1)[1]


def once_linked(home: Home, address: str) -> subprocess.CompletedProcess[str]:
    """The check, once a bridge just started has reached its broker (503 until then), 20 s at most."""

    def linked() -> subprocess.CompletedProcess[str] | None:
        done = health(home, "--http", address)
        return None if "answered 503" in done.stderr else done

    return eventually(linked, within=20, every=0.1) or health(home, "--http", address)


def test_a_bridge_linked_to_its_broker_is_healthy_on_the_address_radio_up_was_given(home, bridge):
    # `radio up --http 0.0.0.0:PORT` binds every interface: the check reaches it on loopback.
    done = health(home, "--http", f"0.0.0.0:{port_of(bridge.url)}")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"healthy: http://127.0.0.1:{port_of(bridge.url)}/healthz answered 200\n"


def test_the_configured_listen_address_is_checked_by_default(home, bridge):
    home.config.write_text(
        home.config.read_text() + f'\n[bridge]\nlisten = "0.0.0.0:{port_of(bridge.url)}"\n'
    )
    done = health(home)
    assert done.returncode == 0, done.stderr
    assert f"http://127.0.0.1:{port_of(bridge.url)}/healthz" in done.stdout


def test_no_bridge_is_unhealthy_in_one_line(home, bridge):
    port = port_of(bridge.url)
    bridge.stop()
    done = health(home, "--http", f"127.0.0.1:{port}")
    assert done.returncode == UNHEALTHY
    assert done.stderr == f"radio health: http://127.0.0.1:{port}/healthz: no answer: Connection refused\n"
    assert done.stdout == ""


def test_a_configuration_leaving_the_bridges_port_to_the_system_is_said_so(home):
    """Port 0 is no port a bridge listens on: said so, rather than "Connection refused"."""
    home.config.write_text(home.config.read_text() + '\n[bridge]\nlisten = "127.0.0.1:0"\n')
    done = health(home)
    assert done.returncode == UNHEALTHY
    assert done.stderr == (
        f"radio health: http://127.0.0.1:0/healthz: {home.config} leaves [bridge] listen's port to the "
        "system; give --http HOST:PORT\n"
    )


def test_a_bridge_without_its_broker_is_unhealthy(home):
    with socket.socket() as spare:  # a port nothing listens on
        spare.bind(("127.0.0.1", 0))
        broker_port = spare.getsockname()[1]
    bridge = start_bridge(home, broker_port, healthy=False)
    try:
        done = health(home, "--http", f"127.0.0.1:{port_of(bridge.url)}")
    finally:
        bridge.stop()
    assert done.returncode == UNHEALTHY
    assert "/healthz answered 503: " in done.stderr
    assert "the broker is unreachable" in done.stderr


def test_a_configuration_it_cannot_read_is_unhealthy_not_exit_2(home):
    home.config.write_text("[bridge]\nlisten = 5000\n")
    done = health(home)
    assert done.returncode == UNHEALTHY
    assert done.stderr.startswith("radio health: ")
    assert done.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "arguments", [("--timeout", "0"), ("--http", "nonsense"), ("--timout", "3"), ("extra",)]
)
def test_an_option_it_refuses_is_unhealthy_not_exit_2(home, arguments):
    # A HEALTHCHECK with a mistyped option fails every check: 1, the status it reads as unhealthy.
    done = health(home, *arguments)
    assert done.returncode == UNHEALTHY
    assert done.stderr.startswith("radio health: ")
    assert done.stderr.count("\n") == 1


@pytest.mark.slow  # seconds of waiting: the fast tier stays under two minutes
def test_under_tls_the_check_speaks_https_verified_against_the_configured_certificate(home, broker, tmp_path):
    # A certificate for a public name only, as an ACME client gives: the check reaches it on
    # loopback all the same, with no CA file, since it trusts the configured certificate itself.
    certs = make_certs(tmp_path / "certs", "radio.example.com")
    use_tls(home, certs)
    # One worker: once it has answered, every worker has loaded the configured certificate. A
    # second worker still starting when the files are replaced below would load the new pair
    # and rightly present it.
    bridge = start_bridge(home, broker.mqtt_port, "--workers", "1", healthy=False)
    try:
        assert bridge.url.startswith("https://")
        port = port_of(bridge.url)
        done = once_linked(home, f"0.0.0.0:{port}")
        assert (done.returncode, done.stderr) == (0, "")
        assert done.stdout == f"healthy: https://127.0.0.1:{port}/healthz answered 200\n"

        # The same files as another, unrelated certificate: the server no longer presents the
        # configured one (renewed on disk, the platform not restarted), so it is not healthy.
        other = make_certs(tmp_path / "other")
        (certs / "server.pem").write_bytes((other / "server.pem").read_bytes())
        (certs / "server.key").write_bytes((other / "server.key").read_bytes())
        refused = health(home, "--http", f"127.0.0.1:{port}")
    finally:
        bridge.stop(timeout=8)
    assert refused.returncode == UNHEALTHY
    assert refused.stderr.startswith(
        f"radio health: https://127.0.0.1:{port}/healthz: the server's certificate"
    )
    assert "restart the platform" in refused.stderr


@pytest.mark.slow  # seconds of waiting: the fast tier stays under two minutes
def test_plain_http_to_a_tls_bridge_is_not_mistaken_for_healthy(home, broker, tmp_path):
    certs = make_certs(tmp_path / "certs")
    use_tls(home, certs)
    bridge = start_bridge(home, broker.mqtt_port, healthy=False)
    try:
        assert once_linked(home, f"127.0.0.1:{port_of(bridge.url)}").returncode == 0
        # Without [tls] the check speaks plain HTTP: the HTTPS bridge does not answer it with 200.
        plain = Home(tmp_path / "plain")
        plain.path.mkdir()
        plain.config.write_text(home.config.read_text().split("\n[tls]")[0])
        done = health(plain, "--http", f"127.0.0.1:{port_of(bridge.url)}")
    finally:
        bridge.stop(timeout=8)
    assert done.returncode == UNHEALTHY, done.stdout
    assert "no answer" in done.stderr


@contextlib.contextmanager
def slow_to_answer(port: int, delay: float) -> Iterator[int]:
    """A port that forwards to ``port`` each connection it takes ``delay`` seconds after its accept:
    a broker slow to take a link (a busy one, one far away)."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def forward(client: socket.socket) -> None:
        with client:
            if stop.wait(delay):
                return
            with socket.create_connection(("127.0.0.1", port)) as broker:
                upstream = threading.Thread(target=pipe, args=(client, broker), daemon=True)
                upstream.start()
                pipe(broker, client)
                upstream.join()

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = server.accept()
                threading.Thread(target=forward, args=(client,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        server.close()


def test_a_worker_takes_no_request_before_its_broker_link_is_up(home, broker):
    """The workers share one listening socket: one that took requests before its broker link was
    up would answer 503 while the others answer 200, and a load balancer would see the bridge
    flap as it starts. Each worker waits for its link (up to a second) before it takes any."""
    with slow_to_answer(broker.mqtt_port, 0.4) as port:
        bridge = start_bridge(home, port, "--workers", "2", healthy=False)
        try:
            answers = []
            for _ in range(10):  # a new connection each: whichever worker takes it answers
                with requests.Session() as session:
                    answers.append(session.get(bridge.url + "/healthz", timeout=30).status_code)
            assert answers == [200] * 10
        finally:
            bridge.stop()
