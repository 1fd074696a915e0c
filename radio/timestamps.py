"""The platform's one way of writing an instant: UTC, milliseconds, ``Z``.

The recorder stamps each sample it numbers with it, and listeners stamp the samples they receive
live with it, so that a history line and a live line read alike (``2026-11-30T03:56:13.120Z``).
"""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> str:
    """Now, as the platform writes it."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
