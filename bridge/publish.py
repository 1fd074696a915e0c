"""``POST /publish``: the article's contract, to the letter, then forwarded to the broker.

The checks run in the article's order and answer with its status codes and error strings, which
legacy generators depend on (design section 4):

    1  no API-KEY header                 400 API-KEY missing in headers
    2  key not valid                     400 API-KEY not valid
    3  body is not JSON                  400 POST data is not JSON
    4  no network key                    400 *network* key missing
    5  key may not publish there         403 You cannot broadcast to this channel
    6  no data key                       400 *data* key missing
    7  data is not a JSON object         400 Can only broadcast json data
    8  published, broker acknowledged    200 {"message": "OK"}

Beyond the article: a body over the network's ``max_payload`` is 413 (a body too large for any
network is refused before it is read), and a broker that is down or slow is 503.
"""

from __future__ import annotations

import json
import time
from typing import Any, Final, NoReturn

from flask import Blueprint, Response, current_app, jsonify, request

from radio.bridge import access, metrics
from radio.bridge.errors import APIError
from radio.bridge.publisher import BrokerUnavailable, Publisher
from radio.registry import LiveRegistry, Registry
from radio.topics import network_topic

bp = Blueprint("publish", __name__)

BODY_HEADROOM: Final = 64 * 1024
"""Room for the envelope and whitespace around the largest sample a network accepts."""


def _refuse(status: int, message: str, reason: str) -> NoReturn:
    metrics.PUBLISHES.labels(outcome=reason).inc()
    raise APIError(status, message, reason)


def _presented_secret() -> str | None:
    secret = request.headers.get("API-KEY")
    if secret is None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            secret = token.strip()
    return secret


def _read_body(registry: Registry) -> bytes:
    limit = registry.largest_payload * 2 + BODY_HEADROOM  # worked out once per registry, not per request
    if request.content_length is not None and request.content_length > limit:
        _refuse(413, f"request body too large: at most {limit} bytes", "too_large")
    body = request.stream.read(limit + 1)
    if len(body) > limit:
        _refuse(413, f"request body too large: at most {limit} bytes", "too_large")
    return body


def _reject_constant(name: str) -> NoReturn:
    msg = f"{name} is not JSON"
    raise ValueError(msg)


def _parse(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        _refuse(400, "POST data is not JSON", "not_json")


def current_registry() -> Registry:
    """The registry, re-checked at most every quarter second so a revoked key stops within 2 s."""
    live: LiveRegistry = current_app.extensions["radio.registry"]
    state = current_app.extensions["radio.registry.checked"]
    now = time.monotonic()
    if now - state[0] >= current_app.config["REGISTRY_CHECK_INTERVAL"]:
        state[0] = now
        live.refresh()
    return live.current


@bp.post("/publish")
def publish() -> tuple[Response, int]:
    """Check, forward at QoS 1, and answer 200 only once the broker acknowledged the sample."""
    started = time.perf_counter()
    registry = current_registry()

    secret = _presented_secret()
    if secret is None:
        _refuse(400, "API-KEY missing in headers", "missing_key")
    key = registry.key_for_secret(secret)
    if key is None:
        _refuse(400, "API-KEY not valid", "invalid_key")

    body = _parse(_read_body(registry))
    if not isinstance(body, dict) or "network" not in body:
        _refuse(400, "*network* key missing", "missing_network")
    network = body["network"]
    if (
        not isinstance(network, str)
        or network not in registry.networks
        or not registry.access(key.name).may_publish(network_topic(network))
    ):
        access.refused_rights(key)  # access: count the refusal against the key (bridge/access.py)
        _refuse(403, "You cannot broadcast to this channel", "forbidden")
    if "data" not in body:
        _refuse(400, "*data* key missing", "missing_data")
    if not isinstance(body["data"], dict):
        _refuse(400, "Can only broadcast json data", "not_object")

    # --- access (bridge/access.py): rate, then quota, then the network's schema ---
    refusal = access.check(key, network, body["data"])
    if refusal is not None:
        raise refusal
    # --- end access ---

    settings = registry.networks[network]
    payload = json.dumps(body["data"]).encode()  # the article: json.dumps(body["data"])
    if len(payload) > settings.max_payload:
        _refuse(
            413,
            f"sample too large: {len(payload)} bytes, "
            f"network {network!r} accepts at most {settings.max_payload}",
            "too_large",
        )

    publisher: Publisher = current_app.extensions["radio.publisher"]
    try:
        publisher.publish(network_topic(network), payload, retain=settings.retain)
    except BrokerUnavailable as exc:
        _refuse(503, str(exc), "broker_unavailable")
    metrics.PUBACK_SECONDS.observe(time.perf_counter() - started)
    metrics.PUBLISHES.labels(outcome="accepted").inc()
    access.accepted(key, network, len(payload))  # access: usage metering (bridge/access.py)
    return jsonify(message="OK"), 200
