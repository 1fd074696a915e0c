"""One platform per state folder: each server part holds a lock there while it runs.

Two brokers, recorders or bridges on one state folder would share ``broker.db``, ``history.db``
and ``usage.db``: one history would hold both platforms' samples interleaved, one usage file both
platforms' counts. So ``radio up``, ``radio broker``, ``radio recorder`` and ``radio bridge`` each
take the lock of their part (``running/<part>.lock``) before they touch any state file, and a
second one refuses in one line naming the first's pid.

The lock is ``flock``'s: the kernel releases it when the holder ends, however it ends (``kill -9``
too), so a lock is never stale. The file itself only says who holds it; it is left in place, as
removing it could let two processes lock two different files of the same name. A fork keeps the
lock (a bridge's workers share their arbiter's), an exec'd program does not (the descriptor is
closed on exec).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Final

from radio.errors import RadioError
from radio.files import open_private

FOLDER: Final = "running"
_held: list[int] = []
"""Descriptors of the locks this process holds: open for its whole life, the lock with them."""


def lock_path(state_dir: Path, part: str) -> Path:
    """Where the lock of one part of the platform is."""
    return state_dir / FOLDER / f"{part}.lock"


def holder(state_dir: Path, part: str) -> str | None:
    """Who holds a part's lock (``radio broker (pid N)``), or None if nobody does."""
    path = lock_path(state_dir, part)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _who(path, part)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def hold(state_dir: Path, part: str) -> None:
    """Take a part's lock for the rest of this process's life, or refuse naming who holds it."""
    path = lock_path(state_dir, part)
    try:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        fd = open_private(path, os.O_RDWR)
    except OSError as exc:
        msg = f"cannot lock the state folder {state_dir} ({path}): {exc.strerror or exc}"
        raise RadioError(msg) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RadioError(refusal(state_dir, _who(path, part))) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"radio {part} (pid {os.getpid()})\n".encode())
    _held.append(fd)


def refusal(state_dir: Path, who: str) -> str:
    """The one line a second platform on a state folder stops with."""
    return (
        f"{who} already runs on the state folder {state_dir}: stop it first, or give this one "
        "a folder of its own (--config DIR/radio.toml)"
    )


def _who(path: Path, part: str) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        text = ""
    return text or f"another radio {part}"
