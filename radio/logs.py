"""Logging for Radio's long-running commands: one line per event, on stderr."""

from __future__ import annotations

import logging
import sys


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
