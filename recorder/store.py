"""The history file: numbered samples per network, in SQLite, beside the configuration.

Two tables. ``sequences`` holds the last number given in each network, so that numbering goes on
where it stopped even when no sample of the network is kept any more (``history = 0``, or a
network whose every kept sample was trimmed). ``samples`` holds the kept samples, keyed by network
and number, and ``strict`` = 1 for a payload checked to be strict JSON when it was written (NULL
in a file written before that check). Each sample is written in one transaction with its number:
a crash loses at most the sample being written, never a number given twice.

The file is made with mode 0600 (samples of private networks are in it), in WAL mode so that the
bridge's read-only connections never block the recorder and never see half a transaction.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Final

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


@dataclass(frozen=True)
class Recorded:
    """One sample as the history keeps it."""

    network: str
    seq: int
    received_at: str
    topic: str
    payload: str


class HistoryStore:
    """The recorder's side of the file: the only writer."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # Made private before SQLite opens it; SQLite gives its -wal and -shm files the same mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        path.chmod(0o600)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(samples)")}
        if "strict" not in columns:
            self._db.execute(STRICT_COLUMN)

    def close(self) -> None:
        """Close the file (the WAL is folded back into it)."""
        self._db.close()

    def last_seq(self, network: str) -> int:
        """The last number given in a network (0: none yet)."""
        row = self._db.execute("SELECT last_seq FROM sequences WHERE network = ?", (network,)).fetchone()
        return int(row[0]) if row else 0

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
