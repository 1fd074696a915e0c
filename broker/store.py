"""What must survive a restart or a ``kill -9``: retained samples and persistent sessions, in SQLite.

Kept: each retained sample (topic, payload, QoS); each persistent session (under its key's id
and client id, with its subscriptions and when its client left) and the samples waiting for it
(queued, or sent and not yet acknowledged: then with the packet id it went under, so that after a
restart it goes again under that id, MQTT-4.4.0-1); marks reserved ahead of their use (row
numbers; each session's packet ids are kept with it), from which numbering goes on after a restart.
A sample waiting for many sessions is a row in each, and its payload is written once
(``payloads``), and goes with its last row.

The file gives space back: the write-ahead log is checkpointed and truncated, and the pages that
expired sessions and delivered samples leave free are returned to the file system (incremental
vacuum), whenever the broker asks (``compact``, after each sweep of expired sessions). A file
from before incremental vacuum is converted once, when it is opened.

Writes are incremental: the broker records each change as it happens (a sample queued for a
session, acknowledged, a retained value replaced) and a single writer thread applies them in
batches, one transaction and one ``fsync`` per batch (group commit), off the event loop. A
publisher's PUBACK (and so the HTTP bridge's 200) waits for the batch holding its changes: an
acknowledged sample is on disk. A sample queued and acknowledged within one batch never touches
the disk at all, and of a topic's retained values, or of a session's states, within one batch only
the last is written.

The file and its ``-wal``/``-shm`` companions are created 0600: they hold private samples. A file
that cannot be read stops the broker with one line; a batch that cannot be written is reported
once, and the samples in it are not acknowledged (their publishers send them again).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from radio.errors import RadioError
from radio.sqlite import open_private_db

log = logging.getLogger(__name__)

WAL_LIMIT: Final = 4 * 1024 * 1024
"""Bytes of write-ahead log kept after a checkpoint; SQLite truncates it to this (it keeps the
largest size it ever reached otherwise)."""
RECLAIM_PAGES: Final = 25_600
"""Free pages handed back per ``compact`` (100 MiB of 4 KiB pages): a large backlog goes back
over several sweeps rather than holding every batch for seconds."""
RECOVERED_AFTER: Final = 5.0
"""Seconds without a failed batch before a store that failed is said to be writable again."""

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS retained (topic TEXT PRIMARY KEY, data BLOB NOT NULL, qos INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (client_id TEXT PRIMARY KEY, attributes TEXT NOT NULL,
                                     subscriptions TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS queued (client_id TEXT NOT NULL, seq INTEGER NOT NULL, topic TEXT NOT NULL,
                                   data BLOB NOT NULL, qos INTEGER NOT NULL, PRIMARY KEY (client_id, seq));
CREATE TABLE IF NOT EXISTS marks (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS payloads (seq INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS queued_by_seq ON queued (seq);
"""
"""``payloads``: the payload of each queued sample, once, however many sessions it is queued for;
their ``queued`` rows hold an empty ``data`` (a row written before, its payload itself). A key's
thousand sessions on a network made each of its samples a thousand copies written to disk, and
the broker's writes for everyone else waited behind them."""
_SQL: Final = {
    "retain": "INSERT OR REPLACE INTO retained (topic, data, qos, fields, expires) VALUES (?, ?, ?, ?, ?)",
    "unretain": "DELETE FROM retained WHERE topic = ?",
    "session": "INSERT OR REPLACE INTO sessions VALUES (?, ?, ?)",
    "drop": "DELETE FROM sessions WHERE client_id = ?",
    "drop_queue": "DELETE FROM queued WHERE client_id = ?",
    "queue": "INSERT OR REPLACE INTO queued (client_id, seq, topic, data, qos, fields, expires, extra, pid, "
    "shared) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "sent": "UPDATE queued SET pid = ? WHERE client_id = ? AND seq = ?",
    "unqueue": "DELETE FROM queued WHERE client_id = ? AND seq = ?",
    "payload": "INSERT OR IGNORE INTO payloads (seq, data) VALUES (?, ?)",
    "unqueued_payload": "DELETE FROM payloads WHERE seq = ? AND NOT EXISTS "
    "(SELECT 1 FROM queued WHERE seq = ?)",
    "orphan_payloads": "DELETE FROM payloads WHERE seq NOT IN (SELECT seq FROM queued)",
    "rename": "UPDATE sessions SET client_id = ? WHERE client_id = ?",
    "rename_queue": "UPDATE queued SET client_id = ? WHERE client_id = ?",
    "mark": "INSERT OR REPLACE INTO marks VALUES (?, ?)",
}


