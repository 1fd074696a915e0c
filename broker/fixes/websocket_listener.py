"""Fix: the WebSocket listener's fixed 1 MiB cap and its loud handshake log (amqtt 0.12.1).

Stock ``Broker._create_server_instance`` starts the WebSocket server with the library's defaults:
messages are capped at 1 MiB whatever the broker's packet limit (and TCP has none at all), and
every rejected handshake (a port scanner, a browser without the ``mqtt`` subprotocol, a plain
HTTP probe) is logged at ERROR with a full traceback: anyone can flood the log.

Here the WebSocket listener takes the same packet limit as TCP (the ``PacketGate`` enforces it per
MQTT packet on both), and a rejected handshake is one warning line.
"""

from __future__ import annotations

import logging
import ssl
import sys
from functools import partial
from typing import Any, Final

import websockets
from amqtt.broker import Broker
from amqtt.contexts import ListenerType

log = logging.getLogger("radio.broker")
FRAME_HEADROOM: Final = 5
"""An MQTT packet's fixed header, which the packet limit (a remaining length) leaves out."""


class QuietHandshakeLog(logging.LoggerAdapter[logging.Logger]):
    """The WebSocket server's logger: a failed handshake or handler is one line, never a traceback."""

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        """Turn the server's two tracebacks into one warning line naming the cause.

        Each connection wraps this logger in an adapter of its own, which calls ``log``.
        """
        if level >= logging.ERROR and msg in ("opening handshake failed", "connection handler failed"):
            cause = sys.exc_info()[1]
            reason = f"{type(cause).__name__}: {cause}" if cause is not None else "no reason given"
            log.warning("WebSocket %s: %s", str(msg).replace(" failed", " refused"), reason)
            return
        super().log(level, msg, *args, **kwargs)


class WebSocketListenerLimits(Broker):
    """The WebSocket listener with the broker's packet limit and a quiet handshake log."""

    max_packet_size: int

    async def _create_server_instance(
        self,
        listener_name: str,
        listener_type: ListenerType,
        address: str | None,
        port: int,
        ssl_context: ssl.SSLContext | None,
    ) -> Any:
        if listener_type != ListenerType.WS:
            return await super()._create_server_instance(
                listener_name, listener_type, address, port, ssl_context
            )
        return await websockets.serve(
            partial(self.ws_connected, listener_name=listener_name),
            address,
            port,
            ssl=ssl_context,
            subprotocols=[websockets.Subprotocol("mqtt")],
            max_size=self.max_packet_size + FRAME_HEADROOM,
            logger=QuietHandshakeLog(logging.getLogger("websockets.server")),
        )
