"""MQTT 5 clients are told why: every refusal of the embedded broker as a reason code and string.

Raw MQTT 5 packets on a real broker: the code and the reason string are read off the wire, as a
client library would hand them over. The strings are the HTTP door's own words.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from conftest import Home
from raw_mqtt import (
    closed_by_peer,
    connect5,
    open_socket,
    publish5,
    published5,
    read_packet,
    reason,
    session5,
    subscribe5,
)

from radio import samples
from radio.broker.thread import BrokerThread
from radio.config import Address
from radio.keys import Terms
from radio.registry import LiveRegistry
from radio.wire import framing, reasons
from radio.wire import properties as props

CONFIG = """\
[networks.A]
schema = "speed.schema.json"
max_payload = 200

[networks.B]
public = false

[networks.C]

[broker]
max_packet_size = 4096
anonymous_max_sessions_per_address = 1
"""
SCHEMA = {"type": "object", "properties": {"speed": {"type": "number", "minimum": 0}}}


@pytest.fixture
def radio(home: Home) -> Iterator[BrokerThread]:
    """A broker whose network A has a schema and a size limit, and a quota key."""
    home.config.write_text(CONFIG)
    (home.path / "speed.schema.json").write_text(json.dumps(SCHEMA))
    home.add_key("quota", publish=["A"], terms=Terms(quota=1))
    home.add_key("plain", publish=["C"])
    home.add_key("soon", publish=["A"], terms=Terms(expires=datetime.now(UTC) - timedelta(seconds=1)))
    with BrokerThread(
        LiveRegistry(home.config), mqtt=Address("127.0.0.1", 0), websocket=Address("127.0.0.1", 0)
    ) as running:
        yield running


def connack(radio: BrokerThread, *args: object, **kwargs: object) -> tuple[int, str | None]:
    with open_socket(radio.mqtt_port) as sock:
        sock.sendall(connect5(*args, **kwargs))  # type: ignore[arg-type]
        first, body = read_packet(sock)
    assert first == 0x20
    return reason(body, 1)


@pytest.mark.parametrize(
    ("key", "secret"),
    [("gen", "wrong"), ("nobody", "whatever"), ("soon", None)],
    ids=["wrong secret", "unknown key", "expired key"],
)
def test_a_key_that_is_not_valid_gets_connack_0x86(radio, home, key, secret) -> None:
    got = connack(radio, "c", key, secret or home.secrets[key])
    assert got == (reasons.BAD_USER_NAME_OR_PASSWORD, "API-KEY not valid")


def test_a_revoked_key_gets_connack_0x86_and_its_connection_disconnect_0x98(radio, home) -> None:
    sock, _ = session5(radio.mqtt_port, "doomed", "reader_a", home.secrets["reader_a"])
    with sock:
        home.store().revoke("reader_a")
        first, body = read_packet(sock)
        assert (first, reason(body, 0)) == (0xE0, (reasons.ADMINISTRATIVE_ACTION, "API-KEY not valid"))
    assert connack(radio, "c", "reader_a", home.secrets["reader_a"])[0] == reasons.BAD_USER_NAME_OR_PASSWORD


def test_a_will_the_key_may_not_publish_gets_connack_0x87(radio, home) -> None:
    got = connack(radio, "c", "gen", home.secrets["gen"], will=("networks/B", b"{}"))
    assert got[0] == reasons.NOT_AUTHORIZED
    assert got[1] is not None
    assert got[1].startswith("You cannot broadcast to this channel")


def test_an_anonymous_will_to_a_private_network_gets_connack_0x87_and_a_log_line_that_says_so(
    radio, caplog
) -> None:
    with caplog.at_level(logging.WARNING, logger="radio.broker"):
        got = connack(radio, "c", will=("networks/B", b"{}"))
    assert got[0] == reasons.NOT_AUTHORIZED
    said = [r.getMessage() for r in caplog.records if "will" in r.getMessage()]
    assert any("an anonymous client may not publish its will to 'networks/B'" in line for line in said), said


def test_anonymous_clients_past_their_caps_get_connack_0x97(radio) -> None:
    expiry = {props.SESSION_EXPIRY: 60}
    first, _ = session5(radio.mqtt_port, "one", None, None, properties=expiry)
    with first:
        code, says = connack(radio, "two", properties=expiry)
    assert code == reasons.QUOTA_EXCEEDED
    assert says is not None
    assert "anonymous" in says


def strict_reading(payload: bytes) -> str | None:
    """Why ``samples.parse`` refuses a payload (None: it is a JSON object)."""
    try:
        data = samples.parse(payload)
    except samples.NotJSON as exc:
        return str(exc)
    return None if isinstance(data, dict) else "the sample is not a JSON object"


@pytest.mark.parametrize(
    "payload",
    [
        b'{"speed": NaN}',
        b'{"speed": 1e999}',
        b'{"s": "\\ud800"}',
        b"[1, 2]",
        b"[" * 1_000 + b"]" * 1_000,
        b'{"big": ' + b"9" * 400 + b"}",
        b'{"speed": 1.5e300}',
    ],
    ids=["nan", "1e999", "surrogate", "array", "1000-deep", "400-digit-int", "1.5e300"],
)
def test_a_sample_no_schema_reads_gets_the_strict_reading_s_verdict_and_words(radio, home, payload) -> None:
    """Network C has no schema: the broker checks its samples without reading their values, and
    answers what the strict reading would, in its words."""
    plain, _ = session5(radio.mqtt_port, "plain", "plain", home.secrets["plain"])
    why = strict_reading(payload)
    with plain:
        plain.sendall(publish5("networks/C", payload, 1, packet_id=1))
        first, body = read_packet(plain)
    code, says = reason(body)
    assert first == 0x40
    if why is None:
        assert code == reasons.SUCCESS
    else:
        assert (code, says) == (reasons.PAYLOAD_FORMAT_INVALID, why)


def test_refused_publishes_get_their_reason_in_puback_and_pubrec(radio, home) -> None:
    gen, _ = session5(radio.mqtt_port, "gen", "gen", home.secrets["gen"])
    quota, _ = session5(radio.mqtt_port, "quota", "quota", home.secrets["quota"])
    cases = [
        (gen, "networks/B", b'{"speed": 1}', reasons.NOT_AUTHORIZED, "You cannot broadcast to this channel"),
        (gen, "networks/A", b'{"speed": NaN}', reasons.PAYLOAD_FORMAT_INVALID, "not JSON"),
        (gen, "networks/A", b'{"speed": -1}', reasons.PAYLOAD_FORMAT_INVALID, "schema"),
        (
            gen,
            "networks/A",
            json.dumps({"pad": "x" * 300}).encode(),
            reasons.IMPLEMENTATION_SPECIFIC_ERROR,
            "too large",
        ),
        (quota, "networks/A", b'{"speed": 1}', reasons.SUCCESS, None),
        (quota, "networks/A", b'{"speed": 2}', reasons.QUOTA_EXCEEDED, "quota exceeded"),
    ]
    with gen, quota:
        for number, (sock, topic, payload, code, words) in enumerate(cases, 1):
            for qos, kind in ((1, 0x40), (2, 0x50)):
                if code == reasons.SUCCESS and qos == 2:
                    continue
                sock.sendall(publish5(topic, payload, qos, packet_id=number))
                first, body = read_packet(sock)
                got, says = reason(body)
                assert (first, got) == (kind, code), (topic, payload)
                if words is not None:
                    assert says is not None
                    assert words in says


def test_a_client_that_wants_no_problem_information_gets_codes_alone(radio, home) -> None:
    sock, _ = session5(
        radio.mqtt_port, "terse", "gen", home.secrets["gen"], properties={props.REQUEST_PROBLEM_INFO: 0}
    )
    with sock:
        sock.sendall(publish5("networks/B", b"{}", 1))
        assert read_packet(sock) == (0x40, b"\x00\x01" + bytes([reasons.NOT_AUTHORIZED]) + b"\x00")


@pytest.mark.parametrize("ident", [props.REQUEST_PROBLEM_INFO, props.REQUEST_RESPONSE_INFO])
@pytest.mark.parametrize("value", [2, 255])
def test_a_request_flag_other_than_0_or_1_gets_connack_0x82(radio, home, ident, value) -> None:
    code, says = connack(radio, "c", "gen", home.secrets["gen"], properties={ident: value})
    assert code == reasons.PROTOCOL_ERROR
    assert says is not None
    assert "other than 0 or 1" in says


def test_a_filter_the_key_may_not_read_gets_suback_0x87(radio, home) -> None:
    sock, _ = session5(radio.mqtt_port, "reader", "reader_a", home.secrets["reader_a"])
    with sock:
        sock.sendall(subscribe5("networks/B/#", 1))
        first, body = read_packet(sock)
    assert first == 0x90
    found, at = props.decode(body, 2)
    assert body[at:] == bytes([reasons.NOT_AUTHORIZED])
    assert "may not read" in found[props.REASON_STRING]


def test_a_suback_names_a_few_of_the_filters_refused_however_many_and_long(broker, home) -> None:
    sock, _ = session5(broker.mqtt_port, "greedy", "reader_a", home.secrets["reader_a"])
    filters = [f"networks/B/{n}/" + "x" * 20_000 for n in range(5)]
    body = b"\x00\x01\x00" + b"".join(framing.string(f) + b"\x01" for f in filters)  # id 1, no properties
    with sock:
        sock.sendall(framing.packet(0x82, body))
        first, answer = read_packet(sock)
    assert first == 0x90
    found, at = props.decode(answer, 2)
    assert answer[at:] == bytes([reasons.NOT_AUTHORIZED]) * 5
    says = found[props.REASON_STRING]
    assert says.startswith("this key may not read 'networks/B/0/xxx")
    assert says.endswith(" and 2 more")
    assert len(says) < 1_000


def test_a_reason_string_that_would_not_fit_the_client_s_packet_size_is_left_out(radio, home) -> None:
    """MQTT-3.1.2-25: nothing larger than the client's Maximum Packet Size; the code alone still goes."""
    sock, _ = session5(
        radio.mqtt_port, "tiny", "gen", home.secrets["gen"], properties={props.MAXIMUM_PACKET_SIZE: 16}
    )
    with sock:
        sock.sendall(publish5("networks/B", b"{}", 1))  # gen may not publish to B
        assert read_packet(sock) == (0x40, b"\x00\x01" + bytes([reasons.NOT_AUTHORIZED]) + b"\x00")
        sock.sendall(subscribe5("networks/B/#", 1))  # nor read it
        assert read_packet(sock) == (0x90, b"\x00\x01\x00" + bytes([reasons.NOT_AUTHORIZED]))
        sock.sendall(bytes((0xF0, 0)))  # AUTH: a protocol error, told by a DISCONNECT
        assert read_packet(sock) == (0xE0, bytes([reasons.PROTOCOL_ERROR, 0]))


