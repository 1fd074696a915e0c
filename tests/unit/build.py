"""Parts the unit tests build in-process: keys, a registry, a router, a connection that records."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from radio.broker.router import Limits, Router
from radio.broker.sessions import SessionLimits
from radio.broker.store import Store
from radio.config import NetworkSettings
from radio.keys import Key, Terms
from radio.registry import Registry

KEYED = SessionLimits(max_queued=5, max_queued_bytes=1_000, expiry=60.0)
ANONYMOUS = SessionLimits(max_queued=2, max_queued_bytes=100, expiry=10.0)


def key(name: str, *, publish: tuple[str, ...] = (), subscribe: tuple[str, ...] = (), **terms: object) -> Key:
    """A key with these rights and terms (its secret is its name; its id follows from it)."""
    digest = hashlib.sha256(name.encode()).hexdigest()
    return Key(
        name,
        digest,
        "",
        publish=frozenset(publish),
        subscribe=frozenset(subscribe),
        terms=Terms(**terms),  # type: ignore[arg-type]
    )


def registry(networks: Mapping[str, NetworkSettings], *keys: Key, anonymous: bool = True) -> Registry:
    """The registry of these networks and keys."""
    return Registry(networks=dict(networks), keys={k.name: k for k in keys}, allow_anonymous=anonymous)


class Sink:
    """A connection as the router sees one: it records what is written, and is never congested."""

    v5 = None
    """An MQTT 3.1.1 client: what it is written is the shared, pre-encoded packet."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def congested(self) -> bool:
        return False

    def wait_for_drain(self) -> None:
        msg = "a connection that is never congested is never waited for"
        raise AssertionError(msg)


def router(current: Registry | None = None, store: Store | None = None) -> Router:
    """A router over a registry (none: no networks, no keys) that lets every client do everything."""
    held = current if current is not None else registry({})
    return Router(
        lambda: held,
        lambda *_: True,
        lambda _topic: lambda _session: True,
        Limits(keyed=KEYED, anonymous=ANONYMOUS),
        store,
    )
