"""The HTTP door of the admission gate (``radio/admission.py``): its verdicts as HTTP answers.

``POST /publish`` runs the article's seven checks, then hands the serialized sample to the gate
that every sample passes on either door: rights, size, strict JSON, schema, rate, quota and
metering. Each refusal is an ``APIError`` with the article's JSON shape:

- a sample over its network's ``max_payload``: 413;
- a sample that does not match the network's schema: 400, naming the field;
- over the rate: 429, with ``Retry-After`` and ``RateLimit-Limit``/``-Remaining``/``-Reset``;
- past the quota: 429, saying when it resets (and ``Retry-After`` until then);
- the shared rate or usage records locked past a second: 503 with ``Retry-After: 1``.

An admitted sample has taken its unit of the key's quota and is metered; if the broker then
fails to take it (503), ``release`` gives both back. So a quota holds exactly, however many
requests arrive at once and through whichever door.

Rates are shared by the workers and the embedded broker (``radio.rates.SharedBuckets``, one
file per platform); quotas and usage go to the platform's ``usage.db`` (``radio.usage.Meter``),
which the embedded broker counts into too.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Final

from radio import rates, usage
from radio.admission import Admission, Admitted, Refused, Wait
from radio.bridge import metrics
from radio.bridge.errors import APIError
from radio.keys import Key, format_rate
from radio.registry import LiveRegistry, Registry

log = logging.getLogger(__name__)

DOOR: Final = "http"
STATUS: Final = {"rights": 403, "too_large": 413, "not_json": 400, "schema": 400, "quota": 429}
"""The HTTP status of each refusal of the gate."""
USAGE_UNAVAILABLE: Final = "the usage records cannot be read now: nothing was published, retry later"
RATES_UNAVAILABLE: Final = "the rate limits cannot be read now: nothing was published, retry later"
SAY_EVERY: Final = 60.0
_unavailable_said = [-SAY_EVERY]


class Refusal(APIError):
    """A refusal that carries response headers (rate limits)."""

    def __init__(self, status: int, message: str, reason: str, headers: dict[str, str]) -> None:
        super().__init__(status, message, reason, headers)


def open_gate(registry: LiveRegistry) -> tuple[Admission, usage.Meter | None, rates.SharedBuckets]:
    """This worker's gate, with its meter and its view of the shared rate buckets.

    One meter and one view of the buckets per worker process; without a readable ``usage.db``
    the gate runs unmetered (logged), rather than the bridge not starting.
    """
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
    running = folder / "running"
    try:
        buckets = rates.SharedBuckets(rates.platform_path(running))  # the broker's too
    except OSError as exc:  # made by another user, say: this bridge's workers share one of their own
        log.error("%s: rates are held per door, not across the broker and the bridge", exc)  # noqa: TRY400
        buckets = rates.SharedBuckets(rates.shared_path(running, os.getppid()))

    def take_token(key: Key) -> tuple[float, float]:
        terms = key.terms
        assert terms.rate is not None  # noqa: S101 - asked only for keys with a rate
        return buckets.take(key.id, terms.rate, terms.bucket)

    return Admission(DOOR, meter, take_token), meter, buckets


def refused_rights(gate: Admission, key: Key) -> None:
    """Count a publish refused for lack of rights (the article's check 5) against the key."""
    gate.count_refusal(key, "rights")
    metrics.REFUSALS.labels(key=key.name, door=DOOR, reason="rights").inc()


def admit(
    gate: Admission, registry: Registry, key: Key, topic: str, payload: bytes, *, data: Any
) -> Admitted:
    """The gate's verdict on a sample already parsed and serialized; a ``Refusal`` unless admitted."""
    verdict = gate.admit(registry, key, topic, payload, data=data, quota_wait=usage.LOCK_WAIT)
    if isinstance(verdict, Admitted):
        return verdict
    if isinstance(verdict, Refused):
        metrics.PUBLISHES.labels(outcome=verdict.reason).inc()
        metrics.REFUSALS.labels(key=key.name, door=DOOR, reason=verdict.reason).inc()
        headers: dict[str, str] = {}
        if verdict.quota is not None:
            seconds = max(1, math.ceil((verdict.quota.resets - datetime.now(UTC)).total_seconds()))
            headers = {"Retry-After": str(seconds), "RateLimit-Reset": str(seconds)}
        raise Refusal(STATUS[verdict.reason], verdict.message, verdict.reason, headers)
    raise _not_now(gate, key, verdict)


def _not_now(gate: Admission, key: Key, wait: Wait) -> Refusal:
    """A 429 over the rate, or a 503 when the shared records stayed locked."""
    if wait.reason == "rate":
        gate.count_refusal(key, "rate")
        metrics.PUBLISHES.labels(outcome="rate").inc()
        metrics.REFUSALS.labels(key=key.name, door=DOOR, reason="rate").inc()
        rate, size = key.terms.rate or 1.0, key.terms.bucket
        headers = {
            "Retry-After": str(max(1, math.ceil(wait.seconds))),
            "RateLimit-Limit": str(size),
            "RateLimit-Remaining": str(int(wait.tokens)),
            "RateLimit-Reset": str(max(1, math.ceil((size - wait.tokens) / rate))),
        }
        message = (
            f"rate limit exceeded: this key may publish {format_rate(rate)} (bursts of {size}); retry later"
        )
        return Refusal(429, message, "rate", headers)
    metrics.PUBLISHES.labels(outcome=wait.reason).inc()
    if wait.reason == "usage_unavailable":
        now = time.monotonic()
        if now - _unavailable_said[0] >= SAY_EVERY:  # once in a while, not once per request
            _unavailable_said[0] = now
            log.warning("quotas cannot be checked: samples of keys with one are answered 503")
        return Refusal(503, USAGE_UNAVAILABLE, wait.reason, {"Retry-After": "1"})
    return Refusal(503, RATES_UNAVAILABLE, wait.reason, {"Retry-After": "1"})


def count_accepted(accepted: Iterable[tuple[str, str, int]]) -> None:
    """Count samples the broker acknowledged in ``/metrics``: (key name, network, bytes) each.

    Called once per read of the broker's PUBACKs (``Publisher.on_confirmed``), on the event loop.
    Their usage was recorded when the gate admitted them.
    """
    groups: dict[tuple[str, str], list[int]] = {}
    for name, network, size in accepted:
        found = groups.get((name, network))
        if found is None:
            groups[name, network] = [1, size]
        else:
            found[0] += 1
            found[1] += size
    for (name, network), (count, size) in groups.items():
        samples, size_in_bytes = metrics.usage(name, DOOR, network)
        samples.inc(count)
        size_in_bytes.inc(size)
