"""TLS on every door: real handshakes with certificates made by `radio certs dev`, on both brokers."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from benchmarks import rounds, smoke
from commands import RADIO, clean_env, lines_of, radio_main, read_banner, started_in
from conftest import ENGINES, Home, require_mosquitto, start_bridge
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mqtt_client import NOT_AUTHORIZED, Client

from radio.bridge.identity import bridge_credentials
from radio.bridge.publisher import BrokerUnavailable, Publisher
from radio.broker.mosquitto import MosquittoBroker, export
from radio.broker.thread import BrokerThread
from radio.config import Address, TlsSettings, load_settings
from radio.errors import ConfigError
from radio.registry import LiveRegistry, Registry
from radio.tls import TlsError, client_context, server_context

ANY = Address("127.0.0.1", 0)
TLS_UP = ("up", "--ws", "127.0.0.1:0", "--http", "127.0.0.1:0")


def make_certs(folder: Path, *hosts: str) -> Path:
    """`radio certs dev`, by the command's main in this process (its refusals run it as a process)."""
    extra = [arg for host in hosts for arg in ("--host", host)]
    radio_main("certs", "dev", "--dir", str(folder), *extra, check=True)
    return folder


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another development CA: it signed nothing the brokers present."""
    return make_certs(tmp_path_factory.mktemp("other")) / "ca.pem"


def use_tls(home: Home, certs: Path, broker: str = "") -> None:
    home.config.write_text(
        home.config.read_text()
        + f'\n[tls]\ncert = "{certs / "server.pem"}"\nkey = "{certs / "server.key"}"\n'
        + (f"\n[broker]\n{broker}\n" if broker else "")
    )


@contextlib.contextmanager
def tls_broker(engine: str, home: Home) -> Iterator[dict[str, int]]:
    """The embedded broker or Mosquitto, with every listener (plain and TLS) on free ports."""
    listeners = {"mqtt": ANY, "websocket": ANY, "mqtts": ANY, "wss": ANY}
    if engine == "embedded":
        with BrokerThread(LiveRegistry(home.config), **listeners) as running:
            assert running.broker is not None
            yield {name: running.broker.port(name) for name in ("default", "mqtts", "wss")}
        return
    require_mosquitto()
    with (home.path / "mosquitto.log").open("wb") as log:
        mosquitto = MosquittoBroker(LiveRegistry(home.config), home.path / "mosquitto", **listeners)
        mosquitto.start(stderr=log.fileno())
        try:
            yield {name: mosquitto.port(name) for name in ("default", "mqtts", "wss")}
        finally:
            mosquitto.stop()


def tls_client(
    transport: str, port: int, ca: Path, key: str | None = None, secret: str | None = None
) -> Client:
    client = Client("ws" if transport == "wss" else "tcp", port, key, secret)
    client._paho.tls_set_context(client_context(ca))
    return client


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["mqtts", "wss"])
def secure(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_certs_dev_writes_a_ca_and_a_server_certificate_for_the_names_asked(tmp_path):
    make_certs(tmp_path / "a")
    cert = x509.load_pem_x509_certificate((tmp_path / "a" / "server.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert stat.S_IMODE((tmp_path / "a" / "server.key").stat().st_mode) == 0o600
    ca = x509.load_pem_x509_certificate((tmp_path / "a" / "ca.pem").read_bytes())
    cert.verify_directly_issued_by(ca)
    assert not list(tmp_path.glob("a/*ca*.key"))  # the CA's key is not kept: it signs nothing else

    make_certs(tmp_path / "b", "radio.example.com", "10.0.0.7")
    cert = x509.load_pem_x509_certificate((tmp_path / "b" / "server.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["radio.example.com"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]

    bad = subprocess.run(
        [*RADIO, "certs", "dev", "--dir", str(tmp_path / "c"), "--host", "a b"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1


def test_keys_publish_and_listen_over_tls(home, certs, engine, secure):
    use_tls(home, certs)
    with tls_broker(engine, home) as ports:
        reader = tls_client(secure, ports[secure], certs / "ca.pem", "reader_a", home.secrets["reader_a"])
        gen = tls_client(secure, ports[secure], certs / "ca.pem", "gen", home.secrets["gen"])
        try:
            assert reader.connect() == 0
            assert reader.subscribe("networks/A", qos=1) == 1
            assert gen.connect() == 0
            gen.publish("networks/A", b'{"over": "tls"}', qos=1)
            [message] = reader.expect(1)
            assert message.payload == b'{"over": "tls"}'
        finally:
            reader.close()
            gen.close()


def test_the_rights_hold_over_tls(home, certs, engine, secure):
    use_tls(home, certs)
    ca = certs / "ca.pem"
    with tls_broker(engine, home) as ports:
        port = ports[secure]
        wrong = tls_client(secure, port, ca, "gen", "not-the-secret")
        assert wrong.connect() == NOT_AUTHORIZED
        wrong.close()
        admin = tls_client(secure, port, ca, "admin", home.secrets["admin"])
        anonymous = tls_client(secure, port, ca)
        gen = tls_client(secure, port, ca, "gen", home.secrets["gen"])
        try:
            assert admin.connect() == 0
            assert admin.subscribe("#", qos=1) == 1
            assert anonymous.connect() == 0
            anonymous.subscribe("networks/A", qos=1)  # refused (0x80) by Radio, filtered by Mosquitto
            assert anonymous.subscribe("networks/pub", qos=1) == 1
            assert gen.connect() == 0
            gen.publish("networks/B", b'{"outside": "its networks"}', qos=1)  # acknowledged, dropped
            gen.publish("networks/A", b'{"inside": 1}', qos=1)  # on the same connection, kept
            # The admin sees everything that was published: the sample to B never was.
            assert [m.topic for m in admin.expect(1)] == ["networks/A"]
            admin.publish("networks/pub", b'{"public": 1}', qos=1)
            # The anonymous client gets the public sample, not the private one sent before it.
            assert [m.topic for m in anonymous.expect(1)] == ["networks/pub"]
            assert admin.expect(1)[0].topic == "networks/pub"
            assert admin.received_so_far() == []
        finally:
            for client in (admin, anonymous, gen):
                client.close()


# paho leaves the socket of a failed handshake to the garbage collector.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_client_trusting_another_ca_is_refused_and_sends_no_key(home, certs, other_ca, engine, secure):
    use_tls(home, certs)
    with tls_broker(engine, home) as ports:
        client = tls_client(secure, ports[secure], other_ca, "gen", home.secrets["gen"])
        with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
            client.connect()
        client.close()
        gc.collect()
        trusted = tls_client(secure, ports[secure], certs / "ca.pem", "gen", home.secrets["gen"])
        assert trusted.connect() == 0
        trusted.close()


def test_a_plain_text_client_on_a_tls_port_gets_nothing_and_others_are_served(home, certs, engine):
    use_tls(home, certs)
    with tls_broker(engine, home) as ports:
        # An MQTT CONNECT in clear, as a client configured with mqtt:// would send it.
        connect = bytes.fromhex("101000044d5154540402003c0004706c61696e")
        with socket.create_connection(("127.0.0.1", ports["mqtts"]), timeout=10) as plain:
            plain.sendall(connect)
            answer = b""
            with contextlib.suppress(OSError):
                while chunk := plain.recv(4096):
                    answer += chunk
        assert not answer.startswith(b"\x20")  # no CONNACK: at most a TLS alert, then the socket closes
        client = tls_client("mqtts", ports["mqtts"], certs / "ca.pem", "reader_a", home.secrets["reader_a"])
        assert client.connect() == 0
        client.close()
        clear = Client("tcp", ports["default"], "reader_a", home.secrets["reader_a"])
        assert clear.connect() == 0  # the plain listener still serves where it is configured
        clear.close()


def test_tls_clients_in_a_row_each_complete_their_handshake_at_once(home, certs, secure):
    """The embedded broker counts a socket before its TLS handshake starts, and reads the socket
    as soon as it is accepted (uvloop does): a ClientHello read before the handshake starts is
    handed to it, not lost (that handshake would wait for its timeout, then fail)."""
    from raw_mqtt import (  # noqa: PLC0415 - this test alone speaks raw MQTT
        connect,
        read_packet,
        read_websocket,
        websocket_frame,
        websocket_upgrade,
    )

    use_tls(home, certs, "connect_timeout = 5")
    context = client_context(certs / "ca.pem")
    with tls_broker("embedded", home) as ports:
        for n in range(40):
            sock = socket.create_connection(("127.0.0.1", ports[secure]), timeout=4)
            with context.wrap_socket(sock, server_hostname="localhost") as tls:
                if secure == "wss":
                    websocket_upgrade(tls)
                    tls.sendall(websocket_frame(connect(f"row-{n}")))
                    assert read_websocket(tls) == b"\x20\x02\x00\x00"
                    continue
                tls.sendall(connect(f"row-{n}"))
                assert read_packet(tls) == (0x20, b"\x00\x00")


def expired_certificate(certs: Path, folder: Path) -> Path:
    """The server key with a certificate that expired yesterday, self-signed."""
    key = serialization.load_pem_private_key((certs / "server.key").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=30))
        .not_valid_after(now - timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    path = folder / "expired.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


PROBLEMS = ["missing cert", "missing key", "mismatched key", "expired cert", "not PEM"]


@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize("command", ["broker", "mosquitto export"])
def test_a_bad_certificate_stops_the_command_with_one_line_naming_the_file(
    home, certs, other_ca, tmp_path, problem, command
):
    cert, key = certs / "server.pem", certs / "server.key"
    if problem == "missing cert":
        cert = named = tmp_path / "nowhere.pem"
    elif problem == "missing key":
        key = named = tmp_path / "nowhere.key"
    elif problem == "mismatched key":
        key = named = other_ca.parent / "server.key"
    elif problem == "expired cert":
        cert = named = expired_certificate(certs, tmp_path)
    else:
        cert = named = home.config
    home.config.write_text(
        home.config.read_text()
        + f'\n[tls]\ncert = "{cert}"\nkey = "{key}"\n\n[broker]\nmqtts = "127.0.0.1:0"\n'
    )
    args = (
        ["broker", "--mqtt", "127.0.0.1:0", "--ws", "127.0.0.1:0"]
        if command == "broker"
        else ["mosquitto", "export", "--dir", str(tmp_path / "export")]
    )
    result = home.radio(*args, check=False)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("radio: ")
    assert str(named) in lines[0]
    if problem == "expired cert":
        assert "expired on" in lines[0]
    if problem == "mismatched key":
        assert "does not match the certificate" in lines[0]


def test_tls_settings_are_checked_like_the_rest_of_the_configuration(tmp_path):
    config = tmp_path / "radio.toml"
    cases = {
        '[broker]\nmqtts = "127.0.0.1:8883"\n': "[broker] mqtts needs a [tls] table",
        '[tls]\ncert = "server.pem"\n': "[tls] key is missing",
        "[tls]\ncert = 1\nkey = 'k'\n": "[tls] cert must be a file name",
        '[tls]\ncert = "c"\nkey = "k"\nca = "x"\n': "unknown setting [tls] ca",
        "[broker]\nmqtt = false\nwebsocket = false\n": "nothing to listen on",
        "[broker]\nmqtt = true\n": "mqtt: True is not HOST:PORT",
    }
    for text, error in cases.items():
        config.write_text(text)
        with pytest.raises(ConfigError, match=re.escape(error)):
            load_settings(config)
    config.write_text('[tls]\ncert = "c.pem"\nkey = "k.pem"\n[broker]\nmqtt = false\nwss = "0.0.0.0:8081"\n')
    settings = load_settings(config)
    assert settings.tls is not None
    assert settings.tls.cert == tmp_path / "c.pem"
    assert not settings.broker.mqtt_enabled
    assert settings.broker.websocket_enabled
    assert settings.broker.wss == Address("0.0.0.0", 8081)


def test_mosquitto_export_carries_the_tls_listeners_and_leaves_out_the_plain_ones_turned_off(home, certs):
    use_tls(home, certs, 'mqtt = false\nmqtts = "0.0.0.0:8883"\nwss = "0.0.0.0:8081"')
    settings = load_settings(home.config)
    conf = export(settings, Registry.from_settings(settings), home.path / "export").read_text()
    starts = (re.search(r"^listener (.+)$", block, re.MULTILINE) for block in conf.split("\n\n"))
    served = {start[1]: start.string for start in starts if start is not None}
    assert set(served) == {"8080 127.0.0.1", "8883 0.0.0.0", "8081 0.0.0.0"}  # no plain MQTT/TCP
    for address in ("8883 0.0.0.0", "8081 0.0.0.0"):
        assert f"\ncertfile {certs / 'server.pem'}" in served[address]
        assert f"\nkeyfile {certs / 'server.key'}" in served[address]
    assert "certfile" not in served["8080 127.0.0.1"]
    assert "#listener 1883 127.0.0.1" in conf


def with_key(home: Home, name: str | None) -> dict[str, str]:
    """The environment a command runs in: this one's, with ``name``'s secret as RADIO_KEY if given."""
    return {**os.environ, "RADIO_KEY": home.secrets[name]} if name else dict(os.environ)


def listen_process(
    home: Home, url: str, *extra: str, network: str = "pub", key: str | None = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*RADIO, "listen", network, "--url", url, "--config", str(home.config), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=with_key(home, key),
    )


def traffic_command(home: Home, url: str, *extra: str) -> list[str]:
    """`radio device traffic` on network A, as ``gen`` runs it (its secret goes in RADIO_KEY)."""
    return [*RADIO, "device", "traffic", "--network", "A", "--url", url, *extra, "--config", str(home.config)]


def test_radio_listen_and_a_generator_over_tls_with_the_ca(home, certs, secure):
    use_tls(home, certs)
    ca = str(certs / "ca.pem")
    with tls_broker("embedded", home) as ports:
        url = f"{secure}://localhost:{ports[secure]}" + ("/mqtt" if secure == "wss" else "")
        listen = listen_process(home, url, "--ca", ca, network="A", key="reader_a")
        device = subprocess.Popen(
            traffic_command(home, url, "--period", "0.1", "--ca", ca),
            env=with_key(home, "gen"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            sample = json.loads(lines_of(listen).get(timeout=20))
            assert sample["network"] == "A"
            assert "tick" in sample["data"]
        finally:
            for process in (device, listen):
                process.send_signal(signal.SIGINT)
                process.communicate(timeout=20)
        assert device.returncode == 0


def test_clients_in_the_folder_trust_its_own_certificate_without_ca(home, certs, secure):
    """As radio health does: the platform the folder configures is reached without --ca, over
    MQTT (the listener, a generator) and HTTPS (the listener's history, a generator via the bridge)."""
    use_tls(home, certs)
    with tls_broker("embedded", home) as ports:
        url = f"{secure}://localhost:{ports[secure]}" + ("/mqtt" if secure == "wss" else "")
        bridge = start_bridge(home, ports["default"], healthy=False)
        https = bridge.url.replace("127.0.0.1", "localhost")
        # Its history over HTTPS too: a certificate refused there would end it with one line.
        listen = listen_process(home, url, "--http", https, network="A", key="reader_a")
        try:
            samples = lines_of(listen)

            def tick() -> int:
                return int(json.loads(samples.get(timeout=20))["data"]["tick"])

            # One generator after the other, each counting its ticks from 10: the first is heard
            # once past 30, the second once a tick is below 30 (the first's last are all above).
            for where, via, heard in (
                (url, (), lambda: tick() >= 30),
                (https, ("--via", "http"), lambda: tick() < 30),
            ):
                device = subprocess.Popen(
                    traffic_command(home, where, "--period", "0.1", *via),
                    env=with_key(home, "gen"),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                try:
                    while not heard():
                        pass
                finally:
                    device.send_signal(signal.SIGINT)
                    _, err = device.communicate(timeout=20)
                assert device.returncode == 0, err
        finally:
            listen.send_signal(signal.SIGINT)
            _, said = listen.communicate(timeout=20)
            bridge.stop()
        assert "refused" not in said, said


def test_clients_refuse_a_certificate_they_cannot_verify_with_one_line(home, certs, other_ca, secure):
    use_tls(home, certs)
    elsewhere = home.path / "elsewhere.toml"  # the same platform's, without [tls]: no certificate of its own
    elsewhere.write_text(home.config.read_text().split("\n[tls]\n")[0])
    another = home.path / "another.toml"  # a folder whose own certificate is another one
    another.write_text(home.config.read_text().replace(str(certs), str(other_ca.parent)))
    with tls_broker("embedded", home) as ports:
        path = "/mqtt" if secure == "wss" else ""
        url = f"{secure}://127.0.0.1:{ports[secure]}{path}"
        for ca in (  # the system's trust store, the folder's certificate when not the server's, another CA
            ["--config", str(elsewhere)],
            ["--config", str(another)],
            ["--ca", str(other_ca)],
        ):
            listen = listen_process(home, url, *ca)
            _, err = listen.communicate(timeout=30)
            assert listen.returncode == 2, err
            lines = err.strip().splitlines()
            assert len(lines) == 1, err
            assert "refused the certificate of" in lines[0]
            assert "certificate verify failed" not in lines[0] or "--ca" in lines[0]
        device = subprocess.run(
            traffic_command(home, url, "--ca", str(other_ca)),
            env=with_key(home, "gen"),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert device.returncode == 2, device.stderr
        assert device.stderr.strip().splitlines()[-1].startswith("radio: refused the certificate of")
        assert "Traceback" not in device.stderr
        missing = listen_process(home, url, "--ca", str(home.path / "no-such-ca.pem"))
        _, err = missing.communicate(timeout=30)
        assert missing.returncode == 2
        assert err.strip().splitlines() == [
            f"radio: cannot read the TLS CA file {home.path / 'no-such-ca.pem'}: No such file or directory"
        ]


@pytest.mark.parametrize("command", ["listen", "traffic", "sensors"])
@pytest.mark.parametrize("bad", ["missing", "not PEM"])
def test_a_bad_ca_file_stops_a_client_over_a_plain_url_with_one_line(home, tmp_path, command, bad):
    """--ca is read before the client starts, not first by the history reader's thread: over
    mqtt:// the command used to run on with a traceback from that thread, or with nothing."""
    ca = tmp_path / "ca.pem"
    if bad == "not PEM":
        ca.write_text("not a certificate\n")
    url = "mqtt://127.0.0.1:1"
    if command == "listen":
        args = [*RADIO, "listen", "pub", "--url", url, "--ca", str(ca), "--config", str(home.config)]
    elif command == "traffic":
        args = traffic_command(home, url, "--ca", str(ca))
    else:
        args = [*RADIO, "device", "sensors", "--network", "A", "--url", url, "--ca", str(ca)]
        args += ["--config", str(home.config)]
    done = subprocess.run(
        args, env=with_key(home, "gen"), capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"radio: cannot read the TLS CA file {ca}: No such file or directory"
        if bad == "missing"
        else f"radio: the TLS CA file {ca} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
    ]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # see above
def test_the_bridge_link_publishes_over_tls_and_refuses_another_ca(home, certs, other_ca, caplog):
    use_tls(home, certs)
    username, password = bridge_credentials(load_settings(home.config))
    with tls_broker("embedded", home) as ports:
        broker = Address("localhost", ports["mqtts"])
        reader = tls_client("mqtts", ports["mqtts"], certs / "ca.pem", "admin", home.secrets["admin"])
        assert reader.connect() == 0
        assert reader.subscribe("networks/A", qos=1) == 1
        good = Publisher(broker, username, password, timeout=10, tls=client_context(certs / "ca.pem"))
        good.start()
        try:
            good.publish("networks/A", b'{"via": "bridge"}', retain=False)
        finally:
            good.stop()
        assert reader.expect(1)[0].payload == b'{"via": "bridge"}'
        reader.close()
        bad = Publisher(broker, username, password, timeout=1.5, tls=client_context(other_ca))
        bad.start()
        try:
            with pytest.raises(BrokerUnavailable):
                bad.publish("networks/A", b"{}", retain=False)
        finally:
            bad.stop()
        gc.collect()
        refusals = [r.getMessage() for r in caplog.records if "refused the certificate" in r.getMessage()]
        assert len(refusals) == 1, refusals


def test_client_context_refuses_a_ca_file_that_is_not_pem(tmp_path):
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    with pytest.raises(TlsError, match=f"{bogus}.*holds no PEM certificate"):
        client_context(bogus)


def test_a_tls_only_configuration_binds_no_plain_listener(home, certs):
    use_tls(home, certs, 'mqtt = false\nwebsocket = false\nmqtts = "127.0.0.1:0"')
    with BrokerThread(LiveRegistry(home.config)) as running:
        assert running.broker is not None
        assert set(running.broker.addresses) == {"mqtts"}
        client = tls_client(
            "mqtts", running.broker.port("mqtts"), certs / "ca.pem", "gen", home.secrets["gen"]
        )
        assert client.connect() == 0
        client.close()


def test_radio_up_advertises_the_tls_doors_and_its_listen_example_works(tmp_path, certs):
    (tmp_path / "radio.toml").write_text(
        f'[tls]\ncert = "{certs / "server.pem"}"\nkey = "{certs / "server.key"}"\n\n'
        '[broker]\nmqtt = false\nmqtts = "127.0.0.1:0"\nwss = "127.0.0.1:0"\n\n'
        "[networks.sample_net]\npublic = true\n"
    )
    env = clean_env()
    up = started_in(tmp_path, *TLS_UP, env=env, start_new_session=True)
    listen = None
    try:
        banner = read_banner(up)
        assert re.search(r"MQTT over TLS:\s+mqtts://127\.0\.0\.1:\d+\n", banner), banner
        assert re.search(r"WebSocket over TLS:\s+wss://127\.0\.0\.1:\d+/mqtt\n", banner), banner
        assert "MQTT over TCP" not in banner  # turned off in the configuration: not advertised
        example = re.search(
            r"\n  (radio listen sample_net --url wss://\S+ --ca \S+ --http https://\S+)\n", banner
        )
        assert example is not None, banner  # its bridge's port is the system's: radio.toml has another
        assert f" --ca {certs / 'ca.pem'} " in example[1]
        assert re.search(
            rf"mosquitto_sub -h 127\.0\.0\.1 -p \d+ --cafile {re.escape(str(certs / 'ca.pem'))} ", banner
        )
        listen = started_in(tmp_path, *example[1].split()[1:], env=env)  # `radio listen ...` as pasted
        assert (
            "tick" in json.loads(lines_of(listen).get(timeout=30))["data"]
        )  # the simulator's, read over wss
    finally:
        if listen is not None:
            listen.send_signal(signal.SIGINT)
            listen.communicate(timeout=20)
        up.send_signal(signal.SIGINT)
        _, err = up.communicate(timeout=60)
    assert up.returncode == 0, err


def test_a_server_key_every_user_can_read_is_refused(certs, tmp_path):
    key = tmp_path / "server.key"
    key.write_bytes((certs / "server.key").read_bytes())
    key.chmod(0o644)
    with pytest.raises(TlsError, match=f"the TLS key {key} is readable by every user .* chmod 600"):
        server_context(TlsSettings(cert=certs / "server.pem", key=key))
    key.chmod(0o600)
    assert (
        server_context(TlsSettings(cert=certs / "server.pem", key=key)).minimum_version
        == ssl.TLSVersion.TLSv1_2
    )


@pytest.mark.slow
def test_the_fanout_benchmark_measures_tls_beside_plain_text():
    result = smoke("fanout.py", "--tls", "--brokers", "radio", "--qos", "1", "--subscribers", "10")
    rows = rounds(result)
    assert {r["transport"] for r in rows} == {"tcp", "mqtts"}
    assert all(r["deliveries_per_s"] > 0 and r["lost"] == 0 for r in rows)
    assert "| radio | tcp / mqtts | 1 | 10 |" in result.stdout


def test_the_bridge_serves_https_with_the_articles_answers(home, certs, other_ca):
    use_tls(home, certs)
    with tls_broker("embedded", home) as ports:
        everything = Client("tcp", ports["default"], "admin", home.secrets["admin"])
        assert everything.connect() == 0
        assert everything.subscribe("networks/A", qos=1) == 1
        bridge = start_bridge(home, ports["default"], healthy=False)
        try:
            url = bridge.url.replace("http://", "https://").replace("127.0.0.1", "localhost")
            assert bridge.url.startswith("https://")
            ca = str(certs / "ca.pem")
            deadline = time.monotonic() + 20
            while requests.get(url + "/healthz", timeout=10, verify=ca).status_code != 200:
                assert time.monotonic() < deadline, "the bridge never reached the broker"
                time.sleep(0.05)
            sample = json.dumps({"network": "A", "data": {"over": "https"}})
            ok = requests.post(
                url + "/publish", data=sample, headers={"API-KEY": home.secrets["gen"]}, timeout=10, verify=ca
            )
            assert (ok.status_code, ok.json()) == (200, {"message": "OK"})
            assert everything.expect(1)[0].payload == b'{"over": "https"}'
            refused = requests.post(url + "/publish", data=sample, timeout=10, verify=ca)
            assert (refused.status_code, refused.json()) == (400, {"error": "API-KEY missing in headers"})
            with pytest.raises(requests.exceptions.SSLError):
                requests.get(url + "/healthz", timeout=10, verify=str(other_ca))
            with pytest.raises(requests.exceptions.ConnectionError):
                requests.get(bridge.url.replace("https://", "http://") + "/healthz", timeout=10)
        finally:
            # ``ok`` still holds its keep-alive connection, idle: it must not hold the stop until
            # gunicorn's graceful_timeout (10 s) as a TLS close waiting for its reply would.
            bridge.stop(timeout=8)
            everything.close()


@pytest.mark.nats
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # paho's refused socket
def test_radio_nats_export_serves_mqtts_and_wss_with_the_registrys_keys(home, certs, other_ca):
    from test_nats_cluster import require_nats  # noqa: PLC0415 - only this test needs NATS

    from radio.broker.nats import find_binary  # noqa: PLC0415

    require_nats()
    use_tls(home, certs, 'mqtts = "127.0.0.1:0"\nwss = "127.0.0.1:0"')
    out = home.path / "nats"
    home.radio_main("nats", "export", "--dir", str(out), "--nodes", "1")
    conf = (out / "radio-1.conf").read_text()
    assert conf.count("cert_file") == 2  # both listeners serve TLS
    assert "no_tls" not in conf
    mqtts = int(re.search(r'mqtt \{\n\s+listen: "127\.0\.0\.1:(\d+)"', conf)[1])
    wss = int(re.search(r'websocket \{\n\s+listen: "127\.0\.0\.1:(\d+)"', conf)[1])
    node = subprocess.Popen([find_binary(), "-c", str(out / "radio-1.conf")], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", mqtts), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the NATS node did not come up"
                time.sleep(0.1)
        reader = tls_client("wss", wss, certs / "ca.pem", "reader_a", home.secrets["reader_a"])
        writer = tls_client("mqtts", mqtts, certs / "ca.pem", "gen", home.secrets["gen"])
        stranger = tls_client("mqtts", mqtts, other_ca, "gen", home.secrets["gen"])
        try:
            deadline = time.monotonic() + 20
            while reader.connect() != 0:  # JetStream takes a moment to serve MQTT
                assert time.monotonic() < deadline
            assert reader.subscribe("networks/A", qos=1) == 1
            assert writer.connect() == 0
            writer.publish("networks/A", b'{"over": "nats tls"}', qos=1)
            assert reader.expect(1)[0].payload == b'{"over": "nats tls"}'
            with pytest.raises(ssl.SSLCertVerificationError):
                stranger.connect()
        finally:
            for client in (reader, writer, stranger):
                client.close()
    finally:
        node.terminate()
        node.wait(20)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_ca_wins_over_the_ca_bundle_variables_for_every_https_client(tmp_path, certs, other_ca):
    """On a machine whose REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE name another CA, under TLS: the
    banner's curl line works as printed, `radio listen --since` finds the history over HTTPS by
    itself, and a generator posting to the bridge over HTTPS trusts the `--ca` it was given."""
    ca = certs / "ca.pem"
    (tmp_path / "radio.toml").write_text(
        f'[tls]\ncert = "{certs / "server.pem"}"\nkey = "{certs / "server.key"}"\n\n'
        '[broker]\nmqtt = false\nwss = "127.0.0.1:0"\n\n'
        "[networks.sample_net]\npublic = true\n"
    )
    env = clean_env(REQUESTS_CA_BUNDLE=str(other_ca), CURL_CA_BUNDLE=str(other_ca))
    up = started_in(tmp_path, *TLS_UP, env=env, start_new_session=True)
    others: list[subprocess.Popen[str]] = []
    try:
        banner = read_banner(up)
        https = re.search(r"HTTP publish:\s+(https://127\.0\.0\.1:(\d+))/publish", banner)
        assert https is not None, banner
        # Commands run in the folder find the bridge where it listens.
        config = tmp_path / "radio.toml"
        config.write_text(config.read_text() + f'\n[bridge]\nlisten = "127.0.0.1:{https[2]}"\n')

        curl = re.search(r"\n  (printf .+ \| curl .+)\n", banner)
        assert curl is not None, banner
        assert f"curl -sS --cacert {ca} -H @- {https[1]}/publish" in curl[1]
        deadline = time.monotonic() + 30
        while True:  # the bridge's workers may still be linking to the broker (503)
            posted = subprocess.run(
                ["bash", "-c", curl[1]], capture_output=True, text=True, timeout=30, env=env, check=False
            )
            if (posted.returncode == 0 and '"OK"' in posted.stdout) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert json.loads(posted.stdout) == {"message": "OK"}, posted.stderr

        bridge = f"https://localhost:{https[2]}"
        trusted = ["--ca", str(ca), "--size", "1x2", "--period", "0.2"]
        device = subprocess.Popen(
            [*RADIO, "device", "traffic", "--network", "sample_net", "--url", bridge, *trusted],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env | {"RADIO_KEY": (tmp_path / "demo.key").read_text().strip()},
        )
        others.append(device)
        ws = re.search(r"(wss://127\.0\.0\.1:\d+/mqtt)", banner)
        assert ws is not None
        listen = started_in(
            tmp_path, "listen", "sample_net", "--url", ws[1], "--ca", str(ca), "--since", "0", env=env
        )
        others.append(listen)
        lines = lines_of(listen)
        first = json.loads(lines.get(timeout=30))
        assert first["seq"] >= 1  # replayed from the history, read over HTTPS
        deadline = time.monotonic() + 30
        while len(json.loads(lines.get(timeout=30))["data"].get("density", {})) != 2:
            assert time.monotonic() < deadline, "the generator's samples never arrived"
    finally:
        for process in others:
            process.send_signal(signal.SIGINT)
        errors = [process.communicate(timeout=20)[1] for process in others]
        up.send_signal(signal.SIGINT)
        _, err = up.communicate(timeout=60)
    assert all("certificate" not in text for text in errors), errors
    assert up.returncode == 0, err
