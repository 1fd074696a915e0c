"""What a key may spend on the HTTP door: its rate, its quota, its network's schema; and metering.

Asked by ``POST /publish`` after the article's seven checks, in this order: rights (check 5),
rate, quota, schema. Each refusal is an ``APIError`` with the article's JSON shape:

- over the rate: 429, with ``Retry-After`` and ``RateLimit-Limit``/``-Remaining``/``-Reset``;
- past the quota: 429, saying when it resets (and ``Retry-After`` until then);
- a sample that does not match the network's schema: 400, naming the failing field.

Rates are shared by the workers (``radio.rates.SharedBuckets``); quotas and usage go to the
platform's ``usage.db`` (``radio.usage.Meter``), which the embedded broker counts into too.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import sqlite3
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Final

from flask import Flask, Response, jsonify

from radio import rates, usage
from radio.bridge import metrics
from radio.bridge.errors import APIError
from radio.keys import Key, format_rate
from radio.registry import LiveRegistry
from radio.schemas import Schema

log = logging.getLogger("radio.bridge")

DOOR: Final = "http"


class Refusal(APIError):
    """A refusal that carries response headers (rate limits)."""

    def __init__(self, status: int, message: str, reason: str, headers: dict[str, str]) -> None:
        super().__init__(status, message, reason)
        self.headers = headers


def _answer(error: Refusal) -> tuple[Response, int, dict[str, str]]:
    return jsonify(error=error.message), error.status, error.headers


def install(app: Flask, registry: LiveRegistry) -> None:
    """Give the app its meter and shared buckets (one of each per worker process)."""
    folder = registry.settings.state_dir
    meter: usage.Meter | None = None
    try:
        opened = usage.Meter(usage.usage_path(folder))
    except usage.UsageError as exc:
        log.error("%s: usage is not metered and quotas are not enforced by this worker", exc)  # noqa: TRY400
    else:
        opened.start()
        atexit.register(opened.close)
        meter = opened
    buckets = rates.SharedBuckets(rates.shared_path(folder / "running", os.getppid()))
    app.extensions["radio.meter"] = meter
    app.extensions["radio.buckets"] = buckets
    app.register_error_handler(Refusal, _answer)


def _meter(app: Flask) -> usage.Meter | None:
    meter: usage.Meter | None = app.extensions["radio.meter"]
    return meter


def _refuse(
    app: Flask, key: Key, status: int, message: str, reason: str, *, headers: dict[str, str] | None = None
) -> Refusal:
    if (meter := _meter(app)) is not None:
        meter.refuse(key, DOOR, reason)
    metrics.PUBLISHES.labels(outcome=reason).inc()
    metrics.REFUSALS.labels(key=key.name, door=DOOR, reason=reason).inc()
    return Refusal(status, message, reason, headers or {})


def refused_rights(app: Flask, key: Key) -> None:
    """Count a publish refused for lack of rights (the article's check 5) against the key."""
    if (meter := _meter(app)) is not None:
        meter.refuse(key, DOOR, "rights")
    metrics.REFUSALS.labels(key=key.name, door=DOOR, reason="rights").inc()


def check_rate(app: Flask, key: Key) -> Refusal | None:
    """None if the key may publish now (a token is taken); else its 429."""
    rate = key.terms.rate
    if rate is None:
        return None
    size = key.terms.bucket
    buckets: rates.SharedBuckets = app.extensions["radio.buckets"]
    try:
        wait, tokens = buckets.take(key.id, rate, size)
    except rates.Busy:
        metrics.PUBLISHES.labels(outcome="rates_unavailable").inc()
        return Refusal(503, RATES_UNAVAILABLE, "rates_unavailable", {"Retry-After": "1"})
    if not wait:
        return None
    reset = math.ceil((size - tokens) / rate)
    headers = {
        "Retry-After": str(max(1, math.ceil(wait))),
        "RateLimit-Limit": str(size),
        "RateLimit-Remaining": str(int(tokens)),
        "RateLimit-Reset": str(max(1, reset)),
    }
    message = f"rate limit exceeded: this key may publish {format_rate(rate)} (bursts of {size}); retry later"
    return _refuse(app, key, 429, message, "rate", headers=headers)


USAGE_UNAVAILABLE: Final = "the usage records cannot be read now: nothing was published, retry later"
RATES_UNAVAILABLE: Final = "the rate limits cannot be read now: nothing was published, retry later"
SAY_EVERY: Final = 60.0
_unavailable_said = [-SAY_EVERY]


def check_quota(app: Flask, key: Key) -> Refusal | None:
    """None if the key has samples left in its quota period; else its 429 with the reset time.

    A usage file that cannot be read (locked past its timeout, say) is a 503: the quota is what
    the key paid for, so it is not waived, and the sample is not lost either: the client retries.
    """
    meter = _meter(app)
    try:
        state = meter.quota(key) if meter is not None else None
    except (usage.Busy, sqlite3.Error) as exc:
        now = time.monotonic()
        if now - _unavailable_said[0] >= SAY_EVERY:  # once in a while, not once per request
            _unavailable_said[0] = now
            log.warning(
                "quotas cannot be checked, samples of keys with one are answered 503: %s",
                exc.__cause__ or "the usage file stayed locked",
            )
        metrics.PUBLISHES.labels(outcome="usage_unavailable").inc()
        return Refusal(503, USAGE_UNAVAILABLE, "usage_unavailable", {"Retry-After": "1"})
    if meter is None or state is None or not state.exceeded:
        return None
    meter.over_quota(key, DOOR, state)
    metrics.PUBLISHES.labels(outcome="quota").inc()
    metrics.REFUSALS.labels(key=key.name, door=DOOR, reason="quota").inc()
    resets = state.resets.isoformat().replace("+00:00", "Z")
    seconds = max(1, math.ceil((state.resets - datetime.now(UTC)).total_seconds()))
    message = f"quota exceeded: {state.limit} samples per {key.terms.quota_period}; it resets at {resets}"
    headers = {"Retry-After": str(seconds), "RateLimit-Reset": str(seconds)}
    return Refusal(429, message, "quota", headers)


def validate(app: Flask, key: Key, schema: Schema | None, data: Any) -> Refusal | None:
    """None if the sample matches the network's schema (or it has none); else a 400 naming the field."""
    if schema is None:
        return None
    problem = schema.problem(data)
    if problem is None:
        return None
    return _refuse(app, key, 400, f"sample does not match the network's schema: {problem}", "schema")


def check(app: Flask, key: Key, schema: Schema | None, data: Any) -> Refusal | None:
    """Rate, then quota, then the network's schema: the first refusal, or None.

    The app is passed in, not reached through Flask's context: this runs for every sample.
    """
    return check_rate(app, key) or check_quota(app, key) or validate(app, key, schema, data)


def meter_accepted(app: Flask, accepted: Iterable[tuple[Key, str, int]]) -> None:
    """Meter samples the broker acknowledged: (key, network, bytes) each, counted per key and network.

    Called once per read of the broker's PUBACKs (``Publisher.on_confirmed``), on the event loop.
    """
    # By the key as the sample was checked under: an edit of its terms between two samples of one
    # read makes two keys, each counted under its own quota.
    groups: dict[tuple[int, str], tuple[Key, list[int]]] = {}
    for key, network, size in accepted:
        found = groups.get((id(key), network))
        if found is None:
            groups[id(key), network] = (key, [1, size])
        else:
            found[1][0] += 1
            found[1][1] += size
    meter = _meter(app)
    for (_, network), (key, (count, size)) in groups.items():
        if meter is not None:
            meter.record(key, DOOR, network, size, count)
        samples, size_in_bytes = metrics.usage(key.name, DOOR, network)
        samples.inc(count)
        size_in_bytes.inc(size)
