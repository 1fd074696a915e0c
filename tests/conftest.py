"""Fixtures every test shares: a platform folder with keys, and the real broker on port 0."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mqtt_client import Client

from broker.thread import BrokerThread
from radio.config import Address, load_settings
from radio.keys import KeyStore
from radio.registry import LiveRegistry

CONFIG = """\
[networks.A]
public = false

[networks.B]
public = false

[networks.pub]
public = true

[networks.fleeting]
public = true
retain = false
"""


@dataclass
class Home:
    """A platform's folder: configuration, keys, and the secrets of the keys made for the test."""

    path: Path
    secrets: dict[str, str] = field(default_factory=dict)

    @property
    def config(self) -> Path:
        return self.path / "radio.toml"

    @property
    def keys(self) -> Path:
        return self.path / "keys.toml"

    def store(self) -> KeyStore:
        settings = load_settings(self.config)
        return KeyStore(settings.keys_path, settings.networks)

    def add_key(self, name: str, **rights: object) -> str:
        self.secrets[name] = self.store().add(name, **rights)  # type: ignore[arg-type]
        return self.secrets[name]

    def radio(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The real command line, as an operator types it."""
        return subprocess.run(
            [sys.executable, "-m", "radio", *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            check=check,
            timeout=60,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


@pytest.fixture
def home(tmp_path: Path) -> Home:
    """Networks A and B (private), pub (public), fleeting (public, not retained); four keys."""
    home = Home(tmp_path)
    home.config.write_text(CONFIG)
    home.add_key("gen", publish=["A"])
    home.add_key("reader_a", subscribe=["A"])
    home.add_key("reader_b", subscribe=["B"])
    home.add_key("admin", admin=True)
    return home


@pytest.fixture
def broker(home: Home) -> Iterator[BrokerThread]:
    """Radio's embedded broker, in this process, on free ports."""
    with BrokerThread(
        LiveRegistry(home.config), mqtt=Address("127.0.0.1", 0), websocket=Address("127.0.0.1", 0)
    ) as running:
        yield running


@pytest.fixture(params=["tcp", "ws"])
def transport(request: pytest.FixtureRequest) -> str:
    """Each client test runs over MQTT/TCP and over MQTT/WebSocket."""
    return str(request.param)


Connect = Callable[..., Client]


@pytest.fixture
def connect(broker: BrokerThread, home: Home, transport: str) -> Iterator[Connect]:
    """Open a client as a key of ``home`` (or anonymously) and close it after the test."""
    clients: list[Client] = []

    def _connect(
        key: str | None = None, *, expect: int = 0, secret: str | None = None, **kwargs: object
    ) -> Client:
        port = broker.ws_port if transport == "ws" else broker.mqtt_port
        password = secret if secret is not None else home.secrets.get(key or "")
        client = Client(transport, port, key, password if key else None, **kwargs)  # type: ignore[arg-type]
        clients.append(client)
        assert client.connect() == expect
        return client

    yield _connect
    for client in clients:
        client.close()
