"""Per-source limits: what one address may hold of the broker before any key pays for it.

Three things cost the broker without a key behind them, and one address could multiply them:

- sockets that have not completed their CONNECT: each holds a slot of its listener's
  ``max_connections`` until ``connect_timeout``; one address holding thousands (and reopening
  them as they are closed) would leave none for anyone else. Past ``max_connecting_per_address``
  a new socket from that address is closed at once. A socket counts from its TCP accept, on
  every listener (``listeners.Accepting``): one still in its TLS handshake or WebSocket upgrade
  holds a file descriptor as much as one that has not sent its CONNECT.
- anonymous connections: a CONNECT without a key is as cheap as a socket, and each completed one
  holds a slot of its listener's ``max_connections`` for as long as it likes. Past
  ``anonymous_max_connections_per_address`` connected at once, an address's next anonymous
  CONNECT is refused (CONNACK 3); keyed clients from it are not counted: a key answers for them.
- anonymous persistent sessions: each keeps a queue in memory and in the store while its client
  is away, and nobody pays for it. They are capped in all and per address, in count and in
  queued bytes; a CONNECT that would open one more past a cap is refused (CONNACK 3, "server
  unavailable"). Resuming a session that exists is never refused: it costs nothing new.

- persistent sessions of one key: a key's client ids are its own, but each session keeps a queue
  in memory and in the store while its client is away, so one cheap read-only key opening
  sessions under new client ids could fill the disk. Past ``max_sessions_per_key`` a CONNECT
  that would open one more is refused (CONNACK 3); resuming one is not. What they queue is
  bounded in all too (``max_queued_bytes_per_key``): a thousand of them left on a busy network
  would each queue its own 16 MiB.
- connections of one key: a key is sold to one buyer, and each of its connections holds a slot
  of its listener's ``max_connections``; one key opening thousands (a clean session each, from
  one address or many) would leave none for the other buyers. Past ``max_connections_per_key``
  connected at once, the key's next CONNECT is refused (CONNACK 3), unless it takes over a
  connection of the same key (its client id's): that one is closed, so the count stays.
- shared subscriptions (``$share/GROUP/FILTER``): each group a sample's filter matches costs a
  visit, a read check and a delivery, where a session's overlapping filters cost one delivery in
  all, so one session's ``max_filters`` unique groups are a hundred deliveries per sample, and a
  source's thousand connections a hundred thousand. Past ``max_shared_per_source`` held at once
  by one source (a key's sessions, from any addresses; an address's anonymous ones), a SUBSCRIBE
  to one more gets SUBACK 0x97 for it; re-subscribing to one held is not refused. They count
  from their grant (or a persistent session's restore) until UNSUBSCRIBE or the session's end.

Every refusal is counted by reason, for the metrics. An address is counted as its source
(``radio.sources``): an IPv6 client counts under its /64, from whichever of its addresses it comes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from radio.broker.sessions import KeyAccount
from radio.sources import source_of

if TYPE_CHECKING:
    from radio.broker.sessions import Session

CONNECTING: Final = "connecting_per_address"
"""The reason a socket was closed unheard: its address has too many sockets not yet CONNECTed."""


@dataclass(frozen=True)
class AnonymousCaps:
    """How much anonymous persistent sessions may hold, in all and per source address."""

    max_sessions: int = 1_000
    max_sessions_per_address: int = 10
    total_queued_bytes: int = 32 * 1024 * 1024
    queued_bytes_per_address: int = 512 * 1024
    max_connections_per_address: int = 1_000


class Counts:
    """Connections counted by who holds them (a source address, a key), each up to ``limit``."""

    __slots__ = ("_held", "limit", "refused")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        """Connections one holder may have at once; 0: no limit."""
        self._held: Counter[str] = Counter()
        self.refused = 0

    def take(self, who: str) -> bool:
        """One more for ``who``: False (counted as refused) if it has its fill already."""
        if self.limit and self._held[who] >= self.limit:
            self.refused += 1
            return False
        self._held[who] += 1
        return True

    def give_back(self, who: str) -> None:
        """One of ``who``'s ended."""
        left = self._held[who] - 1
        if left > 0:
            self._held[who] = left
        else:
            del self._held[who]

    def held(self, who: str) -> int:
        """How many ``who`` has now."""
        return self._held.get(who, 0)

    def holding(self, who: str) -> int:
        """How many the holder a ``Slot`` names has now: ``who`` itself (a source's: its address's)."""
        return self.held(who)

    def __len__(self) -> int:
        return sum(self._held.values())


