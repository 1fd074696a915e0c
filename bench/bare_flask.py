"""The yardstick for the HTTP door: Flask parsing the same JSON and answering 200, nothing else."""

from __future__ import annotations

import json

from flask import Flask, Response, jsonify, request


def create_app() -> Flask:
    """A bare endpoint, served by the same gunicorn settings as the bridge."""
    app = Flask(__name__)

    @app.post("/publish")
    def publish() -> tuple[Response, int]:
        body = json.loads(request.get_data().decode("utf-8"))
        json.dumps(body["data"])
        return jsonify(message="OK"), 200

    return app
