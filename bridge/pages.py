"""The live pages: ``GET /`` lists the networks a visitor may read, ``GET /networks/NAME`` watches one.

A page loads the network's recent history from ``GET /networks/NAME/samples``, then subscribes
over MQTT-over-WebSocket from the browser itself (MQTT.js, shipped in ``static/vendor``, never
from a CDN), so the bridge serves files and history and carries no live traffic. For a private
network the page asks for a key and keeps it in the tab's session storage only: it goes to the
bridge in ``API-KEY`` and to the broker as the MQTT password, never into a URL.

``GET /networks`` answers the same list as JSON, for the index page once the visitor gave a key.
The WebSocket URL browsers use is, in order: the app's ``PUBLIC_WEBSOCKET_URL`` setting,
``$RADIO_PUBLIC_WEBSOCKET_URL`` (``radio up`` sets it to the address the broker bound), ``[bridge]
public_websocket_url``, else ``[broker] websocket``; a broker bound to every interface is named
by the host the page was asked for (``as_reached``).

Every answer of these views carries a Content-Security-Policy: scripts, styles and fetches from the
bridge itself, the WebSocket to that one broker URL, nothing else (no inline script, no other
origin), so an injected tag cannot run or send a key anywhere; and no framing (``frame-ancestors
'none'``, and ``X-Frame-Options: DENY`` for older browsers), so no other site can overlay the key
form.
"""

from __future__ import annotations

import os
import re
from typing import Final
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, jsonify, render_template, request

from radio.bridge.reading import DEFAULT_LIMIT, presented_secret, readable_networks, topic_of
from radio.bridge.state import current_registry, current_state

bp = Blueprint("pages", __name__)

ENVIRONMENT: Final = "RADIO_PUBLIC_WEBSOCKET_URL"


WILDCARDS: Final = frozenset({"0.0.0.0", "::"})
"""Hosts a broker bound to every interface is named by: no browser can reach it under them."""
REQUEST_HOST: Final = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]{1,253})(:[0-9]{1,5})?")
"""A Host header that is a name or an address (and a port): anything else is not put in a page."""


def websocket_url() -> str:
    """Where browsers reach the broker's MQTT-over-WebSocket listener."""
    configured: str | None = current_app.config.get("PUBLIC_WEBSOCKET_URL")
    settings = current_state().registry.settings
    return as_reached(
        configured
        or os.environ.get(ENVIRONMENT)
        or settings.bridge.public_websocket_url
        or f"ws://{settings.broker.websocket}/mqtt"
    )


def as_reached(url: str) -> str:
    """A broker bound to every interface, as the browser reaches it: by the name it reached this page by.

    ``ws://0.0.0.0:8080/mqtt`` (a container's ``-p 8080:8080``, ``radio up --ws 0.0.0.0:8080``)
    is ``ws://radio.example.com:8080/mqtt`` for a page asked for at ``radio.example.com``, rather
    than a loopback address that only a browser on the server itself could reach. A Host header
    that is neither a name nor an address leaves loopback.
    """
    parts = urlsplit(url)
    if parts.hostname not in WILDCARDS or parts.port is None:
        return url
    match = REQUEST_HOST.fullmatch(request.host)
    host = match[1] if match else "127.0.0.1"
    return parts._replace(netloc=f"{host}:{parts.port}").geturl()


def content_security_policy(websocket: str) -> str:
    """Only this bridge's own files, and the broker's WebSocket; no framing, no plugins."""
    parts = urlsplit(websocket)
    connect = "'self'" + (f" {parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else "")
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        # MQTT.js runs its keep-alive timer in a worker made from a blob its own code writes (a
        # background tab's timers are slowed): only a script already allowed can make one.
        "worker-src 'self' blob:; "
        f"connect-src {connect}; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


@bp.after_request
def _protect(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = content_security_policy(websocket_url())
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@bp.get("/")
def index() -> str:
    """The networks this visitor may read: public ones, and the key's (``API-KEY``) if given."""
    registry = current_registry()
    names = readable_networks(registry, presented_secret(request))
    networks = [(name, registry.networks[name].public) for name in names]
    return render_template("index.html", networks=networks)


@bp.get("/networks")
def networks() -> tuple[Response, int]:
    """The same list as JSON: ``{"networks": [{"name": ..., "public": ...}]}``."""
    registry = current_registry()
    names = readable_networks(registry, presented_secret(request))
    listed = [{"name": n, "public": registry.networks[n].public} for n in names]
    return jsonify(networks=listed), 200


@bp.get("/networks/<network>")
def live(network: str) -> str:
    """The live page of one network; one not read without a key asks for one in the browser.

    That is a private network, or any where clients without a key are not let in (``allow_anonymous``).
    A name the configuration lacks gets the very page a private network gets: its key form, and
    then the history's refusal (``reading.check_read``), so the page tells no visitor whether a
    network exists.
    """
    registry = current_registry()
    return render_template(
        "live.html",
        network=network,
        public=registry.access(None).may_read(topic_of(network)),
        websocket=websocket_url(),
        history_limit=DEFAULT_LIMIT,
    )
