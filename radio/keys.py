"""API keys: what each may publish and read, stored as hashes only.

A key is a name, a stable id, a random secret and two lists of networks. The secret is shown once,
when the key is made; the file keeps two hashes of it:

- SHA-256, checked on every CONNECT and every HTTP publish. Secrets are 256 random bits, so a
  slow KDF would buy nothing but a stalled event loop (amqtt's argon2 plugin costs 0.26 s per
  CONNECT), and the digest doubles as the lookup index for the bridge, which sees only the secret.
- PBKDF2-SHA512 in Mosquitto's ``$7$`` format, so the production broker can be handed the same keys
  (``radio mosquitto export``) without anyone knowing the secrets.
- bcrypt, the one hash NATS accepts in its users list (``radio nats export``): see ``bcrypt_hash``.

The id names the key itself, not its name or its secret: ``rotate`` and ``edit`` keep it, while a
key revoked and added again under the same name gets a new one, so whatever is bound to the id (a
broker's sessions) never passes from an old key to a new one.

The file is written only by ``radio keys``: atomically (write, fsync, rename), mode 0600, under a
lock so two commands at once cannot lose a change. It is read strictly: a missing, emptied or
mistyped file is refused as a whole (docs/registry.md), because reading it as "fewer keys" or
"more rights" would close or open doors by accident.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import math
import os
import re
import secrets
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import bcrypt
import tomli_w

from radio.credentials import ALIAS, secret_digest
from radio.errors import DuplicateKey, InvalidName, KeyStoreError, MissingRegistry, UnknownKey
from radio.files import open_private, write_private
from radio.topics import NAME_RULE, NetworkName

MOSQUITTO_ITERATIONS: Final = 101
"""mosquitto_passwd's own default: secrets are random, so iterations add nothing but CONNECT cost."""

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
PERIODS: Final = ("day", "month")
"""What a quota counts over: a calendar day or month, in UTC."""
_RATE_UNITS: Final = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
}
MAX_RATE: Final = 1_000_000.0
MIN_RATE: Final = 1 / 86_400
"""One sample a day: below it a token's wait (``Retry-After``) outgrows any clock; use a quota."""
MAX_COUNT: Final = 1 << 53


def parse_rate(text: str) -> float:
    """``5/s``, ``300/min`` or ``1000/h`` as samples per second."""
    count, _, unit = text.strip().partition("/")
    try:
        value = float(count)
    except ValueError:
        value = -1.0
    seconds = _RATE_UNITS.get(unit.strip() or "s")
    if seconds is None or not MIN_RATE <= value / seconds <= MAX_RATE:
        msg = (
            f"invalid rate {text!r}: use COUNT/s, COUNT/min or COUNT/h with a positive COUNT, such as 5/s "
            "(at least one a day, at most 1000000/s)"
        )
        raise ValueError(msg)
    return value / seconds


def parse_quota(text: str) -> tuple[int, str]:
    """``10000/day`` or ``300000/month`` as (count, period)."""
    count, _, period = text.strip().partition("/")
    if not (count.isascii() and count.isdigit()) or not 0 < int(count) <= MAX_COUNT or period not in PERIODS:
        msg = (
            f"invalid quota {text!r}: use COUNT/day or COUNT/month with a positive whole COUNT, "
            "such as 10000/day"
        )
        raise ValueError(msg)
    return int(count), period


def parse_expiry(text: str) -> datetime:
    """An instant with its offset, such as ``2026-12-31T00:00:00Z``."""
    try:
        when = datetime.fromisoformat(text.strip())
        if when.tzinfo is None:
            raise ValueError  # noqa: TRY301 - the same message as any other unreadable expiry
        return when.astimezone(UTC)
    except (ValueError, OverflowError):  # an offset can carry year 9999 past the calendar's end
        msg = f"invalid expiry {text!r}: use a date and time with its offset, such as 2026-12-31T00:00:00Z"
        raise ValueError(msg) from None


