"""Usage and quotas: what each key published and received, per door, network and day, in one SQLite file.

``usage.db`` lives beside the configuration (mode 0600) and is shared by every process that
takes samples in or hands them out: the embedded broker (the MQTT door) and each of the bridge's
workers (the HTTP door). So both doors count into the same quota, and the count survives a
restart.

**Usage** is counted in memory on the hot path; a thread of its own adds the counts to the file
once per ``interval`` (one transaction). What a process counted in its last interval before a
``kill -9`` is lost from the report.

**Quotas are exact**, whatever the concurrency and the mix of doors: a sample takes its unit of
the quota when it is admitted, before it is forwarded, and gives it back if it fails (a broker
that is away). Units come from a lease: each process takes a block of units from the file in one
transaction (``quotas`` table, ``used`` never past the limit) and spends it in memory. A block is
a sixteenth of what is left, at most ``LEASE_MAX``: far from a quota's end the file is touched
once per block, and near it every sample is its own transaction, so two processes can never
both take the last unit. Units a process has not spent for ``LEASE_IDLE`` seconds, or holds when
it stops, are given back, so one door's lease does not starve the other; a process killed with
``kill -9`` takes its unspent lease with it, so a quota can be under-served by at most one lease
per crash, never overrun.

Quota periods are calendar days and months in UTC; a quota resets at midnight UTC (or the first
of the month).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import sqlite3
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from radio.errors import Busy, RadioError
from radio.keys import Key
from radio.sqlite import open_private_db, open_readonly_db

log = logging.getLogger("radio.usage")

FILE_NAME: Final = "usage.db"
INTERVAL: Final = 1.0
"""Seconds between writes of the usage counts (the report may be this late; quotas are not)."""
BUSY_TIMEOUT: Final = 10.0
"""Seconds the writer thread waits for another process's lock on the file before it fails."""
LOCK_WAIT: Final = 1.0
"""Seconds a quota check waits at most for the file before it gives up (``Busy``)."""
LEASE_MAX: Final = 100
"""The most units of a quota one process takes from the file at once."""
LEASE_SHARE: Final = 16
"""A lease is at most this fraction of what is left of the quota: near its end, one unit."""
ABSORB_AT: Final = 10_000
"""Samples ``record`` lets wait, at most, for their counts to be added up (``_absorb``)."""
LEASE_IDLE: Final = 2.0
"""Seconds after which units a process has not spent go back to the file, for the other doors."""
DOORS: Final = ("http", "mqtt")
REASONS: Final = ("rights", "too_large", "not_json", "schema", "max_retained", "rate", "quota")

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS usage (day TEXT NOT NULL, key_id TEXT NOT NULL, key_name TEXT NOT NULL,
    door TEXT NOT NULL, network TEXT NOT NULL, samples INTEGER NOT NULL, bytes INTEGER NOT NULL,
    PRIMARY KEY (day, key_id, door, network));
CREATE INDEX IF NOT EXISTS usage_by_key ON usage (key_id, day);
CREATE TABLE IF NOT EXISTS refusals (day TEXT NOT NULL, key_id TEXT NOT NULL, key_name TEXT NOT NULL,
    door TEXT NOT NULL, reason TEXT NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (day, key_id, door, reason));
CREATE TABLE IF NOT EXISTS received (day TEXT NOT NULL, key_id TEXT NOT NULL, key_name TEXT NOT NULL,
    network TEXT NOT NULL, samples INTEGER NOT NULL, bytes INTEGER NOT NULL,
    PRIMARY KEY (day, key_id, network));
CREATE TABLE IF NOT EXISTS quotas (key_id TEXT NOT NULL, period TEXT NOT NULL, used INTEGER NOT NULL,
    PRIMARY KEY (key_id, period));
