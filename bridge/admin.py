"""``/admin/``: keys over HTTP, for the systems that sell access (a shop, billing, a sign-up page).

What ``radio keys`` does, as JSON, behind an admin key (``bridge/admin_auth.py``):

    POST   /admin/keys                 make a key: 201 with its secret, shown only in that answer
    GET    /admin/keys                 every key, never a secret; ?limit=N&after=NAME pages by name
    GET    /admin/keys/NAME            one key
    PATCH  /admin/keys/NAME            change its rights or terms (null removes a term)
    DELETE /admin/keys/NAME            revoke it
    POST   /admin/keys/NAME/rotate     a new secret, same rights and id
    GET    /admin/keys/NAME/usage      the rows of ``radio keys usage NAME --json`` (?since=DATE)
    GET    /admin/usage                every key's (?since=DATE)
    GET    /admin/openapi.json         this API, as OpenAPI 3.1

Values are read by the same functions as the command's options and refused with the same
messages (``radio.key_changes``); a change goes through the same locked, atomic write, is
audited with the admin key's name and the caller's address, and is answered once every running
server has it in force (the wait ``radio keys`` does), so the key works in the very next request.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Final, NoReturn

from flask import Blueprint, Response, g, jsonify, request, url_for

from radio import usage
from radio.audit import Actor, AuditError
from radio.bridge.admin_openapi import document
from radio.bridge.errors import APIError, answer
from radio.bridge.state import current_state
from radio.config import Settings, load_settings
from radio.errors import Busy, ConfigError, DuplicateKey, RadioError, UnknownKey, UnreadableRegistry
from radio.key_changes import (
    TERMS,
    KeyChanges,
    key_row,
    nothing_to_change,
    parse_day,
    parse_term,
    split_names,
    usage_rows,
)
from radio.keys import Key, read_keys

bp = Blueprint("admin", __name__, url_prefix="/admin")

DEFAULT_PAGE: Final = 100
MAX_PAGE: Final = 1000
RIGHTS: Final = ("publish", "subscribe", "admin")
EXAMPLES: Final = {"rate": "5/s", "burst": "10", "quota": "10000/day", "expires": "2026-12-31T00:00:00Z"}
NUMBER_TERMS: Final = ("rate", "burst")
"""Terms a JSON number may give, read as its text (``"rate": 5`` is ``--rate 5``); the others are
text alone, as the OpenAPI document says."""
SECRET_HEADERS: Final = {"Cache-Control": "no-store"}
"""An answer holding a secret must not be kept by any cache on the way."""


@bp.errorhandler(RadioError)
def _refused(error: RadioError) -> tuple[Response, int] | tuple[Response, int, dict[str, str]]:
    """What the registry refuses, with the command's own message: unknown 404, taken 409, else 400.

    What the server cannot do now is 503, the request being right: a configuration or keys file
    that cannot be read (broken by hand, say), an audit log or usage file that cannot be written.

    The door's own refusals are RadioErrors too: they keep their status and headers here.
    """
    if isinstance(error, APIError):
        return answer(error)
    if isinstance(error, UnknownKey):
        status = 404
    elif isinstance(error, DuplicateKey):  # the API's own way to a new secret, not the command's
        rotate = url_for("admin.rotate", name=error.name)
        return jsonify(error=f"{error.taken()} (POST {rotate} gives it a new secret)"), 409
    elif isinstance(
        error, (ConfigError, UnreadableRegistry, AuditError, usage.UsageError, Busy)
    ):  # Busy: retry
        status = 503
    else:
        status = 400
    return jsonify(error=str(error)), status


def _bad(message: str) -> NoReturn:
    raise APIError(400, message, "bad_request")


def _settings() -> Settings:
    """The configuration as it stands now, as ``radio keys`` reads it for each command."""
    running = current_state().registry.settings
    return load_settings(running.path, running.keys_path, required=True)


def _changes() -> KeyChanges:
    actor = Actor(who=g.admin_key.name, via="api", source=request.remote_addr or "unknown")
    return KeyChanges(_settings(), actor)


class _Constant(RadioError, ValueError):
    """NaN or Infinity, which Python's reader takes and JSON does not."""


def _reject_constant(name: str) -> NoReturn:
    msg = f"{name} is not JSON"
    raise _Constant(msg)


def _body(known: Iterable[str]) -> dict[str, Any]:
    """The request's JSON object, with no field but the known ones.

    A body past the bridge's limit never reached the app (``bridge/asgi.py``): that is a 413,
    not a body that fails to parse.
    """
    limit = current_state().body_limit()
    if (request.content_length or 0) > limit:
        raise APIError(413, f"request body too large: at most {limit} bytes", "too_large")
    try:
        body = json.loads(request.get_data(), parse_constant=_reject_constant)
    except RecursionError:
        _bad("the body is nested too deep")
    except (json.JSONDecodeError, UnicodeDecodeError, _Constant):  # JSON text is UTF-8 (RFC 8259)
        _bad("the body must be a JSON object: it is not JSON")
    except ValueError:  # JSON, but an integer past the 4,300 digits Python reads
        _bad("the body must be a JSON object: an integer in it is too long")
    if not isinstance(body, dict):
        _bad("the body must be a JSON object")
    allowed = tuple(known)
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        _bad(f"unknown field {unknown[0][:40]!r} (known: {', '.join(allowed)})")
    return body