def format_rate(rate: float) -> str:
    """A rate as ``radio keys`` shows it."""
    for unit, seconds in (("s", 1.0), ("min", 60.0), ("h", 3600.0)):
        count = rate * seconds
        if count >= 1 and abs(count - round(count)) < 1e-9:
            return f"{round(count)}/{unit}"
    return f"{rate:g}/s"


@dataclass(frozen=True)
class Terms:
    """What a key may spend: a rate, a quota, an expiry; None for each means no limit."""

    rate: float | None = None
    """Samples per second, refilled continuously (a token bucket)."""
    burst: int | None = None
    """Samples that may go at once after a pause; default: one second's worth (at least 1)."""
    quota: int | None = None
    quota_period: str = "day"
    expires: datetime | None = None

    @property
    def bucket(self) -> int:
        """The bucket's size: the burst, or one second's worth of the rate."""
        if self.burst is not None:
            return self.burst
        return max(1, math.ceil(self.rate or 1))


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


def new_key_id(taken: Iterable[str] = ()) -> str:
    """A fresh id: 64 random bits, never one already in use."""
    used = frozenset(taken)
    while (key_id := secrets.token_hex(8)) in used:
        pass
    return key_id


def derived_key_id(digest: str) -> str:
    """The id of a key stored before keys had one: fixed by the digest it had then.

    It is written to the file at the next change of the registry, so a later rotation (a new
    digest) keeps it. Hashed again, with a label, so that it is not the ``key-`` username.
    """
    return hashlib.sha256(b"radio key id\0" + digest.encode()).hexdigest()[:16]


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
    read_all: bool = False
    """A service key (the history recorder's): may read every network, and do nothing else."""
    id: str = field(default="")
    """Stable across ``rotate`` and ``edit``, new for every ``add``; derived from the digest if unset."""
    terms: Terms = Terms()
    """Rate, quota and expiry (docs/access.md)."""

    def __post_init__(self) -> None:
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
            **_terms_to_toml(self.terms),
        }

    @classmethod
    def from_toml(cls, name: str, table: object) -> Key:
        """Read one table of keys.toml, refusing any field of the wrong type or unknown.

        Errors name the key and the field: ``key 'gen': admin must be true or false, not 'false'``.
        """
        where = f"key {name!r}"
        try:
            check_key_name(name)
        except InvalidName as exc:
            msg = f"[keys.{name}]: {exc}"
            raise KeyStoreError(msg) from None
        if not isinstance(table, dict):
            msg = f"{where} must be a table ([keys.{name}]), not {_shown(table)}"
            raise KeyStoreError(msg)
        unknown = sorted(set(table) - _FIELDS)
        if unknown:
            msg = f"{where}: unknown field {unknown[0]!r} (known: {', '.join(sorted(_FIELDS))})"
            raise KeyStoreError(msg)
        for required in ("secret_sha256", "mosquitto_hash"):
            if required not in table:
                msg = f"{where}: the field {required!r} is missing"
                raise KeyStoreError(msg)
        return cls(
            name=name,
            digest=_matching(table, "secret_sha256", where, _DIGEST, "64 lowercase hex digits"),
            mosquitto=_matching(table, "mosquitto_hash", where, _MOSQUITTO, "a Mosquitto $7$ hash"),
            publish=_networks(table, "publish", where),
            subscribe=_networks(table, "subscribe", where),
            admin=_flag(table, "admin", where),
            created=_string(table, "created", where),
            publish_all=_flag(table, "publish_all", where),
            bcrypt=_string(table, "bcrypt_hash", where),
            read_all=_flag(table, "read_all", where),
            id=_matching(table, "id", where, KEY_ID, "16 lowercase hex digits") if "id" in table else "",
            terms=_terms(table, where),
        )


