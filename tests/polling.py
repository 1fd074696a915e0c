"""Awaiting what another thread or process makes true, where it offers no event to wait on."""

from __future__ import annotations

import time
from collections.abc import Callable


def until(condition: Callable[[], object], within: float = 10.0) -> bool:
    """Whether ``condition`` became true within ``within`` seconds (asked every 10 ms)."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
