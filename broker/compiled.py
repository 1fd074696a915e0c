"""Whether the broker's delivery path runs compiled (a ``RADIO_COMPILE=1`` build) or from source.

The two builds behave alike and differ in cost per delivery, so the broker's banner says which
one runs (benchmarks record it beside each figure) and the tests know which one they check.
"""

from __future__ import annotations

import importlib.machinery

from radio.broker import router


def delivery_path() -> str:
    """``compiled`` when the router is a C extension (setup.py's ``HOT_PATH``), else ``Python``."""
    where = router.__file__ or ""
    return "compiled" if where.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)) else "Python"
