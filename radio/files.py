"""Files Radio writes: whole and at once, and private from the moment they exist.

Every file that names keys, holds a secret or a server's configuration is written here:

- ``write_atomic`` replaces a file in one step: the text goes to a temporary file beside it,
  which is renamed over it. A reader (Mosquitto or NATS reloading, a command reading the key
  registry) sees the old file or the new one, never half of one. The temporary file is made by
  ``mkstemp``, mode 0600, and gets its final mode before the rename, so not even a half-written
  file is ever readable by others. ``durable`` adds an fsync of the file and of its folder, for
  files whose loss after a crash would lose a change (the key registry, a service's secret).
- A writer killed between the two steps leaves its temporary file behind. Its name carries the
  writer's pid: the next write of the same file removes those of writers that are gone, and
  never one a live writer is still filling.
- ``open_private`` opens (making it if needed) a file that is written in place: a log, a lock,
  a shared map, an SQLite database. Made 0600, and a file made before with a wider mode is
  tightened.

And the files Radio reads as a whole (its configuration, the key registry, a schema) are read by
``read_text``, which takes a regular file only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import Final

from radio.pids import alive

PRIVATE: Final = 0o600
"""Read and written by its owner only."""


def write_private(path: Path, data: str | bytes, *, durable: bool = False) -> None:
    """Replace ``path`` with ``data`` in one step, mode 0600 from the first byte (``write_atomic``)."""
    write_atomic(path, data, mode=PRIVATE, durable=durable)


def write_atomic(path: Path, data: str | bytes, *, mode: int = PRIVATE, durable: bool = False) -> None:
    """Replace ``path`` with ``data`` in one step; a reader sees the old file or the new, whole.

    ``mode`` is set before the file takes the name; until then only the owner can read it.
    ``durable``: on disk when this returns (the file and the rename both), at the cost of two
    fsyncs.
    """
    remove_leftovers(path)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=_prefix(path) + f"{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data.encode("utf-8") if isinstance(data, str) else data)
            out.flush()
            if durable:
                os.fsync(out.fileno())
            os.fchmod(out.fileno(), mode)
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    if durable:
        _sync_folder(path.parent)


def remove_leftovers(path: Path) -> list[Path]:
    """Remove the temporary files of writers of ``path`` that died before renaming; return them."""
    removed = []
    for leftover in path.parent.glob(_prefix(path) + "*.tmp"):
        pid = leftover.name.removeprefix(_prefix(path)).partition(".")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
                removed.append(leftover)
    return removed


def read_text(path: Path) -> str:
    """The UTF-8 text of a regular file; ``OSError`` (EINVAL) for anything else at that path.

    Opened without blocking and checked before a byte is read: a FIFO or a device named by mistake
    (``--config /dev/stdin``, a pipe) would hold the reader for ever, where a directory or a
    missing file fails at once.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except BaseException:
        os.close(fd)
        raise
    if not regular:
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file")
    with os.fdopen(fd, "rb") as file:
        return file.read().decode("utf-8")


def open_private(path: Path, flags: int) -> int:
    """A descriptor of ``path`` opened with ``flags`` (plus ``O_CREAT``), the file made or made 0600."""
    fd = os.open(path, flags | os.O_CREAT, PRIVATE)
    try:
        os.fchmod(fd, PRIVATE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _prefix(path: Path) -> str:
    """Where the temporary files of ``path`` start: hidden, named after it."""
    return f".{path.name}."


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` survive a crash."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
