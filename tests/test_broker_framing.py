"""The broker cuts a byte stream into the same packets however the socket splits it, and a PUBLISH's
bytes are the same whether built once or per delivery."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radio.broker.message import Message
from radio.wire import Framer, Violation, remaining_length, string

bodies = st.lists(
    st.tuples(st.sampled_from([0x30, 0x32, 0x40, 0x82, 0xC0]), st.binary(max_size=400)),
    min_size=1,
    max_size=12,
)


def framed(packets: list[tuple[int, bytes]]) -> bytes:
    return b"".join(bytes((first,)) + remaining_length(len(body)) + body for first, body in packets)


@settings(max_examples=300, deadline=None)
@given(packets=bodies, cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=8))
def test_any_split_of_the_stream_gives_the_same_packets(packets, cuts):
    stream = framed(packets)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    framer = Framer(limit=1000)
    got: list[tuple[int, bytes]] = []
    for start, end in zip([0, *points], [*points, len(stream)], strict=True):
        got.extend(framer.feed(stream[start:end]))
    assert got == packets
    assert framer.pending == 0


def test_a_length_over_four_bytes_or_the_limit_is_refused():
    with pytest.raises(Violation, match="longer than 4 bytes"):
        Framer(limit=1 << 28).feed(b"\x30\xff\xff\xff\xff\x01")
    framer = Framer(limit=100)
    assert framer.feed(b"\x30") == []  # the length has not arrived: nothing yet, nothing refused
    with pytest.raises(Violation, match="over the limit of 100"):
        framer.feed(b"\xc8\x01")  # 200 bytes, known before any of the body is read


@pytest.mark.parametrize(("qos", "dup", "retain"), [(1, False, False), (2, False, False), (1, True, True)])
def test_a_qos_1_or_2_publish_carries_its_packet_id_and_flags(qos, dup, retain):
    message = Message("networks/a", b"x" * 300, qos)
    topic = string("networks/a")
    for pid in (1, 258, 65_535):
        first = 0x30 | qos << 1 | (0x08 if dup else 0) | (0x01 if retain else 0)
        expected = bytes((first,)) + remaining_length(len(topic) + 2 + 300) + topic
        expected += pid.to_bytes(2, "big") + b"x" * 300
        assert message.packet(qos, pid, dup=dup, retain=retain) == expected
