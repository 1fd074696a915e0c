"""Token buckets: how fast a key may publish.

A key with ``rate`` R and ``burst`` B holds at most B tokens, refilled at R per second; each
sample takes one. So a key is never delivered faster than R per second plus B at once.

A key's samples come through both doors: the embedded broker (MQTT) and the HTTP bridge's
worker processes, any of which a generator's request may land on. So its bucket is shared: a
small file mapped into the memory of each of those processes (``SharedBuckets``, one per
platform: ``platform_path``), one slot per key, changed under an ``flock``. Two system calls per
sample, no disk write (the file lives in the page cache), and the key gets exactly its rate
whichever door and worker serve it (docs/access.md). ``Buckets`` is one process's own, a dict:
for a broker that cannot open the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import mmap
import os
import struct
import threading
import time
from pathlib import Path
from typing import Final

from radio.errors import Busy
from radio.files import open_private
from radio.pids import alive

CLOCK_SLACK: Final = 4
"""Ulps of the clock's reading by which a refill may fall short: ``now + wait`` rounds, so a caller
that waited exactly the ``wait`` it was given was told to wait again, often by less than one step
of its clock (``now + wait == now``), and so for ever."""


def _enough(tokens: float, now: float, rate: float) -> bool:
    """Whether the bucket holds a token, to within what the clock can tell apart at ``now``."""
    return tokens >= 1.0 - CLOCK_SLACK * math.ulp(now) * rate


def take(tokens: float, stamp: float, now: float, rate: float, size: int) -> tuple[float, float]:
    """Refill since ``stamp``, then take one token: (tokens left, seconds to wait for one).

    A wait above 0 means no token was taken; the caller retries after that many seconds, and then
    gets it. A token taken a few ulps early is owed: the bucket goes that much below empty.
    """
    tokens = min(float(size), tokens + max(0.0, now - stamp) * rate)
    if _enough(tokens, now, rate):
        return tokens - 1.0, 0.0
    return tokens, (1.0 - tokens) / rate


class Buckets:
    """One process's buckets, by key id."""

    def __init__(self) -> None:
        self._state: dict[str, tuple[float, float]] = {}

    def take(self, key_id: str, rate: float, size: int, now: float | None = None) -> float:
        """Seconds to wait before this key may publish (0: it may, and a token is taken)."""
        now = time.monotonic() if now is None else now
        tokens, stamp = self._state.get(key_id, (float(size), now))
        tokens, wait = take(tokens, stamp, now, rate, size)
        self._state[key_id] = (tokens, now)
        return wait

    def remaining(self, key_id: str, rate: float, size: int, now: float | None = None) -> float:
        """Tokens the key has now (without taking one)."""
        now = time.monotonic() if now is None else now
        tokens, stamp = self._state.get(key_id, (float(size), now))
        return min(float(size), tokens + max(0.0, now - stamp) * rate)

    def forget(self, keep: set[str]) -> None:
        """Drop the buckets of keys no longer limited."""
        for key_id in set(self._state) - keep:
            del self._state[key_id]


SLOTS: Final = 4096
_SLOT: Final = struct.Struct("<Qdd")
"""A slot: the key's tag (its id as a number, 0 for a free slot), tokens, and when they were counted."""


LOCK_WAIT: Final = 1.0
"""Seconds a request waits at most for the shared bucket file before it is answered "retry"."""


