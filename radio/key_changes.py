"""Changes to the key registry as ``radio keys`` and the admin API both make them: one path.

Both doors read a change's values with the same functions (``parse_term``, ``parse_day``,
``split_names``) and so refuse bad input with the same one-line messages; both write through
``KeyChanges``, which changes ``keys.toml`` under the registry's lock (``radio.keys.KeyStore``:
two writers at the same moment never lose each other's change), appends the change to the audit
log (``radio.audit``), and waits until the running servers have it in force
(``radio.confirmations``).
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, date, datetime
from typing import Final

from radio import audit, usage
from radio.audit import Actor
from radio.config import Settings
from radio.confirmations import Report, wait_for_servers
from radio.errors import MissingRegistry, UnknownKey
from radio.keys import MAX_COUNT, Key, KeyStore, Terms, parse_expiry, parse_quota, parse_rate, within_count
from radio.registry import Registry

CONFIRM_TIMEOUT: Final = 5.0
"""Seconds a change waits for running servers to put it in force."""
TERMS: Final = ("rate", "burst", "quota", "expires")
"""The terms a key may carry, as ``radio keys add|edit`` and the admin API name them."""
CLEARING: Final = {"rate": "off", "burst": "off", "quota": "off", "expires": "never"}
"""The word that removes each term (``--rate off``, ``--expires never``)."""
EXPIRES_NOW: Final = "now"
"""The word that ends a key at once (``--expires now``): a time already past is refused instead."""


def parse_count(text: str) -> int:
    """A positive whole number, such as a burst."""
    if not (text.isascii() and text.isdigit()) or not within_count(text) or not 1 <= int(text) <= MAX_COUNT:
        msg = f"invalid count {text!r}: use a positive whole number (at most {MAX_COUNT})"
        raise ValueError(msg)
    return int(text)


_PARSERS: Final[dict[str, Callable[[str], object]]] = {
    "rate": parse_rate,
    "burst": parse_count,
    "quota": parse_quota,
    "expires": parse_expiry,
}


def parse_term(name: str, text: str) -> object:
    """One term from its text: None for the word that removes it; ValueError with the message."""
    if text == CLEARING[name]:
        return None
    if name == "expires":
        return parse_new_expiry(text)
    return _PARSERS[name](text)


def parse_new_expiry(text: str, now: datetime | None = None) -> datetime:
    """An expiry a key is given now: a time to come, or ``now`` (the key ends at this second).

    A time already past is refused: the key would be refused everywhere from the moment it is
    written, and such a time is far more often a mistyped year than a wish to end the key, which
    ``now`` says in so many words.
    """
    now = now or datetime.now(UTC)
    if text.strip() == EXPIRES_NOW:
        return now.replace(microsecond=0)
    when = parse_expiry(text)
    if when < now:
        msg = (
            f"invalid expiry {text!r}: that time has passed, so the key would be "
            f"refused everywhere at once; give a time to come, '{EXPIRES_NOW}' to end the key now, "
            f"or '{CLEARING['expires']}'"
        )
        raise ValueError(msg)
    return when


def parse_day(text: str) -> str:
    """A day as ``--since`` takes it: YYYY-MM-DD."""
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        msg = f"invalid date {text!r}: use YYYY-MM-DD"
        raise ValueError(msg) from None


def split_names(values: Iterable[str]) -> list[str]:
    """Network names as given: each value may hold several, comma-separated; blanks are dropped."""
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def terms_fields(given: Mapping[str, object]) -> dict[str, object]:
    """Parsed terms (``parse_term``) as fields of ``Terms``: a quota is a count and a period."""
    fields = {name: value for name, value in given.items() if name != "quota"}
    if "quota" in given:
        quota = given["quota"]
        count, period = quota if isinstance(quota, tuple) else (None, "day")
        fields["quota"], fields["quota_period"] = count, period
    return fields


def nothing_to_change(options: Iterable[str]) -> str:
    """The refusal of an edit that changes nothing, naming what it could change."""
    *first, last = options
    return f"nothing to change (give {', '.join(first)} or {last})"


def key_row(key: Key) -> dict[str, object]:
    """A key as ``radio keys list --json`` and the admin API show it: everything but its secret."""
    terms = key.terms
    expires = terms.expires
    return {
        "name": key.name,
        "id": key.id,
        "admin": key.admin,
        "publish": sorted(key.publish),
        "subscribe": sorted(key.subscribe),
        "publish_all": key.publish_all,
        "read_all": key.read_all,
        "created": key.created,
        "rate": terms.rate,
        "burst": terms.bucket if terms.rate is not None else None,
        "quota": terms.quota,
        "quota_period": terms.quota_period if terms.quota is not None else None,
        "expires": None if expires is None else expires.isoformat().replace("+00:00", "Z"),
        "expired": key.expired(),
    }


def usage_rows(settings: Settings, name: str | None, since: str | None) -> list[dict[str, object]]:
    """The rows of ``radio keys usage [NAME] --json``, as the command and the admin API give them.

    A revoked key's past usage is still shown; a name no key has and nothing was recorded under
    is refused as a typo (``UnknownKey``).
    """
    found = usage.rows(usage.usage_path(settings.state_dir), name, since)
    if name is not None and not found:
        try:
            known = name in Registry.at_hand(settings).keys
        except MissingRegistry:
            known = False
        if not known:
            msg = f"no key named {name!r}, and no usage recorded under that name"
            raise UnknownKey(msg)
    return found


def cli_actor() -> Actor:
    """A ``radio keys`` command: the OS user who ran it, on this machine."""
    try:
        who = getpass.getuser()
    except (OSError, KeyError):  # no name for this uid (a container's bare uid)
        who = f"uid {os.getuid()}"
    return Actor(who=who, via="cli", source="local")


_RECORDED: Final = ("publish", "subscribe", "admin", "rate", "burst", "quota", "quota_period", "expires")
"""The fields of ``key_row`` a change records (never the id, which no change sets)."""


class KeyChanges:
    """The registry of one configuration, changed by one actor: each change written, audited, waited for."""

    def __init__(self, settings: Settings, actor: Actor) -> None:
        self.settings = settings
        self.actor = actor
        self.store = KeyStore(settings.keys_path, settings.networks, settings.path)
        self.audit_path = audit.audit_path(settings.state_dir)

    def add(
        self,
        name: str,
        *,
        publish: Iterable[str] = (),
        subscribe: Iterable[str] = (),
        admin: bool = False,
        terms: Mapping[str, object] | None = None,
    ) -> tuple[str, Key]:
        """Make a key: its secret (shown once, kept nowhere) and the key as stored."""
        with audit.appending(self.audit_path) as record:
            secret = self.store.add(
                name,
                publish=publish,
                subscribe=subscribe,
                admin=admin,
                terms=Terms(**terms_fields(terms or {})),  # type: ignore[arg-type]
            )
            key = self._stored(name)
            row = key_row(key)
            record(self.actor, "add", name, {field: row[field] for field in _RECORDED})
        return secret, key

    def edit(
        self,
        name: str,
        *,
        publish: Iterable[str] | None = None,
        subscribe: Iterable[str] | None = None,
        admin: bool | None = None,
        terms: Mapping[str, object] | None = None,
    ) -> Key:
        """Change a key's rights or terms; None (or a term not given) leaves it as it is."""
        fields = terms_fields(terms or {})
        asked = {
            *(("publish",) * (publish is not None)),
            *(("subscribe",) * (subscribe is not None)),
            *(("admin",) * (admin is not None)),
            *fields,
            *(("burst",) * ("rate" in fields)),  # a rate removed takes its burst with it
        }
        with audit.appending(self.audit_path) as record:
            key = self.store.edit(name, publish=publish, subscribe=subscribe, admin=admin, terms=fields)
            row = key_row(key)
            record(self.actor, "edit", name, {field: row[field] for field in _RECORDED if field in asked})
        return key

    def revoke(self, name: str) -> None:
        """Delete a key: refused on every door, its connections closed."""
        with audit.appending(self.audit_path) as record:
            self.store.revoke(name)
            record(self.actor, "revoke", name, {})

    def rotate(self, name: str) -> tuple[str, Key]:
        """A new secret for a key (shown once), keeping its rights and id; the old one stops working."""
        with audit.appending(self.audit_path) as record:
            secret = self.store.rotate(name)
            record(self.actor, "rotate", name, {"secret": "replaced"})
        return secret, self._stored(name)

    def wait(self, timeout: float = CONFIRM_TIMEOUT) -> Report:
        """Once every running server has the registry in force (or refused it), or at the bound."""
        return wait_for_servers(self.settings.path, self.settings.keys_path, timeout=timeout)

    def _stored(self, name: str) -> Key:
        """The key as the file holds it now (another writer may have revoked it since)."""
        key = self.store.keys().get(name)
        if key is None:
            msg = f"no key named {name!r}"
            raise UnknownKey(msg)
        return key
