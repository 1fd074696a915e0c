"""The bridge's app in the test process, shared by the modules that post to it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from bridge_client import InProcessBridge
from conftest import Home

from radio.broker.mosquitto import MosquittoBroker
from radio.broker.thread import BrokerThread


def in_process_bridge(
    home: Home, broker: BrokerThread | MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> Iterator[InProcessBridge]:
    """The fast tier: ``radio bridge``'s app and server in this process, linked to the real broker.

    On the way out no error was logged with a traceback, as the server process's stderr must hold
    none. Each module makes it its ``bridge`` fixture: ``bridge = pytest.fixture(name="bridge")(...)``.
    """
    running = InProcessBridge(str(home.config), broker.mqtt_port)
    yield running
    running.stop()
    tracebacks = [
        r.getMessage() for r in caplog.records if r.exc_info and r.levelname in ("ERROR", "CRITICAL")
    ]
    assert tracebacks == []
