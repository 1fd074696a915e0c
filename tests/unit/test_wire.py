"""radio.wire: every packet survives its own encoder and decoder, the framer cuts any chunking the
same way, and bad bytes raise Violation, never another exception."""

from __future__ import annotations

import contextlib
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radio import wire
from radio.broker.message import Message
from radio.errors import RadioError
from radio.wire import mqtt5
from radio.wire import properties as props

PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

texts = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)
topics = texts.filter(lambda t: t != "" and "+" not in t and "#" not in t)
packet_ids = st.integers(1, 65535)
payloads = st.binary(max_size=300)


def framed(data: bytes) -> tuple[int, bytes]:
    """The one packet ``data`` holds, cut by a Framer: its first byte and body."""
    framer = wire.Framer()
    packets = framer.feed(data)
    assert len(packets) == 1
    assert framer.pending == 0
    return packets[0]


# Round trips: the encoder's bytes, framed and decoded, give back what was encoded.


@PROPERTY
@given(
    client_id=texts,
    username=st.none() | texts,
    password=st.none() | st.binary(max_size=40),
    keep_alive=st.integers(0, 65535),
    clean=st.booleans(),
    will=st.none() | st.tuples(topics, payloads),
    will_qos=st.integers(0, 2),
    will_retain=st.booleans(),
)
def test_a_connect_decodes_to_what_was_encoded(
    client_id, username, password, keep_alive, clean, will, will_qos, will_retain
):
    if password is not None and username is None:
        username = "user"  # a password needs a user name (MQTT-3.1.2-22)
    encoded = wire.connect(
        client_id,
        username,
        password,
        keep_alive,
        clean=clean,
        will=will,
        will_qos=will_qos if will else 0,
        will_retain=will_retain and will is not None,
    )
    first, body = framed(encoded)
    assert wire.check_flags(first) == wire.CONNECT
    request = wire.decode_connect(body)
    assert request.supported
    assert (request.level, request.clean_session, request.keep_alive) == (4, clean, keep_alive)
    assert (request.client_id, request.username) == (client_id, username)
    assert request.password == (None if password is None else password.decode("utf-8", "replace"))
    if will is None:
        assert (request.will_topic, request.will_payload, request.will_qos) == (None, b"", 0)
    else:
        assert (request.will_topic, request.will_payload) == will
        assert (request.will_qos, request.will_retain) == (will_qos, will_retain)


@pytest.mark.parametrize(("name", "level"), [("MQTT", 3), ("MQIsdp", 4), ("MQTT", 5)])
def test_a_connect_of_another_protocol_level_decodes_as_unsupported(name, level):
    first, body = framed(wire.connect("c", protocol=name, level=level))
    assert wire.check_flags(first) == wire.CONNECT
    assert not wire.decode_connect(body).supported


@pytest.mark.parametrize("session_present", [True, False])
@pytest.mark.parametrize("code", [0, 1, 2, 3, 4, 5])
def test_a_connack_decodes_to_what_was_encoded(session_present, code):
    first, body = framed(wire.connack(session_present, code))
    assert wire.check_flags(first) == wire.CONNACK
    # A refusal never says a session is present.
    assert wire.decode_connack(body) == (session_present and code == 0, code)


@PROPERTY
@given(
    topic=topics,
    payload=payloads,
    qos=st.integers(0, 2),
    pid=packet_ids,
    retain=st.booleans(),
    dup=st.booleans(),
    as_bytes=st.booleans(),
)
def test_a_publish_decodes_to_what_was_encoded_and_is_the_brokers_own(
    topic, payload, qos, pid, retain, dup, as_bytes
):
    dup = dup and qos > 0  # DUP is for QoS 1 and 2 (MQTT-3.3.1-2)
    encoded = wire.publish(topic.encode() if as_bytes else topic, payload, qos, pid, retain=retain, dup=dup)
    first, body = framed(encoded)
    assert wire.check_flags(first) == wire.PUBLISH
    assert wire.decode_publish(first, body) == (topic, qos, pid if qos else 0, payload)
    assert (bool(first & 0x01), bool(first & 0x08)) == (retain, dup)
    # The broker builds its PUBLISH once per message, its own way: the same bytes.
    assert Message(topic, payload, qos).packet(qos, pid, retain=retain, dup=dup) == encoded