class SharedBuckets:
    """Buckets in a file mapped by every process that opens it: the bridge's workers share one.

    Times are ``time.time()`` (the monotonic clock is not comparable between processes). A
    clock stepped back refills nothing; stepped forward, it refills at most one full bucket.
    Past ``SLOTS`` keys in one bridge's life, the key idle longest gives up its slot (and starts
    again with a full bucket).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._threads = threading.Lock()
        """The file's lock keeps processes apart, not threads: ``flock`` belongs to the open file,
        which the threads of a process (a bridge worker's pool) share, and one thread's unlock
        would end another's hold. So a thread takes this first."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = open_private(path, os.O_RDWR)
        size = SLOTS * _SLOT.size
        if os.fstat(self._fd).st_size < size:
            os.ftruncate(self._fd, size)
        self._map = mmap.mmap(self._fd, size)

    def close(self) -> None:
        """Unmap and close (the file stays for the other processes)."""
        with contextlib.suppress(BufferError, ValueError):
            self._map.close()
        with contextlib.suppress(OSError):
            os.close(self._fd)

    def take(
        self, key_id: str, rate: float, size: int, now: float | None = None, *, within: float = LOCK_WAIT
    ) -> tuple[float, float]:
        """(seconds to wait, tokens left): 0 seconds means a token was taken.

        Raises ``Busy`` if the file stays locked ``within`` seconds: the workers hold it for
        microseconds, so only a stuck process (or an outside one) can, and a request thread must
        not wait on it for good.
        """
        tag = int(key_id, 16) or 1
        self._lock(within)
        now = time.time() if now is None else now
        try:
            offset = self._slot(tag, now)
            found, tokens, stamp = _SLOT.unpack_from(self._map, offset)
            if found != tag:
                tokens, stamp = float(size), now
            tokens, wait = take(tokens, stamp, now, rate, size)
            _SLOT.pack_into(self._map, offset, tag, tokens, now)
        finally:
            self._unlock()
        return wait, tokens

    def waiting(self, key_id: str, rate: float, size: int, *, within: float = LOCK_WAIT) -> float:
        """Seconds until the bucket has a token (0: it has one now), taking nothing.

        For a limit on failures (the admin API's authentication): a caller whose bucket is empty
        is refused before it is checked; only a failure then ``take``s.
        """
        tag = int(key_id, 16) or 1
        self._lock(within)
        now = time.time()
        try:
            found, tokens, stamp = _SLOT.unpack_from(self._map, self._slot(tag, now))
        finally:
            self._unlock()
        if found != tag:
            return 0.0
        tokens = min(float(size), tokens + max(0.0, now - stamp) * rate)
        return 0.0 if _enough(tokens, now, rate) else (1.0 - tokens) / rate

    def _lock(self, within: float) -> None:
        """Hold the file for this thread alone, or raise ``Busy`` after ``within`` seconds."""
        deadline = time.monotonic() + within
        if not (
            self._threads.acquire(timeout=within) if within > 0 else self._threads.acquire(blocking=False)
        ):
            raise Busy
        pause = 0.0005
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    self._threads.release()
                    raise Busy from None
                time.sleep(pause)
                pause = min(pause * 2, 0.05)
            else:
                return

    def _unlock(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._threads.release()

    def _slot(self, tag: int, now: float) -> int:
        """The key's slot, a free one, or (table full) the one idle longest."""
        start = tag % SLOTS
        oldest, oldest_stamp = start, now
        for step in range(SLOTS):
            offset = ((start + step) % SLOTS) * _SLOT.size
            found, _, stamp = _SLOT.unpack_from(self._map, offset)
            if found in (tag, 0):
                return offset
            if stamp < oldest_stamp:
                oldest, oldest_stamp = offset, stamp
        return oldest


PLATFORM_FILE: Final = "rates.bin"
"""The rate buckets of a platform, in its ``running/`` folder: the broker's and the bridge's."""


def platform_path(folder: Path) -> Path:
    """The bucket file every door of the platform in ``folder`` (its ``running/``) shares.

    One per platform, not one per process: a key's rate holds across both doors, the broker's
    MQTT publishers and the bridge's workers taking tokens from the same slot. Files left by
    bridges that took one of their own (``rates-PID.bin``) go once their bridge is gone.
    """
    shared_path(folder, 0)
    return folder / PLATFORM_FILE


def shared_path(folder: Path, owner: int, prefix: str = "rates") -> Path:
    """The bucket file of the process group led by ``owner`` (gunicorn's arbiter); stale ones go."""
    for old in folder.glob(f"{prefix}-*.bin") if folder.is_dir() else ():
        with contextlib.suppress(ValueError, OSError):
            pid = int(old.stem.removeprefix(f"{prefix}-"))
            if pid != owner and not alive(pid):
                old.unlink()
    return folder / f"{prefix}-{owner}.bin"
