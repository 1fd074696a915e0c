"""What a client command checks against the registry at hand before it connects.

MQTT 3.1.1 gives a client no word on some refusals: a PUBLISH to a network the key may not write
(or that does not exist) is acknowledged like any other and dropped, so a generator would run on
publishing into nothing; and Mosquitto grants a SUBSCRIBE it then delivers nothing to, so a
listener would wait for ever. Both questions have one answer, the registry's, which every broker
and the bridge enforce: where the configuration and the keys are at hand (a client on the
platform's machine, as ``radio up`` runs its simulator), the client asks it first and stops with
one line, on every engine alike.

A secret the registry at hand does not know is left to the broker: it may be another platform's
key, and a wrong one gets CONNACK 5, which ends every Radio client. With no configuration file at
hand, or a keys file it cannot read, nothing is checked here.
"""

from __future__ import annotations

from collections.abc import Sequence

from radio.config import Settings
from radio.errors import RadioError
from radio.keys import Key
from radio.registry import Access, Registry
from radio.topics import network_topic


def check_networks(settings: Settings, networks: Sequence[str]) -> None:
    """A network the configuration at hand lacks can be neither read nor written."""
    if not settings.path.exists():
        return
    unknown = [n for n in networks if n not in settings.networks]
    if unknown:
        known = ", ".join(sorted(settings.networks)) or "none"
        msg = f"no network {unknown[0]!r} in {settings.path} (its networks: {known})"
        raise RadioError(msg)


def check_publish(settings: Settings, network: str, secret: str) -> None:
    """Refuse a generator whose key may not publish to its network: the broker would drop it all."""
    check_networks(settings, [network])
    found = _access(settings, secret)
    if found is None:
        return
    key, access = found
    if key is not None and not access.may_publish(network_topic(network)):
        may = "every network" if key.publish_all else ", ".join(sorted(key.publish)) or "none"
        msg = (
            f"key {key.name!r} is not entitled to publish to network {network!r}: the broker would drop "
            f"every sample (it may publish to: {may}; radio keys edit {key.name} --publish ...)"
        )
        raise RadioError(msg)


def check_read(settings: Settings, networks: Sequence[str], secret: str | None) -> None:
    """Refuse a listener that may not read one of its networks, as the embedded broker's SUBACK does."""
    check_networks(settings, networks)
    found = _access(settings, secret)
    if found is None:
        return
    key, access = found
    for network in networks:
        if access.may_read(network_topic(network)):
            continue
        if key is None:
            msg = (
                f"not entitled to read network {network!r} anonymously: it is not public "
                "(use a key that may subscribe to it: --key-file PATH)"
            )
        else:
            msg = f"not entitled to read network {network!r} (use a key that may subscribe to it)"
        raise RadioError(msg)


def _access(settings: Settings, secret: str | None) -> tuple[Key | None, Access] | None:
    """The key behind a secret (None: anonymous) and its rights; None if there is nothing to ask."""
    if not settings.path.exists():
        return None
    try:
        registry = Registry.from_settings(settings)
    except (RadioError, OSError):  # no keys file yet, or one this user may not read
        if secret is not None:
            return None
        registry = Registry(settings.networks, {}, settings.broker.allow_anonymous)
    if secret is None:
        return None, registry.access(None)
    key = registry.key_for_secret(secret)
    if key is None:
        return None  # another platform's key, or a wrong one: the broker answers (CONNACK 5)
    return key, registry.access(key.name)