@pytest.mark.parametrize("kind", [wire.PUBACK, wire.PUBREC, wire.PUBREL, wire.PUBCOMP, wire.UNSUBACK])
@PROPERTY
@given(pid=packet_ids)
def test_an_acknowledgement_decodes_to_its_packet_id(kind, pid):
    first, body = framed(wire.ack(kind, pid))
    assert wire.check_flags(first) == kind  # PUBREL carries its flags 0x2
    assert wire.packet_id(body, "an acknowledgement") == pid


@PROPERTY
@given(pid=packet_ids, pairs=st.lists(st.tuples(texts, st.integers(0, 2)), min_size=1, max_size=8))
def test_a_subscribe_and_its_suback_decode_to_what_was_encoded(pid, pairs):
    first, body = framed(wire.subscribe(pid, pairs))
    assert wire.check_flags(first) == wire.SUBSCRIBE
    assert wire.decode_subscribe(body) == (pid, pairs)
    codes = [qos if wire.valid_filter(f) else wire.SUBSCRIBE_FAILURE for f, qos in pairs]
    first, body = framed(wire.suback(pid, codes))
    assert wire.check_flags(first) == wire.SUBACK
    assert wire.decode_suback(body) == (pid, codes)


@PROPERTY
@given(pid=packet_ids, filters=st.lists(texts, min_size=1, max_size=8))
def test_an_unsubscribe_decodes_to_what_was_encoded(pid, filters):
    first, body = framed(wire.unsubscribe(pid, filters))
    assert wire.check_flags(first) == wire.UNSUBSCRIBE
    assert wire.decode_unsubscribe(body) == (pid, filters)


@pytest.mark.parametrize(
    ("encoded", "kind"),
    [
        (wire.PINGREQ_PACKET, wire.PINGREQ),
        (wire.PINGRESP_PACKET, wire.PINGRESP),
        (wire.DISCONNECT_PACKET, wire.DISCONNECT),
    ],
)
def test_the_bodiless_packets_frame_as_their_type(encoded, kind):
    first, body = framed(encoded)
    assert (wire.check_flags(first), body) == (kind, b"")


@PROPERTY
@given(n=st.integers(1, wire.MQTT_LIMIT))
def test_every_remaining_length_mqtt_can_express_reads_back(n):
    header = wire.remaining_length(n)
    assert len(header) == 1 + (n >= 128) + (n >= 16_384) + (n >= 2_097_152)
    framer = wire.Framer()
    assert framer.feed(b"\x30" + header) == []  # the length is read before the body comes
    assert framer.missing == n


# The framer: any chunking of a stream gives the same packets.

streams = st.lists(
    st.sampled_from(
        [
            wire.connect("c", "user", "secret", will=("networks/A", b"{}")),
            wire.connack(session_present=True, code=0),
            wire.publish("networks/A", b'{"n": 1}', 1, 7),
            wire.publish("networks/B", b"x" * 200, 0),  # a remaining length of two bytes
            wire.publish("networks/C", b"y" * 20_000, 2, 9),  # of three bytes
            wire.ack(wire.PUBACK, 7),
            wire.ack(wire.PUBREL, 9),
            wire.subscribe(3, [("networks/#", 1), ("networks/+/x", 0)]),
            wire.suback(3, [1, 0x80]),
            wire.unsubscribe(4, ["networks/#"]),
            wire.PINGREQ_PACKET,
            wire.DISCONNECT_PACKET,
        ]
    ),
    min_size=1,
    max_size=12,
)


def expected(packets: list[bytes]) -> list[tuple[int, bytes]]:
    return [framed(p) for p in packets]


@PROPERTY
@given(packets=streams)
def test_the_framer_fed_one_byte_at_a_time_gives_every_packet(packets):
    stream, framer, got = b"".join(packets), wire.Framer(), []
    for i in range(len(stream)):
        got += framer.feed(stream[i : i + 1])
    assert got == expected(packets)
    assert framer.pending == 0


