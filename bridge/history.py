"""``GET /networks/NAME/samples``: a network's numbered history, read from the recorder's file.

The recorder (``radio recorder``) writes ``history.db`` beside the configuration; the bridge opens
it read-only for each request, so it never holds a lock the recorder waits on.

- ``?limit=N``: the newest N samples (default 100, at most 1000), oldest first;
- ``?after=SEQ``: the samples numbered after SEQ, oldest first, at most ``limit`` of them: a
  listener catching up pages through them, calling again with the last ``seq`` it got.

The answer also says which numbers the history holds: ``first`` (the oldest kept, null if none)
and ``last`` (the last number given, 0 if none), so a caller sees when it asked for more than is
kept. Rights are those of MQTT: a public network needs no key; a private one needs a key that may
read it (``API-KEY`` or ``Authorization: Bearer``): none or an unknown one is 401, one without the
right 403. Every refusal is JSON ``{"error": ...}``.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, Final

from flask import Blueprint, Response, current_app, jsonify, request

from radio.bridge.errors import APIError
from radio.bridge.publish import current_registry
from radio.registry import Registry
from radio.topics import network_topic

bp = Blueprint("history", __name__)

DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000
_PARAMETERS: Final = frozenset({"limit", "after"})


def presented_secret() -> str | None:
    """The secret in ``API-KEY`` or ``Authorization: Bearer``, as ``POST /publish`` takes it."""
    secret = request.headers.get("API-KEY")
    if secret is None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            secret = token.strip()
    return secret


def readable_networks(registry: Registry, secret: str | None) -> list[str]:
    """The networks this visitor may read: the public ones, and the key's; 401 for an unknown key."""
    key_name = None
    if secret is not None:
        key = registry.key_for_secret(secret)
        if key is None:
            raise APIError(401, "API-KEY not valid", "invalid_key")
        key_name = key.name
    access = registry.access(key_name)
    return sorted(n for n in registry.networks if access.may_read(network_topic(n)))


def check_read(registry: Registry, network: str) -> None:
    """404 for a network the configuration lacks; 401 or 403 for one the visitor may not read."""
    settings = registry.networks.get(network)
    if settings is None:
        raise APIError(404, f"no network {network!r}", "unknown_network")
    if settings.public:
        return
    secret = presented_secret()
    if secret is None:
        raise APIError(401, f"network {network!r} is private: send a key in API-KEY", "missing_key")
    if network not in readable_networks(registry, secret):
        raise APIError(403, f"this key may not read network {network!r}", "forbidden")


def _whole(name: str, low: int, high: int, default: int | None) -> int | None:
    text = request.args.get(name)
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or not low <= int(text) <= high:
        msg = f"{name} must be a whole number from {low} to {high}, not {text[:40]!r}"
        raise APIError(400, msg, "bad_parameter")
    return int(text)


def history_file() -> Path:
    """The recorder's file, beside the configuration the bridge runs with."""
    path: Path = current_app.extensions["radio.registry"].settings.history_path
    return path


def _read(path: Path, network: str, after: int | None, limit: int) -> tuple[list[Any], int, int | None]:
    if not path.exists():
        msg = "no history yet: the recorder has not run (radio recorder, or radio up)"
        raise APIError(503, msg, "no_history")
    try:
        db = sqlite3.connect(path.as_uri() + "?mode=ro", uri=True, timeout=2.0)
    except sqlite3.Error:
        raise APIError(503, "the history is unavailable right now", "no_history") from None
    try:
        with db:  # one read transaction: first, last and the rows agree
            row = db.execute("SELECT last_seq FROM sequences WHERE network = ?", (network,)).fetchone()
            last = int(row[0]) if row else 0
            first_row = db.execute("SELECT MIN(seq) FROM samples WHERE network = ?", (network,)).fetchone()
            if after is None:
                rows = db.execute(
                    "SELECT seq, received_at, topic, payload FROM samples WHERE network = ? "
                    "ORDER BY seq DESC LIMIT ?",
                    (network, limit),
                ).fetchall()[::-1]
            else:
                rows = db.execute(
                    "SELECT seq, received_at, topic, payload FROM samples WHERE network = ? AND seq > ? "
                    "ORDER BY seq LIMIT ?",
                    (network, after, limit),
                ).fetchall()
    except sqlite3.Error:
        raise APIError(503, "the history is unavailable right now", "no_history") from None
    finally:
        db.close()
    samples = [
        {"seq": seq, "received_at": at, "topic": topic, "data": json.loads(payload)}
        for seq, at, topic, payload in rows
    ]
    return samples, last, first_row[0]


@bp.get("/networks/<network>/samples")
def samples(network: str) -> tuple[Response, int]:
    """A page of a network's history, oldest first."""
    registry = current_registry()
    check_read(registry, network)
    unknown = sorted(set(request.args) - _PARAMETERS)
    if unknown:
        raise APIError(400, f"unknown parameter {unknown[0][:40]!r} (known: after, limit)", "bad_parameter")
    limit = _whole("limit", 1, MAX_LIMIT, DEFAULT_LIMIT)
    after = _whole("after", 0, 2**62, None)
    assert limit is not None  # noqa: S101 - it has a default
    found, last, first = _read(history_file(), network, after, limit)
    return jsonify(network=network, first=first, last=last, samples=found), 200
