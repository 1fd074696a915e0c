"""``GET /networks/NAME/samples``: a network's numbered history, read from the recorder's file.

The recorder (``radio recorder``) writes ``history.db`` beside the configuration; the bridge opens
it read-only for each request, so it never holds a lock the recorder waits on.

- ``?limit=N``: the newest N samples (default 100, at most 1000), oldest first;
- ``?after=SEQ``: the samples numbered after SEQ, oldest first, at most ``limit`` of them: a
  listener catching up pages through them, calling again with the last ``seq`` it got.

An answer holds at most ``[bridge] history_page_bytes`` of samples (and always one): 1,000
samples of 60 KB would be 60 MB in one answer, in the bridge's memory and the client's. When
there is more after the last sample of a page, ``"more": true`` and a ``Link: <...?after=SEQ>;
rel="next"`` header say where to go on. The answer is strict JSON: a stored sample that is not
(``NaN``, ``1e999``) keeps its number with ``"data": null`` and ``"invalid"`` saying why.

The answer also says which numbers the history holds: ``first`` (the oldest kept, null if none)
and ``last`` (the last number given, 0 if none), so a caller sees when it asked for more than is
kept. Rights are those of MQTT: a public network needs no key; a private one needs a key that may
read it (``API-KEY`` or ``Authorization: Bearer``): none or an unknown one is 401, one without the
right 403. Every refusal is JSON ``{"error": ...}``.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlencode

from flask import Blueprint, Response, request

from radio.bridge.errors import APIError
from radio.bridge.reading import DEFAULT_LIMIT, check_read, presented_secret
from radio.bridge.state import current_registry, current_state
from radio.samples import NotJSON
from radio.samples import parse as parse_sample

bp = Blueprint("history", __name__)

MAX_LIMIT: Final = 1000
MAX_SEQ: Final = 2**62
_PARAMETERS: Final = frozenset({"limit", "after"})
ENCODER: Final = json.JSONEncoder()
"""For the answer's own fields (numbers, names, times): never a float."""
INVALID: Final = (
    "not strict JSON (NaN, Infinity or a number no float holds): stored before such samples were refused"
)


def _whole(name: str, low: int, high: int, default: int | None) -> int | None:
    """A whole-number parameter in range, or 400.

    Checked as text first: a number of thousands of digits is refused before ``int`` (which
    raises past 4,300 digits) sees it.
    """
    text = request.args.get(name)
    if text is None:
        return default
    digits = text.lstrip("0") or "0"
    whole = text.isascii() and text.isdigit() and len(digits) <= len(str(high))
    if not whole or not low <= int(digits) <= high:
        msg = f"{name} must be a whole number from {low} to {high}, not {text[:40]!r}"
        raise APIError(400, msg, "bad_parameter")
    return int(digits)


def is_history_path(path: str) -> bool:
    """Whether a request path is this route's (the server runs it in a pool of its own)."""
    return path.startswith("/networks/") and path.endswith("/samples")


def history_file() -> Path:
    """The recorder's file, beside the configuration the bridge runs with."""
    path: Path = current_state().registry.settings.history_path
    return path


@dataclass
class Page:
    """One answer's worth of history, already encoded sample by sample."""

    first: int | None
    last: int
    items: list[bytes]
    last_seq: int | None
    """The number of the last sample in ``items`` (None: no sample)."""
    more: bool
    """The history holds samples after ``last_seq``: ask again with ``after=last_seq``."""


def encode_sample(seq: int, received_at: str, topic: str, payload: str, checked: bool) -> bytes:
    """One sample of the answer, its stored JSON text spliced in, as it is, once known strict.

    The recorder checks every payload before it stores it (``checked``: its row says so), so
    pages are copied, not parsed. A row from a file written before that check is checked here: a
    sample holding ``NaN`` or ``1e999`` keeps its place and number, with ``"data": null`` and
    ``"invalid"`` saying why, so the rest of the answer stays JSON that every parser reads.
    """
    head = ENCODER.encode({"seq": seq, "received_at": received_at, "topic": topic})[:-1]
    if checked or _strict(payload):
        return f'{head}, "data": {payload.strip()}}}'.encode()
    return f'{head}, "data": null, "invalid": "{INVALID}"}}'.encode()


