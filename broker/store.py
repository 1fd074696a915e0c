"""What must survive a restart or a ``kill -9``: retained samples and persistent sessions, in SQLite.

Kept: each retained sample (topic, payload, QoS); each persistent session (client id, the key it
belongs to, its subscriptions, when its client left) and the samples waiting for it (queued, or
sent and not yet acknowledged).

Writes are incremental: the broker records each change as it happens (a sample queued for a
session, acknowledged, a retained value replaced) and a single writer thread applies them in
batches, one transaction and one ``fsync`` per batch (group commit), off the event loop. A
publisher's PUBACK (and so the HTTP bridge's 200) waits for the batch holding its changes: an
acknowledged sample is on disk. A sample queued and acknowledged within one batch never touches
the disk at all, and of a topic's retained values within one batch only the last is written.

The file and its ``-wal``/``-shm`` companions are created 0600: they hold private samples. A file
that cannot be read stops the broker with one line; a batch that cannot be written is reported
once, and the samples in it are not acknowledged (their publishers send them again).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from radio.errors import RadioError

log = logging.getLogger("radio.broker")

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS retained (topic TEXT PRIMARY KEY, data BLOB NOT NULL, qos INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (client_id TEXT PRIMARY KEY, attributes TEXT NOT NULL,
                                     subscriptions TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS queued (client_id TEXT NOT NULL, seq INTEGER NOT NULL, topic TEXT NOT NULL,
                                   data BLOB NOT NULL, qos INTEGER NOT NULL, PRIMARY KEY (client_id, seq));
"""
_SQL: Final = {
    "retain": "INSERT OR REPLACE INTO retained VALUES (?, ?, ?)",
    "unretain": "DELETE FROM retained WHERE topic = ?",
    "session": "INSERT OR REPLACE INTO sessions VALUES (?, ?, ?)",
    "drop": "DELETE FROM sessions WHERE client_id = ?",
    "drop_queue": "DELETE FROM queued WHERE client_id = ?",
    "queue": "INSERT OR REPLACE INTO queued VALUES (?, ?, ?, ?, ?)",
    "unqueue": "DELETE FROM queued WHERE client_id = ? AND seq = ?",
}


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


@dataclass
class Contents:
    """Everything the store held when the broker started."""

    retained: list[tuple[str, bytes, int]] = field(default_factory=list)
    sessions: list[StoredSession] = field(default_factory=list)
    last_seq: int = 0