def test_a_connack_never_outgrows_the_client_s_packet_size(radio, home) -> None:
    """MQTT-3.1.2-24: nothing larger than the client's Maximum Packet Size, a CONNACK included. A
    refusal goes without its reason string (MQTT-3.2.2-19); an acceptance without its Topic Alias
    Maximum (absent, the client sends no alias, which the broker never needs). A client whose size
    cannot hold the rest (an assigned client id, terms it must follow) is refused with the code
    alone, 0x95, rather than sent what it cannot take."""
    most = 13  # the broker's receive maximum and packet size: 13 bytes; with its topic aliases, 16

    def answered(client_id: str, secret: str) -> bytes:
        with open_socket(radio.mqtt_port) as sock:
            sock.sendall(connect5(client_id, "gen", secret, properties={props.MAXIMUM_PACKET_SIZE: most}))
            first, body = read_packet(sock)
        assert first == 0x20
        assert 2 + len(body) <= most
        return body

    assert answered("tiny", "wrong") == bytes([0, reasons.BAD_USER_NAME_OR_PASSWORD, 0])
    accepted = answered("tiny", home.secrets["gen"])
    assert accepted[:2] == bytes([0, reasons.SUCCESS])
    terms, _ = props.decode(accepted, 2)
    assert terms == {props.RECEIVE_MAXIMUM: 20, props.MAXIMUM_PACKET_SIZE: 1 + 2 + 4096}
    assert answered("", home.secrets["gen"]) == bytes([0, reasons.PACKET_TOO_LARGE, 0])  # an id to assign


