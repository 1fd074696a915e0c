"""Network names, topic layout and the rights table, without a broker (design sections 2 and 3)."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from radio.config import NetworkSettings
from radio.credentials import secret_digest
from radio.errors import InvalidName, RadioError
from radio.keys import Key, mosquitto_hash, new_secret
from radio.registry import Registry
from radio.topics import NetworkName, Reach, filter_reach, network_of_topic, network_topic


@pytest.mark.parametrize("name", ["a", "sample_net", "City.Traffic-2", "9" * 64])
def test_valid_network_names(name):
    assert NetworkName(name) == name
    assert network_topic(name) == f"networks/{name}"


@pytest.mark.parametrize(
    "name", ["", "a/b", "+", "#", "$SYS", "a+b", "_x", "-x", ".x", "a b", "a\x00", "é", "9" * 65]
)
def test_invalid_network_names(name):
    with pytest.raises(InvalidName, match="invalid network name"):
        NetworkName(name)


@pytest.mark.slow  # thousands of generated names: the fast tier stays under two minutes
@given(st.text(max_size=70))
def test_a_valid_name_never_contains_a_topic_special_character(text):
    try:
        name = NetworkName(text)
    except RadioError:
        return
    assert not set(name) & set("/+#$\x00")
    assert network_of_topic(network_topic(name)) == name


@pytest.mark.parametrize(
    ("topic", "network"),
    [
        ("networks/a", "a"),
        ("networks/a/s1", "a"),
        ("networks/a/", "a"),
        ("networks/", None),
        ("networks", None),
        ("networksa/x", None),
        ("other/a", None),
        ("$SYS/networks/a", None),
    ],
)
def test_the_network_of_a_topic(topic, network):
    assert network_of_topic(topic) == network


@pytest.mark.parametrize(
    ("topic_filter", "reach"),
    [
        ("networks/a", "a"),
        ("networks/a/#", "a"),
        ("networks/a/+/x", "a"),
        ("networks/+", Reach.ANY_NETWORK),
        ("networks/#", Reach.ANY_NETWORK),
        ("#", Reach.ANY_NETWORK),
        ("+/a", Reach.ANY_NETWORK),
        ("networks", Reach.OUTSIDE),
        ("networks/", Reach.OUTSIDE),
        ("other/#", Reach.OUTSIDE),
        ("$SYS/#", Reach.OUTSIDE),
    ],
)
def test_what_a_filter_reaches(topic_filter, reach):
    assert filter_reach(topic_filter) == reach


def key(name, publish=(), subscribe=(), admin=False):
    return Key(
        name,
        secret_digest(name + "-secret"),
        mosquitto_hash(name),
        frozenset(publish),
        frozenset(subscribe),
        admin,
    )


@pytest.fixture
def registry():
    return Registry(
        networks={"a": NetworkSettings(), "b": NetworkSettings(), "pub": NetworkSettings(public=True)},
        keys={
            "gen": key("gen", publish=["a", "gone"]),
            "reader": key("reader", subscribe=["b", "gone"]),
            "ops": key("ops", admin=True),
        },
    )


def test_publish_rights(registry):
    gen = registry.access("gen")
    assert gen.may_publish("networks/a")
    assert gen.may_publish("networks/a/s1")
    assert not gen.may_publish("networks/b")
    assert not gen.may_publish("networks/gone")  # named by the key, but not a configured network
    assert not gen.may_publish("networks/pub")
    assert not gen.may_publish("other/a")
    assert not gen.may_publish("$SYS/a")
    assert not registry.access(None).may_publish("networks/pub")
    assert registry.access("ops").may_publish("$SYS/anything")


def test_read_rights(registry):
    reader = registry.access("reader")
    assert reader.may_read("networks/b/x")
    assert reader.may_read("networks/pub")
    assert not reader.may_read("networks/a")
    assert not reader.may_read("networks/gone")
    assert registry.access(None).may_read("networks/pub/s1")
    assert not registry.access(None).may_read("networks/a")
    assert not registry.access("gen").may_read("networks/a")  # publishing is not reading


def test_subscribe_rights(registry):
    anonymous = registry.access(None)
    assert anonymous.may_subscribe("networks/pub/#")
    assert anonymous.may_subscribe("#")
    assert anonymous.may_subscribe("networks/+/#")
    assert not anonymous.may_subscribe("networks/a/#")
    assert not anonymous.may_subscribe("$SYS/#")
    assert registry.access("reader").may_subscribe("networks/b")
    assert registry.access("ops").may_subscribe("$SYS/#")


def test_an_unknown_or_revoked_key_has_no_rights(registry):
    ghost = registry.access("ghost")
    assert not ghost.may_read("networks/pub")
    assert not ghost.may_subscribe("#")
    assert not ghost.may_publish("networks/a")


def test_authentication(registry):
    assert registry.authenticate("gen", "gen-secret") is registry.keys["gen"]
    assert registry.authenticate("gen", "reader-secret") is None
    assert registry.authenticate("nobody", "nope") is None
    # Any other username is a label: the secret alone names the key.
    assert registry.authenticate("nobody", "gen-secret") is registry.keys["gen"]
    assert registry.key_for_secret("reader-secret") is registry.keys["reader"]
    assert registry.key_for_secret("nope") is None


def test_the_mosquitto_hash_is_pbkdf2_sha512_in_the_7_format():
    entry = mosquitto_hash("s3cret", salt=b"0123456789ab")
    _, seven, iterations, salt, derived = entry.split("$")
    assert (seven, iterations) == ("7", "101")
    assert base64.b64decode(salt) == b"0123456789ab"
    assert base64.b64decode(derived) == hashlib.pbkdf2_hmac("sha512", b"s3cret", b"0123456789ab", 101)


def test_a_new_secret_never_looks_like_a_command_line_option():
    assert not any(new_secret().startswith("-") for _ in range(2000))
