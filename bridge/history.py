"""``GET /networks/NAME/samples``: a network's numbered history, read from the recorder's file.

The recorder (``radio recorder``) writes ``history.db`` beside the configuration; the bridge opens
it read-only for each request, so it never holds a lock the recorder waits on. The file's tables
and queries are ``radio/history_store.py``'s; this module makes the HTTP answer.

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
kept. Rights are those of MQTT: a public network needs no key (where clients without one are
let in, ``allow_anonymous``); a private one needs a key that may
read it (``API-KEY`` or ``Authorization: Bearer``): none or an unknown one is 401, one without the
right 403. A name no network has is refused alike (``reading.check_read``): who may not read a
network cannot tell whether it exists. Every refusal is JSON ``{"error": ...}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final
from urllib.parse import urlencode

from flask import Blueprint, Response, request

from radio.bridge.errors import APIError
from radio.bridge.reading import DEFAULT_LIMIT, check_read, presented_secret
from radio.bridge.state import current_registry, current_state
from radio.history_store import MAX_SEQ, HistoryFileUnavailable, NoHistory, Page, read_page
from radio.samples import NotJSON
from radio.samples import parse as parse_sample

bp = Blueprint("history", __name__)

MAX_LIMIT: Final = 1000
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
    try:
        return read_page(path, network, after, limit, max_bytes, encode=encode_sample)
    except NoHistory:
        msg = "no history yet: the recorder has not run (radio recorder, or radio up)"
        raise APIError(503, msg, "no_history") from None
    except HistoryFileUnavailable:
        raise APIError(503, "the history is unavailable right now", "no_history") from None


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