def test_a_session_taken_over_is_told_so(radio, home) -> None:
    old, _ = session5(radio.mqtt_port, "same", "reader_a", home.secrets["reader_a"])
    new, _ = session5(radio.mqtt_port, "same", "reader_a", home.secrets["reader_a"])
    with old, new:
        first, body = read_packet(old)
    assert (first, reason(body, 0)[0]) == (0xE0, reasons.SESSION_TAKEN_OVER)


def test_a_silent_client_is_told_its_keep_alive_ran_out(radio, home) -> None:
    sock, _ = session5(radio.mqtt_port, "quiet", "reader_a", home.secrets["reader_a"], keep_alive=1)
    with sock:
        first, body = read_packet(sock)
    assert (first, reason(body, 0)[0]) == (0xE0, reasons.KEEP_ALIVE_TIMEOUT)


def test_a_packet_over_the_limit_gets_disconnect_0x95(radio, home) -> None:
    sock, found = session5(radio.mqtt_port, "big", "admin", home.secrets["admin"])
    assert found[props.MAXIMUM_PACKET_SIZE] == 1 + 2 + 4096  # the fixed header, its length in 2 bytes
    with sock:
        sock.sendall(publish5("other", b"x" * 5000))
        first, body = read_packet(sock)
    assert (first, reason(body, 0)[0]) == (0xE0, reasons.PACKET_TOO_LARGE)


