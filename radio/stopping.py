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
import ctypes
import os
import select
import signal
import sys
import weakref
from collections.abc import Callable, Iterable


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


_PR_SET_PDEATHSIG = 1


def dies_with_us() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has a child process sent SIGTERM when this process dies (Linux).

    An engine that outlived its runner (``kill -9`` of ``radio broker``) would go on serving
    with the rights of its last export, a key revoked since admitted for good, and hold the
    ports the next runner needs. The kernel signals the child when the thread that started it
    ends: engines are started from the main thread, or from their watcher, which outlives them.
    None where the kernel cannot do it.

    It runs between fork and exec, where a function that takes a lock another thread held at
    the fork would wait for ever: this one takes none (a bound C function, ``getppid``, ``kill``).
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()
    term = int(signal.SIGTERM)

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, term, 0, 0, 0)
        if os.getppid() != parent:  # it died before the request took effect
            os.kill(os.getpid(), term)

    return arm
