"""Awaiting what another thread or process makes true, where it offers no event to wait on.

The one home of the tests' polling: a module that polls with other bounds names them once
(``functools.partial(eventually, within=WITHIN)``) rather than keeping a loop of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(attempt: Callable[[], T], within: float = 10.0, every: float = 0.01) -> T:
    """``attempt``'s first truthy result within ``within`` seconds, else its last one.

    Asked every ``every`` seconds, and once more at the deadline: a test's message can show what
    was seen last.
    """
    deadline = time.monotonic() + within
    while True:
        result = attempt()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(every)


def until(condition: Callable[[], object], within: float = 10.0, every: float = 0.01) -> bool:
    """Whether ``condition`` became true within ``within`` seconds."""
    return bool(eventually(condition, within, every))
