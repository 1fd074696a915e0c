"""Fix: a connection's socket outlives its handler (amqtt 0.12.1).

Stock ``Broker.stream_connected`` never closes the stream itself: when the connection handler ends
on an error, on a CONNECT that never completes, or because the broker shuts down while a client
is still connecting, the socket stays open until the garbage collector finds it (an open file
descriptor per such connection, and a ResourceWarning). Here the socket is closed when the
handler ends, whatever ended it.
"""

from __future__ import annotations

import asyncio
import contextlib

from amqtt.broker import Broker


class SocketClosedOnExit(Broker):
    """Every TCP connection's socket is closed when its handler returns, fails or is cancelled."""

    async def stream_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
    ) -> None:
        """Serve the connection as stock does, then close its socket."""
        try:
            await super().stream_connected(reader, writer, listener_name)
        except asyncio.CancelledError:
            # The broker is stopping. This task is the connection's top level: ending it here,
            # rather than re-raising, spares asyncio's stream callback an error log line.
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()
