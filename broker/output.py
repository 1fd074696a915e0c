"""What the broker writes to its clients: gathered per loop turn, flushed by one callback for all.

A sample fanned out to N subscribers is N writes. Each connection gathers what it is sent during
one turn of the event loop and writes it in one call, so a burst costs one system call per
subscriber, not one per sample. The flush is scheduled once per turn for the whole broker, not
once per connection: at a steady rate (one sample per turn) a callback per subscriber would cost
about as much as the rest of the delivery in Python.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class Flushable(Protocol):
    """A connection with bytes gathered for its client."""

    def flush(self) -> None:
        """Write what was gathered (nothing if it was written or the connection closed meanwhile)."""


class Flusher:
    """The connections written to in this turn of the loop, flushed together at its end."""

    __slots__ = ("_dirty", "_scheduled")

    def __init__(self) -> None:
        self._dirty: list[Flushable] = []
        self._scheduled = False

    def mark(self, connection: Flushable) -> None:
        """The connection gathered its first bytes of this turn: flush it with the others."""
        self._dirty.append(connection)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Flush every connection marked; one marked while this runs (a will, a close) goes next turn."""
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        for connection in dirty:
            connection.flush()