def chunked(packets: list[bytes], data: st.DataObject) -> list[bytes]:
    """The packets' stream cut at up to 20 places Hypothesis draws: reads as a socket may give them."""
    stream = b"".join(packets)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    return [stream[start:end] for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True)]


@PROPERTY
@given(packets=streams, data=st.data())
def test_the_framer_fed_any_chunking_gives_every_packet(packets, data):
    framer, got = wire.Framer(), []
    for chunk in chunked(packets, data):
        got += framer.feed(chunk)
    assert got == expected(packets)
    assert framer.pending == 0


@PROPERTY
@given(packets=streams, data=st.data())
def test_reads_taken_whole_where_they_can_be_and_fed_otherwise_give_every_packet(packets, data):
    """The broker asks ``whole`` first (a paced client's read is one packet), then ``feed``."""
    framer, got = wire.Framer(), []
    for chunk in chunked(packets, data):
        at = framer.whole(chunk)
        got += [(chunk[0], chunk[at:])] if at else framer.feed(chunk)
    assert got == expected(packets)
    assert framer.pending == 0


def test_a_read_is_whole_only_if_it_is_exactly_one_packet_with_nothing_waiting():
    framer, one = wire.Framer(), wire.publish("t", b"x" * 200)  # a remaining length of 2 bytes
    assert framer.whole(one) == 3
    assert framer.whole(wire.PINGREQ_PACKET) == 2
    assert framer.whole(one + wire.PINGREQ_PACKET) == 0
    assert framer.whole(one[:-1]) == 0
    assert framer.whole(one[:2]) == 0  # its length not all there
    assert framer.feed(one[:10]) == []
    assert framer.whole(one) == 0  # a packet begun before waits: the read continues it


@PROPERTY
@given(packets=streams)
def test_reading_what_the_framer_misses_never_reads_past_a_packet(packets):
    """A reader that must leave what follows a packet in its socket reads ``missing`` bytes at a time."""
    stream, framer, got, at = b"".join(packets), wire.Framer(), [], 0
    while at < len(stream):
        wanted = framer.missing
        assert wanted > 0
        done = framer.feed(stream[at : at + wanted])
        at += wanted
        if done:
            assert len(done) == 1
            assert framer.pending == 0  # the packet ended exactly where the read did
            got += done
    assert got == expected(packets)


def test_leading_pubacks_are_read_in_one_pass_up_to_the_first_other_packet():
    rest = wire.PINGRESP_PACKET + wire.ack(wire.PUBACK, 9)
    data = wire.ack(wire.PUBACK, 1) + wire.ack(wire.PUBACK, 65535) + rest
    assert wire.leading_pubacks(data) == ([1, 65535], 8)
    assert wire.leading_pubacks(wire.ack(wire.PUBACK, 1)[:3]) == ([], 0)  # not all there yet


# Bad bytes: Violation (a RadioError), never another exception.


def test_violation_is_one_of_the_projects_errors():
    assert issubclass(wire.Violation, RadioError)


def test_a_remaining_length_of_five_bytes_is_a_violation():
    with pytest.raises(wire.Violation, match="longer than 4 bytes"):
        wire.Framer().feed(b"\x30\xff\xff\xff\xff\x01")


def test_a_packet_over_the_limit_is_refused_as_soon_as_its_length_is_known():
    framer = wire.Framer(limit=100)
    assert framer.feed(wire.publish("t", b"x" * 95)) != []  # 100 bytes: taken
    with pytest.raises(wire.Violation, match="over the limit of 100"):
        framer.feed(b"\x30\x65")  # 101 announced: refused before any of its body
    with pytest.raises(wire.Violation, match="over the limit of 100"):
        wire.Framer(limit=100).whole(wire.publish("t", b"x" * 98))  # and so when read whole


@PROPERTY
@given(stream=st.binary(max_size=200), limit=st.integers(0, 300))
def test_the_framer_raises_nothing_but_violation_on_any_bytes(stream, limit):
    framer = wire.Framer(limit)
    try:
        packets = framer.feed(stream)
    except wire.Violation:
        return
    assert sum(len(body) for _, body in packets) + framer.pending <= len(stream)


