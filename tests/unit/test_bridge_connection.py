"""The bridge's connection to the broker reads what the broker answers in any chunking, and drops a
stream that is not MQTT instead of buffering it."""

from __future__ import annotations

import asyncio
import contextlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radio import wire
from radio.bridge.broker_connection import LARGEST_ANSWER, Connection

ANSWERS = (
    wire.connack(session_present=False, code=0)
    + b"".join(wire.ack(wire.PUBACK, pid) for pid in (1, 2, 300))
    + wire.PINGRESP_PACKET
    + b"".join(wire.ack(wire.PUBACK, pid) for pid in (65535, 4))
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.lists(st.integers(0, len(ANSWERS)), max_size=12))
def test_every_puback_is_handed_on_in_order_whatever_the_reads(cuts):
    async def read() -> tuple[list[int], int]:
        acknowledged: list[int] = []
        connection = Connection(acknowledged.extend)
        bounds = sorted(cuts)
        for start, end in zip([0, *bounds], [*bounds, len(ANSWERS)], strict=True):
            connection.data_received(ANSWERS[start:end])
        return acknowledged, await connection.connack

    assert asyncio.run(read()) == ([1, 2, 300, 65535, 4], 0)


def test_a_broker_announcing_a_packet_no_broker_sends_a_publisher_is_dropped_at_once():
    """Four bytes of header announcing megabytes: the connection closes, it does not wait for them."""

    async def run() -> bool:
        served = asyncio.Event()

        async def broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.read(1)
                writer.write(wire.ack(wire.PUBACK, 1) + b"\x30" + wire.remaining_length(LARGEST_ANSWER + 1))
                await writer.drain()
                await reader.read()  # held open: only the client can end it
            finally:
                writer.close()
                # Closed only once its connection_lost has run: a loop closed before that leaves the
                # socket to the garbage collector, a ResourceWarning in whichever test runs next.
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
                served.set()

        server = await asyncio.start_server(broker, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        acknowledged: list[int] = []
        transport, connection = await asyncio.get_running_loop().create_connection(
            lambda: Connection(acknowledged.extend), "127.0.0.1", port
        )
        transport.write(wire.connect("bridge"))
        try:
            await asyncio.wait_for(connection.closed, 10)
        except TimeoutError:
            return False
        finally:
            transport.abort()
            await served.wait()
            server.close()
            await server.wait_closed()
        return acknowledged == [1]  # what came before the bad packet still counts

    assert asyncio.run(run())
