"""Usage and quotas: what each key published, per door, network and day, in one SQLite file.

``usage.db`` lives beside the configuration (mode 0600) and is shared by every process that
takes samples in: the embedded broker (the MQTT door) and each of the bridge's workers (the HTTP
door). So both doors count into the same quota, and the count survives a restart.

Nothing is written on the hot path: each process counts in memory and a thread of its own adds
the counts to the file once per ``interval`` (one transaction). A quota check is the count the
file held at the last write (every process's samples) plus this process's samples since. Within
``MARGIN`` samples of a key's quota, that is not exact enough (another process may have counted
samples it has not written yet), so for those last samples each check writes this process's
counts and reads the file again, and each sample wakes the writer to write it at once, on its
own thread rather than the caller's (an event loop, which a locked file must not stall): two
processes then see each other's samples (docs/access.md). What a process counted in its last
interval before a ``kill -9`` is lost.

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
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Final

from radio.errors import RadioError
from radio.keys import Key

log = logging.getLogger("radio.usage")

FILE_NAME: Final = "usage.db"
INTERVAL: Final = 1.0
"""Seconds between writes: the most a quota can be overrun by, in the other processes' traffic."""
BUSY_TIMEOUT: Final = 10.0
"""Seconds the writer thread waits for another process's lock on the file before it fails."""
LOCK_WAIT: Final = 1.0
"""Seconds a quota check waits at most for the file before it gives up (``Busy``)."""
MARGIN: Final = 100
"""Samples before a quota's end from which every check reads the file, and every sample is written."""
DOORS: Final = ("http", "mqtt")
REASONS: Final = ("rights", "rate", "quota", "schema")

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS usage (day TEXT NOT NULL, key_id TEXT NOT NULL, key_name TEXT NOT NULL,
    door TEXT NOT NULL, network TEXT NOT NULL, samples INTEGER NOT NULL, bytes INTEGER NOT NULL,
    PRIMARY KEY (day, key_id, door, network));
CREATE INDEX IF NOT EXISTS usage_by_key ON usage (key_id, day);
CREATE TABLE IF NOT EXISTS refusals (day TEXT NOT NULL, key_id TEXT NOT NULL, key_name TEXT NOT NULL,
    door TEXT NOT NULL, reason TEXT NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (day, key_id, door, reason));