def sized_publish(topic: str, total: int) -> bytes:
    """A QoS 1 PUBLISH of a sample, exactly ``total`` bytes long, fixed header included."""
    for length in range(total - 40, total):
        packet = publish5(topic, b'{"x": "' + b"x" * length + b'"}', 1)
        if len(packet) == total:
            return packet
    raise AssertionError(total)


def test_a_packet_of_the_maximum_size_the_connack_gives_is_taken(radio, home) -> None:
    """MQTT counts the fixed header in the Maximum Packet Size: a client may send a packet that large."""
    sock, found = session5(radio.mqtt_port, "edge", "plain", home.secrets["plain"])
    most = found[props.MAXIMUM_PACKET_SIZE]
    with sock:
        sock.sendall(sized_publish("networks/C", most))
        first, body = read_packet(sock)
    assert (first, reason(body)[0]) == (0x40, reasons.SUCCESS)
    sock, _ = session5(radio.mqtt_port, "edge", "plain", home.secrets["plain"])
    with sock:
        sock.sendall(sized_publish("networks/C", most + 1))
        first, body = read_packet(sock)
    assert (first, reason(body, 0)[0]) == (0xE0, reasons.PACKET_TOO_LARGE)


def test_qos_2_samples_past_the_receive_maximum_get_disconnect_0x93(radio, home) -> None:
    sock, found = session5(radio.mqtt_port, "greedy", "gen", home.secrets["gen"])
    most = found[props.RECEIVE_MAXIMUM]
    with sock:
        for pid in range(1, most + 2):
            sock.sendall(publish5("networks/A", b'{"speed": 1}', 2, packet_id=pid))
        for _ in range(most):
            assert read_packet(sock)[0] == 0x50
        first, body = read_packet(sock)
    assert (first, reason(body, 0)[0]) == (0xE0, reasons.RECEIVE_MAXIMUM_EXCEEDED)


def test_an_auth_packet_gets_disconnect_0x82(radio, home) -> None:
    """The broker takes no authentication method, so a client may send no AUTH (MQTT 5.0, 4.12)."""
    sock, _ = session5(radio.mqtt_port, "auth", "gen", home.secrets["gen"])
    with sock:
        sock.sendall(b"\xf0\x00")  # AUTH, no reason code: 0x00 success
        first, body = read_packet(sock)
    assert (first, reason(body, 0)[0]) == (0xE0, reasons.PROTOCOL_ERROR)


