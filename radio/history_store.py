"""The history file: numbered samples per network, in SQLite, beside the configuration.

One module holds all there is to know of the file: its tables, the recorder's writes and the
bridge's reads, so that a change of the schema is seen by both sides at once.

Two tables. ``sequences`` holds the last number given in each network, so that numbering goes on
where it stopped even when no sample of the network is kept any more (``history = 0``, or a
network whose every kept sample was trimmed). ``samples`` holds the kept samples, keyed by network
and number, and ``strict`` = 1 for a payload checked to be strict JSON when it was written (NULL
in a file written before that check). Each sample is written in one transaction with its number:
a crash loses at most the sample being written, never a number given twice.

The file is private and in WAL mode (``radio/sqlite.py``): samples of private networks are in it,
and the bridge's read-only connections never block the recorder and never see half a transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from radio.errors import RadioError
from radio.sqlite import open_private_db, open_readonly_db

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS sequences (
    network TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS samples (
    network TEXT NOT NULL,
    seq INTEGER NOT NULL,
    received_at TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload TEXT NOT NULL,
    strict INTEGER,
    PRIMARY KEY (network, seq)
) WITHOUT ROWID;
"""
STRICT_COLUMN: Final = "ALTER TABLE samples ADD COLUMN strict INTEGER"
"""A file written before samples were checked for strict JSON gets the column; its rows stay NULL."""
READ_TIMEOUT: Final = 2.0
"""Seconds a reader waits for the file before it answers that the history is unavailable."""
LAST_SEQ: Final = "SELECT last_seq FROM sequences WHERE network = ?"
MAX_SEQ: Final = 2**62
"""The largest sample number a reader may ask after: far past any history, well within SQLite's
64-bit integers (a larger one would overflow them)."""


class HistoryStore:
    """The recorder's side of the file: the only writer."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = open_private_db(path)
        self._db.executescript(SCHEMA)
        if "strict" not in _columns(self._db):
            self._db.execute(STRICT_COLUMN)

    def close(self) -> None:
        """Close the file (the WAL is folded back into it)."""
        self._db.close()

    def last_seq(self, network: str) -> int:
        """The last number given in a network (0: none yet)."""
        return _last_seq(self._db, network)

    def append(self, network: str, topic: str, payload: str, received_at: str, keep: int) -> int:
        """Number a sample, keep it, trim the network to its ``keep`` latest; return its number.

        ``payload`` is strict JSON (``radio/samples.py``: the recorder checks it before), and the
        row says so: the history API then serves it as stored, without parsing it again.
        """
        return self._number(network, 1, keep, (topic, payload, received_at))

    def skip(self, network: str, missed: int, keep: int) -> int:
        """Leave ``missed`` numbers out: samples the recorder never received; return the last one.

        The hole stays in the numbering, so every reader of the history sees that samples are
        missing there, and how many.
        """
        return self._number(network, missed, keep, None)

    def _number(self, network: str, count: int, keep: int, sample: tuple[str, str, str] | None) -> int:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            seq = self.last_seq(network) + count
            db.execute(
                "INSERT INTO sequences (network, last_seq) VALUES (?, ?) "
                "ON CONFLICT (network) DO UPDATE SET last_seq = excluded.last_seq",
                (network, seq),
            )
            if sample is not None and keep > 0:
                topic, payload, received_at = sample
                db.execute(
                    "INSERT INTO samples (network, seq, received_at, topic, payload, strict) "
                    "VALUES (?, ?, ?, ?, ?, 1)",
                    (network, seq, received_at, topic, payload),
                )
            db.execute("DELETE FROM samples WHERE network = ? AND seq <= ?", (network, seq - keep))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return seq


class NoHistory(RadioError):
    """No history file: no recorder has run beside this configuration."""


class HistoryFileUnavailable(RadioError):
    """The file is there but cannot be read now (locked past the timeout, or damaged)."""


Encode = Callable[[int, str, str, str, bool], bytes]
"""How a reader turns a row (seq, received_at, topic, payload, checked strict) into its bytes."""


@dataclass
class Page:
    """One answer's worth of history, already encoded sample by sample."""

    first: int | None
    """The oldest number kept (None: none)."""
    last: int
    """The last number given (0: none yet)."""
    items: list[bytes]
    last_seq: int | None
    """The number of the last sample in ``items`` (None: no sample)."""
    more: bool
    """The history holds samples after ``last_seq``: ask again with ``after=last_seq``."""


def read_page(
    path: Path, network: str, after: int | None, limit: int, max_bytes: int, *, encode: Encode
) -> Page:
    """The samples numbered after ``after`` (None: the newest ``limit``), at most ``max_bytes`` of them.

    Opened read-only for this one read, so a reader never holds a lock the recorder waits on.
    Raises ``NoHistory`` or ``HistoryFileUnavailable``.
    """
    if not path.exists():
        raise NoHistory
    try:
        db = open_readonly_db(path, busy_timeout=READ_TIMEOUT)
    except sqlite3.Error:
        raise HistoryFileUnavailable from None
    try:
        with db:  # one read transaction: first, last and the rows agree
            return _page(db, network, after, limit, max_bytes, encode=encode)
    except sqlite3.Error:
        raise HistoryFileUnavailable from None
    finally:
        db.close()


def _page(
    db: sqlite3.Connection, network: str, after: int | None, limit: int, max_bytes: int, *, encode: Encode
) -> Page:
    """Rows are read one at a time and encoded as they come.

    At most ``max_bytes`` (and one row) of a network's history is ever in memory for one read,
    whatever ``limit`` asks; a page always holds one sample, however large, so paging moves on.
    """
    last = _last_seq(db, network)
    # Two queries, each one step down the primary key: MIN and MAX together would scan the rows.
    first = _one(db, "SELECT MIN(seq) FROM samples WHERE network = ?", network)
    newest = _one(db, "SELECT MAX(seq) FROM samples WHERE network = ?", network)
    if after is None:  # the newest `limit`: from the oldest of them on
        oldest = db.execute(
            "SELECT seq FROM samples WHERE network = ? ORDER BY seq DESC LIMIT 1 OFFSET ?",
            (network, limit - 1),
        ).fetchone()
        after = oldest[0] - 1 if oldest else 0
    strict = "strict" if "strict" in _columns(db) else "NULL"  # a file no recorder has opened since
    rows = db.execute(
        f"SELECT seq, received_at, topic, payload, {strict} FROM samples "  # noqa: S608 - a column name
        "WHERE network = ? AND seq > ? ORDER BY seq LIMIT ?",
        (network, after, limit),
    )
    items: list[bytes] = []
    size = 0
    last_seq: int | None = None
    for seq, received_at, topic, payload, checked in rows:
        item = encode(seq, received_at, topic, payload, checked == 1)
        if items and size + len(item) > max_bytes:
            break
        items.append(item)
        size += len(item) + 2
        last_seq = seq
    rows.close()
    more = last_seq is not None and newest is not None and newest > last_seq
    return Page(first, last, items, last_seq, more)


def _last_seq(db: sqlite3.Connection, network: str) -> int:
    row = db.execute(LAST_SEQ, (network,)).fetchone()
    return int(row[0]) if row else 0


def _one(db: sqlite3.Connection, query: str, network: str) -> int | None:
    row = db.execute(query, (network,)).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def _columns(db: sqlite3.Connection) -> set[str]:
    return {row[1] for row in db.execute("PRAGMA table_info(samples)")}