"""
_ADD_USAGE: Final = """INSERT INTO usage VALUES (?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (day, key_id, door, network) DO UPDATE SET
    samples = samples + excluded.samples, bytes = bytes + excluded.bytes, key_name = excluded.key_name"""
_ADD_REFUSALS: Final = """INSERT INTO refusals VALUES (?, ?, ?, ?, ?, ?)
    ON CONFLICT (day, key_id, door, reason) DO UPDATE SET
    count = count + excluded.count, key_name = excluded.key_name"""
_COUNT: Final = "SELECT COALESCE(SUM(samples), 0) FROM usage WHERE key_id = ? AND day >= ? AND day < ?"
_COUNTS: Final = "SELECT key_id, SUM(samples) FROM usage WHERE day >= ? AND day < ? GROUP BY key_id"


class UsageError(RadioError):
    """The usage file cannot be opened."""


class Busy(Exception):
    """The usage file is in use and the caller asked not to wait for it: ask again shortly."""


@functools.lru_cache(maxsize=4)
def _periods(today: date) -> tuple[tuple[str, str], tuple[str, str]]:
    """The day's and the month's quota periods: each its first day and the first day after it."""
    start = today.replace(day=1)
    month = (start.isoformat(), (start + timedelta(days=32)).replace(day=1).isoformat())
    return (today.isoformat(), (today + timedelta(days=1)).isoformat()), month


class _Today:
    """Today's date in UTC, worked out once a day rather than once a sample."""

    def __init__(self) -> None:
        self._number = -1
        self._date = date.min

    def __call__(self) -> date:
        number = int(time.time() // 86_400)
        if number != self._number:
            self._number, self._date = number, datetime.now(UTC).date()
        return self._date


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
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        # Not a lock on the file itself: closing any descriptor of it would drop SQLite's own locks.
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError as exc:
        msg = f"cannot use the usage file {path}: {exc}"
        raise UsageError(msg) from None
    try:
        # The bridge's workers and the broker start together: one at a time switches the file to
        # WAL and makes the tables (SQLite answers "locked" at once to a second one doing so).
        fcntl.flock(fd, fcntl.LOCK_EX)
        for companion in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            with contextlib.suppress(FileNotFoundError):
                companion.chmod(0o600)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(SCHEMA)
    except (OSError, sqlite3.Error) as exc:
        msg = f"cannot use the usage file {path}: {exc}"
        raise UsageError(msg) from None
    finally:
        os.close(fd)  # releases the lock
    return db


class Meter:
    """One process's counter: in memory on the hot path, into the shared file once per interval."""

    def __init__(self, path: Path, *, interval: float = INTERVAL) -> None:
        self.path = path
        self.interval = interval
        self._db = open_db(path)
        self._today = _Today()
        self._lock = threading.Lock()
        self._writing = threading.Lock()
        self._samples: dict[tuple[str, str, str, str, str], list[int]] = defaultdict(lambda: [0, 0])
        self._refusals: dict[tuple[str, str, str, str, str], int] = defaultdict(int)
        self._committed: dict[tuple[str, str], int] = {}
        """Quota counts (key id, period start) as the file held them at the last write."""
        self._local: dict[tuple[str, str], int] = defaultdict(int)
        self._inflight: dict[tuple[str, str], int] = {}
        self._ends: dict[tuple[str, str], str] = {}
        self._logged: set[tuple[str, str]] = set()
        self.totals: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
        """(key name, door, network): [samples, bytes] since this process started, for metrics."""
        self.refused: dict[tuple[str, str, str], int] = defaultdict(int)
        """(key name, door, reason): count since this process started, for metrics."""
        self._stop = threading.Event()
        self._soon = threading.Event()
        """Set to have the writer write now rather than at its next interval."""
        self._thread: threading.Thread | None = None

    # The hot path: memory only.
    def record(self, key: Key, door: str, network: str, size: int, count: int = 1) -> None:
        """Samples accepted from this key: ``count`` of them, ``size`` bytes in all."""
        days, months = _periods(self._today())
        day = days[0]
        with self._lock:
            row = self._samples[(day, key.id, key.name, door, network)]
            row[0] += count
            row[1] += size
            total = self.totals[(key.name, door, network)]
            total[0] += count
            total[1] += size
            near = False
            if key.terms.quota is not None:
                slot = (key.id, (months if key.terms.quota_period == "month" else days)[0])
                self._local[slot] += count
                near = key.terms.quota - self._used(slot) <= MARGIN
        if near:
            self._soon.set()  # others must see it soon; written by the writer, not on this thread

    def refuse(self, key: Key, door: str, reason: str) -> None:
        """One sample refused, and why (one of ``REASONS``)."""
        day = _periods(self._today())[0][0]
        with self._lock:
            self._refusals[(day, key.id, key.name, door, reason)] += 1
            self.refused[(key.name, door, reason)] += 1

    def quota(self, key: Key, *, within: float = LOCK_WAIT) -> QuotaState | None:
        """Where the key stands, or None if it has no quota; reads the file once per key and period.

        Raises ``Busy`` where it would wait longer than ``within`` seconds, for the writer thread or
        for another process holding the file's lock: a request thread must not wait 10 s, and an
        event loop (``within=0``) must not wait at all.
        """
        limit = key.terms.quota
        if limit is None:
            return None
        periods = _periods(self._today())
        start, end = periods[1] if key.terms.quota_period == "month" else periods[0]
        slot = (key.id, start)
        with self._lock:
            committed = self._committed.get(slot)
        if committed is None:
            with self._file(within):
                committed = self._count(key.id, start, end)
            with self._lock:
                self._committed.setdefault(slot, committed)
                self._ends[slot] = end
        with self._lock:
            used = self._used(slot)
        if used < limit and limit - used <= MARGIN:  # near the end: what every process has written
            with self._file(within):
                self._flush()
            with self._lock:
                used = self._used(slot)
        return QuotaState(used, limit, reset_time(end))

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
                raise Busy from exc  # locked by another process: what was counted stays counted
            finally:
                self._db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
        finally:
            self._writing.release()

    def _used(self, slot: tuple[str, str]) -> int:
        return self._committed.get(slot, 0) + self._inflight.get(slot, 0) + self._local.get(slot, 0)

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
        while True:
            self._soon.wait(self.interval)
            self._soon.clear()
            if self._stop.is_set():
                return
            try:
                self.flush()
            except sqlite3.Error as exc:
                log.error("usage not written to %s (kept for the next try): %s", self.path, exc)  # noqa: TRY400

    def flush(self) -> None:
        """Add what was counted since the last write to the file, then re-read the quota counts."""
        with self._writing:
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            samples, self._samples = self._samples, defaultdict(lambda: [0, 0])
            refusals, self._refusals = self._refusals, defaultdict(int)
            for slot, count in self._local.items():
                self._inflight[slot] = self._inflight.get(slot, 0) + count
            self._local = defaultdict(int)
            slots = [(slot, self._ends[slot]) for slot in self._committed if slot in self._ends]
        try:
            if samples or refusals:
                with self._transaction() as db:
                    db.executemany(_ADD_USAGE, [(*k, v[0], v[1]) for k, v in samples.items()])
                    db.executemany(_ADD_REFUSALS, [(*k, v) for k, v in refusals.items()])
            counts = self._counts(slots)
        except sqlite3.Error:
            with self._lock:  # put it back: written at the next try
                for k, v in samples.items():
                    row = self._samples[k]
                    row[0] += v[0]
                    row[1] += v[1]
                for k, n in refusals.items():
                    self._refusals[k] += n
            raise
        with self._lock:
            self._committed.update(counts)
            self._inflight.clear()

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

    def _counts(self, slots: list[tuple[tuple[str, str], str]]) -> dict[tuple[str, str], int]:
        """The count of each (key id, period start): one query per period, not one per key."""
        counts = dict.fromkeys((slot for slot, _ in slots), 0)
        for start, end in {(slot[1], end) for slot, end in slots}:
            for key_id, count in self._db.execute(_COUNTS, (start, end)):
                if (key_id, start) in counts:
                    counts[(key_id, start)] = int(count)
        return counts

    def _count(self, key_id: str, start: str, end: str) -> int:
        row = self._db.execute(_COUNT, (key_id, start, end)).fetchone()
        return int(row[0])

    def close(self) -> None:
        """Stop the writer and write what is left."""
        self._stop.set()
        self._soon.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        try:
            self.flush()
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


def report(
    path: Path, name: str | None = None, since: str | None = None
) -> tuple[list[UsageRow], list[RefusalRow]]:
    """What the usage file holds, oldest day first; nothing if there is no file yet."""
    if not path.exists():
        return [], []
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)
    except sqlite3.Error as exc:
        msg = f"cannot read the usage file {path}: {exc}"
        raise UsageError(msg) from None
    where, args = ["day >= ?"], [since or ""]
    if name is not None:
        where.append("key_name = ?")
        args.append(name)
    clause = " AND ".join(where)
    try:
        usage = [
            UsageRow(*row)
            for row in db.execute(
                f"SELECT day, key_name, door, network, samples, bytes FROM usage WHERE {clause} "  # noqa: S608 - fixed text
                "ORDER BY day, key_name, door, network",
                args,
            )
        ]
        refusals = [
            RefusalRow(*row)
            for row in db.execute(
                f"SELECT day, key_name, door, reason, count FROM refusals WHERE {clause} "  # noqa: S608
                "ORDER BY day, key_name, door, reason",
                args,
            )
        ]
    except sqlite3.Error as exc:
        msg = f"cannot read the usage file {path}: {exc}"
        raise UsageError(msg) from None
    finally:
        db.close()
    return usage, refusals


def report_rows(path: Path, name: str | None = None, since: str | None = None) -> list[dict[str, object]]:
    """``report`` as ``radio keys usage --json`` and the admin API give it: one object per row.

    Each row says its ``kind``: ``samples`` (published per day, key, door and network) or
    ``refusals`` (per day, key, door and reason).
    """
    samples, refusals = report(path, name, since)
    return [
        *({"kind": "samples", **vars(row)} for row in samples),
        *({"kind": "refusals", **vars(row)} for row in refusals),
    ]


def usage_path(state_dir: Path) -> Path:
    """Where the usage file of a platform lives: beside its configuration."""
    return state_dir / FILE_NAME
