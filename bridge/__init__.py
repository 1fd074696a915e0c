"""The HTTP door: the article's ``POST /publish``, forwarded to the broker over MQTT.

- ``app``: ``create_app``, the Flask application factory, and ``create_asgi_app`` as served;
- ``asgi``: each request read whole on the event loop before a thread runs Flask; 408 on a stall;
- ``publish``: the ``/publish`` blueprint, the article's checks in the article's order;
- ``ops``: ``/healthz`` and ``/metrics`` for operators;
- ``admin``: ``/admin/``, keys over HTTP (``admin_openapi``: its OpenAPI 3.1 document);
- ``admin_auth``: where ``/admin/`` and ``/metrics`` are served, the admin key, failed-auth limits;
- ``errors``: every error as JSON ``{"error": ...}``;
- ``publisher``: one persistent MQTT connection per process, QoS 1, PUBACK awaited per request;
- ``identity``: the bridge's own service key;
- ``metrics``: Prometheus counters, shared across worker processes;
- ``serve``: ``radio bridge``: gunicorn's arbiter, uvicorn event-loop workers.
"""

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    """``bridge.create_app``, imported on first use.

    ``radio bridge`` must set up shared metrics storage before the Prometheus client is first
    imported, and importing the app imports it; so the package itself imports nothing.
    """
    if name == "create_app":
        from radio.bridge.app import create_app  # noqa: PLC0415

        return create_app
    msg = f"module 'bridge' has no attribute {name!r}"
    raise AttributeError(msg)
