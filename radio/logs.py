"""Logging for Radio's long-running commands: one line per event, on stderr, quoting clients briefly."""

from __future__ import annotations

import logging
import sys
from typing import Final

SHOWN: Final = 100
"""Characters of a client id or a topic a log line shows: MQTT allows 65,535 bytes of each."""


def shown(text: str | None) -> str:
    """A client's name or topic as a log line quotes it, cut short.

    One client in a loop must not write 65 KB lines, even at the rate the log summary lets through.
    """
    if text is None or len(text) <= SHOWN:
        return repr(text)
    return f"{text[:SHOWN]!r}... ({len(text.encode(errors='replace')):,} bytes)"


class OneLine(logging.Filter):
    """Drops tracebacks from third-party records: an operator's log gets the message, not a dump.

    amqtt logs a rejected WebSocket handshake or a failed bind with a full traceback; Radio's own
    code logs what happened in words.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep the record, without its traceback."""
        if not record.name.startswith("radio"):
            record.exc_info = None
            record.exc_text = None
            record.stack_info = None
        return True


def setup(verbose: bool = False) -> None:
    """Radio's own loggers at INFO (DEBUG with ``verbose``); its libraries' at WARNING."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(OneLine())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("radio").setLevel(logging.DEBUG if verbose else logging.INFO)
