"""Where a client comes from, as the per-source limits of both doors count it.

An IPv4 address is one source. An IPv6 address is not: a single host is routinely given a whole
/64 (SLAAC, privacy addresses, a VPS's allocation), so one client can open each connection from
an address of its own, and a limit per address would hold it to nothing. A source is therefore
the address's /64, as a LAN behind one IPv4 address is one source. Two exceptions keep the
address whole: an IPv4 address mapped into IPv6 (a dual-stack listener's view of an IPv4 client)
is that IPv4 address, and a link-local one (``fe80::/10``, the same prefix on every link) is its
host's own.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Final

IPV6_PREFIX: Final = 64
"""The bits of an IPv6 address that name its source: one host's usual allocation."""


def source_of(address: str) -> str:
    """The source an address counts under: itself for IPv4, its /64 for IPv6 (as ``2001:db8::/64``)."""
    if ":" not in address:
        return address  # IPv4, or no address at all ("?", a Unix socket's "")
    return _ipv6_source(address)


@functools.lru_cache(maxsize=4096)
def _ipv6_source(address: str) -> str:
    try:
        ip = ipaddress.IPv6Address(address)
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    if ip.is_link_local:
        return address
    return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))
