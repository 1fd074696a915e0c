"""Who a request comes as and which networks it may read: shared by the history route and the pages.

A key is presented as ``POST /publish`` takes it, in ``API-KEY`` or ``Authorization: Bearer``;
what it may read is what MQTT lets it subscribe to, so both doors agree.
"""

from __future__ import annotations

from typing import Final

from flask import Request

from radio.bridge.errors import APIError
from radio.registry import Registry
from radio.topics import network_topic

DEFAULT_LIMIT: Final = 100
"""Samples of history a page or a request without ``?limit`` gets."""


def presented_secret(req: Request) -> str | None:
    """The secret in ``API-KEY`` or ``Authorization: Bearer``, if any."""
    secret = req.headers.get("API-KEY")
    if secret is None:
        scheme, _, token = req.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            secret = token.strip()
    return secret


def _key_name(registry: Registry, secret: str | None) -> str | None:
    """The presented key's name (None: no key); 401 for a secret no key has, wherever it is sent."""
    if secret is None:
        return None
    key = registry.key_for_secret(secret)
    if key is None:
        raise APIError(401, "API-KEY not valid", "invalid_key")
    return key.name


def readable_networks(registry: Registry, secret: str | None) -> list[str]:
    """The networks this visitor may read: the public ones, and the key's; 401 for an unknown key."""
    access = registry.access(_key_name(registry, secret))
    return sorted(n for n in registry.networks if access.may_read(network_topic(n)))


def topic_of(network: str) -> str:
    """The network's topic; 404 for a name no network can have (nothing to hide of it)."""
    try:
        return network_topic(network)
    except ValueError:
        raise APIError(404, f"no network {network!r}", "unknown_network") from None


def check_read(registry: Registry, network: str, secret: str | None) -> None:
    """401 or 403 for a network the visitor may not read, and the same for one the configuration lacks.

    A network's very name may be confidential: a visitor who may not read it learns nothing of
    whether it exists, so an unknown name is refused as a private network is, word for word. Only a
    visitor who would read a network of that name (an admin key) is told 404.

    A key that is presented is checked first, whatever the network, as every other route checks
    it: a wrong, revoked or expired key is told so, not read as no key at all. Without a key, a
    public network is read only where clients without one are let in (``allow_anonymous``), as
    over MQTT; where they are not, it is refused as a private one is.
    """
    topic = topic_of(network)
    name = _key_name(registry, secret)
    if registry.access(name).may_read(topic):
        if network not in registry.networks:
            raise APIError(404, f"no network {network!r}", "unknown_network")
        return
    if secret is None:
        raise APIError(401, f"network {network!r} is read with a key: send one in API-KEY", "missing_key")
    raise APIError(403, f"this key may not read network {network!r}", "forbidden")
