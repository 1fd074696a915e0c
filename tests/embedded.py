"""Radio's own broker in the test process, on loopback ports the system picks."""

from __future__ import annotations

from typing import Any

from conftest import Home

from radio.broker.thread import BrokerThread
from radio.config import Address
from radio.registry import LiveRegistry


def embedded_broker(keys: Home | LiveRegistry, mqtt_port: int = 0, **options: Any) -> BrokerThread:
    """The embedded broker, not started yet: MQTT on ``mqtt_port`` (0: a free one), WebSocket on any.

    ``keys`` is a test home (its registry is read afresh) or a registry to share across restarts;
    ``options`` go to the broker as they are (``broker_class``, for one).
    """
    if isinstance(keys, LiveRegistry):
        return BrokerThread(
            keys, mqtt=Address("127.0.0.1", mqtt_port), websocket=Address("127.0.0.1", 0), **options
        )
    return _OwnRegistry(
        LiveRegistry(keys.config),
        mqtt=Address("127.0.0.1", mqtt_port),
        websocket=Address("127.0.0.1", 0),
        **options,
    )


class _OwnRegistry(BrokerThread):
    """A broker with a registry of its own, closed with it: a stopped broker is no running server.

    Without that, ``radio keys`` run after the stop (in this same test process) waits for the
    stopped broker to confirm the change, as it would for one still serving.
    """

    def __init__(self, registry: LiveRegistry, **options: Any) -> None:
        super().__init__(registry, **options)
        self._registry = registry

    def stop(self) -> None:
        """Stop the broker, then withdraw its registry's record."""
        try:
            super().stop()
        finally:
            self._registry.close()