def _networks(body: dict[str, Any], field: str) -> list[str] | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        _bad(f'{field} must be a list of network names, such as ["city"]')
    for item in value:
        # A list is already split: a comma, a blank or a space in an item is a mistake in the
        # caller's data, not two names or none; taken apart, it would grant what no one wrote.
        if split_names([item]) != [item]:
            _bad(f'{field}: {item[:40]!r} is not one network name (one name per item, such as ["city"])')
    return list(value)


def _flag(body: dict[str, Any], field: str) -> bool | None:
    value = body.get(field)
    if value is not None and not isinstance(value, bool):
        _bad(f"{field} must be true or false")
    return value


def _terms(body: dict[str, Any]) -> dict[str, object]:
    """The terms given, parsed as the command's options are; null removes a term."""
    terms: dict[str, object] = {}
    for name in TERMS:
        if name not in body:
            continue
        value = body[name]
        if value is None:
            terms[name] = None
            continue
        number = name in NUMBER_TERMS and isinstance(value, int | float)
        if isinstance(value, bool) or not (isinstance(value, str) or number):
            kinds = "a string or a number" if name in NUMBER_TERMS else "a string"
            _bad(f"{name} must be {kinds} such as {EXAMPLES[name]!r}, or null to remove it")
        try:
            terms[name] = parse_term(name, str(value))
        except ValueError as exc:
            _bad(str(exc))
    return terms


def _confirmed(changes: KeyChanges, **answer: object) -> dict[str, object]:
    """The answer, once the running servers have the change in force; ``servers`` says how it went."""
    return {**answer, "servers": changes.wait().summary()}


@bp.get("/openapi.json")
def openapi() -> Response:
    """This API, as OpenAPI 3.1: readable without a key, it holds nothing but the API's shape."""
    return jsonify(document())


@bp.post("/keys")
def create() -> tuple[Response, int, dict[str, str]]:
    """Make a key; its secret is in this answer and nowhere else."""
    body = _body(("name", *RIGHTS, *TERMS))
    name = body.get("name")
    if not isinstance(name, str):
        _bad("name must be a string: the key's name" if "name" in body else "the field 'name' is missing")
    publish, subscribe = _networks(body, "publish") or [], _networks(body, "subscribe") or []
    admin, terms = _flag(body, "admin") or False, _terms(body)
    changes = _changes()
    secret, key = changes.add(name, publish=publish, subscribe=subscribe, admin=admin, terms=terms)
    answer = _confirmed(changes, key=key_row(key), secret=secret)
    return jsonify(answer), 201, {**SECRET_HEADERS, "Location": f"/admin/keys/{name}"}


@bp.get("/keys")
def listing() -> tuple[Response, int]:
    """A page of keys by name: ``next`` is the ``after`` of the following page (null: the last)."""
    text = request.args.get("limit", str(DEFAULT_PAGE))
    if not (text.isascii() and text.isdigit() and len(text) <= 4 and 1 <= int(text) <= MAX_PAGE):
        _bad(f"limit must be a whole number from 1 to {MAX_PAGE}, not {text[:40]!r}")
    limit, after = int(text), request.args.get("after", "")
    keys = _keys()
    names = sorted(name for name in keys if name > after)
    page = names[:limit]
    return jsonify(keys=[key_row(keys[n]) for n in page], next=page[-1] if len(names) > limit else None), 200


def _keys() -> dict[str, Key]:
    """Every key as the file holds it now (none before the first is made)."""
    return read_keys(_settings().keys_path)


@bp.get("/keys/<name>")
def show(name: str) -> tuple[Response, int]:
    """One key, never its secret."""
    key = _keys().get(name)
    if key is None:
        msg = f"no key named {name!r}"
        raise UnknownKey(msg)
    return jsonify(key_row(key)), 200


@bp.patch("/keys/<name>")
def edit(name: str) -> tuple[Response, int]:
    """Change what is given; a list replaces the key's list, null removes a term."""
    body = _body((*RIGHTS, *TERMS))
    if all(body.get(field) is None for field in RIGHTS) and not set(body) & set(TERMS):
        _bad(nothing_to_change((*RIGHTS, *TERMS)))  # a right given as null leaves it as it is
    changes = _changes()
    key = changes.edit(
        name,
        publish=_networks(body, "publish"),
        subscribe=_networks(body, "subscribe"),
        admin=_flag(body, "admin"),
        terms=_terms(body),
    )
    return jsonify(_confirmed(changes, key=key_row(key))), 200


@bp.delete("/keys/<name>")
def revoke(name: str) -> tuple[Response, int]:
    """Revoke a key: refused on every door, its connections closed, when this answers."""
    changes = _changes()
    changes.revoke(name)
    return jsonify(_confirmed(changes, revoked=name)), 200


@bp.post("/keys/<name>/rotate")
def rotate(name: str) -> tuple[Response, int, dict[str, str]]:
    """A new secret, in this answer only; the old one stops working."""
    changes = _changes()
    secret, key = changes.rotate(name)
    return jsonify(_confirmed(changes, key=key_row(key), secret=secret)), 200, SECRET_HEADERS


def _usage(name: str | None) -> tuple[Response, int]:
    since = request.args.get("since")
    if since is not None:
        try:
            since = parse_day(since if len(since) <= 40 else since[:40] + "...")
        except ValueError as exc:
            _bad(str(exc))
    return jsonify(rows=usage_rows(_settings(), name, since)), 200


@bp.get("/keys/<name>/usage")
def key_usage(name: str) -> tuple[Response, int]:
    """One key's usage rows; a revoked key's stay readable (what it used is still billed)."""
    return _usage(name)


@bp.get("/usage")
def all_usage() -> tuple[Response, int]:
    """Every key's usage rows, as ``radio keys usage --json`` prints them."""
    return _usage(None)
