"""The key registry file, changed one command at a time (``KeyStore``).

Each change reads the file, changes it and writes it back under a lock beside it, so two commands
at once cannot lose a change; the file is replaced in one step, fsynced, mode 0600
(``radio/files.py``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import tomli_w

from radio.confirmations import holding_keys
from radio.credentials import secret_digest
from radio.errors import DuplicateKey, KeyStoreError, MissingRegistry, UnknownKey
from radio.files import open_private, write_private
from radio.keys.hashing import bcrypt_hash, mosquitto_hash, new_key_id, new_secret
from radio.keys.loading import read_keys
from radio.keys.model import Key, check_key_name
from radio.keys.terms import NO_TERMS, Terms, checked_terms, edited_terms
from radio.topics import NetworkName


class KeyStore:
    """The keys file, changed one command at a time."""

    def __init__(self, path: Path, networks: Iterable[str], config: Path | None = None) -> None:
        self.path = path
        self._networks = frozenset(networks)
        self._config = config
        """The configuration whose running servers a missing file is checked against (``_locked``)."""

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
        terms: Terms = NO_TERMS,
        read_all: bool = False,
    ) -> str:
        """Make a key, with an id of its own, and return its secret, which is not stored anywhere."""
        check_key_name(name)
        publish_set = self._known_networks(publish)
        subscribe_set = self._known_networks(subscribe)
        secret = new_secret()
        with self._locked() as keys:
            if name in keys:
                raise DuplicateKey(name)
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
                terms=checked_terms(terms),
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
                terms=checked_terms(replace(key.terms, **edited_terms(terms or {}))),
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

        A missing file is a registry not made yet: this change makes it, unless a server running
        on the configuration holds the keys of one that was there (``holding_keys``). An emptied
        or malformed one is refused, never overwritten.
        """
        with _lock(self.path):
            if self._config is not None and not self.path.exists():
                _not_held_by_a_server(self._config, self.path)
            keys = read_keys(self.path)
            yield keys
            data = {"keys": {n: k.to_toml() for n, k in sorted(keys.items())}}
            write_private(self.path, tomli_w.dumps(data), durable=True)  # a reader never sees half of it


def _not_held_by_a_server(config: Path, path: Path) -> None:
    """Refuse to make a registry where running servers hold the keys of the one that went missing."""
    if (server := holding_keys(config, path)) is not None:
        msg = (
            f"{path} is missing, and {server} still holds the keys it had: restore the file (from a "
            "backup) rather than make a new one, which would revoke every other key at once; to start "
            "a new registry, stop the servers first"
        )
        raise MissingRegistry(msg)


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
    """The writers' lock: a file beside the registry, held for one read-change-write.

    The registry's folder must exist: a missing one is a mistyped ``--keys`` or ``RADIO_KEYS``,
    and making it would make a registry no server reads, with keys that work nowhere.
    """
    if not path.parent.is_dir():
        msg = (
            f"{path}: its folder {path.parent} does not exist (--keys or RADIO_KEYS mistyped?); "
            "make the folder first to keep the keys there"
        )
        raise KeyStoreError(msg)
    lock_path = path.with_name(path.name + ".lock")
    fd = open_private(lock_path, os.O_WRONLY | os.O_APPEND)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