def _terms_to_toml(terms: Terms) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if terms.rate is not None:
        out["rate"] = terms.rate
    if terms.burst is not None:
        out["burst"] = terms.burst
    if terms.quota is not None:
        out["quota"] = terms.quota
        out["quota_period"] = terms.quota_period
    if terms.expires is not None:
        out["expires"] = terms.expires
    return out


def _terms(table: Mapping[str, Any], where: str) -> Terms:
    """The rate, quota and expiry fields, each type-checked like the rest of the key."""
    rate = table.get("rate")
    if rate is not None and (type(rate) not in (int, float) or not 0 < rate <= MAX_RATE):
        # Not MIN_RATE: a file written before that floor must still load (the command refuses it).
        msg = (
            f"{where}: rate must be a positive number of samples per second (up to {MAX_RATE:g}), "
            f"not {_shown(rate)}"
        )
        raise KeyStoreError(msg)
    counts = {}
    for name in ("burst", "quota"):
        value = table.get(name)
        if value is not None and (type(value) is not int or not 0 < value <= MAX_COUNT):
            msg = f"{where}: {name} must be a positive whole number (a TOML integer), not {_shown(value)}"
            raise KeyStoreError(msg)
        counts[name] = value
    if counts["burst"] is not None and rate is None:
        msg = f"{where}: burst is set without a rate"
        raise KeyStoreError(msg)
    period = table.get("quota_period", "day")
    if period not in PERIODS:
        msg = f"{where}: quota_period must be the string 'day' or 'month', not {_shown(period)}"
        raise KeyStoreError(msg)
    expires = table.get("expires")
    if expires is not None and (
        not isinstance(expires, datetime) or expires.tzinfo is None or _beyond(expires)
    ):
        msg = (
            f"{where}: expires must be a TOML date-time with its offset, such as 2026-12-31T00:00:00Z, "
            f"not {_shown(expires)}"
        )
        raise KeyStoreError(msg)
    return Terms(
        rate=None if rate is None else float(rate),
        burst=counts["burst"],
        quota=counts["quota"],
        quota_period=period,
        expires=None if expires is None else expires.astimezone(UTC),
    )


def _beyond(when: datetime) -> bool:
    """Whether an instant cannot be written in UTC (year 9999 with a negative offset)."""
    try:
        when.astimezone(UTC)
    except OverflowError:
        return True
    return False


def _shown(value: object) -> str:
    """A wrong value as a line of text can show it: its TOML type, and itself when short."""
    kinds = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "table"}
    kind = kinds.get(type(value), type(value).__name__)
    text = str(value).lower() if isinstance(value, bool) else repr(value)
    return f"the {kind} {text}" if len(text) <= 40 else f"a {kind}"


def _string(table: Mapping[str, Any], name: str, where: str) -> str:
    value = table.get(name, "")
    if not isinstance(value, str):
        msg = f"{where}: {name} must be a string, not {_shown(value)}"
        raise KeyStoreError(msg)
    return value


def _matching(table: Mapping[str, Any], name: str, where: str, pattern: re.Pattern[str], what: str) -> str:
    value = table[name]
    if not isinstance(value, str) or not pattern.fullmatch(value):
        msg = f"{where}: {name} must be a string of {what}, not {_shown(value)}"
        raise KeyStoreError(msg)
    return value


def _flag(table: Mapping[str, Any], name: str, where: str) -> bool:
    value = table.get(name, False)
    if type(value) is not bool:
        msg = f"{where}: {name} must be true or false (a TOML boolean), not {_shown(value)}"
        raise KeyStoreError(msg)
    return value


def _networks(table: Mapping[str, Any], name: str, where: str) -> frozenset[str]:
    value = table.get(name, [])
    if not isinstance(value, list):
        msg = f"{where}: {name} must be an array of network names, not {_shown(value)}"
        raise KeyStoreError(msg)
    try:
        return frozenset(NetworkName(item) for item in value)
    except InvalidName as exc:
        msg = f"{where}: {name} must be an array of network names: {exc}"
        raise KeyStoreError(msg) from None