@pytest.mark.parametrize(("alias", "code"), [(0, reasons.TOPIC_ALIAS_INVALID), (9, reasons.PROTOCOL_ERROR)])
def test_a_bad_topic_alias_gets_disconnect(radio, home, alias, code) -> None:
    sock, _ = session5(radio.mqtt_port, "alias", "gen", home.secrets["gen"])
    with sock:
        sock.sendall(publish5("", b"{}", properties={props.TOPIC_ALIAS: alias}))
        first, body = read_packet(sock)
    assert (first, reason(body, 0)[0]) == (0xE0, code)


@pytest.mark.parametrize(
    ("ident", "value"),
    [
        (props.SESSION_EXPIRY, 5),
        (props.AUTHENTICATION_METHOD, "x"),
        (props.SERVER_REFERENCE, "mqtt://elsewhere"),
    ],
)
def test_a_publish_with_a_property_it_may_not_carry_gets_disconnect_0x81(radio, home, ident, value) -> None:
    """A property not valid in a PUBLISH makes it malformed (MQTT 5.0, 2.2.2.2): it is not taken,
    and its listeners get nothing."""
    reader, _ = session5(radio.mqtt_port, "listening", "reader_a", home.secrets["reader_a"])
    sock, _ = session5(radio.mqtt_port, "stray", "gen", home.secrets["gen"])
    with reader, sock:
        reader.sendall(subscribe5("networks/A", 1))
        assert read_packet(reader)[0] == 0x90
        sock.sendall(publish5("networks/A", b'{"speed": 1}', 1, properties={ident: value}))
        first, body = read_packet(sock)
        assert (first, reason(body, 0)[0]) == (0xE0, reasons.MALFORMED_PACKET)
        assert f"property 0x{ident:02x}" in (reason(body, 0)[1] or "")
        reader.settimeout(0.5)
        with pytest.raises(TimeoutError):
            read_packet(reader)


@pytest.mark.parametrize("value", [2, 255])
def test_a_publish_whose_payload_format_is_not_0_or_1_gets_disconnect_0x82(radio, home, value) -> None:
    """The payload format indicator is 0 or 1 (MQTT 5.0, 3.3.2.3.2). Any other byte parses, so
    the packet is not malformed (2.2.2.2), but holds what the protocol does not allow: a protocol
    error (1.2). It is not taken, and its listeners get nothing, while 0 and 1 are passed on."""
    reader, _ = session5(radio.mqtt_port, "listening", "reader_a", home.secrets["reader_a"])
    sock, _ = session5(radio.mqtt_port, "formats", "gen", home.secrets["gen"])
    with reader, sock:
        reader.sendall(subscribe5("networks/A", 0))
        assert read_packet(reader)[0] == 0x90
        for allowed in (0, 1):
            sock.sendall(publish5("networks/A", b'{"speed": 1}', properties={props.PAYLOAD_FORMAT: allowed}))
            assert published5(read_packet(reader)[1], 0)[1] == {props.PAYLOAD_FORMAT: allowed}
        sock.sendall(publish5("networks/A", b'{"speed": 2}', 1, properties={props.PAYLOAD_FORMAT: value}))
        first, body = read_packet(sock)
        assert (first, reason(body, 0)[0]) == (0xE0, reasons.PROTOCOL_ERROR)
        assert "payload format indicator" in (reason(body, 0)[1] or "")
        reader.settimeout(0.5)
        with pytest.raises(TimeoutError):
            read_packet(reader)


def test_a_will_whose_payload_format_is_not_0_or_1_is_refused(radio, home) -> None:
    """The will's properties are a PUBLISH's to be (MQTT 5.0, 3.1.3.2.3): the same rule holds."""
    with open_socket(radio.mqtt_port) as sock:
        sock.sendall(
            connect5(
                "willing",
                "gen",
                home.secrets["gen"],
                will=("networks/A/status", b'{"speed": 0}'),
                will_properties={props.PAYLOAD_FORMAT: 2},
            )
        )
        assert closed_by_peer(sock)  # no CONNACK: the CONNECT is refused before any session


