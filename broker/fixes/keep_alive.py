"""Fix: keep-alive is not enforced (amqtt 0.12.1, upstream issue #308).

Stock ``BrokerProtocolHandler.handle_read_timeout`` does nothing: a client that goes silent (its
network gone, its process frozen) stays connected for ever, holds its client id, and its will is
only published when the operating system finally notices the dead socket, often hours later.

Here a client that sends nothing for one and a half times its keep-alive (rounded up to a whole
second) is disconnected, and its will is published as for any connection that ends without a
DISCONNECT (MQTT-3.1.2-24, MQTT-3.1.2-8).
"""

from __future__ import annotations

import asyncio
import logging
import math

from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import Session

log = logging.getLogger("radio.broker")


def grace(keep_alive: int) -> int:
    """How long the broker waits for a packet from a client that asked for this keep-alive."""
    return math.ceil(1.5 * keep_alive) if keep_alive > 0 else 0


class KeepAliveEnforced(BrokerProtocolHandler):
    """A connection handler that closes a silent connection, will included."""

    _closing: asyncio.Task[None] | None = None

    def _init_session(self, session: Session) -> None:
        # The reader waits session.keep_alive seconds for each packet before calling
        # handle_read_timeout: that wait is the grace period.
        session.keep_alive = grace(session.keep_alive)
        super()._init_session(session)

    def handle_read_timeout(self) -> None:
        """Nothing arrived within the grace period: end the connection as if it had dropped."""
        if self._closing is not None or self.session is None:
            return
        log.warning(
            "closing client %r: nothing received for %ss (1.5 x its keep-alive)",
            self.session.client_id,
            self.session.keep_alive,
        )
        # An abnormal end: the broker's message loop publishes the will and stops this handler.
        self._closing = asyncio.ensure_future(self.handle_connection_closed())
