"""The embedded broker on a thread of its own, for callers that are not asyncio programs.

Tests drive the broker with real, blocking MQTT clients from the main thread; ``radio up`` runs it
beside the bridge. Both need it started, its ports known, and stopped cleanly, without owning an
event loop themselves.
"""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType
from typing import Any, Self

from radio.broker.core import RadioBroker
from radio.broker.run import new_event_loop
from radio.broker.server import EmbeddedBroker


class BrokerThread:
    """Runs an ``EmbeddedBroker`` on a private event loop; ``with BrokerThread(...) as b:``."""

    engine = "embedded"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args, self._kwargs = args, kwargs
        # Radio's broker runs on the loop `radio broker` uses; stock amqtt (compared in the tests)
        # on asyncio's own, which its shutdown needs.
        radio = kwargs.get("broker_class", RadioBroker) is RadioBroker
        self._loop = new_event_loop() if radio else asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="radio-broker", daemon=True)
        self.broker: EmbeddedBroker | None = None

    def start(self) -> Self:
        """Start the broker and return once its listeners are bound (or raise why they are not)."""
        self._thread.start()
        self.call(self._start)
        return self

    async def _start(self) -> None:
        broker = EmbeddedBroker(*self._args, **self._kwargs)
        await broker.start()
        self.broker = broker

    def call(self, coro_fn: Any, *args: Any, timeout: float = 30) -> Any:
        """Run a coroutine function on the broker's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro_fn(*args), self._loop).result(timeout)

    def stop(self) -> None:
        """Stop the broker, then its loop and thread; stopping twice is harmless."""
        if self._loop.is_closed():
            return
        if self.broker is not None:
            self.call(self.broker.stop)
            self.broker = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()

    @property
    def mqtt_port(self) -> int:
        """The bound port of MQTT over TCP."""
        assert self.broker is not None  # noqa: S101 - only read while running
        return self.broker.mqtt_port

    @property
    def ws_port(self) -> int:
        """The bound port of MQTT over WebSocket."""
        assert self.broker is not None  # noqa: S101 - only read while running
        return self.broker.ws_port

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
