"""How the embedded broker hands its clients' bytes to their transports, and reads their PUBACKs.

A sample that comes alone in its read (a paced publisher) is written to each subscriber at once; a
burst read in one go is gathered into one write per subscriber at the end of the loop's turn; and
what a connection is sent after its first write of a turn is gathered behind it, in order. A read
that is one whole PUBACK ends its delivery as the framed way does. The transports here record what
the broker hands them: the broker is the real one, driven as its listeners drive it. The last
test sends a real client's PUBACKs over TCP, in every shape a read can give them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import raw_mqtt
from conftest import Home
from embedded import embedded_broker

from radio.broker.server import EmbeddedBroker
from radio.config import Address
from radio.registry import LiveRegistry

TOPIC = "networks/A"


def _string(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def _packet(first: int, body: bytes) -> bytes:
    assert len(body) < 128
    return bytes((first, len(body))) + body


def _publish(seq: int, qos: int = 0, pid: int = 0) -> bytes:
    ident = pid.to_bytes(2, "big") if qos else b""
    return _packet(0x30 | qos << 1, _string(TOPIC) + ident + b'{"seq":%d}' % seq)


class Recorded:
    """A transport that records each write the broker makes (the broker's ``Link``)."""

    transport = None

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.written = asyncio.Event()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.written.set()

    def buffered(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def drained(self) -> Any:
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    def close(self, linger: bool = False) -> None:
        del linger
        self.closed = True


async def _connected(
    broker: Any, client: str, credentials: tuple[str, str] | None = None
) -> tuple[Any, Recorded]:
    link = Recorded()
    connection = broker._open(link, "tcp", ("127.0.0.1", 10_000 + len(broker.connections)))
    flags, tail = 0x02, b""
    if credentials is not None:
        flags, tail = 0xC2, _string(credentials[0]) + _string(credentials[1])
    connection.data_received(
        _packet(0x10, _string("MQTT") + bytes((4, flags, 0, 60)) + _string(client) + tail)
    )
    await link.written.wait()
    assert link.writes.pop(0) == b"\x20\x02\x00\x00"
    return connection, link


async def _subscribed(broker: Any, client: str, qos: int, home: Home) -> tuple[Any, Recorded]:
    connection, link = await _connected(broker, client, ("reader_a", home.secrets["reader_a"]))
    link.written.clear()
    connection.data_received(_packet(0x82, b"\x00\x01" + _string(TOPIC) + bytes((qos,))))
    await link.written.wait()
    await asyncio.sleep(0)
    assert link.writes.pop(0) == bytes((0x90, 3, 0, 1, qos))
    return connection, link


def _run(home: Home, scenario: Any) -> None:
    async def main() -> None:
        embedded = EmbeddedBroker(
            LiveRegistry(home.config), mqtt=Address("127.0.0.1", 0), websocket=Address("127.0.0.1", 0)
        )
        await embedded.start()
        try:
            await scenario(embedded._radio)
        finally:
            await embedded.stop()

    asyncio.run(main())


def test_a_lone_sample_goes_out_at_once_and_a_burst_in_one_write_per_subscriber(home):
    async def scenario(broker: Any) -> None:
        readers = [await _subscribed(broker, f"r{i}", 0, home) for i in range(3)]
        publisher, _ = await _connected(broker, "gen", ("gen", home.secrets["gen"]))
        await asyncio.sleep(0)

        publisher.data_received(_publish(1))  # alone in its read: written before the turn ends
        assert [link.writes for _, link in readers] == [[_publish(1)]] * 3
        publisher.data_received(_publish(2))  # the same turn: gathered behind the first
        assert [link.writes for _, link in readers] == [[_publish(1)]] * 3
        await asyncio.sleep(0)
        assert [link.writes for _, link in readers] == [[_publish(1), _publish(2)]] * 3

        for _, link in readers:
            link.writes.clear()
        publisher.data_received(b"".join(_publish(k) for k in range(3, 8)))  # a burst in one read
        assert [link.writes for _, link in readers] == [[]] * 3
        await asyncio.sleep(0)
        burst = b"".join(_publish(k) for k in range(3, 8))
        assert [link.writes for _, link in readers] == [[burst]] * 3

    _run(home, scenario)


def test_a_lone_puback_ends_its_delivery_and_a_zero_packet_id_still_closes(home):
    async def scenario(broker: Any) -> None:
        reader, link = await _subscribed(broker, "r", 1, home)
        publisher, _ = await _connected(broker, "gen", ("gen", home.secrets["gen"]))
        session = reader.session
        for seq in (1, 2):
            publisher.data_received(_publish(seq, qos=1, pid=seq))
        await asyncio.sleep(0)
        assert sorted(session.inflight) == [1, 2]
        reader.data_received(b"\x40\x02\x00\x01")  # one whole PUBACK
        assert sorted(session.inflight) == [2]
        reader.data_received(b"\x40\x02")  # one split across reads: the framed way
        reader.data_received(b"\x00\x02")
        assert session.inflight == {}
        assert not reader.closed

        reader.data_received(b"\x40\x02\x00\x00")  # packet id 0 is malformed [MQTT-2.3.1-1]
        assert reader.closed
        assert link.closed

    _run(home, scenario)


@pytest.mark.parametrize("qos", [0, 1])
def test_what_a_subscriber_is_sent_keeps_its_order_across_lone_and_burst_reads(home, qos):
    async def scenario(broker: Any) -> None:
        reader, link = await _subscribed(broker, "r", qos, home)
        publisher, _ = await _connected(broker, "gen", ("gen", home.secrets["gen"]))
        await asyncio.sleep(0)
        publisher.data_received(_publish(1, qos, 1))
        publisher.data_received(_publish(2, qos, 2) + _publish(3, qos, 3))
        publisher.data_received(_publish(4, qos, 4))
        await asyncio.sleep(0)
        publisher.data_received(_publish(5, qos, 5))
        await asyncio.sleep(0)
        received = b"".join(link.writes)
        sequence = [int(part.split(b"}")[0]) for part in received.split(b'{"seq":')[1:]]
        assert sequence == [1, 2, 3, 4, 5]
        assert len(link.writes) == 3  # the first of a turn at once, the rest of it gathered
        del reader

    _run(home, scenario)


def test_over_tcp_every_shape_of_puback_lets_the_next_sample_go(home):
    """A real client's PUBACKs, whole, split, glued to a PINGREQ, doubled or for no delivery, each
    end their delivery as the framed way does: with one delivery unacknowledged at a time, the
    next sample comes only once the one before it is acknowledged."""
    home.config.write_text(home.config.read_text() + "[broker]\nmax_inflight = 1\n")
    with embedded_broker(home) as broker:
        port = broker.mqtt_port
        reader = raw_mqtt.session(port, "r", "reader_a", home.secrets["reader_a"])
        reader.sendall(raw_mqtt.subscribe(TOPIC, qos=1))
        assert raw_mqtt.read_packet(reader)[0] == 0x90
        # A PUBACK for no delivery in the same read as the CONNECT: taken, and ignored.
        early = raw_mqtt.open_socket(port)
        early.sendall(raw_mqtt.connect("early", "reader_a", home.secrets["reader_a"]) + raw_mqtt.puback(7))
        assert raw_mqtt.read_packet(early) == (0x20, b"\x00\x00")
        publisher = raw_mqtt.session(port, "gen", "gen", home.secrets["gen"])
        for seq in range(5):
            publisher.sendall(_publish(seq, qos=1, pid=seq + 1))
            assert raw_mqtt.read_packet(publisher)[0] == 0x40

        def sample() -> tuple[int, bytes]:
            first, body = raw_mqtt.read_packet(reader)
            assert first == 0x32
            _, payload = raw_mqtt.published(body, 1)
            return int(payload.split(b":")[1].rstrip(b"}")), body[2 + len(TOPIC) : 4 + len(TOPIC)]

        seq, pid = sample()
        assert seq == 0
        reader.sendall(b"\x40\x02" + pid)  # whole, in one read
        seq, pid = sample()
        assert seq == 1
        reader.sendall(b"\x40\x02")  # split across two writes
        reader.sendall(pid)
        seq, pid = sample()
        assert seq == 2
        reader.sendall(b"\x40\x02" + pid + b"\xc0\x00")  # glued to a PINGREQ
        answers = dict([raw_mqtt.read_packet(reader), raw_mqtt.read_packet(reader)])
        assert answers.keys() == {0x32, 0xD0}  # the next sample and the PINGRESP
        third = answers[0x32][2 + len(TOPIC) : 4 + len(TOPIC)]
        reader.sendall(b"\xc0\x00")
        assert raw_mqtt.read_packet(reader)[0] == 0xD0  # nothing else came: one unacknowledged
        reader.sendall(raw_mqtt.puback(int.from_bytes(pid, "big")))  # sample 2's again: no delivery now
        reader.sendall(raw_mqtt.puback(999))  # one for no delivery at all
        reader.sendall(b"\xc0\x00")
        assert raw_mqtt.read_packet(reader)[0] == 0xD0  # both ignored: still open, sample 4 not sent
        reader.sendall(b"\x40\x02" + third)
        assert sample()[0] == 4
        early.sendall(b"\xc0\x00")
        assert raw_mqtt.read_packet(early)[0] == 0xD0
        reader.close()
        early.close()
        publisher.close()
