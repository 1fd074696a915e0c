"""Radio's SQLite files (the broker's store, the history, the usage counts): opened one way.

Each is private (it names keys, or holds samples of private networks): made 0600 before SQLite
opens it, and SQLite gives its ``-wal`` and ``-shm`` files the mode of the file; companions left
by an older version with a wider mode are tightened. Each is in WAL mode, so that readers in
other processes (the bridge reading the history, ``radio usage``) never block the one writer
and never see half a transaction; a connection that finds the file locked waits ``busy_timeout``
seconds before it gives up.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Final, Literal

from radio.files import PRIVATE, open_private

BUSY_TIMEOUT: Final = 5.0
"""Seconds a connection waits for a lock held by another before it fails (SQLite's ``timeout``)."""


def open_private_db(
    path: Path,
    *,
    synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
    busy_timeout: float = BUSY_TIMEOUT,
    before_wal: Callable[[sqlite3.Connection], None] | None = None,
) -> sqlite3.Connection:
    """The file at ``path`` for its writer: private, WAL, autocommit, usable from any thread.

    ``synchronous``: NORMAL loses at most the last transactions on a power cut, never the file;
    FULL makes every commit durable (the broker's PUBACK waits for it). ``before_wal`` runs on the
    connection first, for settings that must come before the file's first table or WAL switch.
    Raises ``OSError`` or ``sqlite3.Error``: each caller names its own file in its message.
    """
    make_private(path)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout)
    try:
        if before_wal is not None:
            before_wal(db)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
    except BaseException:
        db.close()
        raise
    return db


def open_readonly_db(path: Path, *, busy_timeout: float = BUSY_TIMEOUT) -> sqlite3.Connection:
    """The file at ``path`` for a reader in another process: read-only, so it can never change it."""
    return sqlite3.connect(path.absolute().as_uri() + "?mode=ro", uri=True, timeout=busy_timeout)


def make_private(path: Path) -> None:
    """Make the file 0600 if it is new, and tighten it and its ``-wal`` and ``-shm`` if they are not."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(open_private(path, os.O_RDWR))
    for companion in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            companion.chmod(PRIVATE)
