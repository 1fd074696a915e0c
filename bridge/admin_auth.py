"""Who reaches the admin surface (``/admin/`` and ``/metrics``), on which listener, how often they may fail.

``/metrics`` labels its series with key names, and ``/admin/`` changes keys: neither is public.
``/healthz`` is, on every listener. By ``[bridge] admin``:

- absent: ``/admin/`` and ``/metrics`` are served on ``listen``, each behind an admin key
  (``Authorization: Bearer <secret>`` of a key made with ``--admin``);
- ``"HOST:PORT"``: both are served only on that listener of their own, and ``listen`` answers
  404 for them. That listener serves nothing else but ``/healthz`` (404 for ``/publish``, the
  pages and the samples' history). ``/admin/`` still needs an admin key (it changes keys);
  ``/metrics`` does not (the address keeps it private, as ``[broker] metrics`` does), so
  Prometheus holds no key that could change keys;
- ``false``: no ``/admin/`` anywhere; ``/metrics`` stays on ``listen``, behind an admin key.

Both are guarded in one place, before Flask looks at a request's route or method (``guard``):
an answer that differs by method (405, or OPTIONS listing the methods) would show the route to
anyone.

Failed authentication (no key, a wrong one, or a key that is not an admin key) is limited per
source address (for IPv6 its /64, ``radio.sources``): ``AUTH_BURST`` failures at once, then one
every ``AUTH_EVERY`` seconds. Past that, every request from the source is answered 429 with
``Retry-After`` before its credentials are even looked at, so guessing a secret is bounded
whatever the guesses. The buckets are shared by the bridge's workers
(``radio.rates.SharedBuckets``), so more workers do not mean more guesses.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
from typing import Final, NoReturn

from flask import Flask, current_app, g, request
from prometheus_client import Counter
from werkzeug.exceptions import NotFound

from radio import rates
from radio.bridge.access import Refusal
from radio.bridge.errors import APIError
from radio.bridge.state import current_registry, current_state
from radio.errors import Busy
from radio.keys import Key
from radio.registry import LiveRegistry
from radio.sources import source_of

AUTH_BURST: Final = 10
"""Failed admin authentications a source address may make at once."""
AUTH_EVERY: Final = 6.0
"""Seconds for each further failure, once the burst is spent (10 a minute)."""
CHALLENGE: Final = {"WWW-Authenticate": 'Bearer realm="radio admin"'}

REFUSALS: Final = Counter(
    "radio_bridge_admin_refusals",
    "Requests to /admin/ or /metrics refused before they ran: missing, invalid or not an admin "
    "key, or from an address past its limit of failed authentications (limited).",
    ["reason"],
)


def failure_buckets(registry: LiveRegistry) -> rates.SharedBuckets:
    """The failed-authentication buckets of this bridge's workers (``BridgeState.admin_failures``)."""
    folder = registry.settings.state_dir / "running"
    return rates.SharedBuckets(rates.shared_path(folder, os.getppid(), prefix="admin-auth"))


WILDCARDS: Final = frozenset({"0.0.0.0", "::", ""})
"""Hosts a listener binds to take connections on every address of the machine."""


def _on_admin_listener() -> bool:
    """Whether this request came in on the admin listener (``ADMIN_LISTEN``: its address as bound).

    A request knows the address it reached, never a wildcard: on an admin listener bound to
    ``0.0.0.0`` or ``::`` its port alone tells it apart (no other listener can hold that port).
    """
    bound = current_app.config.get("ADMIN_LISTEN")
    if bound is None:
        return False
    host, port = str(bound[0]), str(bound[1])
    here_host, here_port = request.environ.get("SERVER_NAME"), request.environ.get("SERVER_PORT")
    return here_port == port and (host in WILDCARDS or here_host == host)


def _served_here(*, api: bool) -> bool:
    state = current_state()
    if api and not state.admin_enabled:
        return False
    return _on_admin_listener() if state.admin_own_listener else True