def _strict(payload: str) -> bool:
    try:
        parse_sample(payload.encode("utf-8"))
    except NotJSON:
        return False
    return True


def _read(path: Path, network: str, after: int | None, limit: int, max_bytes: int) -> Page:
    if not path.exists():
        msg = "no history yet: the recorder has not run (radio recorder, or radio up)"
        raise APIError(503, msg, "no_history")
    try:
        db = sqlite3.connect(path.as_uri() + "?mode=ro", uri=True, timeout=2.0)
    except sqlite3.Error:
        raise APIError(503, "the history is unavailable right now", "no_history") from None
    try:
        with db:  # one read transaction: first, last and the rows agree
            return _page(db, network, after, limit, max_bytes)
    except sqlite3.Error:
        raise APIError(503, "the history is unavailable right now", "no_history") from None
    finally:
        db.close()


def _one(db: sqlite3.Connection, query: str, network: str) -> int | None:
    row = db.execute(query, (network,)).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def _page(db: sqlite3.Connection, network: str, after: int | None, limit: int, max_bytes: int) -> Page:
    """The page after ``after`` (None: the newest ``limit``), cut at ``max_bytes``.

    Rows are read one at a time and encoded as they come: at most ``max_bytes`` (and one row) of
    a network's history is ever in memory for one request, whatever ``limit`` asks.
    """
    row = db.execute("SELECT last_seq FROM sequences WHERE network = ?", (network,)).fetchone()
    last = int(row[0]) if row else 0
    # Two queries, each one step down the primary key: MIN and MAX together would scan the rows.
    first = _one(db, "SELECT MIN(seq) FROM samples WHERE network = ?", network)
    newest = _one(db, "SELECT MAX(seq) FROM samples WHERE network = ?", network)
    if after is None:  # the newest `limit`: from the oldest of them on
        oldest = db.execute(
            "SELECT seq FROM samples WHERE network = ? ORDER BY seq DESC LIMIT 1 OFFSET ?",
            (network, limit - 1),
        ).fetchone()
        after = oldest[0] - 1 if oldest else 0
    columns = {row[1] for row in db.execute("PRAGMA table_info(samples)")}
    strict = "strict" if "strict" in columns else "NULL"  # a file no recorder has opened since
    rows = db.execute(
        f"SELECT seq, received_at, topic, payload, {strict} FROM samples "  # noqa: S608 - a column name
        "WHERE network = ? AND seq > ? ORDER BY seq LIMIT ?",
        (network, after, limit),
    )
    items: list[bytes] = []
    size = 0
    last_seq: int | None = None
    for seq, received_at, topic, payload, checked in rows:
        item = encode_sample(seq, received_at, topic, payload, checked == 1)
        if items and size + len(item) > max_bytes:
            break  # a page always holds one sample, however large, so that paging moves on
        items.append(item)
        size += len(item) + 2
        last_seq = seq
    rows.close()
    more = last_seq is not None and newest is not None and newest > last_seq
    return Page(first, last, items, last_seq, more)


@bp.get("/networks/<network>/samples")
def samples(network: str) -> Response:
    """A page of a network's history, oldest first, at most ``[bridge] history_page_bytes``."""
    registry = current_registry()
    check_read(registry, network, presented_secret(request))
    unknown = sorted(set(request.args) - _PARAMETERS)
    if unknown:
        raise APIError(400, f"unknown parameter {unknown[0][:40]!r} (known: after, limit)", "bad_parameter")
    limit = _whole("limit", 1, MAX_LIMIT, DEFAULT_LIMIT)
    after = _whole("after", 0, MAX_SEQ, None)
    assert limit is not None  # noqa: S101 - it has a default
    settings = current_state().registry.settings
    page = _read(history_file(), network, after, limit, settings.bridge.history_page_bytes)
    head = ENCODER.encode({"network": network, "first": page.first, "last": page.last, "more": page.more})
    body = b"".join((head[:-1].encode(), b', "samples": [', b", ".join(page.items), b"]}\n"))
    response = Response(body, status=200, mimetype="application/json")
    if page.more:
        query = urlencode({"after": page.last_seq, "limit": limit})
        response.headers["Link"] = f'<{request.path}?{query}>; rel="next"'
    return response
