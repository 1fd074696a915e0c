"""API keys: what each may publish and read, stored as hashes only.

A key is a name, a random secret and two lists of networks. The secret is shown once, when the key
is made; the file keeps two hashes of it:

- SHA-256, checked on every CONNECT and every HTTP publish. Secrets are 256 random bits, so a
  slow KDF would buy nothing but a stalled event loop (amqtt's argon2 plugin costs 0.26 s per
  CONNECT), and the digest doubles as the lookup index for the bridge, which sees only the secret.
- PBKDF2-SHA512 in Mosquitto's ``$7$`` format, so the production broker can be handed the same keys
  (``radio mosquitto export``) without anyone knowing the secrets.
- bcrypt, the one hash NATS accepts in its users list (``radio nats export``): see ``bcrypt_hash``.

The file is written only by ``radio keys``: atomically (write, fsync, rename), mode 0600, under a
lock so two commands at once cannot lose a change.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import os
import secrets
import tempfile
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import bcrypt
import tomli_w

from radio.credentials import ALIAS, secret_digest
from radio.errors import DuplicateKey, InvalidName, KeyStoreError, UnknownKey
from radio.topics import NAME_RULE, NetworkName

MOSQUITTO_ITERATIONS: Final = 101
"""mosquitto_passwd's own default: secrets are random, so iterations add nothing but CONNECT cost."""


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


def mosquitto_hash(secret: str, salt: bytes | None = None) -> str:
    """The secret as a Mosquitto 2.0 password_file entry (PBKDF2-SHA512, ``$7$``)."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    derived = hashlib.pbkdf2_hmac("sha512", secret.encode(), salt, MOSQUITTO_ITERATIONS)
    return f"$7${MOSQUITTO_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(derived).decode()}"


BCRYPT_COST: Final = 4
"""bcrypt's lowest cost: a 256-bit random secret needs no key stretching, and NATS checks it per CONNECT."""


def bcrypt_hash(secret: str) -> str:
    """The secret as NATS takes a password from its users list (bcrypt, ``$2b$``).

    Kept beside the other hashes because NATS accepts no SHA-256 or PBKDF2, and no one may keep
    the secret itself to hash it later. Keys made before this hash existed have none: rotating
    them gives them one.
    """
    return bcrypt.hashpw(secret.encode(), bcrypt.gensalt(BCRYPT_COST)).decode()


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

    @property
    def alias(self) -> str:
        """The username its secret implies (``secret_username``), without knowing the secret."""
        return "key-" + self.digest[:16]

    def matches(self, secret: str) -> bool:
        """Whether a presented secret is this key's, in constant time."""
        return hmac.compare_digest(secret_digest(secret), self.digest)

    def to_toml(self) -> dict[str, Any]:
        """The key as a table of keys.toml."""
        return {
            "secret_sha256": self.digest,
            "mosquitto_hash": self.mosquitto,
            "publish": sorted(self.publish),
            "subscribe": sorted(self.subscribe),
            "admin": self.admin,
            "publish_all": self.publish_all,
            "created": self.created,
            "bcrypt_hash": self.bcrypt,
        }

    @classmethod
    def from_toml(cls, name: str, table: Mapping[str, Any]) -> Key:
        """Read one table of keys.toml, refusing anything malformed."""
        try:
            return cls(
                name=check_key_name(name),
                digest=_text(table["secret_sha256"]),
                mosquitto=_text(table["mosquitto_hash"]),
                publish=frozenset(NetworkName(n) for n in table.get("publish", [])),
                subscribe=frozenset(NetworkName(n) for n in table.get("subscribe", [])),
                admin=bool(table.get("admin", False)),
                created=str(table.get("created", "")),
                publish_all=bool(table.get("publish_all", False)),
                bcrypt=str(table.get("bcrypt_hash", "")),
            )
        except (KeyError, TypeError, InvalidName) as exc:
            msg = f"key {name!r} is malformed: {exc}"
            raise KeyStoreError(msg) from None


def _text(value: object) -> str:
    if not isinstance(value, str):
        msg = f"expected text, found {value!r}"
        raise TypeError(msg)
    return value