class Connecting(Counts):
    """Sockets that have not completed their CONNECT, counted per source address."""

    __slots__ = ()

    def open(self, address: str) -> bool:
        """A socket from ``address`` opened: False (counted) if its source has its fill already."""
        return self.take(source_of(address))

    def done(self, address: str) -> None:
        """A socket from ``address`` completed its CONNECT, or closed before it did."""
        self.give_back(source_of(address))

    def holding(self, address: str) -> int:
        """How many its source has now (``Slot.share``)."""
        return self.held(source_of(address))


class Slot:
    """One place in a count of connections (an address's anonymous ones, a key's), held until it ends."""

    __slots__ = ("_counts", "_who")

    def __init__(self, counts: Connecting | KeyConnections, who: str) -> None:
        self._counts = counts
        self._who = who

    def release(self) -> None:
        """The connection ended: its place is free."""
        self._counts.done(self._who)

    def share(self, room: int, most: int) -> int:
        """Its part of ``room``, shared by every connection its holder has now; at most ``most``."""
        return min(most, room // max(1, self._counts.holding(self._who)))


class AnonymousConnections(Connecting):
    """Anonymous clients connected now, counted per source address (``open`` refuses past the limit)."""

    __slots__ = ()


class SharedBySource(Counts):
    """The shared subscriptions held now, counted per source.

    A key's count under its key, from any address; an anonymous session's under its address's
    source when it took its first one (a resumed session counts where it began).
    """

    __slots__ = ("_where",)

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self._where: dict[Session, tuple[str, int]] = {}

    def refusal(self, session: Session) -> str | None:
        """Why one more shared subscription of this session is refused (counted), or None."""
        found = self._where.get(session)
        who = found[0] if found is not None else _source(session)
        held = self.held(who)
        if not self.limit or held < self.limit:
            return None
        self.refused += 1
        plural = "s" * (held != 1)
        setting = "max_shared_per_source"
        return f"its source holds {held} shared subscription{plural}, the limit [broker] {setting}"

    def joined(self, session: Session) -> None:
        """The session holds one more (granted or restored: counted, never refused here)."""
        who, mine = self._where.get(session) or (_source(session), 0)
        self._held[who] += 1
        self._where[session] = (who, mine + 1)

    def left(self, session: Session) -> None:
        """The session holds one fewer (unsubscribed, or the session ended)."""
        found = self._where.get(session)
        if found is None:
            return
        who, mine = found
        self.give_back(who)
        if mine > 1:
            self._where[session] = (who, mine - 1)
        else:
            del self._where[session]


def _source(session: Session) -> str:
    key_id = session.key_id
    return f"key {key_id}" if key_id is not None else source_of(session.remote_address)


class KeySessions:
    """The persistent sessions of each key, by key id."""

    __slots__ = ("_accounts", "_by_key", "limit", "queued_bytes_limit", "refused")

    def __init__(self, limit: int, queued_bytes_limit: int = 0) -> None:
        self.limit = limit
        """Sessions one key may hold; 0: no limit."""
        self.queued_bytes_limit = queued_bytes_limit
        """Bytes the sessions of one key may queue in all; 0: no limit (``sessions.KeyAccount``)."""
        self._by_key: dict[str, set[Session]] = {}
        self._accounts: dict[str, KeyAccount] = {}
        self.refused = 0

    def track(self, session: Session) -> None:
        """The session is held by the broker now (opened, resumed or restored).

        It queues on its key's account from now on; the history recorder's session (whose limits
        report what it missed) has its own, far larger bound, and no account.
        """
        key_id = session.key_id
        if key_id is not None and session.key_name is not None and session.persistent:
            self._by_key.setdefault(key_id, set()).add(session)
            if session.account is None and not session.limits.report_missed:
                account = self._accounts.get(key_id)
                if account is None:
                    account = self._accounts[key_id] = KeyAccount(self.queued_bytes_limit)
                account.queued_bytes += session.queued_bytes
                session.account = account

    def untrack(self, session: Session) -> None:
        """The session is gone."""
        key_id = session.key_id
        sessions = self._by_key.get(key_id) if key_id is not None else None
        account = session.account
        if account is not None:
            account.queued_bytes -= session.queued_bytes
            session.account = None
        if sessions is not None:
            sessions.discard(session)
            if not sessions:
                del self._by_key[key_id]  # type: ignore[arg-type]
                self._accounts.pop(key_id, None)  # type: ignore[arg-type]

    def queued_bytes(self, key_id: str) -> int:
        """Bytes the persistent sessions of a key have queued in all."""
        account = self._accounts.get(key_id)
        return account.queued_bytes if account is not None else 0

    def refusal(self, key_id: str | None, name: str) -> str | None:
        """Why a new persistent session of this key is refused (counted), or None."""
        held = len(self._by_key.get(key_id, ())) if key_id is not None else 0
        if not self.limit or held < self.limit:
            return None
        self.refused += 1
        return f"key {name!r} holds {held} persistent sessions, the limit [broker] max_sessions_per_key"


class KeyConnections(Counts):
    """The clients connected now with each key, by key id."""

    __slots__ = ()

    def refusal(self, key_id: str, name: str) -> str | None:
        """Why one more client of this key is refused (counted), or None: it is counted then."""
        if self.take(key_id):
            return None
        held = self.held(key_id)
        return f"key {name!r} has {held} clients connected, the limit [broker] max_connections_per_key"

    def done(self, key_id: str) -> None:
        """A client of this key went."""
        self.give_back(key_id)


class AnonymousSessions:
    """The anonymous persistent sessions, by the address they were last opened from."""

    __slots__ = ("_by_address", "_where", "caps", "refused")

    def __init__(self, caps: AnonymousCaps) -> None:
        self.caps = caps
        self._by_address: dict[str, set[Session]] = {}
        self._where: dict[Session, str] = {}
        self.refused: Counter[str] = Counter()
        """Refused CONNECTs, by the cap that refused them."""

    def track(self, session: Session) -> None:
        """The session is held by the broker now (opened, resumed or restored), from its address."""
        self.untrack(session)
        if session.key_name is not None or not session.persistent:
            return
        address = source_of(session.remote_address)
        self._where[session] = address
        self._by_address.setdefault(address, set()).add(session)

    def untrack(self, session: Session) -> None:
        """The session is gone."""
        address = self._where.pop(session, None)
        if address is None:
            return
        sessions = self._by_address[address]
        sessions.discard(session)
        if not sessions:
            del self._by_address[address]

    def __len__(self) -> int:
        return len(self._where)

    def queued_bytes(self) -> int:
        """Bytes queued for them all."""
        return sum(s.queued_bytes for s in self._where)

    def refusal(self, address: str) -> str | None:
        """Why a new anonymous persistent session from ``address`` is refused (counted), or None."""
        caps = self.caps
        address = source_of(address)
        mine = self._by_address.get(address, ())
        if len(mine) >= caps.max_sessions_per_address:
            reason = "anonymous_sessions_per_address"
            text = (
                f"{len(mine)} anonymous persistent sessions from {address}, "
                "the limit [broker] anonymous_max_sessions_per_address"
            )
        elif len(self._where) >= caps.max_sessions:
            reason = "anonymous_sessions"
            setting = "anonymous_max_sessions"
            text = f"{len(self._where)} anonymous persistent sessions, the limit [broker] {setting}"
        elif (held := sum(s.queued_bytes for s in mine)) >= caps.queued_bytes_per_address:
            reason = "anonymous_queued_bytes_per_address"
            text = (
                f"{held} bytes queued for the anonymous sessions of {address}, "
                "the limit [broker] anonymous_queued_bytes_per_address"
            )
        elif (held := self.queued_bytes()) >= caps.total_queued_bytes:
            reason = "anonymous_total_queued_bytes"
            text = f"{held} bytes queued for anonymous sessions, the limit [broker] {reason}"
        else:
            return None
        self.refused[reason] += 1
        return text