decoders = [
    wire.decode_connect,
    wire.decode_connack,
    wire.decode_subscribe,
    wire.decode_suback,
    wire.decode_unsubscribe,
    lambda body: wire.packet_id(body, "an acknowledgement"),
]


@PROPERTY
@given(body=st.binary(max_size=80), first=st.integers(0, 255), decode=st.sampled_from(decoders))
def test_the_decoders_raise_nothing_but_violation_on_any_bytes(body, first, decode):
    for attempt in (
        lambda: decode(body),
        lambda: wire.decode_publish(first, body),
        lambda: wire.check_flags(first),
    ):
        with contextlib.suppress(wire.Violation):
            attempt()


@pytest.mark.parametrize(
    ("encoded", "decode"),
    [
        (wire.connect("client", "user", "secret", will=("networks/A", b"{}")), wire.decode_connect),
        (wire.connack(session_present=False, code=5), wire.decode_connack),
        (wire.publish("networks/A", b"", 1, 5), lambda body: wire.decode_publish(0x32, body)),
        (wire.subscribe(1, [("networks/#", 1)]), wire.decode_subscribe),
        (wire.suback(1, [1]), wire.decode_suback),
        (wire.unsubscribe(1, ["networks/#"]), wire.decode_unsubscribe),
    ],
)
def test_every_truncation_of_a_body_is_a_violation(encoded, decode):
    _, body = framed(encoded)
    decode(body)
    for cut in range(len(body)):
        with pytest.raises(wire.Violation):
            decode(body[:cut])


@pytest.mark.parametrize(
    ("body", "decode", "clause"),
    [
        (wire.string("MQTT") + bytes((4, 0x03, 0, 60)) + wire.string("c"), wire.decode_connect, "3.1.2-3"),
        (wire.string("HTTP") + bytes((4, 0x02, 0, 60)) + wire.string("c"), wire.decode_connect, "3.1.2-1"),
        (b"\x00\x01\x00\x02\xc3\x28", wire.decode_unsubscribe, "1.5.3-1"),
        (b"\x00\x01" + wire.string("a\x00b"), wire.decode_unsubscribe, "1.5.3-2"),
        (b"\x00\x01" + wire.string("networks/#") + b"\x03", wire.decode_subscribe, "3.8.3-4"),
        (b"\x00\x00" + wire.string("networks/#") + b"\x01", wire.decode_subscribe, "2.3.1-1"),
        (wire.string("networks/+") + b"{}", lambda body: wire.decode_publish(0x30, body), "3.3.2-2"),
        (wire.string("t") + b"{}", lambda body: wire.decode_publish(0x36, body), "3.3.1-4"),
    ],
)
def test_a_malformed_body_names_the_clause_it_breaks(body, decode, clause):
    with pytest.raises(wire.Violation, match=re.escape(f"[MQTT-{clause}]")):
        decode(body)


@pytest.mark.parametrize("first", [0x00, 0xF0, 0x80, 0x63, 0x41])
def test_a_reserved_type_or_wrong_flags_is_a_violation(first):
    with pytest.raises(wire.Violation, match=re.escape("[MQTT-2.2")):
        wire.check_flags(first)


@pytest.mark.parametrize(
    ("encode", "at"),
    [
        (lambda reason: mqtt5.ack(wire.PUBACK, 1, 0x99, reason), 3),
        (lambda reason: mqtt5.suback(wire.SUBACK, 1, [0x87], reason), 2),
        (lambda reason: mqtt5.disconnect(0x81, reason), 1),
        (lambda reason: mqtt5.connack(False, 0x87, {props.REASON_STRING: reason}), 2),  # noqa: FBT003
    ],
    ids=["ack", "suback", "disconnect", "connack"],
)
def test_a_reason_string_quoting_what_a_client_sent_is_cut_short(encode, at):
    """A reason may quote a filter, a field or a name of 65,535 bytes: cut short, it always encodes."""
    _, body = framed(encode("x" * 100_000))
    said = props.decode(body, at)[0][props.REASON_STRING]
    assert len(said) == mqtt5.REASON_MOST
    assert said.endswith("...")