def _private_file(path: Path) -> None:
    """Create the file 0600 (SQLite gives its -wal and -shm the same mode) and tighten old ones."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for companion in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            companion.chmod(0o600)


class Store:
    """One SQLite file, written by one thread in batches; every change is one call on the loop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            _private_file(path)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a commit is on disk: PUBACKs wait for it
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            msg = self._unreadable(exc)
            raise StoreError(msg) from None
        self._ops: list[tuple[str, tuple[Any, ...]] | None] = []
        self._queued_at: dict[tuple[str, int], int] = {}
        """Where a pending "queue" op stands in ``_ops``: an unqueue in the same batch cancels it."""
        self._retained_at: dict[str, int] = {}
        """Where a topic's pending retained value stands in ``_ops``: a newer one in the batch replaces it."""
        self._waiters: list[Callable[[bool], None]] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = threading.Lock()
        self.failing = False
        self.batches = 0
        self.written = 0
        """Changes written since start (cancelled pairs not counted), for the metrics."""

    def _unreadable(self, exc: BaseException) -> str:
        return (
            f"cannot use the broker's store {self.path}: {exc}. Move it aside to start with no "
            "retained samples or persistent sessions, or restore it from a backup"
        )

    def load(self) -> Contents:
        """What the store holds (read once, at start, before the writer runs)."""
        try:
            contents = Contents(
                retained=[(t, bytes(d), int(q)) for t, d, q in self._db.execute("SELECT * FROM retained")]
            )
            by_id: dict[str, StoredSession] = {}
            for client_id, attributes, subscriptions in self._db.execute("SELECT * FROM sessions"):
                stored = StoredSession(
                    client_id, json.loads(attributes), [(f, int(q)) for f, q in json.loads(subscriptions)]
                )
                by_id[client_id] = stored
                contents.sessions.append(stored)
            for client_id, seq, topic, data, qos in self._db.execute(
                "SELECT client_id, seq, topic, data, qos FROM queued ORDER BY seq"
            ):
                contents.last_seq = max(contents.last_seq, seq)
                if client_id in by_id:
                    by_id[client_id].queued.append((seq, topic, bytes(data), int(qos)))
        except (sqlite3.Error, ValueError, TypeError) as exc:
            msg = self._unreadable(exc)
            raise StoreError(msg) from None
        return contents

    # Changes, recorded on the event loop; written by the next batch.
    def retain(self, topic: str, payload: bytes, qos: int) -> None:
        """Keep a network's last sample (an empty payload clears it).

        Only the last value of a topic within a batch is written: a network publishing thousands of
        samples a second costs one row per batch, not one per sample.
        """
        at = self._retained_at.get(topic)
        if at is not None:
            self._ops[at] = None
        self._retained_at[topic] = len(self._ops)
        if payload:
            self._add("retain", (topic, payload, qos))
        else:
            self._add("unretain", (topic,))

    def save_session(self, client_id: str, attributes: dict[str, Any], subscriptions: dict[str, int]) -> None:
        """Write (or rewrite) a persistent session's identity and subscriptions."""
        self._add("session", (client_id, json.dumps(attributes), json.dumps(sorted(subscriptions.items()))))

    def drop_session(self, client_id: str) -> None:
        """Forget a session and every sample waiting for it."""
        self._add("drop", (client_id,))
        self._add("drop_queue", (client_id,))

    def queue(self, client_id: str, seq: int, topic: str, payload: bytes, qos: int) -> None:
        """Keep a sample for a persistent session until it acknowledges it."""
        self._queued_at[client_id, seq] = len(self._ops)
        self._add("queue", (client_id, seq, topic, payload, qos))

    def unqueue(self, client_id: str, seq: int) -> None:
        """The session acknowledged the sample (or may no longer read it, or it was dropped)."""
        at = self._queued_at.pop((client_id, seq), None)
        if at is not None:
            self._ops[at] = None  # never written: queued and gone within one batch
            return
        self._add("unqueue", (client_id, seq))

    def _add(self, kind: str, args: tuple[Any, ...]) -> None:
        self._ops.append((kind, args))
        if self._wake is not None and not self._wake.is_set():
            self._wake.set()

    @property
    def pending(self) -> int:
        """Changes recorded and not yet written (a marker the broker compares before and after)."""
        return len(self._ops)

    def after_commit(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(True)`` once every change recorded so far is on disk (False if it failed)."""
        if not self._ops and not self._waiters and self._task is None:
            callback(True)  # noqa: FBT003 - the callback's one argument
            return
        self._waiters.append(callback)
        if self._wake is not None:
            self._wake.set()

    # The writer.
    def start(self) -> None:
        """Start writing batches (on the running loop's default executor, one batch at a time)."""
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="radio-store-writer")
        if self._ops or self._waiters:
            self._wake.set()

    async def _run(self) -> None:
        assert self._wake is not None  # noqa: S101 - set by start()
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._write_pending(loop)

    async def _write_pending(self, loop: asyncio.AbstractEventLoop) -> None:
        while self._ops or self._waiters:
            ops, waiters = self._ops, self._waiters
            self._ops, self._waiters, self._queued_at, self._retained_at = [], [], {}, {}
            batch = [op for op in ops if op is not None]
            ok = True
            if batch:
                try:
                    await loop.run_in_executor(None, self._write, batch)
                except sqlite3.Error as exc:
                    ok = False
                    if not self.failing:
                        log.error(  # noqa: TRY400 - one line, the cause is in it
                            "cannot write the broker's store %s: %s. Samples that must survive a restart "
                            "are not acknowledged until it can be written again",
                            self.path,
                            exc,
                        )
                    self.failing = True
                else:
                    if self.failing:
                        log.warning("the broker's store %s can be written again", self.path)
                    self.failing = False
                    self.batches += 1
                    self.written += len(batch)
            for waiter in waiters:
                waiter(ok)

    def _write(self, batch: list[tuple[str, tuple[Any, ...]]]) -> None:
        with self._lock:
            db = self._db
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
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise

    async def close(self) -> None:
        """Write what is pending, then close the file."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
            await self._write_pending(asyncio.get_running_loop())
        with self._lock:
            self._db.close()
