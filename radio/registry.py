"""The one place that decides who may publish to and read which network.

Both doors ask the same questions of the same object: the broker's plugins on CONNECT, PUBLISH,
SUBSCRIBE and every delivery; the bridge on every POST. A ``Registry`` is an immutable snapshot of
the configuration's networks and the keys file; ``LiveRegistry`` swaps in a new snapshot when either
file changes, so a revoked key stops working on running servers without a restart.

Rights (design section 3):

- publish to ``networks/<n>`` or ``networks/<n>/...`` iff ``n`` is a configured network in the
  key's ``publish`` list; nothing else, ever; anonymous clients publish nothing;
- read a network iff it is in the key's ``subscribe`` list or is ``public``;
- a filter naming one network is granted iff that network may be read; a filter whose network
  level is a wildcard is granted (if the client may read any network at all) and every message
  is checked on delivery; any other filter is refused;
- an ``admin`` key may publish and read every topic;
- a ``publish_all`` service key (the HTTP bridge's) may publish to every network, read none;
- a ``read_all`` service key (the history recorder's) may read every network, publish none.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import os
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Final

from radio import confirmations
from radio.config import NetworkSettings, Settings, load_settings
from radio.credentials import secret_digest
from radio.errors import MissingRegistry, RadioError
from radio.keys import Key, load_keys
from radio.topics import Reach, filter_reach, network_of_topic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Access:
    """What one client may do, worked out once per registry snapshot so each check is a set lookup."""

    publish: frozenset[str] = frozenset()
    read: frozenset[str] = frozenset()
    admin: bool = False

    def may_publish(self, topic: str) -> bool:
        """Whether a PUBLISH to this concrete topic is allowed."""
        return self.admin or network_of_topic(topic) in self.publish

    @property
    def publishes(self) -> bool:
        """Whether it may publish to some topic at all."""
        return self.admin or bool(self.publish)

    def may_read(self, topic: str) -> bool:
        """Whether a message on this concrete topic may be delivered (live or retained)."""
        return self.admin or network_of_topic(topic) in self.read

    def may_subscribe(self, topic_filter: str) -> bool:
        """Whether a SUBSCRIBE filter is granted; wildcard networks are checked per message instead."""
        if self.admin:
            return True
        reach = filter_reach(topic_filter)
        if reach is Reach.ANY_NETWORK:
            # Checked per message; a client that may read nothing at all is told so at once.
            return bool(self.read)
        return reach in self.read


NO_ACCESS: Final = Access()
_SERIALS: Final = itertools.count(1)


@dataclass(frozen=True)
class Registry:
    """One consistent view of the networks and the keys."""

    networks: Mapping[str, NetworkSettings]
    keys: Mapping[str, Key]
    allow_anonymous: bool = True
    _access: dict[str | None, Access] = field(init=False, repr=False, compare=False)
    _by_digest: dict[str, Key] = field(init=False, repr=False, compare=False)
    _expiries: tuple[datetime, ...] = field(init=False, repr=False, compare=False)
    _expiring: dict[str, float] = field(init=False, repr=False, compare=False)
    largest_payload: int = field(init=False, compare=False)
    """The largest ``max_payload`` of any network: the bridge reads no body beyond it."""
    serial: int = field(init=False, compare=False)
    """This snapshot's number, never given to another in this process: what a memo of something
    worked out under a snapshot keeps instead of the snapshot, so that it never keeps an old one
    alive (a broker remembers one per publishing session)."""

    def __post_init__(self) -> None:
        known = frozenset(self.networks)
        public = frozenset(n for n, s in self.networks.items() if s.public)
        # Anonymous clients read the public networks, on every door, unless they are not let in.
        access: dict[str | None, Access] = {
            None: Access(read=public if self.allow_anonymous else frozenset())
        }
        for name, key in self.keys.items():
            access[name] = Access(
                publish=known if key.publish_all else key.publish & known,
                read=known if key.read_all else (key.subscribe & known) | public,
                admin=key.admin,
            )
        object.__setattr__(self, "_access", access)
        object.__setattr__(self, "_by_digest", {k.digest: k for k in self.keys.values()})
        largest = max((n.max_payload for n in self.networks.values()), default=0)
        object.__setattr__(self, "largest_payload", largest)
        expiries = sorted(e for k in self.keys.values() if (e := k.terms.expires) is not None)
        object.__setattr__(self, "_expiries", tuple(expiries))
        expiring = {n: e.timestamp() for n, k in self.keys.items() if (e := k.terms.expires) is not None}
        object.__setattr__(self, "_expiring", expiring)
        object.__setattr__(self, "serial", next(_SERIALS))

    @classmethod
    def from_settings(cls, settings: Settings) -> Registry:
        """The registry described by a configuration and its keys file, which must exist."""
        return cls(
            networks=settings.networks,
            keys=load_keys(settings.keys_path),
            allow_anonymous=settings.broker.allow_anonymous,
        )

    @classmethod
    def at_hand(cls, settings: Settings) -> Registry:
        """The registry as it stands; on a fresh machine, before any key was made, one without keys.

        For the commands that export it (Mosquitto's and NATS's files): with no keys file yet,
        they export the networks and anonymous access, and no key.
        """
        try:
            return cls.from_settings(settings)
        except MissingRegistry:
            return _without_keys(settings)

    def authenticate(self, name: str, secret: str) -> Key | None:
        """The key behind MQTT credentials: username and password, as the broker sees them.

        A username that names a key must come with that key's secret. Any other username is a
        mere label (MQTT needs one beside a password) and the secret alone identifies the key,
        as on the HTTP door: so clients given only a secret (``--key SECRET``) can connect.
        """
        key = self.keys.get(name)
        if key is not None:
            return key if key.matches(secret) and not key.expired() else None
        return self.key_for_secret(secret)

    def key_for_secret(self, secret: str) -> Key | None:
        """The key whose secret this is (the bridge's check: it sees the secret alone).

        An expired key is no key: refused from its expiry on, like a revoked one.
        """
        key = self._by_digest.get(secret_digest(secret))
        return None if key is None or key.expired() else key

    def next_expiry(self, after: datetime) -> datetime | None:
        """The first expiry of a key still valid at ``after``: when a server must act next."""
        expiries = self._expiries
        index = bisect.bisect_right(expiries, after)
        return expiries[index] if index < len(expiries) else None

    def access(self, key_name: str | None) -> Access:
        """The rights of a key by name, None meaning anonymous; a key that no longer exists has none.

        Nor has an expired one, from its expiry on: its offline sessions are queued nothing while
        it lapses, so a key made valid again (``radio keys edit --expires``) is never sent what
        was published while it could read nothing, as for a read right taken away and given back.
        """
        expiring = self._expiring
        if expiring and key_name is not None:
            expires = expiring.get(key_name)
            if expires is not None and time.time() >= expires:
                return NO_ACCESS
        return self._access.get(key_name, NO_ACCESS)


class LiveRegistry:
    """The current registry, reloaded when the configuration or keys file changes.

    ``refresh()`` costs two ``stat`` calls when nothing changed, so servers call it on a short
    timer (the broker) or at most every ``interval`` seconds on the request path (the bridge). A
    file caught mid-edit or broken by hand is reported once and the previous snapshot stays in
    force: a typo must not open or close the doors. So is a keys file that was emptied or
    deleted, and a configuration file that was emptied or deleted after the start: neither is read
    as "no keys" or "every default" (docs/registry.md).

    At start on a fresh machine, with no keys file yet, there are no keys (one log line says so)
    until a command makes the file. The file is not written here: a server that restarts while
    the file is deleted must not write an empty registry that every other server would then apply.

    Each instance also confirms, in a file beside the configuration, the version it has put in
    force (``radio.confirmations``), so that ``radio keys add`` can return once it is live.
    """

    def __init__(
        self,
        config: str | os.PathLike[str] | None = None,
        keys: str | os.PathLike[str] | None = None,
        *,
        idle_after: float = confirmations.IDLE_AFTER,
    ) -> None:
        """Load the registry now; watch and confirm it from then on.

        ``idle_after``: seconds without a ``refresh()`` call before the watcher thread reloads and
        confirms in its place. A caller that applies a snapshot just by reading ``current`` (the
        bridge) passes 0: a change is then in force within one watch interval.
        """
        self._config_arg = config
        self._keys_arg = keys
        self._idle_after = idle_after
        self.settings = load_settings(config, keys)
        # On record as pending before the files are read: a change made while this process loads
        # is waited for, never answered as in force on the servers then running without it.
        self._confirmer = confirmations.Confirmer(self.settings.path, self.settings.keys_path)
        self._confirmer.confirm([], None, None)
        try:
            # The versions are taken before the files are read: a change made in between is then
            # reloaded on the next check, never taken as the version of what was read before it.
            self._signature = self._stat()
            self.settings = load_settings(config, keys)
            try:
                self.current = Registry.from_settings(self.settings)
            except MissingRegistry:
                log.warning(
                    "no key registry at %s yet: no keys until 'radio keys add' makes one",
                    self.settings.keys_path,
                )
                self.current = _without_keys(self.settings)
        except BaseException:
            self._confirmer.close()
            raise
        self._failed_signature: tuple[object, ...] | None = None
        self._failure: str | None = None
        self._start_confirming()

    def _stat(self) -> tuple[object, ...]:
        return (_file_signature(self.settings.path), _file_signature(self.settings.keys_path))

    def _reload(self) -> bool:
        """Reload if either file changed; True when a new snapshot took effect."""
        signature = self._stat()
        if signature in (self._signature, self._failed_signature):
            return False
        # A file in force must stay: its absence would mean "every default" or "no keys". A keys
        # file that never existed since the start still means no keys (a network change applies).
        config_in_force, keys_in_force = (part is not None for part in self._signature)
        try:
            settings = load_settings(self._config_arg, self._keys_arg, required=config_in_force)
            try:
                registry = Registry.from_settings(settings)
            except MissingRegistry:
                if keys_in_force:
                    raise
                registry = _without_keys(settings)
        except RadioError as exc:
            self._failed_signature, self._failure = signature, str(exc)
            log.error("registry not reloaded, previous rights stay in force: %s", exc)  # noqa: TRY400
            return False
        self.settings, self.current = settings, registry
        self._signature, self._failed_signature = signature, None
        log.info("registry reloaded: %d networks, %d keys", len(registry.networks), len(registry.keys))
        return True

    def refresh(self) -> bool:
        """Reload if either file changed; True when a new snapshot took effect since the last call.

        The caller applies a new snapshot before calling again, so this call first confirms the
        snapshot handed over on the previous one (``radio.confirmations``).
        """
        confirmer = self._confirmer
        with confirmer.lock:
            confirmer.last_call = time.monotonic()
            if not confirmer.unreported:
                self._confirm()
            changed = self._reload() or confirmer.unreported
            confirmer.unreported = False
            if self._failed_signature is not None:
                self._confirm()
            return changed

    def close(self) -> None:
        """This process no longer applies the registry (its server stopped): no change waits for it.

        A registry kept after its server stopped, in a process that goes on, would otherwise stay
        on record as a running server that never confirms, and every key change would wait for it.
        """
        self._confirmer.close()

    def _start_confirming(self) -> None:
        self._confirm()
        weakref.finalize(self, self._confirmer.close)
        confirmations.watch(self, LiveRegistry._refresh_if_idle)

    def _refresh_if_idle(self) -> None:
        """Nobody has called ``refresh()`` for a while (an idle bridge): reload and confirm here.

        Only a caller that applies a snapshot by reading it (``idle_after`` 0) has it in force the
        moment it is loaded. A caller that applies it itself (a broker closing connections, a
        runner rewriting Mosquitto's files) has it in force only once it has called ``refresh()``
        again: a snapshot loaded here, or handed over and not yet applied, is not confirmed here
        (a refusal is: the previous rights stay in force whatever the caller does).
        """
        confirmer = self._confirmer
        with confirmer.lock:
            if time.monotonic() - confirmer.last_call < self._idle_after:
                return
            if self._reload():
                confirmer.unreported = True  # the next refresh() still says True, for its caller
            if self._idle_after == 0 or self._failed_signature is not None:
                self._confirm()

    def _confirm(self) -> None:
        def as_json(signature: tuple[object, ...] | None) -> confirmations.Version | None:
            if signature is None:
                return None
            return [list(part) if isinstance(part, tuple) else None for part in signature]

        self._confirmer.confirm(
            as_json(self._signature) or [],
            as_json(self._failed_signature),
            self._failure if self._failed_signature is not None else None,
        )


def _without_keys(settings: Settings) -> Registry:
    """The registry of a fresh machine, before any key was made: the networks, and no keys."""
    return Registry(networks=settings.networks, keys={}, allow_anonymous=settings.broker.allow_anonymous)


def _file_signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)
