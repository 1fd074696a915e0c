"""Every error the bridge answers is JSON ``{"error": ...}``: never HTML, never a traceback.

Hierarchy::

    APIError              a refusal with a status and a message meant for the caller
    (werkzeug HTTPException: 404, 405, 413 ... turned into the same JSON shape)
    (anything else)       logged with its traceback, answered 500 {"error": "internal error"}
"""

from __future__ import annotations

import json
import logging
from urllib.parse import urlsplit

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from radio.errors import RadioError

log = logging.getLogger("radio.bridge")


class APIError(RadioError):
    """A refusal: the status and message the caller gets, and the metrics label it counts under."""

    def __init__(self, status: int, message: str, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason
        self.headers = headers or {}
        """Response headers that go with it (a rate limit's)."""


def answer(error: APIError) -> tuple[Response, int, dict[str, str]]:
    """The JSON answer of a refusal, on every route (a blueprint catching all RadioErrors too)."""
    return jsonify(error=error.message), error.status, error.headers


def _http_error(error: HTTPException) -> tuple[Response, int]:
    status = error.code or 500
    message = {
        404: "not found: the endpoints are POST /publish, GET /healthz, GET /networks/NAME/samples, "
        "the pages GET / and GET /networks/NAME, and /metrics and /admin/ where the configuration "
        "serves them ([bridge] admin)",
        405: "method not allowed",
        413: "request body too large",
    }.get(status, error.description or error.name)
    return jsonify(error=message), status


def _unexpected(error: Exception) -> tuple[Response, int]:
    log.error("unexpected error while answering a request", exc_info=error)
    return jsonify(error="internal error"), 500


def _json_redirect(response: Response) -> Response:
    """A path with repeated slashes: Werkzeug's 308 to the merged path, as JSON, to a path here.

    Its redirect is no error to Flask and reaches no handler: its body was HTML, and its
    ``Location`` an absolute URL on whatever host the request's ``Host`` header named.
    """
    if response.status_code != 308 or response.mimetype != "text/html":
        return response
    target = urlsplit(response.headers.get("Location", ""))
    merged = target.path or "/"
    response.set_data(json.dumps({"error": f"moved: the path is {merged} (one slash between its parts)"}))
    response.mimetype = "application/json"
    response.headers["Location"] = merged + (f"?{target.query}" if target.query else "")
    return response


def register(app: Flask) -> None:
    """Install the JSON error handlers."""
    app.register_error_handler(APIError, answer)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
    app.after_request(_json_redirect)
