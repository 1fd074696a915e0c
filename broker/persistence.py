"""Retained samples and persistent sessions in an SQLite file, so a broker restart loses neither.

amqtt 0.12.1 keeps both in memory only: a restart forgets every network's last sample and every
listener's persistent session. Its own ``SessionDBPlugin`` needs SQLAlchemy and aiosqlite, does
not keep ``session.attributes`` (where the key behind a session is noted: without it a restored
session would have no rights) and wipes everything on a clean shutdown by default. This module
uses the standard library's ``sqlite3`` instead and keeps exactly what Radio needs:

- each retained message: topic, payload, QoS;
- each persistent session (clean session 0): client id, the key it proved, its subscriptions,
  and the messages waiting for it (queued while offline, or sent and not yet acknowledged).

The broker saves a snapshot in one transaction when its state changed, at most every
``SAVE_INTERVAL`` seconds, and at shutdown; a crash loses at most that interval.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

log = logging.getLogger("radio.broker")

SAVE_INTERVAL: Final = 1.0
SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS retained (topic TEXT PRIMARY KEY, data BLOB NOT NULL, qos INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (client_id TEXT PRIMARY KEY, attributes TEXT NOT NULL,
                                     subscriptions TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS queued (client_id TEXT NOT NULL, seq INTEGER NOT NULL, topic TEXT NOT NULL,
                                   data BLOB NOT NULL, qos INTEGER NOT NULL, PRIMARY KEY (client_id, seq));
"""


@dataclass(frozen=True)
class Message:
    """A message kept across restarts: a retained one, or one waiting for a session."""

    topic: str
    data: bytes
    qos: int


@dataclass
class StoredSession:
    """What a persistent session needs to resume after a restart."""

    client_id: str
    attributes: dict[str, str | None]
    subscriptions: list[tuple[str, int]] = field(default_factory=list)
    queued: list[Message] = field(default_factory=list)


@dataclass
class Snapshot:
    """The broker's durable state at one moment."""

    retained: list[Message] = field(default_factory=list)
    sessions: list[StoredSession] = field(default_factory=list)


class Store:
    """One SQLite file; every save replaces the previous snapshot atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def load(self) -> Snapshot:
        """What the last save wrote (an empty snapshot for a new file)."""
        snapshot = Snapshot(
            retained=[
                Message(t, bytes(d), q)
                for t, d, q in self._db.execute("SELECT topic, data, qos FROM retained")
            ]
        )
        by_id: dict[str, StoredSession] = {}
        for client_id, attributes, subscriptions in self._db.execute(
            "SELECT client_id, attributes, subscriptions FROM sessions"
        ):
            stored = StoredSession(
                client_id, json.loads(attributes), [(f, int(q)) for f, q in json.loads(subscriptions)]
            )
            by_id[client_id] = stored
            snapshot.sessions.append(stored)
        for client_id, topic, data, qos in self._db.execute(
            "SELECT client_id, topic, data, qos FROM queued ORDER BY client_id, seq"
        ):
            if client_id in by_id:
                by_id[client_id].queued.append(Message(topic, bytes(data), qos))
        return snapshot

    def save(self, snapshot: Snapshot) -> None:
        """Replace the stored state with ``snapshot``, all or nothing."""
        db = self._db
        db.execute("BEGIN")
        try:
            db.execute("DELETE FROM retained")
            db.execute("DELETE FROM sessions")
            db.execute("DELETE FROM queued")
            db.executemany(
                "INSERT INTO retained VALUES (?, ?, ?)", [(m.topic, m.data, m.qos) for m in snapshot.retained]
            )
            db.executemany(
                "INSERT INTO sessions VALUES (?, ?, ?)",
                [
                    (s.client_id, json.dumps(s.attributes), json.dumps(s.subscriptions))
                    for s in snapshot.sessions
                ],
            )
            db.executemany(
                "INSERT INTO queued VALUES (?, ?, ?, ?, ?)",
                [
                    (s.client_id, seq, m.topic, m.data, m.qos)
                    for s in snapshot.sessions
                    for seq, m in enumerate(s.queued)
                ],
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        """Close the file."""
        self._db.close()