MQTT5_COLUMNS: Final = ("fields BLOB", "expires REAL")
"""What the retained and queued tables hold of an MQTT 5 sample beside its payload: the properties
its subscribers get, and when it expires (wall-clock seconds); NULL for the rest. Added to a file
made before they existed."""
ADDED_COLUMNS: Final = {
    "retained": MQTT5_COLUMNS,
    "queued": (*MQTT5_COLUMNS, "extra TEXT", "pid INTEGER", "shared TEXT"),
}
"""Columns each table gained after its first release, added to a file made before them (NULL in
the rows it holds). ``queued.extra``: how an MQTT 5 session gets the sample, JSON [retain flag,
[subscription ids]], NULL for retain 0 and no ids. ``queued.pid``: the packet id a sample went
under to its session, NULL while it was not sent; a file from before it keeps its samples, which
go again under new ids once. ``queued.shared``: the shared subscription (``$share/GROUP/FILTER``)
the sample came by, NULL for the session's own filters: should the session end before its client
has it, it goes to the group's next member, after a restart too."""


class _OneCopy:
    """One copy of each queued sample as the store is read, however many sessions it was queued for.

    The store keeps a row per session; their rows come together (by seq). Each row gets the
    first one's topic and bytes: a hundred sessions holding 6 MB in the store would otherwise be
    600 MB in memory after a restart, where they had shared one copy before it.
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: tuple[int, str, bytes] = (0, "", b"")

    def of(self, seq: int, topic: str, data: bytes) -> tuple[str, bytes]:
        """The row's topic and payload: the previous row's objects when they are the same sample."""
        if (seq, topic, data) != self._last:
            self._last = (seq, topic, bytes(data))
        return self._last[1], self._last[2]


_PAYLOADS: Final = frozenset({"queue", "unqueue"})
"""Changes that write or free a row of ``payloads`` besides their own."""


Change = tuple[str, tuple[Any, ...]]


def _payloads_once(batch: list[Change]) -> tuple[list[Change], set[int]]:
    """The batch with each queued sample's payload written once, first, its queued rows without it.

    And the numbers of the samples it unqueued: their payload goes once no row is left.
    """
    payloads: dict[int, bytes] = {}
    changes: list[Change] = []
    gone: set[int] = set()
    for kind, args in batch:
        if kind == "queue":
            payloads.setdefault(args[1], args[3])
            changes.append((kind, (*args[:3], b"", *args[4:])))
        else:
            if kind == "unqueue":
                gone.add(args[1])
            changes.append((kind, args))
    if payloads:
        changes[:0] = [("payload", item) for item in payloads.items()]
    return changes, gone


def _session_row(
    client_id: str, attributes: dict[str, Any], subscriptions: dict[str, int]
) -> tuple[str, str, str]:
    """A session's row as ``sessions`` holds it (on the writer thread: ``Store.save_session``)."""
    return client_id, json.dumps(attributes), json.dumps(sorted(subscriptions.items()))


class StoreError(RadioError):
    """The broker's store cannot be opened or read."""


@dataclass
class StoredSession:
    """A persistent session as the store keeps it."""

    client_id: str
    attributes: dict[str, Any]
    subscriptions: list[tuple[str, int]] = field(default_factory=list)
    queued: list[tuple[int, str, bytes, int]] = field(default_factory=list)
    """(seq, topic, payload, qos), oldest first."""
    row_id: str = ""
    """What the store keeps it under: ``sessions.store_id`` (key id, NUL, client id), or the bare
    client id in a file written before sessions were kept per key."""
    queued_extras: dict[int, tuple[bytes, float | None]] = field(default_factory=dict)
    """By seq: the MQTT 5 properties and expiry (wall clock) of a queued sample that has them."""
    delivered_as: dict[int, tuple[bool, tuple[int, ...]]] = field(default_factory=dict)
    """By seq: the retain flag and MQTT 5 subscription ids of a queued sample that has them."""
    sent: dict[int, int] = field(default_factory=dict)
    """By seq: the packet id of a sample sent and not acknowledged when the broker stopped."""
    shared: dict[int, str] = field(default_factory=dict)
    """By seq: the shared subscription a queued sample came by (``Delivery.shared``)."""


