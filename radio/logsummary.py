"""Repeated log lines summed up, so that a client in a loop cannot grow the log without bound.

The broker logs one line per CONNECT accepted or refused, per socket closed unheard, and so on;
the bridge one per loss of its broker link, which a broker that cannot store a sample closes at
each one: right for an operator reading what happened, wrong when one address connects in a
loop, or every request meets a full disk. Lines
of one kind (the same logger, level and message template) are written as they come up to
``repeats`` per minute; the rest are counted, and one line says how many there were and what
the last said: "… 9,812 more in the last minute like: refused ...". The summary is written when
that kind next comes up after its minute, at the broker's next sweep, or when it stops.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Final

BROKER_LOGGER: Final = "radio.broker"
"""The parent of the broker modules' loggers (``logging.getLogger(__name__)`` in each)."""
BRIDGE_LOGGER: Final = "radio.bridge"
"""The bridge's: its modules log under this one name."""

WINDOW: Final = 60.0
"""Seconds over which a kind of line is counted."""
_SUMMARY: Final = "radio_summary"
"""Marks the summary lines themselves, which are never held back."""


class _Kind:
    __slots__ = ("last", "started", "suppressed", "written")

    def __init__(self, started: float) -> None:
        self.started = started
        self.written = 0
        self.suppressed = 0
        self.last = ""


class Summary(logging.Filter):
    """A filter for a server's loggers: each kind of line at most ``repeats`` times per minute."""

    def __init__(self, repeats: int, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.repeats = repeats
        self.suppressed = 0
        """Lines held back since start, for the metrics."""
        self._clock = clock
        self._kinds: dict[tuple[str, int, str], _Kind] = {}
        self._lock = threading.Lock()  # the store's writer thread logs too
        self._loggers: list[logging.Logger] = []

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether to write the line; a held-back line is counted toward its kind's summary."""
        if getattr(record, _SUMMARY, False):
            return True
        key = (record.name, record.levelno, str(record.msg))
        due: list[tuple[tuple[str, int, str], _Kind]] = []
        with self._lock:
            now = self._clock()
            kind = self._kinds.get(key)
            if kind is None or now - kind.started >= WINDOW:
                if kind is not None and kind.suppressed:
                    due.append((key, kind))
                kind = self._kinds[key] = _Kind(now)
            if kind.written < self.repeats:
                kind.written += 1
                write = True
            else:
                kind.suppressed += 1
                kind.last = record.getMessage()
                self.suppressed += 1
                write = False
        _say(due)
        return write

    def attach(self, parent: str = BROKER_LOGGER) -> None:
        """Hold back the lines of ``parent``'s logger and of every logger below it.

        A logger's filters see only the records logged on it, not those its children pass up, so
        the summary goes on each module's logger (all exist once the broker is imported).
        """
        self._loggers = [
            logging.getLogger(name)
            for name in list(logging.root.manager.loggerDict)
            if name == parent or name.startswith(parent + ".")
        ]
        for logger in self._loggers:
            logger.addFilter(self)

    def detach(self) -> None:
        """Stop holding lines back (the broker stopped)."""
        for logger in self._loggers:
            logger.removeFilter(self)
        self._loggers = []

    def flush(self, *, everything: bool = False) -> None:
        """Write the summaries of kinds whose minute is over (of every kind, when stopping)."""
        due = []
        with self._lock:
            now = self._clock()
            for key, kind in list(self._kinds.items()):
                if everything or now - kind.started >= WINDOW:
                    del self._kinds[key]
                    if kind.suppressed:
                        due.append((key, kind))
        _say(due)


def _say(due: list[tuple[tuple[str, int, str], _Kind]]) -> None:
    """Each summary under the logger of the lines it sums up: where their readers look."""
    for (name, level, _), kind in due:
        logging.getLogger(name).log(
            level,
            "… %s more in the last minute like: %s",
            f"{kind.suppressed:,}",
            kind.last,
            extra={_SUMMARY: True},
        )
