"""Where a client given several brokers (a cluster's nodes) is in their list, and when to wait.

Every client that fails over (the generators, the listener, the recorder, the bridge's broker
link) goes round its list the same way: after a lost connection or a failed connect it tries the
next broker, and once a whole round of connects failed in a row it is time to back off before
the next, since every node is down and hammering them helps none. That rule lives here once; what
a client does with it (paho's own reconnect pace, a jittered backoff, a fixed delay) is its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class FailoverCursor(Generic[T]):
    """A position in a non-empty list of brokers, moved on round the list after each ended connection."""

    def __init__(self, items: Iterable[T]) -> None:
        self.items: tuple[T, ...] = tuple(items)
        """Tried in this order, from the first, round and round."""
        if not self.items:
            msg = "no broker to connect to"
            raise ValueError(msg)
        self._index = 0
        self._failed = 0

    def __len__(self) -> int:
        return len(self.items)

    @property
    def current(self) -> T:
        """The broker connected to, or tried next."""
        return self.items[self._index]

    @property
    def failed(self) -> int:
        """Connections failed in a row since the last one that worked."""
        return self._failed

    def move_on(self, *, worked: bool = False) -> bool:
        """After a connection ended, go on to the next broker; True if a whole round failed in a row.

        ``worked``: the connection that ended had been established, so the brokers are not all
        down; the count of failures starts afresh and no backoff is due.
        """
        self._failed = 0 if worked else self._failed + 1
        self._index = (self._index + 1) % len(self.items)
        return self._failed > 0 and self._failed % len(self.items) == 0
