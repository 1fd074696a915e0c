"""The admin API described as OpenAPI 3.1, served at ``/admin/openapi.json``.

Written by hand beside the views (``bridge/admin.py``), and checked in the tests by a maintained
validator and against the live API's answers, so the two cannot drift apart unnoticed.
"""

from __future__ import annotations

from typing import Any

from radio import __version__

_ERROR = {"$ref": "#/components/responses/Error"}
_KEY = {"$ref": "#/components/schemas/Key"}
_SECRET = {"type": "string", "description": "The key's secret: shown in this answer only."}
_WITH_SECRET = {"key": _KEY, "secret": _SECRET}
_REVOKED = {"revoked": {"type": "string"}}
_USAGE_ROW = {"$ref": "#/components/schemas/UsageRow"}
_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
_SINCE = {
    "name": "since",
    "in": "query",
    "required": False,
    "description": "From this day on (UTC).",
    "schema": {"type": "string", "format": "date"},
}
_TERMS: dict[str, Any] = {
    "rate": {
        "type": ["string", "number", "null"],
        "description": "Samples per second, minute or hour: 5/s, 300/min, 1000/h. null: no rate.",
        "examples": ["5/s"],
    },
    "burst": {
        "type": ["integer", "string", "null"],
        "description": "Samples at once after a pause (needs a rate); default one second's worth.",
        "examples": [10],
    },
    "quota": {
        "type": ["string", "null"],
        "description": "Samples per UTC day or month: 10000/day, 300000/month. null: no quota.",
        "examples": ["10000/day"],
    },
    "expires": {
        "type": ["string", "null"],
        "description": "The instant from which the key is refused, with its offset. null: never.",
        "examples": ["2026-12-31T00:00:00Z"],
    },
}
_RIGHTS: dict[str, Any] = {
    "publish": {"type": "array", "items": {"type": "string"}, "description": "Networks it may publish to."},
    "subscribe": {"type": "array", "items": {"type": "string"}, "description": "Networks it may read."},
    "admin": {"type": "boolean", "description": "An operator key: any topic, and this API."},
}