def _checked(terms: Terms) -> Terms:
    """Terms as the file will hold them: the same checks as reading the file."""
    if terms.rate is None and terms.burst is not None:
        msg = "a burst needs a rate (give --rate too)"
        raise KeyStoreError(msg)
    return _terms(_terms_to_toml(terms), "the new terms")


def _edited(changes: Mapping[str, object]) -> dict[str, Any]:
    """Removing a rate removes its burst too."""
    edited = dict(changes)
    if "rate" in edited and edited["rate"] is None:
        edited.setdefault("burst", None)
    return edited


def new_secret() -> str:
    """A fresh secret: 256 random bits, URL-safe so it fits headers and MQTT passwords as is.

    Never starting with '-': a command line would take ``--key -x...`` for an option.
    """
    while (secret := secrets.token_urlsafe(32)).startswith("-"):
        pass
    return secret


def parse_keys(text: str, path: Path) -> dict[str, Key]:
    """Every key in the text of a keys file; any problem refuses the whole file, naming it.

    An empty text is refused: a truncated file must not read as a registry without keys. A
    registry with no keys says so, with an empty ``[keys]`` table.
    """
    if not text.strip():
        msg = (
            f"{path}: the key registry is empty (a registry without keys is an empty [keys] table, "
            "as 'radio keys' writes it)"
        )
        raise KeyStoreError(msg)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = f"{path}: not valid TOML: {exc}"
        raise KeyStoreError(msg) from None
    try:
        return _keys_from(data)
    except KeyStoreError as exc:
        msg = f"{path}: {exc}"
        raise KeyStoreError(msg) from None


def _keys_from(data: dict[str, Any]) -> dict[str, Key]:
    unknown = sorted(set(data) - {"keys"})
    if unknown:
        msg = f"unknown table or setting {unknown[0]!r} (a key registry holds only [keys.NAME] tables)"
        raise KeyStoreError(msg)
    if "keys" not in data:
        msg = "no [keys] table (a registry without keys is an empty [keys] table)"
        raise KeyStoreError(msg)
    tables = data["keys"]
    if not isinstance(tables, dict):
        msg = f"[keys] must be a table of keys, such as [keys.gen], not {_shown(tables)}"
        raise KeyStoreError(msg)
    keys = {name: Key.from_toml(name, table) for name, table in tables.items()}
    for attribute, what in (("id", "id"), ("digest", "secret_sha256")):
        seen: dict[str, str] = {}
        for key in keys.values():
            value = getattr(key, attribute)
            if value in seen:
                msg = f"keys {seen[value]!r} and {key.name!r} have the same {what}: each key needs its own"
                raise KeyStoreError(msg)
            seen[value] = key.name
    return keys