@dataclass
class Contents:
    """Everything the store held when the broker started."""

    retained: list[tuple[str, bytes, int]] = field(default_factory=list)
    sessions: list[StoredSession] = field(default_factory=list)
    last_seq: int = 0
    retained_extras: dict[str, tuple[bytes, float | None]] = field(default_factory=dict)
    """By topic: the MQTT 5 properties and expiry (wall clock) of a retained sample that has them."""
    marks: dict[str, int] = field(default_factory=dict)
    """Numbers the broker reserved ahead of their use (``Store.mark``)."""


class Store:
    """One SQLite file, written by one thread in batches; every change is one call on the loop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            # A commit is on disk (FULL): PUBACKs wait for it.
            self._db = open_private_db(path, synchronous="FULL", before_wal=self._incremental_vacuum)
            self._db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
            self._db.executescript(SCHEMA)
            for table, columns in ADDED_COLUMNS.items():
                have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
                for column in columns:
                    if column.split()[0] not in have:
                        self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
        except (OSError, sqlite3.Error) as exc:
            msg = self._unreadable(exc)
            raise StoreError(msg) from None
        self._ops: list[tuple[str, tuple[Any, ...]] | None] = []
        self._queued_at: dict[tuple[str, int], int] = {}
        """Where a pending "queue" op stands in ``_ops``: an unqueue in the same batch cancels it."""
        self._sent_at: dict[tuple[str, int], int] = {}
        """Where a pending "sent" op stands in ``_ops``: an unqueue in the same batch cancels it."""
        self._retained_at: dict[str, int] = {}
        """Where a topic's pending retained value stands in ``_ops``: a newer one in the batch replaces it."""
        self._session_at: dict[str, int] = {}
        """Where a session's pending state stands in ``_ops``: a newer one in the batch replaces it."""
        self._waiters: list[tuple[Callable[[bool], None], int | None, int]] = []
        """Callbacks, each with ``since`` and ``pending`` as it was when it was given."""
        self._next = threading.Condition()
        """Held to record a change or take a batch: the loop records, the writer thread takes."""
        self.pending = 0
        """How many changes were ever recorded: a marker the broker compares before and after. An
        attribute, not a property: the broker reads it before every acknowledged sample's first
        delivery, and this module is not compiled."""
        self._writer_waits = False
        self._unanswered = 0
        """Batches taken by the writer whose waiters the loop has not called yet."""
        self._taken = 0
        """``pending`` as it was when the writer last took a batch."""
        self._outage = False
        """Said to be failing, and not yet said to be writable again."""
        self._failed_at = 0.0
        self._lost: list[tuple[int, int]] = []
        """Ranges of ``pending`` whose changes a failed batch lost, one per outage."""
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._compact = False
        self.failing = False
        self.compactions = 0
        self.batches = 0
        self.written = 0
        """Changes written since start (cancelled pairs not counted), for the metrics."""

    def _incremental_vacuum(self, db: sqlite3.Connection) -> None:
        """Let ``compact`` give free pages back: set before the first table, or converted once.

        Converting a file made before takes a VACUUM, once, at start.
        """
        if db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:  # 2: INCREMENTAL
            return
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        if db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            log.info("converting the broker's store %s to give space back (once)", self.path)
            db.execute("VACUUM")

    def _unreadable(self, exc: BaseException) -> str:
        return (
            f"cannot use the broker's store {self.path}: {exc}. Move it aside to start with no "
            "retained samples or persistent sessions, or restore it from a backup"
        )

    def load(self) -> Contents:
        """What the store holds (read once, at start, before the writer runs)."""
        try:
            contents = Contents()
            for topic, data, qos, fields, expires in self._db.execute(
                "SELECT topic, data, qos, fields, expires FROM retained"
            ):
                contents.retained.append((topic, bytes(data), int(qos)))
                if fields or expires is not None:
                    contents.retained_extras[topic] = (bytes(fields or b""), expires)
            contents.marks = {name: int(value) for name, value in self._db.execute("SELECT * FROM marks")}
            by_id: dict[str, StoredSession] = {}
            for row_id, attributes, subscriptions in self._db.execute("SELECT * FROM sessions"):
                stored = StoredSession(
                    row_id.partition("\x00")[2] if "\x00" in row_id else row_id,
                    json.loads(attributes),
                    [(f, int(q)) for f, q in json.loads(subscriptions)],
                    row_id=row_id,
                )
                by_id[row_id] = stored
                contents.sessions.append(stored)
            # No number is given again while a payload holds it (one whose rows went before a compaction).
            contents.last_seq = self._db.execute("SELECT coalesce(max(seq), 0) FROM payloads").fetchone()[0]
            contents.last_seq = max(contents.last_seq, self._load_queued(by_id))
        except (sqlite3.Error, ValueError, TypeError) as exc:
            msg = self._unreadable(exc)
            raise StoreError(msg) from None
        return contents

    def _load_queued(self, by_id: dict[str, StoredSession]) -> int:
        """Give each session the samples queued for it; the highest row number in use."""
        one = _OneCopy()
        last = 0
        for client_id, seq, topic, data, qos, fields, expires, extra, pid, shared in self._db.execute(
            "SELECT q.client_id, q.seq, q.topic, coalesce(p.data, q.data), q.qos, q.fields, q.expires, "
            "q.extra, q.pid, q.shared FROM queued AS q LEFT JOIN payloads AS p ON p.seq = q.seq "
            "ORDER BY q.seq"
        ):
            last = max(last, seq)
            stored = by_id.get(client_id)
            if stored is None:
                continue
            stored.queued.append((seq, *one.of(seq, topic, data), int(qos)))
            if fields or expires is not None:
                stored.queued_extras[seq] = (bytes(fields or b""), expires)
            if extra is not None:
                retain, ids = json.loads(extra)
                stored.delivered_as[seq] = (bool(retain), tuple(int(i) for i in ids))
            if pid is not None:
                stored.sent[seq] = int(pid)
            if shared is not None:
                stored.shared[seq] = str(shared)
        return last

    # Changes, recorded on the event loop; written by the next batch.
    def retain(
        self, topic: str, payload: bytes, qos: int, fields: bytes = b"", expires: float | None = None
    ) -> None:
        """Keep a network's last sample (an empty payload clears it), with its MQTT 5 properties.

        Only the last value of a topic within a batch is written: a network publishing thousands of
        samples a second costs one row per batch, not one per sample.
        """
        with self._next:
            at = self._retained_at.get(topic)
            if at is not None:
                self._ops[at] = None
            self._retained_at[topic] = len(self._ops)
            if payload:
                self._add("retain", (topic, payload, qos, fields or None, expires))
            else:
                self._add("unretain", (topic,))

    def save_session(self, client_id: str, attributes: dict[str, Any], subscriptions: dict[str, int]) -> None:
        """Write (or rewrite) a persistent session's identity and subscriptions.

        Only its last state within a batch is written, and made into JSON by the writer thread: a
        session is written whole (up to 64 KiB of filters) at each change, and a client
        re-subscribing in a loop made every SUBSCRIBE a row, each turned into JSON on the event
        loop while every other client waited. ``attributes`` is the store's from now on.
        """
        change = (client_id, attributes, dict(subscriptions))
        with self._next:
            at = self._session_at.get(client_id)
            if at is not None:
                self._ops[at] = None
            self._session_at[client_id] = len(self._ops)
            self._add("session", change)

    def drop_session(self, client_id: str) -> None:
        """Forget a session and every sample waiting for it."""
        with self._next:
            self._add("drop", (client_id,))
            self._add("drop_queue", (client_id,))

    def rename_session(self, old: str, new: str) -> None:
        """Keep a session and its samples under another id (a file from before ids had a key)."""
        with self._next:
            self._add("rename", (new, old))
            self._add("rename_queue", (new, old))

    def mark(self, name: str, value: int) -> None:
        """Keep a number reserved ahead of its use (rows are numbered below it until it moves on)."""
        with self._next:
            self._add("mark", (name, value))

    def compact(self) -> None:
        """Give space back, on the writer thread between batches: see the module's docstring."""
        with self._next:
            self._compact = True
            self._wake_writer()

    def queue(  # noqa: PLR0917 - a queued row's columns, in order
        self,
        client_id: str,
        seq: int,
        topic: str,
        payload: bytes,
        qos: int,
        fields: bytes = b"",
        expires: float | None = None,
        extra: tuple[bool, tuple[int, ...]] | None = None,
        shared: str | None = None,
    ) -> None:
        """Keep a sample for a persistent session until it acknowledges it.

        ``extra``: the retain flag and subscription ids it goes with to an MQTT 5 session (None:
        retain 0, no ids), kept so that after a restart it goes as it would have (MQTT-3.3.4-3).
        ``shared``: the shared subscription it came by (None: the session's own filters).
        """
        kept = None if extra is None else json.dumps([extra[0], extra[1]])
        with self._next:
            self._queued_at[client_id, seq] = len(self._ops)
            row = (client_id, seq, topic, payload, qos, fields or None, expires, kept, None, shared)
            self._add("queue", row)

    def sent(self, client_id: str, seq: int, pid: int) -> None:
        """The session's sample went under packet id ``pid``: after a restart it goes again under it.

        A sample sent as it is queued (most are) costs no change of its own: the id joins its
        pending row.
        """
        with self._next:
            at = self._queued_at.get((client_id, seq))
            if at is not None:
                op = self._ops[at]
                if op is not None:
                    self._ops[at] = ("queue", (*op[1][:8], pid, *op[1][9:]))
                    return
            self._sent_at[client_id, seq] = len(self._ops)
            self._add("sent", (pid, client_id, seq))

    def unqueue(self, client_id: str, seq: int) -> None:
        """The session acknowledged the sample (or may no longer read it, or it was dropped)."""
        with self._next:
            at = self._sent_at.pop((client_id, seq), None)
            if at is not None:
                self._ops[at] = None  # its row goes: its packet id need not be written
            at = self._queued_at.pop((client_id, seq), None)
            if at is not None:
                self._ops[at] = None  # never written: queued and gone within one batch
                return
            self._add("unqueue", (client_id, seq))

    def _add(self, kind: str, args: tuple[Any, ...]) -> None:
        """Record one change (``_next`` held)."""
        self._ops.append((kind, args))
        self.pending += 1
        self._wake_writer()

    def _wake_writer(self) -> None:
        """Wake a waiting writer, once (``_next`` held): until it runs, it has work to find anyway."""
        if self._writer_waits:
            self._writer_waits = False
            self._next.notify()

    def after_commit(self, callback: Callable[[bool], None], since: int | None = None) -> None:
        """Call ``callback(True)`` once every change recorded so far is on disk (False if it failed).

        Callbacks are called on the event loop, in the order they were given. ``since`` is
        ``pending`` as it was before the caller recorded its own changes: those may have gone out
        in an earlier batch than the callback (the writer takes batches whenever it is ready), and
        if that batch failed the callback gets False although its own batch was written.
        """
        with self._next:
            if self._ops or self._waiters or self._unanswered:
                self._waiters.append((callback, since, self.pending))
                self._wake_writer()
                return
            ok = since is None or not self._lost_between(since, self.pending)
        callback(ok)

    # The writer.
    def start(self) -> None:
        """Start writing batches: a thread of the store's own, answering on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._writer, name="radio-store-writer", daemon=True)
        self._thread.start()

    def _writer(self) -> None:
        """Take what was recorded, write it as one transaction, answer its waiters; again.

        The writer takes the next batch itself as soon as one is written: under load the loop never
        has to hand it over, and a batch waits for the one before it, not for a turn of the loop.
        """
        loop = self._loop
        assert loop is not None  # noqa: S101 - set by start()
        while True:
            with self._next:
                while not (self._ops or self._waiters or self._stopping or self._compact):
                    self._writer_waits = True
                    self._next.wait()
                self._writer_waits = False
                compact, self._compact = self._compact, False
                if not compact:
                    if not (self._ops or self._waiters):
                        return  # stopping, and everything recorded is written
                    ops, waiters = self._ops, self._waiters
                    self._ops, self._waiters, self._queued_at, self._retained_at = [], [], {}, {}
                    self._sent_at, self._session_at = {}, {}
                    self._unanswered += 1
                    first, self._taken = self._taken, self.pending
            if compact:
                self._reclaim()
                continue
            ok = self._write_batch([op for op in ops if op is not None])
            with self._next:
                if not ok:
                    self._lose(first, self._taken)
            try:
                loop.call_soon_threadsafe(self._answer, waiters, ok)
            except RuntimeError:  # the loop is closed: nobody is left to answer
                return

    def _lose(self, after: int, upto: int) -> None:
        """Changes ``after`` < n <= ``upto`` were not written (``_next`` held)."""
        if self._lost and self._lost[-1][1] == after:
            self._lost[-1] = (self._lost[-1][0], upto)  # the same outage, one batch on
        else:
            self._lost.append((after, upto))

    def _lost_between(self, after: int, upto: int) -> bool:
        """Whether a change ``after`` < n <= ``upto`` was lost to a failed batch (``_next`` held)."""
        return after < upto and any(
            lost_after < upto and lost_upto > after for lost_after, lost_upto in self._lost
        )

    def _answer(self, waiters: list[tuple[Callable[[bool], None], int | None, int]], ok: bool) -> None:
        with self._next:
            self._unanswered -= 1
            verdicts = [
                ok and (since is None or not self._lost_between(since, upto)) for _, since, upto in waiters
            ]
        for (waiter, _, _), verdict in zip(waiters, verdicts, strict=True):
            waiter(verdict)

    def _write_batch(self, batch: list[tuple[str, tuple[Any, ...]]]) -> bool:
        """Write one batch; False (said once) if it could not be written."""
        if not batch:
            return True
        try:
            self._write(batch)
        except Exception as exc:  # a disk error, or a value SQLite cannot take: this batch is lost
            if not isinstance(exc, sqlite3.Error):
                log.exception("writing a batch to the broker's store %s failed", self.path)
            self._failed_at = time.monotonic()
            if not self._outage:
                self._outage = True
                log.error(  # noqa: TRY400 - one line, the cause is in it
                    "cannot write the broker's store %s: %s. Samples that must survive a restart "
                    "are not acknowledged until it can be written again",
                    self.path,
                    exc,
                )
            self.failing = True
            return False
        self.failing = False
        if self._outage and time.monotonic() - self._failed_at >= RECOVERED_AFTER:
            # Not at the first batch that goes through: a nearly full disk takes some and fails
            # others, and each would say "failing" and "recovered" in turn.
            self._outage = False
            log.warning("the broker's store %s can be written again", self.path)
        self.batches += 1
        self.written += len(batch)
        return True

    def _reclaim(self) -> None:
        """Hand free pages back (incremental vacuum), then checkpoint and truncate the WAL."""
        try:
            with self._lock:
                self._db.execute(_SQL["orphan_payloads"])  # those of queues dropped whole (sessions gone)
                if self._db.execute("PRAGMA freelist_count").fetchone()[0]:
                    # At most RECLAIM_PAGES a sweep: batches wait meanwhile. (execute() frees one page.)
                    self._db.executescript(f"PRAGMA incremental_vacuum({RECLAIM_PAGES});")
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as exc:  # a busy or failing disk: the next sweep tries again
            log.warning("could not give back space in the broker's store %s: %s", self.path, exc)
            return
        self.compactions += 1

    def _write(self, batch: list[tuple[str, tuple[Any, ...]]]) -> None:
        batch = [(kind, _session_row(*args) if kind == "session" else args) for kind, args in batch]
        with self._lock:
            db = self._db
            if len(batch) == 1 and not db.in_transaction and batch[0][0] not in _PAYLOADS:
                # One change (a busy network's retained value, most often): one statement is its
                # own transaction, a single call into SQLite instead of three.
                kind, args = batch[0]
                db.execute(_SQL[kind], args)
                return
            batch, gone = _payloads_once(batch)
            db.execute("BEGIN")
            try:
                run: list[tuple[Any, ...]] = []
                kind = batch[0][0]
                for op_kind, args in batch:
                    if op_kind != kind:
                        db.executemany(_SQL[kind], run)
                        run, kind = [], op_kind
                    run.append(args)
                db.executemany(_SQL[kind], run)
                if gone:  # after every row the batch queued: one it queued again keeps its payload
                    db.executemany(_SQL["unqueued_payload"], [(seq, seq) for seq in gone])
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise

    async def close(self) -> None:
        """Write what is pending, answer its waiters, then close the file."""
        thread = self._thread
        if thread is not None:
            with self._next:
                self._stopping = True
                self._next.notify()
            await asyncio.to_thread(thread.join)
            await asyncio.sleep(0)  # the writer's last answers run
        elif self._ops or self._waiters:  # never started: write what was recorded here
            ops, waiters, self._ops, self._waiters = self._ops, self._waiters, [], []
            ok = await asyncio.to_thread(self._write_batch, [op for op in ops if op is not None])
            for waiter, _, _ in waiters:
                waiter(ok)
        with self._lock:
            self._db.close()