def _body(schema: str) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _answer(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _changed(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A change's answer: the key (or what was revoked) and how the running servers took it."""
    return _answer(
        description,
        {
            "type": "object",
            "required": ["servers", *schema],
            "properties": {
                **schema,
                "servers": {"type": "string", "description": "Which running servers have it in force."},
            },
        },
    )


def _errors(*statuses: int) -> dict[str, Any]:
    """Every operation may be refused its key (401, 403, 429) or find a file unusable (503)."""
    return {str(status): _ERROR for status in sorted({401, 403, 429, 503, *statuses})}


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``/admin/``."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Radio admin API",
            "version": __version__,
            "description": "Issue, change and withdraw keys, and read their usage. Every change is "
            "in force on every running server when the answer returns, and audited.",
        },
        "security": [{"adminKey": []}],
        "paths": {
            "/admin/keys": {
                "get": {
                    "summary": "A page of keys, by name; never a secret",
                    "operationId": "listKeys",
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                        },
                        {
                            "name": "after",
                            "in": "query",
                            "description": "The previous page's next.",
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": {
                        "200": _answer(
                            "The page",
                            {
                                "type": "object",
                                "required": ["keys", "next"],
                                "properties": {
                                    "keys": {"type": "array", "items": _KEY},
                                    "next": {"type": ["string", "null"]},
                                },
                            },
                        ),
                        **_errors(400),
                    },
                },
                "post": {
                    "summary": "Make a key",
                    "operationId": "createKey",
                    "requestBody": _body("NewKey"),
                    "responses": {
                        "201": _changed("Made; its secret is in this answer only", _WITH_SECRET),
                        **_errors(400, 409),
                    },
                },
            },
            "/admin/keys/{name}": {
                "parameters": [_NAME],
                "get": {
                    "summary": "One key",
                    "operationId": "getKey",
                    "responses": {"200": _answer("The key", _KEY), **_errors(404)},
                },
                "patch": {
                    "summary": "Change a key's rights or terms; its secret and id stay",
                    "operationId": "editKey",
                    "requestBody": _body("KeyChange"),
                    "responses": {"200": _changed("Changed", {"key": _KEY}), **_errors(400, 404)},
                },
                "delete": {
                    "summary": "Revoke a key: refused on every door, its connections closed",
                    "operationId": "revokeKey",
                    "responses": {
                        "200": _changed("Revoked", _REVOKED),
                        **_errors(404),
                    },
                },
            },
            "/admin/keys/{name}/rotate": {
                "parameters": [_NAME],
                "post": {
                    "summary": "A new secret; the old one stops working",
                    "operationId": "rotateKey",
                    "responses": {
                        "200": _changed("Rotated; the secret is in this answer only", _WITH_SECRET),
                        **_errors(404),
                    },
                },
            },
            "/admin/keys/{name}/usage": {
                "parameters": [_NAME],
                "get": {
                    "summary": "One key's usage, as radio keys usage NAME --json",
                    "operationId": "keyUsage",
                    "parameters": [_SINCE],
                    "responses": {"200": {"$ref": "#/components/responses/Usage"}, **_errors(400)},
                },
            },
            "/admin/usage": {
                "get": {
                    "summary": "Every key's usage, as radio keys usage --json",
                    "operationId": "usage",
                    "parameters": [_SINCE],
                    "responses": {"200": {"$ref": "#/components/responses/Usage"}, **_errors(400)},
                },
            },
            "/admin/openapi.json": {
                "get": {
                    "summary": "This document",
                    "operationId": "openapi",
                    "security": [],
                    "responses": {"200": _answer("OpenAPI 3.1", {"type": "object"})},
                },
            },
        },
        "components": {
            "securitySchemes": {
                "adminKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The secret of a key made with --admin.",
                },
            },
            "responses": {
                "Error": _answer(
                    "Refused: the message says why, as radio keys says it",
                    {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
                ),
                "Usage": _answer(
                    "Rows, oldest day first",
                    {
                        "type": "object",
                        "required": ["rows"],
                        "properties": {
                            "rows": {"type": "array", "items": {"$ref": "#/components/schemas/UsageRow"}}
                        },
                    },
                ),
            },
            "schemas": {
                "Key": {
                    "type": "object",
                    "required": [
                        "name",
                        "id",
                        "admin",
                        "publish",
                        "subscribe",
                        "publish_all",
                        "read_all",
                        "created",
                        "expired",
                    ],
                    "properties": {
                        "name": {"type": "string"},
                        "id": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
                        **_RIGHTS,
                        "publish_all": {
                            "type": "boolean",
                            "description": "A service key (the HTTP bridge's): may publish to every network.",
                        },
                        "read_all": {
                            "type": "boolean",
                            "description": "A service key (the history recorder's): may read every network.",
                        },
                        "created": {"type": "string"},
                        "rate": {"type": ["number", "null"], "description": "Samples per second."},
                        "burst": {"type": ["integer", "null"]},
                        "quota": {"type": ["integer", "null"]},
                        "quota_period": {"enum": ["day", "month", None]},
                        "expires": {"type": ["string", "null"]},
                        "expired": {"type": "boolean"},
                    },
                },
                "NewKey": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {"name": {"type": "string"}, **_RIGHTS, **_TERMS},
                },
                "KeyChange": {
                    "type": "object",
                    "minProperties": 1,
                    "additionalProperties": False,
                    "properties": {**_RIGHTS, **_TERMS},
                },
                "UsageRow": {
                    "type": "object",
                    "description": "samples: published per door and network; received: delivered to "
                    "the key as a listener, per network; refusals: per door and reason.",
                    "required": ["kind", "day", "key"],
                    "properties": {
                        "kind": {"enum": ["samples", "received", "refusals"]},
                        "day": {"type": "string", "format": "date"},
                        "key": {"type": "string"},
                        "door": {"type": "string"},
                        "network": {"type": "string"},
                        "samples": {"type": "integer"},
                        "bytes": {"type": "integer"},
                        "reason": {"type": "string"},
                        "count": {"type": "integer"},
                    },
                },
            },
        },
    }
