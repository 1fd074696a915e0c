"""What a key may spend: a rate, a quota, an expiry (``Terms``); how each is written and read.

A command line gives them as text (``5/s``, ``10000/day``, an instant with its offset); the key
registry holds them as TOML values, read as strictly as the rest of a key (``read_terms``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from radio.errors import KeyStoreError
from radio.toml_values import shown

PERIODS: Final = ("day", "month")
"""What a quota counts over: a calendar day or month, in UTC."""
_RATE_UNITS: Final = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
}
MAX_RATE: Final = 1_000_000.0
MIN_RATE: Final = 1 / 86_400
"""One sample a day: below it a token's wait (``Retry-After``) outgrows any clock; use a quota."""
MAX_COUNT: Final = 1 << 53
_DECIMAL: Final = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)", re.ASCII)
"""A rate's count as people write it: ASCII digits, one optional point. ``float`` alone would also
take other scripts' digits, underscores and exponents, which a quota or burst refuses."""


def within_count(digits: str) -> bool:
    """Whether ASCII digits are few enough to be a count: none has more digits than ``MAX_COUNT``.

    Checked before ``int``, which refuses past 4,300 digits with a message of its own.
    """
    return len(digits.lstrip("0")) <= len(str(MAX_COUNT))


def parse_rate(text: str) -> float:
    """``5/s``, ``300/min`` or ``1000/h`` as samples per second."""
    count, _, unit = text.strip().partition("/")
    value = float(count) if _DECIMAL.fullmatch(count.strip()) else -1.0
    seconds = _RATE_UNITS.get(unit.strip() or "s")
    if seconds is None or not MIN_RATE <= value / seconds <= MAX_RATE:
        msg = (
            f"invalid rate {text!r}: use COUNT/s, COUNT/min or COUNT/h with a positive COUNT, such as 5/s "
            "(at least one a day, at most 1000000/s)"
        )
        raise ValueError(msg)
    return value / seconds


def parse_quota(text: str) -> tuple[int, str]:
    """``10000/day`` or ``300000/month`` as (count, period)."""
    count, _, period = text.strip().partition("/")
    digits = count.isascii() and count.isdigit() and within_count(count)
    if not digits or not 0 < int(count) <= MAX_COUNT or period not in PERIODS:
        msg = (
            f"invalid quota {text!r}: use COUNT/day or COUNT/month with a positive whole COUNT, "
            "such as 10000/day"
        )
        raise ValueError(msg)
    return int(count), period


def parse_expiry(text: str) -> datetime:
    """An instant with its offset, such as ``2026-12-31T00:00:00Z``."""
    try:
        when = datetime.fromisoformat(text.strip())
        if when.tzinfo is None:
            raise ValueError  # noqa: TRY301 - the same message as any other unreadable expiry
        return when.astimezone(UTC)
    except (ValueError, OverflowError):  # an offset can carry year 9999 past the calendar's end
        msg = f"invalid expiry {text!r}: use a date and time with its offset, such as 2026-12-31T00:00:00Z"
        raise ValueError(msg) from None


def format_rate(rate: float) -> str:
    """A rate as ``radio keys`` shows it."""
    for unit, seconds in (("s", 1.0), ("min", 60.0), ("h", 3600.0)):
        count = rate * seconds
        if count >= 1 and abs(count - round(count)) < 1e-9:
            return f"{round(count)}/{unit}"
    return f"{rate:g}/s"


@dataclass(frozen=True)
class Terms:
    """What a key may spend: a rate, a quota, an expiry; None for each means no limit."""

    rate: float | None = None
    """Samples per second, refilled continuously (a token bucket)."""
    burst: int | None = None
    """Samples that may go at once after a pause; default: one second's worth (at least 1)."""
    quota: int | None = None
    quota_period: str = "day"
    expires: datetime | None = None

    @property
    def bucket(self) -> int:
        """The bucket's size: the burst, or one second's worth of the rate."""
        if self.burst is not None:
            return self.burst
        return max(1, math.ceil(self.rate or 1))


NO_TERMS: Final = Terms()
"""No rate, no quota, no expiry: a key's terms unless it is given some."""


def terms_to_toml(terms: Terms) -> dict[str, Any]:
    """The terms as fields of a key's table in keys.toml: only those set."""
    out: dict[str, Any] = {}
    if terms.rate is not None:
        out["rate"] = terms.rate
    if terms.burst is not None:
        out["burst"] = terms.burst
    if terms.quota is not None:
        out["quota"] = terms.quota
        out["quota_period"] = terms.quota_period
    if terms.expires is not None:
        out["expires"] = terms.expires
    return out


def read_terms(table: Mapping[str, Any], where: str) -> Terms:
    """The rate, quota and expiry fields, each type-checked like the rest of the key."""
    rate = table.get("rate")
    if rate is not None and (type(rate) not in (int, float) or not 0 < rate <= MAX_RATE):
        # Not MIN_RATE: a file written before that floor must still load (the command refuses it).
        msg = (
            f"{where}: rate must be a positive number of samples per second (up to {MAX_RATE:g}), "
            f"not {shown(rate)}"
        )
        raise KeyStoreError(msg)
    counts = {}
    for name in ("burst", "quota"):
        value = table.get(name)
        if value is not None and (type(value) is not int or not 0 < value <= MAX_COUNT):
            msg = f"{where}: {name} must be a positive whole number (a TOML integer), not {shown(value)}"
            raise KeyStoreError(msg)
        counts[name] = value
    if counts["burst"] is not None and rate is None:
        msg = f"{where}: burst is set without a rate"
        raise KeyStoreError(msg)
    period = table.get("quota_period", "day")
    if period not in PERIODS:
        msg = f"{where}: quota_period must be the string 'day' or 'month', not {shown(period)}"
        raise KeyStoreError(msg)
    expires = table.get("expires")
    if expires is not None and (
        not isinstance(expires, datetime) or expires.tzinfo is None or _beyond(expires)
    ):
        msg = (
            f"{where}: expires must be a TOML date-time with its offset, such as 2026-12-31T00:00:00Z, "
            f"not {shown(expires)}"
        )
        raise KeyStoreError(msg)
    return Terms(
        rate=None if rate is None else float(rate),
        burst=counts["burst"],
        quota=counts["quota"],
        quota_period=period,
        expires=None if expires is None else expires.astimezone(UTC),
    )


def _beyond(when: datetime) -> bool:
    """Whether an instant cannot be written in UTC (year 9999 with a negative offset)."""
    try:
        when.astimezone(UTC)
    except OverflowError:
        return True
    return False


def checked_terms(terms: Terms) -> Terms:
    """Terms as the file will hold them: the same checks as reading the file."""
    if terms.rate is None and terms.burst is not None:
        msg = "a burst needs a rate (give --rate too)"
        raise KeyStoreError(msg)
    return read_terms(terms_to_toml(terms), "the new terms")


def edited_terms(changes: Mapping[str, object]) -> dict[str, Any]:
    """Removing a rate removes its burst too."""
    edited = dict(changes)
    if "rate" in edited and edited["rate"] is None:
        edited.setdefault("burst", None)
    return edited