def new_secret() -> str:
    """A fresh secret: 256 random bits, URL-safe so it fits headers and MQTT passwords as is.

    Never starting with '-': a command line would take ``--key -x...`` for an option.
    """
    while (secret := secrets.token_urlsafe(32)).startswith("-"):
        pass
    return secret


def read_keys(path: Path) -> dict[str, Key]:
    """Every key in the file; a missing file means no keys yet."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        msg = f"{path}: cannot read the key registry: {exc}"
        raise KeyStoreError(msg) from None
    tables = data.get("keys", {})
    if not isinstance(tables, dict):
        msg = f"{path}: [keys] must be a table"
        raise KeyStoreError(msg)
    try:
        return {name: Key.from_toml(name, table) for name, table in tables.items()}
    except KeyStoreError as exc:
        msg = f"{path}: {exc}"
        raise KeyStoreError(msg) from None


class KeyStore:
    """The keys file, changed one command at a time."""

    def __init__(self, path: Path, networks: Iterable[str]) -> None:
        self.path = path
        self._networks = frozenset(networks)

    def keys(self) -> dict[str, Key]:
        """Every key, as the file holds it now."""
        return read_keys(self.path)

    def add(
        self,
        name: str,
        *,
        publish: Iterable[str] = (),
        subscribe: Iterable[str] = (),
        admin: bool = False,
        publish_all: bool = False,
    ) -> str:
        """Make a key and return its secret, which is not stored anywhere."""
        check_key_name(name)
        publish_set = self._known_networks(publish)
        subscribe_set = self._known_networks(subscribe)
        secret = new_secret()
        with self._locked() as keys:
            if name in keys:
                msg = f"a key named {name!r} exists already (use 'radio keys rotate {name}' for a new secret)"
                raise DuplicateKey(msg)
            keys[name] = Key(
                name=name,
                digest=secret_digest(secret),
                mosquitto=mosquitto_hash(secret),
                publish=publish_set,
                subscribe=subscribe_set,
                admin=admin,
                created=datetime.now(UTC).isoformat(timespec="seconds"),
                publish_all=publish_all,
                bcrypt=bcrypt_hash(secret),
            )
        return secret

    def revoke(self, name: str) -> None:
        """Delete a key: it can no longer connect or publish, through either door."""
        with self._locked() as keys:
            self._existing(keys, name)
            del keys[name]

    def rotate(self, name: str) -> str:
        """Give a key a new secret, keeping its rights; the old secret stops working."""
        secret = new_secret()
        with self._locked() as keys:
            key = self._existing(keys, name)
            keys[name] = replace(
                key,
                digest=secret_digest(secret),
                mosquitto=mosquitto_hash(secret),
                bcrypt=bcrypt_hash(secret),
            )
        return secret

    def _known_networks(self, names: Iterable[str]) -> frozenset[str]:
        networks = frozenset(NetworkName(n) for n in names)
        unknown = sorted(networks - self._networks)
        if unknown:
            known = ", ".join(sorted(self._networks)) or "none"
            msg = f"unknown network {unknown[0]!r} (networks in the configuration: {known})"
            raise KeyStoreError(msg)
        return networks

    @staticmethod
    def _existing(keys: Mapping[str, Key], name: str) -> Key:
        try:
            return keys[name]
        except KeyError:
            msg = f"no key named {name!r}"
            raise UnknownKey(msg) from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Key]]:
        """Read, let the caller change, then write the keys, holding a lock throughout."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with lock_path.open("a") as lock:
            lock_path.chmod(0o600)
            fcntl.flock(lock, fcntl.LOCK_EX)
            keys = read_keys(self.path)
            yield keys
            _write_atomically(self.path, {"keys": {n: k.to_toml() for n, k in sorted(keys.items())}})


def _write_atomically(path: Path, data: dict[str, Any]) -> None:
    """Replace the file in one step, so a reader never sees half of it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as out:
            tomli_w.dump(data, out)
            out.flush()
            os.fsync(out.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