def load_keys(path: Path) -> dict[str, Key]:
    """Every key in the registry file, which must exist: a missing file is an error, not "no keys"."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        msg = f"{path}: no key registry (the file is missing; on a fresh machine 'radio keys add' makes it)"
        raise MissingRegistry(msg) from None
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"{path}: cannot read the key registry: {exc}"
        raise KeyStoreError(msg) from None
    return parse_keys(text, path)


def read_keys(path: Path) -> dict[str, Key]:
    """Every key, as a command that is about to make the first one sees them: a missing file has none.

    Only for commands that make keys or list them; a server's registry uses ``load_keys``, for which
    a missing file is an error. An emptied or malformed file is refused here too.
    """
    try:
        return load_keys(path)
    except MissingRegistry:
        return {}


class KeyStore:
    """The keys file, changed one command at a time."""

    def __init__(self, path: Path, networks: Iterable[str]) -> None:
        self.path = path
        self._networks = frozenset(networks)

    def keys(self) -> dict[str, Key]:
        """Every key, as the file holds it now (none if there is no file yet)."""
        return read_keys(self.path)

    def add(
        self,
        name: str,
        *,
        publish: Iterable[str] = (),
        subscribe: Iterable[str] = (),
        admin: bool = False,
        publish_all: bool = False,
        terms: Terms = Terms(),
        read_all: bool = False,
    ) -> str:
        """Make a key, with an id of its own, and return its secret, which is not stored anywhere."""
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
                read_all=read_all,
                id=new_key_id(k.id for k in keys.values()),
                terms=_checked(terms),
            )
        return secret

    def revoke(self, name: str) -> None:
        """Delete a key: it can no longer connect or publish, through either door.

        A service key is refused (``_not_a_service_key``).
        """
        with self._locked() as keys:
            _not_a_service_key(self._existing(keys, name), "revoked")
            del keys[name]

    def rotate(self, name: str, *, service: bool = False) -> str:
        """Give a key a new secret, keeping its rights and its id; the old secret stops working.

        A service key only when its own server asks (``service``: it lost its secret's file).
        """
        secret = new_secret()
        with self._locked() as keys:
            key = self._existing(keys, name)
            if not service:
                _not_a_service_key(key, "rotated")
            keys[name] = replace(
                key,
                digest=secret_digest(secret),
                mosquitto=mosquitto_hash(secret),
                bcrypt=bcrypt_hash(secret),
            )
        return secret

    def edit(
        self,
        name: str,
        *,
        publish: Iterable[str] | None = None,
        subscribe: Iterable[str] | None = None,
        admin: bool | None = None,
        terms: Mapping[str, object] | None = None,
    ) -> Key:
        """Change a key's rights, keeping its secret and id; None leaves a right as it is.

        A list replaces the key's list (an empty one clears it). ``terms`` maps fields of
        ``Terms`` to new values (None removes that limit). The bridge's service key is refused:
        its right to publish everywhere is not a list to edit, and the HTTP door's traffic is
        limited by each generator's own key.
        """
        publish_set = None if publish is None else self._known_networks(publish)
        subscribe_set = None if subscribe is None else self._known_networks(subscribe)
        with self._locked() as keys:
            key = self._existing(keys, name)
            if key.publish_all or key.read_all:
                every = "publishes to" if key.publish_all else "reads"
                msg = f"key {name!r} is a service key that {every} every network: its rights are fixed"
                raise KeyStoreError(msg)
            edited = replace(
                key,
                publish=key.publish if publish_set is None else publish_set,
                subscribe=key.subscribe if subscribe_set is None else subscribe_set,
                admin=key.admin if admin is None else admin,
                terms=_checked(replace(key.terms, **_edited(terms or {}))),
            )
            keys[name] = edited
        return edited

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
        """Read, let the caller change, then write the keys, holding a lock throughout.

        A missing file is a registry not made yet: this change makes it. An emptied or malformed
        one is refused, never overwritten.
        """
        with _lock(self.path):
            keys = read_keys(self.path)
            yield keys
            data = {"keys": {n: k.to_toml() for n, k in sorted(keys.items())}}
            write_private(self.path, tomli_w.dumps(data), durable=True)  # a reader never sees half of it


def _not_a_service_key(key: Key, done: str) -> None:
    """Refuse to cut one of Radio's own servers off: the bridge (the whole HTTP door) or the recorder.

    Their secret lives in a file the running server read at start, so a revoked or rotated service
    key left them refused by the broker until someone deleted that file and restarted them; a
    system syncing its customers' keys over the admin API would do it by listing and deleting.
    """
    if key.publish_all or key.read_all:
        msg = (
            f"key {key.name!r} is the service key of Radio's own {key.name} and is not {done}: to give "
            f"it a new secret, delete {key.name}.key beside the configuration and restart the {key.name}"
        )
        raise KeyStoreError(msg)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """The writers' lock: a file beside the registry, held for one read-change-write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    fd = open_private(lock_path, os.O_WRONLY | os.O_APPEND)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