def admin_api_here() -> None:
    """404 unless the admin API is served on the listener this request came in on."""
    if not _served_here(api=True):
        raise NotFound


def guard_metrics() -> None:
    """``/metrics``: 404 off the admin listener if it has one; elsewhere an admin key is needed."""
    if not _served_here(api=False):
        raise NotFound
    if not current_state().admin_own_listener:
        require_admin_key()


ADMIN_LISTENER_ONLY: Final = "not found: this listener serves /admin/, /metrics and /healthz only"
"""An admin listener of its own takes no samples and serves no pages: a door to them on an address
meant for operators is one more way in to watch and to keep closed."""

SLASHES: Final = re.compile("//+")
PUBLIC: Final = "admin.openapi"
"""The one route under ``/admin/`` served without a key: the API's OpenAPI document."""


def guard() -> None:
    """Every request for the admin surface is judged here, before its route and method are.

    Run before Flask answers a method the route does not take (405) or an OPTIONS (200, with the
    methods it takes): either told anyone the route was there. So a request without the right to
    the surface gets the answer a GET gets, whatever its method and whether its route exists. The
    path is read as the router reads it, repeated slashes merged (it redirects those to the route).
    """
    path = request.path
    if "//" in path:  # rare: the regular expression stays off every other request's path
        path = SLASHES.sub("/", path)
    if path == "/metrics":
        guard_metrics()
    elif path == "/admin" or path.startswith("/admin/"):
        admin_api_here()
        if request.endpoint != PUBLIC:
            g.admin_key = require_admin_key()
    elif path != "/healthz" and current_state().admin_own_listener and _on_admin_listener():
        raise APIError(404, ADMIN_LISTENER_ONLY, "not_found")


def register(app: Flask) -> None:
    """Put ``guard`` before every request of ``app``, whatever route it reaches, if any."""
    app.before_request(guard)


def _source_tag() -> str:
    """The failure bucket of the request's source (16 hex digits, as a key id is).

    Its address, or for IPv6 its /64 (``radio.sources``): one host may send each guess from
    another address of its /64.
    """
    address = source_of(request.remote_addr or "").encode()
    return hashlib.sha256(b"radio admin auth\0" + address).hexdigest()[:16]


def _refuse(status: int, message: str, reason: str, headers: dict[str, str]) -> NoReturn:
    REFUSALS.labels(reason=reason).inc()
    raise Refusal(status, message, reason, headers)


def _failed(status: int, message: str, reason: str, buckets: rates.SharedBuckets, tag: str) -> NoReturn:
    """Count a failure against the source address, then refuse."""
    with contextlib.suppress(Busy):  # the request is refused all the same; only the count is lost
        buckets.take(tag, 1 / AUTH_EVERY, AUTH_BURST)
    _refuse(status, message, reason, CHALLENGE if status == 401 else {})


def require_admin_key() -> Key:
    """The admin key this request presents (``Authorization: Bearer``), else 401, 403 or 429."""
    buckets = current_state().admin_failures
    tag = _source_tag()
    try:
        wait = buckets.waiting(tag, 1 / AUTH_EVERY, AUTH_BURST)
    except Busy:
        wait = AUTH_EVERY  # a stuck bucket file must not open the door to unlimited guessing
    if wait > 0:
        seconds = str(max(1, math.ceil(wait)))
        _refuse(
            429,
            f"too many failed admin authentications from this address: retry in {seconds} s",
            "limited",
            {"Retry-After": seconds},
        )
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        _failed(401, "admin key missing: send 'Authorization: Bearer <secret>'", "missing", buckets, tag)
    key = current_registry().key_for_secret(token.strip())
    if key is None:
        _failed(401, "admin key not valid", "invalid", buckets, tag)
    if not key.admin:
        _failed(
            403,
            f"key {key.name!r} is not an admin key (radio keys edit {key.name} --admin makes it one)",
            "not_admin",
            buckets,
            tag,
        )
    return key
