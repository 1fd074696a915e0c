"""What operators poll: ``/healthz`` for load balancers and Docker, ``/metrics`` for Prometheus.

``/healthz`` is public; ``/metrics`` names keys, so it is served where the admin API is
(``bridge/admin_auth.py``).
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from radio.bridge import metrics
from radio.bridge.state import current_state

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    """200 while this worker's broker link is up, 503 otherwise."""
    if current_state().publisher.connected:
        return jsonify(status="ok", broker="connected"), 200
    return jsonify(error="the broker is unreachable", broker="disconnected"), 503


@bp.get("/metrics")
def prometheus() -> Response:
    """Prometheus text format, for an admin key or on the admin listener (``admin_auth.guard``)."""
    body, content_type = metrics.exposition()
    return Response(body, content_type=content_type)
