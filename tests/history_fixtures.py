"""The history's platform, recorder, publisher and readers: one home for every history test module.

A module takes a fixture by naming it (``home = history_fixtures.home``); its ``home`` then is
conftest's platform plus a public network keeping 3 samples, the recorder's key and ``gen_all``, a
key that may publish to A, pub and short. ``radio bridge`` itself is conftest's ``bridge``.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import requests
from conftest import Bridge, Home, radio_process
from flask.testing import FlaskClient
from mqtt_client import Client
from polling import until

from radio.bridge.app import create_app
from radio.bridge.state import state_of
from radio.config import Address, load_settings
from radio.history_store import HistoryStore
from radio.recorder.identity import recorder_credentials
from radio.recorder.recorder import Recorder
from radio.registry import LiveRegistry

HISTORY = """
[networks.short]
public = true
history = 3
"""


def with_history(home: Home, *, before: str = "", publish: Sequence[str] = ("A", "pub", "short")) -> Home:
    """``home`` with ``HISTORY`` (after ``before``), the recorder's key, and ``gen_all``."""
    home.config.write_text(before + home.config.read_text() + HISTORY)
    recorder_credentials(load_settings(home.config))
    home.add_key("gen_all", publish=list(publish))
    return home


@pytest.fixture
def home(home: Home) -> Home:
    """conftest's platform, plus a public network keeping 3 samples, and the recorder's key."""
    return with_history(home)


@contextlib.contextmanager
def recording(home: Home, port: int) -> Iterator[Recorder]:
    """The recorder in this process, subscribed to the broker on ``port``."""
    settings = load_settings(home.config)
    store = HistoryStore(settings.history_path)
    recorder = Recorder(
        LiveRegistry(home.config), store, Address("127.0.0.1", port), *recorder_credentials(settings)
    )
    recorder.start()
    assert recorder.subscribed.wait(10), "the recorder never subscribed"
    try:
        yield recorder
    finally:
        recorder.stop()
        store.close()


@pytest.fixture
def recorder(home: Home, broker: Any) -> Iterator[Recorder]:
    with recording(home, broker.mqtt_port) as running:
        yield running


def start_recorder(home: Home, port: int) -> subprocess.Popen[str]:
    """``radio recorder`` in its own process, once it says it records."""
    process = radio_process(home, "recorder", "--broker", f"mqtt://127.0.0.1:{port}")
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("Recording"):
            return process
    pytest.fail(f"radio recorder did not start: {process.stderr.read() if process.stderr else ''}")


@pytest.fixture
def publisher(home: Home, broker: Any) -> Iterator[Client]:
    """An MQTT client publishing as ``gen_all``."""
    client = Client("tcp", broker.mqtt_port, "gen_all", home.secrets["gen_all"])
    assert client.connect() == 0
    yield client
    client.close()


@contextlib.contextmanager
def history_app(home: Home, port: int, extra: str = "") -> Iterator[FlaskClient]:
    """``create_app`` with ``extra`` added to the configuration, its broker link up; Flask's test client."""
    if extra:
        home.config.write_text(home.config.read_text() + extra)
    app = create_app({"RADIO_CONFIG": str(home.config), "BROKER": Address("127.0.0.1", port)})
    publisher = state_of(app).publisher
    try:
        assert publisher.wait_connected(20), "the bridge never reached the broker"
        yield app.test_client()
    finally:
        publisher.stop()


@pytest.fixture
def app(home: Home, broker: Any) -> Iterator[FlaskClient]:
    with history_app(home, broker.mqtt_port) as client:
        yield client


def history(
    source: FlaskClient | Bridge, network: str, headers: Any = None, **params: Any
) -> tuple[int, Any]:
    """``GET /networks/NETWORK/samples``, from the test client or over HTTP: status and JSON."""
    if isinstance(source, FlaskClient):
        response = source.get(f"/networks/{network}/samples", query_string=params, headers=headers or {})
        return response.status_code, response.get_json()
    answer = requests.get(
        f"{source.url}/networks/{network}/samples", params=params, headers=headers or {}, timeout=10
    )
    return answer.status_code, answer.json()


def wait_for_last(source: FlaskClient | Bridge, network: str, last: int, headers: Any = None) -> Any:
    """The recorder writes on its own: the history once it has numbered ``last`` (15 s at most)."""
    seen: list[tuple[int, Any]] = []

    def numbered() -> bool:
        seen[:] = [history(source, network, headers, limit=1000)]
        status, body = seen[0]
        return status == 200 and body["last"] >= last

    assert until(numbered, within=15, every=0.02), f"the history of {network} never reached {last}: {seen}"
    return seen[0][1]
