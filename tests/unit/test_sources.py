"""Per-source limits count a client by its source: an IPv4 address, or an IPv6 /64.

A host given an IPv6 /64 can open every connection from an address of its own; counted per
address, it would be held by no per-source limit at all.
"""

from __future__ import annotations

import pytest

from radio.broker import attributes as attrs
from radio.broker.per_source import AnonymousCaps, AnonymousSessions, Connecting
from radio.broker.sessions import Session
from radio.sources import source_of

from .build import ANONYMOUS


@pytest.mark.parametrize(
    ("address", "source"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),  # a dual-stack listener's IPv4 client
        ("fe80::1%eth0", "fe80::1%eth0"),  # link-local: every link has that prefix
        ("?", "?"),
        ("", ""),
    ],
)
def test_a_source_is_an_ipv4_address_or_an_ipv6_64(address: str, source: str) -> None:
    assert source_of(address) == source


def test_sockets_from_one_ipv6_64_share_its_limit() -> None:
    connecting = Connecting(2)
    assert connecting.open("2001:db8::1")
    assert connecting.open("2001:db8::2")
    assert not connecting.open("2001:db8::ffff:3")  # the /64's fill, from a third address
    assert connecting.open("2001:db8:0:1::1")  # another /64 is another source
    connecting.done("2001:db8::1")
    assert connecting.open("2001:db8::4")
    assert connecting.refused == 1


def test_anonymous_sessions_from_one_ipv6_64_share_its_caps() -> None:
    sessions = AnonymousSessions(AnonymousCaps(max_sessions_per_address=2))
    for n in range(2):
        session = Session(f"anon-{n}", False, ANONYMOUS)  # noqa: FBT003
        session.attributes[attrs.KEY_NAME] = None  # authenticated as anonymous
        session.remote_address = f"2001:db8::{n + 1}"
        sessions.track(session)
    assert sessions.refusal("2001:db8::99") is not None
    assert sessions.refusal("2001:db8:0:1::99") is None