"""
_ADD_USAGE: Final = """INSERT INTO usage VALUES (?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (day, key_id, door, network) DO UPDATE SET
    samples = samples + excluded.samples, bytes = bytes + excluded.bytes, key_name = excluded.key_name"""
_ADD_REFUSALS: Final = """INSERT INTO refusals VALUES (?, ?, ?, ?, ?, ?)
    ON CONFLICT (day, key_id, door, reason) DO UPDATE SET
    count = count + excluded.count, key_name = excluded.key_name"""
_ADD_RECEIVED: Final = """INSERT INTO received VALUES (?, ?, ?, ?, ?, ?)
    ON CONFLICT (day, key_id, network) DO UPDATE SET
    samples = samples + excluded.samples, bytes = bytes + excluded.bytes, key_name = excluded.key_name"""
_START_PERIOD: Final = """INSERT OR IGNORE INTO quotas
    SELECT ?, ?, COALESCE(SUM(samples), 0) FROM usage WHERE key_id = ? AND day >= ? AND day < ?"""
"""A period's first lease starts from what the usage rows hold (a file kept from before leases)."""
_USED: Final = "SELECT used FROM quotas WHERE key_id = ? AND period = ?"
_LEASE: Final = "UPDATE quotas SET used = used + ? WHERE key_id = ? AND period = ?"


class UsageError(RadioError):
    """The usage file cannot be opened."""


@functools.lru_cache(maxsize=4)
def _periods(today: date) -> tuple[tuple[str, str], tuple[str, str]]:
    """The day's and the month's quota periods: each its first day and the first day after it."""
    start = today.replace(day=1)
    month = (start.isoformat(), (start + timedelta(days=32)).replace(day=1).isoformat())
    return (today.isoformat(), (today + timedelta(days=1)).isoformat()), month


_EPOCH: Final = date(1970, 1, 1).toordinal()


def _day(number: int) -> date:
    """Day ``number`` since the epoch, in UTC."""
    return date.fromordinal(_EPOCH + number)


def reset_time(end: str) -> datetime:
    """When a period that ends on the day ``end`` resets: midnight UTC."""
    return datetime.combine(date.fromisoformat(end), datetime.min.time(), UTC)


@dataclass(frozen=True)
class QuotaState:
    """Where a key stands in its quota period."""

    used: int
    limit: int
    resets: datetime

    @property
    def exceeded(self) -> bool:
        """Whether one more sample would go past the quota."""
        return self.used >= self.limit


def open_db(path: Path) -> sqlite3.Connection:
    """The usage file, made 0600 if new (it names keys and what they publish)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Not a lock on the file itself: closing any descriptor of it would drop SQLite's own locks.
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError as exc:
        msg = f"cannot use the usage file {path}: {exc}"
        raise UsageError(msg) from None
    try:
        # The bridge's workers and the broker start together: one at a time switches the file to
        # WAL and makes the tables (SQLite answers "locked" at once to a second one doing so).
        fcntl.flock(fd, fcntl.LOCK_EX)
        db = open_private_db(path, busy_timeout=BUSY_TIMEOUT)
        db.executescript(SCHEMA)
    except (OSError, sqlite3.Error) as exc:
        msg = f"cannot use the usage file {path}: {exc}"
        raise UsageError(msg) from None
    finally:
        os.close(fd)  # releases the lock
    return db


class _Lease:
    """Units of one key's quota this process took from the file and has not spent yet."""

    __slots__ = ("held", "limit", "used_at")

    def __init__(self, held: int, limit: int) -> None:
        self.held = held
        self.limit = limit
        """The quota they were taken under: an edited quota renews the lease."""
        self.used_at = time.monotonic()


@dataclass(frozen=True, slots=True)
class Unit:
    """One unit of a key's quota, taken for a sample: given back if the sample fails."""

    slot: tuple[str, str]
    """(key id, period: its day, or its month as ``YYYY-MM``) it was taken from."""
    limit: int
    """The quota it was taken under."""


class Meter:
    """One process's counter: usage in memory, into the shared file once per interval; exact quotas."""

    def __init__(self, path: Path, *, interval: float = INTERVAL, lease_idle: float = LEASE_IDLE) -> None:
        self.path = path
        self.interval = interval
        self.lease_idle = lease_idle
        self._db = open_db(path)
        self.clock: Callable[[], float] = time.time
        """Seconds since the epoch: which day (UTC) a sample is counted on and a quota spent in."""
        self._periods_of: tuple[int, tuple[tuple[str, str], tuple[str, str]]] | None = None
        """Today (days since the epoch) and its quota periods: worked out again only when the day changes."""
        self._lock = threading.Lock()
        self._writing = threading.Lock()
        self._samples: dict[tuple[str, str, str, str, str], list[int]] = defaultdict(lambda: [0, 0])
        self._refusals: dict[tuple[str, str, str, str, str], int] = defaultdict(int)
        self._received: dict[tuple[str, str, str, str], list[int]] = defaultdict(lambda: [0, 0])
        self._leases: dict[tuple[str, str], _Lease] = {}
        """(key id, period: a day, or a month as YYYY-MM): the units of quota this process holds."""
        self._logged: set[tuple[str, str]] = set()
        self._accepted: deque[tuple[float, Key, str, str, int, int]] = deque()
        """What ``record`` appended and ``_absorb`` has not yet added up: (when, key, door, network,
        bytes, samples)."""
        self._days: dict[int, str] = {}
        """Days since the epoch (UTC) as ``YYYY-MM-DD``, for ``_absorb``."""
        self._totals: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
        self.refused: dict[tuple[str, str, str], int] = defaultdict(int)
        """(key name, door, reason): count since this process started, for metrics."""
        self.received_totals: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        """(key name, network): [samples, bytes] delivered since this process started, for metrics."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _current_periods(self) -> tuple[tuple[str, str], tuple[str, str]]:
        """Today's and this month's quota periods (``_periods``), built once a day, not once a sample."""
        today = int(self.clock() // 86_400)
        known = self._periods_of
        if known is None or known[0] != today:
            known = self._periods_of = (today, _periods(_day(today)))
        return known[1]

    # The hot path: memory only.
    def record(self, key: Key, door: str, network: str, size: int, count: int = 1) -> None:
        """Samples accepted from this key: ``count`` of them, ``size`` bytes in all.

        Every admitted sample passes here, before it is delivered: so it only appends, without
        the lock (a deque's append is atomic). The counts are added up by ``absorb``: after the
        sample's delivery where the caller can (the broker, once per turn of its event loop),
        else when they are read or written, or every ``ABSORB_AT`` samples should nobody do so.
        """
        accepted = self._accepted
        accepted.append((self.clock(), key, door, network, size, count))
        if len(accepted) >= ABSORB_AT:
            self.absorb()

    def absorb(self) -> None:
        """Add up what ``record`` appended: called often (the broker, once per turn), so it is short."""
        with self._lock:
            self._absorb()

    def _absorb(self) -> None:
        """Add what ``record`` appended to the counts, each on the day it was recorded (under ``_lock``)."""
        accepted, days = self._accepted, self._days
        while accepted:
            stamp, key, door, network, size, count = accepted.popleft()
            number = int(stamp // 86_400)
            day = days.get(number)
            if day is None:
                day = days[number] = _day(number).isoformat()
            row = self._samples[(day, key.id, key.name, door, network)]
            row[0] += count
            row[1] += size
            total = self._totals[(key.name, door, network)]
            total[0] += count
            total[1] += size

    @property
    def totals(self) -> dict[tuple[str, str, str], list[int]]:
        """(key name, door, network): [samples, bytes] since this process started, for metrics."""
        self.absorb()
        return self._totals

    def unrecord(self, key: Key, door: str, network: str, size: int) -> None:
        """A sample recorded at its admission did not go through after all (the broker was away)."""
        self.record(key, door, network, -size, -1)

    def received(self, key_id: str, key_name: str, network: str, samples: int, size: int) -> None:
        """Samples delivered to a key as a listener: what it was sold."""
        day = self._current_periods()[0][0]
        with self._lock:
            row = self._received[(day, key_id, key_name, network)]
            row[0] += samples
            row[1] += size
            total = self.received_totals[(key_name, network)]
            total[0] += samples
            total[1] += size

    def refuse(self, key: Key, door: str, reason: str) -> None:
        """One sample refused, and why (one of ``REASONS``)."""
        day = self._current_periods()[0][0]
        with self._lock:
            self._refusals[(day, key.id, key.name, door, reason)] += 1
            self.refused[(key.name, door, reason)] += 1

    # Quotas.
    def take(self, key: Key, *, within: float = LOCK_WAIT) -> Unit | QuotaState | None:
        """Take one unit of the key's quota for a sample about to be forwarded.

        None if the key has no quota; a ``Unit`` if one was taken (``give_back`` it if the sample
        fails); the ``QuotaState`` if none is left. Raises ``Busy`` where a new lease would wait
        longer than ``within`` seconds, for the writer thread or another process holding the
        file: a request thread must not wait 10 s, and an event loop (``within=0``) not at all.
        """
        limit = key.terms.quota
        if limit is None:
            return None
        periods = self._current_periods()
        monthly = key.terms.quota_period == "month"
        start, end = periods[1] if monthly else periods[0]
        # A month's row is "2026-12", a day's "2026-12-01": on the 1st they must not be one row,
        # or a quota made monthly later in the month would count the 1st's samples alone.
        slot = (key.id, start[:7] if monthly else start)
        with self._lock:
            lease = self._leases.get(slot)
            if lease is not None and lease.held > 0 and lease.limit == limit:
                lease.held -= 1
                lease.used_at = time.monotonic()
                return Unit(slot, limit)
        with self._file(within):
            with self._lock:
                lease = self._leases.pop(slot, None)
            held = lease.held if lease is not None else 0
            try:
                granted, used = self._lease(slot, start, end, limit, held)
            except BaseException:
                if lease is not None:
                    with self._lock:
                        self._leases.setdefault(slot, lease)
                raise
        if not granted:
            return QuotaState(used, limit, reset_time(end))
        with self._lock:
            self._leases[slot] = _Lease(granted - 1, limit)
        return Unit(slot, limit)

    def _lease(
        self, slot: tuple[str, str], start: str, end: str, limit: int, returning: int
    ) -> tuple[int, int]:
        """Give back ``returning`` units and take a new block: (units granted, units used in the file).

        ``start`` and ``end`` are the period's first day and the first day after it.
        """
        key_id, period = slot
        with self._transaction() as db:
            db.execute(_START_PERIOD, (key_id, period, key_id, start, end))
            if returning:
                db.execute(_LEASE, (-returning, key_id, period))
            used = int(db.execute(_USED, slot).fetchone()[0])
            left = limit - used
            if left <= 0:
                return 0, used
            granted = max(1, min(LEASE_MAX, left // LEASE_SHARE))
            db.execute(_LEASE, (granted, key_id, period))
        return granted, used + granted

    def give_back(self, unit: Unit) -> None:
        """A unit taken for a sample that did not go through: the key may spend it again.

        Memory only (an event loop calls it): the unit rejoins the process's lease, which goes
        back to the file with the rest when the lease is renewed or the process stops.
        """
        with self._lock:
            self._leases.setdefault(unit.slot, _Lease(0, unit.limit)).held += 1

    @contextlib.contextmanager
    def _file(self, within: float) -> Iterator[None]:
        """The file to this thread within ``within`` seconds, for the writer and other processes alike."""
        taken = self._writing.acquire(timeout=within) if within > 0 else self._writing.acquire(blocking=False)
        if not taken:
            raise Busy
        try:
            self._db.execute(f"PRAGMA busy_timeout = {int(within * 1000)}")
            try:
                yield
            except sqlite3.OperationalError as exc:
                raise Busy from exc  # locked by another process: nothing was taken
            finally:
                self._db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
        finally:
            self._writing.release()

    def over_quota(self, key: Key, door: str, state: QuotaState) -> None:
        """Count a refusal for the quota, logging it once per key and period."""
        self.refuse(key, door, "quota")
        slot = (key.id, state.resets.isoformat())
        if slot not in self._logged:
            self._logged.add(slot)
            log.warning(
                "key %r reached its quota of %d samples; refused until %s",
                key.name,
                state.limit,
                state.resets.isoformat().replace("+00:00", "Z"),
            )

    # The writer.
    def start(self) -> None:
        """Write in the background, once per interval, until ``close``."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="radio-usage", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.flush()
            except sqlite3.Error as exc:
                log.error("usage not written to %s (kept for the next try): %s", self.path, exc)  # noqa: TRY400

    def flush(self) -> None:
        """Add what was counted since the last write to the file."""
        with self._writing:
            self._flush()

    def _flush(self) -> None:
        now = time.monotonic()
        with self._lock:
            self._absorb()
            samples, self._samples = self._samples, defaultdict(lambda: [0, 0])
            refusals, self._refusals = self._refusals, defaultdict(int)
            received, self._received = self._received, defaultdict(lambda: [0, 0])
            idle = {
                slot: lease
                for slot, lease in self._leases.items()
                if lease.held and now - lease.used_at >= self.lease_idle
            }
            for slot in idle:
                del self._leases[slot]
        if not (samples or refusals or received or idle):
            return
        try:
            with self._transaction() as db:
                db.executemany(_ADD_USAGE, [(*k, v[0], v[1]) for k, v in samples.items() if v[0] or v[1]])
                db.executemany(_ADD_REFUSALS, [(*k, v) for k, v in refusals.items()])
                db.executemany(_ADD_RECEIVED, [(*k, v[0], v[1]) for k, v in received.items()])
                db.executemany(_LEASE, [(-lease.held, *slot) for slot, lease in idle.items()])
        except sqlite3.Error:
            with self._lock:  # put it back: written at the next try
                for k, v in samples.items():
                    row = self._samples[k]
                    row[0] += v[0]
                    row[1] += v[1]
                for k, n in refusals.items():
                    self._refusals[k] += n
                for where, (count, size) in received.items():
                    got = self._received[where]
                    got[0] += count
                    got[1] += size
                for slot, lease in idle.items():
                    self._leases.setdefault(slot, _Lease(0, lease.limit)).held += lease.held
            raise

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        """Stop the writer, write what is left, and give back the quota units not spent."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        try:
            with self._writing:
                self._flush()
                with self._lock:
                    leases, self._leases = self._leases, {}
                unspent = [(-lease.held, *slot) for slot, lease in leases.items() if lease.held]
                if unspent:
                    with self._transaction() as db:
                        db.executemany(_LEASE, unspent)
        except sqlite3.Error as exc:
            log.error("usage not written to %s at exit: %s", self.path, exc)  # noqa: TRY400
        self._db.close()


@dataclass(frozen=True)
class UsageRow:
    """One line of ``radio keys usage``."""

    day: str
    key: str
    door: str
    network: str
    samples: int
    bytes: int


@dataclass(frozen=True)
class RefusalRow:
    """Refusals of one key on one door, one day, for one reason."""

    day: str
    key: str
    door: str
    reason: str
    count: int


def _select(path: Path, query: str, args: list[str]) -> list[tuple[Any, ...]]:
    """Rows of a read-only query on the usage file; none if there is no file or table yet."""
    if not path.exists():
        return []
    try:
        db = open_readonly_db(path, busy_timeout=BUSY_TIMEOUT)
    except sqlite3.Error as exc:
        msg = f"cannot read the usage file {path}: {exc}"
        raise UsageError(msg) from None
    try:
        return db.execute(query, args).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):  # a file written before that table existed
            return []
        msg = f"cannot read the usage file {path}: {exc}"
        raise UsageError(msg) from None
    except sqlite3.Error as exc:
        msg = f"cannot read the usage file {path}: {exc}"
        raise UsageError(msg) from None
    finally:
        db.close()


# The counting tables: name, the columns a row is counted by (its order), the counts.
_PUBLISHED: Final = ("usage", "day, key_name, door, network", "samples, bytes")
_REFUSED: Final = ("refusals", "day, key_name, door, reason", "count")
_RECEIVED: Final = ("received", "day, key_name, network", "samples, bytes")


def _counted(
    path: Path, table: tuple[str, str, str], name: str | None, since: str | None
) -> list[tuple[Any, ...]]:
    """A counting table's rows for one key (or all) from a day on, in the order of what they count by."""
    where, args = ["day >= ?"], [since or ""]
    if name is not None:
        where.append("key_name = ?")
        args.append(name)
    table_name, by, counts = table
    query = (
        f"SELECT {by}, {counts} FROM {table_name} WHERE {' AND '.join(where)} "  # noqa: S608 - fixed text
        f"ORDER BY {by}"
    )
    return _select(path, query, args)


def report(
    path: Path, name: str | None = None, since: str | None = None
) -> tuple[list[UsageRow], list[RefusalRow]]:
    """What keys published and had refused, oldest day first; nothing if there is no file yet."""
    usage = _counted(path, _PUBLISHED, name, since)
    refusals = _counted(path, _REFUSED, name, since)
    return [UsageRow(*row) for row in usage], [RefusalRow(*row) for row in refusals]


@dataclass(frozen=True)
class ReceivedRow:
    """What one key received as a listener, one day, from one network."""

    day: str
    key: str
    network: str
    samples: int
    bytes: int


def received_report(path: Path, name: str | None = None, since: str | None = None) -> list[ReceivedRow]:
    """What keys received as listeners, oldest day first; nothing if there is no file yet."""
    rows = _counted(path, _RECEIVED, name, since)
    return [ReceivedRow(*row) for row in rows]


def rows(path: Path, name: str | None = None, since: str | None = None) -> list[dict[str, object]]:
    """Everything the usage file says, as the rows ``radio keys usage --json`` prints.

    Each row has a ``kind``: ``samples`` (published, per door), ``received`` (delivered to the
    key as a listener) or ``refusals`` (per door and reason).
    """
    published, refused = report(path, name, since)
    received = received_report(path, name, since)
    return [
        *({"kind": "samples", **asdict(row)} for row in published),
        *({"kind": "received", **asdict(got)} for got in received),
        *({"kind": "refusals", **asdict(refusal)} for refusal in refused),
    ]


def usage_path(state_dir: Path) -> Path:
    """Where the usage file of a platform lives: beside its configuration."""
    return state_dir / FILE_NAME
