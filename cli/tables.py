"""How ``radio keys`` shows keys and their records to a person: aligned columns and short cells.

Scripts read ``--json`` (or ``--csv``) instead; these shapes are for eyes and may change.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from radio.keys import Key, format_rate


def print_table(rows: Sequence[tuple[str, ...]]) -> None:
    """The rows, header first, in columns as wide as their widest cell."""
    widths = [max(len(cells[i]) for cells in rows) for i in range(len(rows[0]))]
    for cells in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip())


def rights(key: Key) -> tuple[str, str]:
    """A key's PUBLISH and SUBSCRIBE columns, as ``radio keys list`` shows them."""
    publish = "(admin: any topic)" if key.admin else ",".join(sorted(key.publish)) or "-"
    publish = "(every network)" if key.publish_all else publish
    subscribe = "(admin: any topic)" if key.admin else ",".join(sorted(key.subscribe)) or "-"
    subscribe = "(every network)" if key.read_all else subscribe
    return publish, subscribe


def limits(key: Key) -> str:
    """A key's rate and quota, as ``radio keys list`` shows them."""
    terms, parts = key.terms, []
    if terms.rate is not None:
        parts.append(f"rate {format_rate(terms.rate)} burst {terms.bucket}")
    if terms.quota is not None:
        parts.append(f"quota {terms.quota}/{terms.quota_period}")
    return ", ".join(parts) or "-"


def expiry(key: Key) -> str:
    """When a key expires, and whether it has."""
    expires = key.terms.expires
    if expires is None:
        return "never"
    shown = expires.isoformat().replace("+00:00", "Z")
    return f"EXPIRED {shown}" if key.expired() else shown


def changed(fields: object) -> str:
    """The fields an audited change set, as ``field=value`` pairs."""
    pairs = fields.items() if isinstance(fields, dict) else ()
    return " ".join(f"{field}={json.dumps(value)}" for field, value in pairs) or "-"
