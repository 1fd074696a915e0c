"""The yardstick for the HTTP door: Flask parsing the same JSON and answering 200, nothing else."""

from __future__ import annotations

import json

from flask import Flask, Response, jsonify, request

from radio.bridge.asgi import BufferedWSGI


def create_app() -> Flask:
    """A bare endpoint, served by the same server settings as the bridge."""
    app = Flask(__name__)

    @app.post("/publish")
    def publish() -> tuple[Response, int]:
        body = json.loads(request.get_data().decode("utf-8"))
        json.dumps(body["data"])
        return jsonify(message="OK"), 200

    return app


def create_asgi_app(threads: int = 16) -> BufferedWSGI:
    """The bare endpoint as ``radio bridge`` serves the bridge: whole requests, /publish on the loop."""
    return BufferedWSGI(
        create_app(), body_timeout=10.0, body_limit=lambda: 1 << 20, threads=threads, inline=("/publish",)
    )
