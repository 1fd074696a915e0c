"""What the broker writes to its clients: gathered per loop turn, flushed together, in bounded room.

A sample fanned out to N subscribers is N writes. Each connection gathers what it is sent during
one turn of the event loop and writes it in one call, so a burst costs one system call per
subscriber, not one per sample. The flush is scheduled once per turn for the whole broker, not
once per connection: at a steady rate (one sample per turn) a callback per subscriber would cost
about as much as the rest of the delivery in Python. At that steady rate gathering buys nothing
(each subscriber gets one packet per turn), so a packet handled alone in its read (``alone``)
goes straight to the transport of a connection that wrote nothing yet this turn; what follows in
the same turn is gathered, so a burst still costs at most two writes per subscriber per turn. What
waits to be written for one client is held to a room that grows while the client keeps up
(``SendBuffers``).
"""

from __future__ import annotations

import asyncio
from typing import Final, Protocol


class Flushable(Protocol):
    """A connection with bytes gathered for its client."""

    def flush(self) -> None:
        """Write what was gathered (nothing if it was written or the connection closed meanwhile)."""


class Flusher:
    """The connections written to in this turn of the loop, flushed together at its end."""

    __slots__ = ("_dirty", "_loop", "alone", "scheduled", "turn")

    def __init__(self) -> None:
        self._dirty: list[Flushable] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.scheduled = False
        """Whether the end of this turn is scheduled (``flush``)."""
        self.turn = 0
        """Turns of the loop that wrote something so far: a connection that wrote straight to its
        transport in this turn gathers what follows until the number moves on."""
        self.alone = False
        """Whether the packet being handled came alone in its read (a paced sample, not a burst):
        its writes may go straight to a connection's transport (``Connection.write``)."""

    def mark(self, connection: Flushable) -> None:
        """The connection gathered its first bytes of this turn: flush it with the others."""
        self._dirty.append(connection)
        if not self.scheduled:
            self.schedule()

    def schedule(self) -> None:
        """Run ``flush`` at the end of this turn (the loop is looked up once: it costs a system call)."""
        self.scheduled = True
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        loop.call_soon(self.flush)

    def flush(self) -> None:
        """Flush every connection marked; one marked while this runs (a will, a close) goes next turn."""
        self.scheduled = False
        self.turn += 1
        dirty, self._dirty = self._dirty, []
        for connection in dirty:
            connection.flush()


SOURCE_SHARES: Final = 32
"""Clients of one source (an address's anonymous ones, a key's) that each get the whole ``base``
room; more share ``base`` times this between them. A thousand anonymous clients of one address
that read nothing held a mebibyte each (1.7 GB of the broker's memory for 1,000). What a client
that keeps up is granted for a burst (within ``total``) is its own, on top of its part."""


class SendBuffers:
    """Room for bytes waiting to be written to clients: ``base`` each, more for one that keeps up.

    A client that reads as fast as samples come needs little room; a burst (thousands of samples
    in a second) fills any fixed room while the client is still reading steadily, and QoS 0
    samples past it would be dropped. So a client whose bytes wait past its room is given twice
    the room if it keeps up: it took everything written to it before this turn of the loop (the
    event loop reads a publisher's burst whole, and it is fanned out in one turn), or took bytes
    since its room last grew. It grows up to ``most`` for one client, and ``total`` is granted
    beyond ``base`` to all clients together. A client that does not read takes nothing more once
    the kernel's buffers are full: it keeps the room it has, and past it its QoS 0 samples are
    dropped and counted as before. A client's room goes back to ``base`` when it is written to and
    nothing is left waiting for it (it caught up), or when it goes.
    """

    __slots__ = ("base", "granted", "least", "most", "refused_most", "refused_total", "source", "total")

    def __init__(self, base: int, most: int, total: int) -> None:
        self.base = base
        self.source = base * SOURCE_SHARES
        """The base room of all the clients of one source together (an address's anonymous
        clients, a key's): past ``SOURCE_SHARES`` clients, each is held to its part of it."""
        self.least = self.source >> 10
        """The room no client is held below (32 KiB by default): a client with less waiting is
        not congested, and its source's count is not looked up, on the path of every delivery.
        A source of up to 1,024 clients is held to ``source``; one of 10,000 to ten times it."""
        self.most = max(most, base)
        self.total = total
        self.granted = 0
        """Bytes of room granted beyond ``base``, to all clients together (at most ``total``)."""
        self.refused_most = 0
        """Times a client that keeps up was held to its room by ``most``."""
        self.refused_total = 0
        """Times a client that keeps up was held to its room by ``total``."""

    def grow(self, room: int) -> int:
        """The room a client that keeps up gets next: twice its own, within both bounds."""
        if room >= self.most:
            self.refused_most += 1
            return room
        extra = min(min(room * 2, self.most) - room, self.total - self.granted)
        if extra <= 0:
            self.refused_total += 1
            return room
        self.granted += extra
        return room + extra

    def release(self, room: int) -> None:
        """A client gives back what it was granted beyond ``base`` (caught up, or gone)."""
        self.granted -= room - self.base
