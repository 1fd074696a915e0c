"""One key as the registry holds it (``Key``), and the strict reading of its table in keys.toml.

Every field is type-checked: an error names the key and the field, and says what was found
(``key 'gen': admin must be true or false (a TOML boolean), not the string 'false'``).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from radio.credentials import ALIAS, secret_digest
from radio.errors import InvalidName, KeyStoreError
from radio.keys.hashing import derived_key_id
from radio.keys.terms import NO_TERMS, Terms, read_terms, terms_to_toml
from radio.toml_values import shown
from radio.topics import NAME_RULE, NetworkName

KEY_ID: Final = re.compile(r"[0-9a-f]{16}")
"""A key's id: 16 lowercase hex digits (64 random bits)."""
_DIGEST: Final = re.compile(r"[0-9a-f]{64}")
_MOSQUITTO: Final = re.compile(r"\$7\$[0-9]+\$[A-Za-z0-9+/]+=*\$[A-Za-z0-9+/]+=*")
_FIELDS: Final = frozenset(
    {
        "id",
        "secret_sha256",
        "mosquitto_hash",
        "bcrypt_hash",
        "publish",
        "subscribe",
        "admin",
        "publish_all",
        "read_all",
        "created",
        "rate",
        "burst",
        "quota",
        "quota_period",
        "expires",
    }
)


def check_key_name(name: str) -> str:
    """A key name is also an MQTT username, so it follows the network naming rules."""
    if not isinstance(name, str) or not NAME_RULE.fullmatch(name):
        msg = (
            f"invalid key name {name!r}: use 1 to 64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
        raise InvalidName(msg)
    if ALIAS.fullmatch(name):
        msg = f"invalid key name {name!r}: names of the form key-<16 hex digits> are reserved"
        raise InvalidName(msg)
    return name


@dataclass(frozen=True)
class Key:
    """One API key as stored: its rights and the hashes of its secret."""

    name: str
    digest: str
    mosquitto: str
    publish: frozenset[str] = frozenset()
    subscribe: frozenset[str] = frozenset()
    admin: bool = False
    created: str = ""
    publish_all: bool = False
    """A service key (the HTTP bridge's): may publish to every network, and do nothing else."""
    bcrypt: str = ""
    """``bcrypt_hash`` of the secret, for NATS; empty for a key made before it was kept."""
    read_all: bool = False
    """A service key (the history recorder's): may read every network, and do nothing else."""
    id: str = field(default="")
    """Stable across ``rotate`` and ``edit``, new for every ``add``; derived from the digest if unset."""
    terms: Terms = NO_TERMS
    """Rate, quota and expiry (docs/access.md)."""

    def __post_init__(self) -> None:
        if self.admin and self.publish:
            # Every device publishing with it would hold a secret that makes and revokes keys.
            msg = (
                f"key {self.name!r}: an admin key has no publish list (it may publish anywhere, and "
                "make keys: no device should hold its secret); give each device a key of its own"
            )
            raise KeyStoreError(msg)
        if not self.id:
            object.__setattr__(self, "id", derived_key_id(self.digest))

    @property
    def alias(self) -> str:
        """The username its secret implies (``secret_username``), without knowing the secret."""
        return "key-" + self.digest[:16]

    def expired(self, now: datetime | None = None) -> bool:
        """Whether the key's expiry has come: from that instant it is refused on every door."""
        expires = self.terms.expires
        return expires is not None and (now or datetime.now(UTC)) >= expires

    def matches(self, secret: str) -> bool:
        """Whether a presented secret is this key's, in constant time."""
        return hmac.compare_digest(secret_digest(secret), self.digest)

    def to_toml(self) -> dict[str, Any]:
        """The key as a table of keys.toml."""
        return {
            "id": self.id,
            "secret_sha256": self.digest,
            "mosquitto_hash": self.mosquitto,
            "publish": sorted(self.publish),
            "subscribe": sorted(self.subscribe),
            "admin": self.admin,
            "publish_all": self.publish_all,
            **({"read_all": True} if self.read_all else {}),
            "created": self.created,
            "bcrypt_hash": self.bcrypt,
            **terms_to_toml(self.terms),
        }

    @classmethod
    def from_toml(cls, name: str, table: object) -> Key:
        """Read one table of keys.toml, refusing any field of the wrong type or unknown.

        Errors name the key and the field: ``key 'gen': admin must be true or false, not 'false'``.

        An admin key with a publish list, which files written before it was refused may hold, is
        read as the admin key alone: the list granted nothing admin does not (an admin key may
        publish anywhere), and the next change writes the key without it.
        """
        where = f"key {name!r}"
        try:
            check_key_name(name)
        except InvalidName as exc:
            msg = f"[keys.{name}]: {exc}"
            raise KeyStoreError(msg) from None
        if not isinstance(table, dict):
            msg = f"{where} must be a table ([keys.{name}]), not {shown(table)}"
            raise KeyStoreError(msg)
        unknown = sorted(set(table) - _FIELDS)
        if unknown:
            msg = f"{where}: unknown field {unknown[0]!r} (known: {', '.join(sorted(_FIELDS))})"
            raise KeyStoreError(msg)
        for required in ("secret_sha256", "mosquitto_hash"):
            if required not in table:
                msg = f"{where}: the field {required!r} is missing"
                raise KeyStoreError(msg)
        admin = _flag(table, "admin", where)
        publish = _networks(table, "publish", where)
        return cls(
            name=name,
            digest=_matching(table, "secret_sha256", where, _DIGEST, "64 lowercase hex digits"),
            mosquitto=_matching(table, "mosquitto_hash", where, _MOSQUITTO, "a Mosquitto $7$ hash"),
            publish=frozenset() if admin else publish,
            subscribe=_networks(table, "subscribe", where),
            admin=admin,
            created=_string(table, "created", where),
            publish_all=_flag(table, "publish_all", where),
            bcrypt=_string(table, "bcrypt_hash", where),
            read_all=_flag(table, "read_all", where),
            id=_matching(table, "id", where, KEY_ID, "16 lowercase hex digits") if "id" in table else "",
            terms=read_terms(table, where),
        )


def _string(table: Mapping[str, Any], name: str, where: str) -> str:
    value = table.get(name, "")
    if not isinstance(value, str):
        msg = f"{where}: {name} must be a string, not {shown(value)}"
        raise KeyStoreError(msg)
    return value


def _matching(table: Mapping[str, Any], name: str, where: str, pattern: re.Pattern[str], what: str) -> str:
    value = table[name]
    if not isinstance(value, str) or not pattern.fullmatch(value):
        msg = f"{where}: {name} must be a string of {what}, not {shown(value)}"
        raise KeyStoreError(msg)
    return value


def _flag(table: Mapping[str, Any], name: str, where: str) -> bool:
    value = table.get(name, False)
    if type(value) is not bool:
        msg = f"{where}: {name} must be true or false (a TOML boolean), not {shown(value)}"
        raise KeyStoreError(msg)
    return value


def _networks(table: Mapping[str, Any], name: str, where: str) -> frozenset[str]:
    value = table.get(name, [])
    if not isinstance(value, list):
        msg = f"{where}: {name} must be an array of network names, not {shown(value)}"
        raise KeyStoreError(msg)
    try:
        return frozenset(NetworkName(item) for item in value)
    except InvalidName as exc:
        msg = f"{where}: {name} must be an array of network names: {exc}"
        raise KeyStoreError(msg) from None
