"""A stop request a signal handler can make without a lock: what every long-running command waits on.

A handler that calls ``threading.Event.set()`` can hang its process for good. Python runs a
handler in the main thread, between two bytecodes of whatever it was doing; if that was
``Event.wait()`` at the moment it holds the event's own lock (taking it back after a wake-up),
``set()`` in the handler waits for that lock, which its own thread holds and will never release.
It happened: ``radio broker --engine mosquitto`` ignored SIGTERM, Mosquitto and all, after
``radio up`` was killed under load. Here the handler sets a flag and writes a byte to a pipe;
waiting is ``select`` on the pipe, which a signal interrupts and Python resumes.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import weakref
from collections.abc import Iterable


class Stop:
    """Like ``threading.Event`` for one-way stop requests, and safe to set from a signal handler."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._set = False
        weakref.finalize(self, _close, self._read, self._write)

    def set(self, *_: object) -> None:
        """Ask to stop: from a signal handler, another thread, or anywhere (any arguments ignored)."""
        self._set = True
        with contextlib.suppress(BlockingIOError, OSError):  # a full or closed pipe: already woken
            os.write(self._write, b"!")

    def is_set(self) -> bool:
        """Whether a stop was asked for."""
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        """Until a stop is asked for, at most ``timeout`` seconds; whether one was."""
        if not self._set:
            select.select([self._read], [], [], timeout)
        return self._set


def on_signals(signals: Iterable[signal.Signals] = (signal.SIGINT, signal.SIGTERM)) -> Stop:
    """A ``Stop`` set by any of ``signals`` (in the main thread, where handlers are installed)."""
    stop = Stop()
    for signum in signals:
        signal.signal(signum, stop.set)
    return stop


def _close(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
