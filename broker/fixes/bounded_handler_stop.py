"""Fix: stopping a connection's handler can wait forever (amqtt 0.12.1).

``ProtocolHandler.stop`` cancels the reader task and then waits for an event that only the
reader's last lines set. When the cancellation lands before the reader first runs, or while it
is already in those last lines, the event is never set and the wait never ends: a disconnect or a
broker shutdown hangs (seen as a shutdown stuck for more than 30 s under load).

Here each handler gets a bounded time to stop; past it the connection is closed directly and
the broker moves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

from amqtt.broker import Broker
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler

log = logging.getLogger("radio.broker")
STOP_TIMEOUT: Final = 2.0


class BoundedHandlerStop(Broker):
    """A handler that does not stop within ``STOP_TIMEOUT`` seconds has its connection closed."""

    async def _stop_handler(self, handler: BrokerProtocolHandler) -> None:
        try:
            await asyncio.wait_for(super()._stop_handler(handler), STOP_TIMEOUT)
        except TimeoutError:
            log.warning("a connection handler did not stop within %gs; closing its connection", STOP_TIMEOUT)
            if handler.writer is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(handler.writer.close(), STOP_TIMEOUT)