@pytest.mark.parametrize("kind", ["SUBSCRIBE", "UNSUBSCRIBE"])
def test_a_subscribe_or_unsubscribe_with_a_property_it_may_not_carry_gets_disconnect_0x81(
    radio, home, kind
) -> None:
    """A SUBSCRIBE carries a subscription id and user properties, an UNSUBSCRIBE user properties
    alone (MQTT 5.0, 3.8.2.1, 3.10.2.1): any other property makes the packet malformed."""
    stray = props.encode({props.SESSION_EXPIRY: 5})
    if kind == "SUBSCRIBE":
        packet = subscribe5("networks/A", 1, properties={props.SESSION_EXPIRY: 5})
    else:
        body = b"\x00\x01" + stray + len(b"networks/A").to_bytes(2, "big") + b"networks/A"
        packet = bytes((0xA2, len(body))) + body
    sock, _ = session5(radio.mqtt_port, "stray", "reader_a", home.secrets["reader_a"])
    with sock:
        sock.sendall(packet)
        first, body = read_packet(sock)
    assert (first, reason(body, 0)[0]) == (0xE0, reasons.MALFORMED_PACKET)
    assert f"{kind} with property 0x{props.SESSION_EXPIRY:02x}" in (reason(body, 0)[1] or "")


@pytest.mark.parametrize(
    ("options", "code"),
    [
        (0x03, reasons.PROTOCOL_ERROR),
        (0x31, reasons.PROTOCOL_ERROR),
        (0x41, reasons.MALFORMED_PACKET),
        (0x81, reasons.MALFORMED_PACKET),
    ],
    ids=["QoS 3", "retain handling 3", "reserved bit 6", "reserved bit 7"],
)
def test_subscription_options_mqtt_forbids_get_the_disconnect_it_names(radio, home, options, code) -> None:
    """A maximum QoS or a retain handling of 3 is a protocol error (MQTT 5.0, 3.8.3.1); a reserved
    bit set makes the SUBSCRIBE malformed (MQTT-3.8.3-5)."""
    sock, _ = session5(radio.mqtt_port, "options", "reader_a", home.secrets["reader_a"])
    with sock:
        sock.sendall(subscribe5("networks/A", options))
        first, body = read_packet(sock)
    assert (first, reason(body, 0)[0]) == (0xE0, code)


def test_a_packet_past_the_most_user_properties_gets_disconnect_0x97(radio, home) -> None:
    """Each user property costs the broker's one thread to read, before any right is checked: an
    anonymous client (who may publish nothing) is closed at the first past the bound, and the
    broker goes on serving others; up to the bound a sample keeps them all."""
    reader, _ = session5(radio.mqtt_port, "listening", "reader_a", home.secrets["reader_a"])
    gen, _ = session5(radio.mqtt_port, "many", "gen", home.secrets["gen"])
    anonymous, _ = session5(radio.mqtt_port, "flood", None, None)
    most = [("k", "v")] * 100  # props.MOST_REPEATED
    with reader, gen, anonymous:
        reader.sendall(subscribe5("networks/A", 0))
        assert read_packet(reader)[0] == 0x90
        anonymous.sendall(
            publish5("networks/A", b"{}", properties={props.USER_PROPERTY: [*most, ("k", "v")]})
        )
        first, body = read_packet(anonymous)
        assert (first, reason(body, 0)[0]) == (0xE0, reasons.QUOTA_EXCEEDED)
        gen.sendall(publish5("networks/A", b'{"speed": 1}', properties={props.USER_PROPERTY: most}))
        first, body = read_packet(reader)
        assert first >> 4 == 3
        assert published5(body, 0)[1][props.USER_PROPERTY] == most


def test_the_gates_codes_are_those_mqtt5_allows_in_puback() -> None:
    """A client library may reject a code its packet type does not allow (paho does)."""
    for code in reasons.GATE.values():
        assert code in reasons.ALLOWED["PUBACK"]
