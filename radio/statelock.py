"""One platform per state folder: each server part holds a lock there while it runs.

Two brokers, recorders or bridges on one state folder would share ``broker.db``, ``history.db``
and ``usage.db``: one history would hold both platforms' samples interleaved, one usage file both
platforms' counts. So ``radio up``, ``radio broker``, ``radio recorder`` and ``radio bridge`` each
take the lock of their part (``running/<part>.lock``) before they touch any state file, and a
second one refuses in one line naming the first's pid.

The lock is ``flock``'s: the kernel releases it when the holder ends, however it ends (``kill -9``
too), so a lock is never stale. The file itself only says who holds it; a server that ran leaves
it in place. A command refused before it served (a busy port, a bad setting) gives its locks back
(``give_back``): their files go, and ``running/`` with them if nothing else is in it, so a
refused start leaves nothing in the folder that names it. Removing a lock file could let two
processes lock two different files of the same name, so a lock counts only while its file is
still the one at the path (``hold`` checks, and tries again on the new one). A fork keeps the lock
(a bridge's workers share their arbiter's), an exec'd program does not (the descriptor is closed
on exec); only the process that took a lock gives it back.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Final

from radio.errors import RadioError
from radio.files import open_private

FOLDER: Final = "running"
ATTEMPTS: Final = 5
"""Times ``hold`` tries again when the lock file it locked was removed meanwhile (by its holder's
``give_back``): each try that loses so found a holder that was leaving, and few ever do."""
_held: dict[Path, tuple[int, int]] = {}
"""The locks this process took, by file: the descriptor (open for the process's life, the lock
with it) and the pid that took it (a fork inherits the table, not the right to give back)."""


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
    for _ in range(ATTEMPTS):
        fd = _locked(state_dir, path, part)
        if fd is not None:
            os.ftruncate(fd, 0)
            os.write(fd, f"radio {part} (pid {os.getpid()})\n".encode())
            _held[path] = (fd, os.getpid())
            return
    raise RadioError(refusal(state_dir, _who(path, part)))


def give_back() -> None:
    """Release the locks this process took and remove their files, and ``running/`` if left empty.

    For a command that stops refused: it served nothing, and leaves no file naming it.
    """
    for path, (fd, pid) in list(_held.items()):
        if pid != os.getpid():
            continue
        del _held[path]
        with contextlib.suppress(OSError):
            path.unlink()  # while still locked: a process that locks this file now sees it gone
        os.close(fd)
        with contextlib.suppress(OSError):
            path.parent.rmdir()  # only when empty: another part's files keep it


def _locked(state_dir: Path, path: Path, part: str) -> int | None:
    """The descriptor of the lock file, locked; None if the file was removed before it was locked."""
    try:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        fd = open_private(path, os.O_RDWR)
    except FileNotFoundError:  # the folder, removed between the two by a holder giving it back
        return None
    except OSError as exc:
        msg = f"cannot lock the state folder {state_dir} ({path}): {exc.strerror or exc}"
        raise RadioError(msg) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RadioError(refusal(state_dir, _who(path, part))) from None
    try:
        current = path.stat().st_ino
    except FileNotFoundError:
        current = None
    if current != os.fstat(fd).st_ino:  # given back meanwhile: this file is no lock any more
        os.close(fd)
        return None
    return fd


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
