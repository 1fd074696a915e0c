"""The admin API against the real bridge and broker: keys over HTTP, as ``radio keys`` makes them.

A change answers once it is in force on every running server, on both brokers; CLI and API
writers at the same moment never lose each other's change; refusals carry the command's own
messages; every change is audited; failed authentication is limited per address; ``/metrics``
(which names keys) is never public.
"""

from __future__ import annotations

import contextlib
import getpass
import io
import json
import os
import re
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from bridge_client import InProcessBridge
from conftest import ENGINES, Bridge, Home, running_broker, start_bridge
from jsonschema import Draft202012Validator
from mqtt_client import NOT_AUTHORIZED, Client
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from test_nats_cluster import make_home, start_cluster

from radio import audit
from radio.bridge.admin_auth import AUTH_BURST
from radio.bridge.admin_openapi import document
from radio.bridge.state import state_of
from radio.cli.main import main

WITHIN = 2.0
"""Seconds in which a revoked key's connections are closed, as promised to operators."""
SAMPLE = {"network": "A", "data": {"speed": 1}}


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture(params=ENGINES)
def broker(request: pytest.FixtureRequest, home: Home) -> Iterator[Any]:
    """The embedded broker and a real Mosquitto: a change is in force on every engine."""
    with running_broker(request.param, home) as running:
        yield running


class Admin:
    """The admin API of a running ``radio bridge``, as a shop's back office calls it."""

    def __init__(self, url: str, secret: str) -> None:
        self.url, self.headers = url, bearer(secret)

    def call(self, method: str, path: str, body: object = None, **kwargs: Any) -> requests.Response:
        headers = kwargs.pop("headers", self.headers)
        data = None if body is None else json.dumps(body)
        return requests.request(method, self.url + path, data=data, headers=headers, timeout=30, **kwargs)


@pytest.fixture
def admin(bridge: Bridge, home: Home) -> Admin:
    return Admin(bridge.url, home.secrets["admin"])


def test_a_key_made_over_http_publishes_and_listens_in_the_very_next_request(admin, bridge, broker):
    made = admin.call("POST", "/admin/keys", {"name": "shop", "publish": ["A"], "subscribe": ["A"]})
    assert made.status_code == 201, made.text
    answer = made.json()
    secret = answer["secret"]
    assert answer["key"]["name"] == "shop"
    assert answer["key"]["publish"] == ["A"]
    assert made.headers["Cache-Control"] == "no-store"
    assert "In force on" in answer["servers"]
    listener = Client("tcp", broker.mqtt_port, "shop", secret)
    try:
        assert listener.connect() == 0
        assert listener.subscribe("networks/A", qos=1) == 1
        published = bridge.post(json.dumps(SAMPLE), {"API-KEY": secret})
        assert published.status_code == 200, published.text
        assert [json.loads(m.payload) for m in listener.expect(1)] == [{"speed": 1}]
    finally:
        listener.close()


def test_a_rotated_secret_stops_working_and_its_connections_close(admin, bridge, broker, home):
    old = home.secrets["gen"]
    connected = Client("tcp", broker.mqtt_port, "gen", old)
    try:
        assert connected.connect() == 0
        rotated = admin.call("POST", "/admin/keys/gen/rotate")
        assert rotated.status_code == 200, rotated.text
        new = rotated.json()["secret"]
        assert new != old
        assert rotated.json()["key"]["id"] == home.store().keys()["gen"].id  # same key, same id
        in_force = rotated.json()["servers"]  # which servers had it in force when the answer came
        assert bridge.post(json.dumps(SAMPLE), {"API-KEY": old}).json() == {"error": "API-KEY not valid"}, (
            in_force
        )
        assert bridge.post(json.dumps(SAMPLE), {"API-KEY": new}).status_code == 200
        assert connected.disconnected.wait(WITHIN)
    finally:
        connected.close()
    refused = Client("tcp", broker.mqtt_port, "gen", old)
    try:
        assert refused.connect() == NOT_AUTHORIZED
    finally:
        refused.close()


def test_a_deleted_keys_sessions_close_within_two_seconds(admin, bridge, broker, home):
    clients = [Client("tcp", broker.mqtt_port, "reader_a", home.secrets["reader_a"]) for _ in range(3)]
    try:
        for client in clients:
            assert client.connect() == 0
        deleted = admin.call("DELETE", "/admin/keys/reader_a")
        assert deleted.status_code == 200, deleted.text
        assert deleted.json()["revoked"] == "reader_a"
        for client in clients:
            assert client.disconnected.wait(WITHIN)
    finally:
        for client in clients:
            client.close()
    assert admin.call("GET", "/admin/keys/reader_a").status_code == 404
    assert admin.call("DELETE", "/admin/keys/reader_a").json() == {"error": "no key named 'reader_a'"}


def test_a_patch_changes_rights_and_terms_in_force_at_once(admin, bridge, home):
    changed = admin.call("PATCH", "/admin/keys/gen", {"publish": ["B"], "rate": "2/min", "burst": 1})
    assert changed.status_code == 200, changed.text
    key = changed.json()["key"]
    assert (key["publish"], key["rate"], key["burst"]) == (["B"], 2 / 60, 1)
    gen = {"API-KEY": home.secrets["gen"]}
    refused = bridge.post(json.dumps(SAMPLE), gen)
    assert refused.status_code == 403, f"A is no longer its; the servers then: {changed.json()['servers']}"
    assert bridge.post(json.dumps({"network": "B", "data": {}}), gen).status_code == 200
    assert bridge.post(json.dumps({"network": "B", "data": {}}), gen).status_code == 429  # burst 1
    cleared = admin.call("PATCH", "/admin/keys/gen", {"rate": None})
    assert (cleared.json()["key"]["rate"], cleared.json()["key"]["burst"]) == (None, None)
    assert bridge.post(json.dumps({"network": "B", "data": {}}), gen).status_code == 200


# --- CLI and API at the same moment ----------------------------------------------------------


# Which engine runs beside the bridge changes nothing in how two writers share the files: the
# Mosquitto run is the slow tier's (a change in force on Mosquitto is the tests above).
@pytest.mark.parametrize(
    "broker",
    ["embedded", pytest.param("mosquitto", marks=[pytest.mark.mosquitto, pytest.mark.slow])],
    indirect=True,
)
def test_cli_and_api_writers_at_the_same_moment_lose_nothing(admin, home):
    names = [f"k{i}" for i in range(6)]

    def by_api(name: str) -> int:
        return admin.call("POST", "/admin/keys", {"name": f"api-{name}", "subscribe": ["A"]}).status_code

    def by_cli(name: str) -> int:
        return home.radio("keys", "add", f"cli-{name}", "--subscribe", "B", check=False).returncode

    def edit_by_api() -> int:
        return admin.call("PATCH", "/admin/keys/gen", {"quota": "500/day"}).status_code

    def edit_by_cli() -> int:
        return home.radio("keys", "edit", "gen", "--subscribe", "B", check=False).returncode

    with ThreadPoolExecutor(len(names) * 2 + 2) as pool:
        api = [pool.submit(by_api, n) for n in names]
        cli = [pool.submit(by_cli, n) for n in names]
        edits = [pool.submit(edit_by_api), pool.submit(edit_by_cli)]
        assert [f.result() for f in api] == [201] * len(names)
        assert [f.result() for f in cli] == [0] * len(names)
        assert [f.result() for f in edits] == [200, 0]
    keys = home.store().keys()
    assert {f"api-{n}" for n in names} | {f"cli-{n}" for n in names} <= set(keys)
    gen = keys["gen"]
    assert (gen.terms.quota, sorted(gen.subscribe)) == (500, ["B"])  # both edits of one key hold
    lines = [json.loads(line) for line in (home.path / "audit.log").read_text().splitlines()]
    assert len(lines) == len(names) * 2 + 2
    assert sorted(line["via"] for line in lines) == ["api"] * (len(names) + 1) + ["cli"] * (len(names) + 1)


# --- Refusals: the command's own messages ------------------------------------------------------


def cli_error(home: Home, *args: str) -> str:
    result = home.radio(*args, check=False)
    assert result.returncode == 2, result.stderr
    return result.stderr.strip()


def keys_error(home: Home, *args: str) -> str:
    """What ``radio keys ARGS`` says as it refuses (exit 2), its own code run in this process.

    The message is what the refusal tests compare; a process each would add a start-up apiece.
    """
    said = io.StringIO()
    with contextlib.redirect_stderr(said), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = main(["keys", *args, "--config", str(home.config)])
        except SystemExit as exc:  # argparse's own refusals
            status = exc.code
    assert status == 2, said.getvalue()
    return said.getvalue().strip()


@pytest.fixture
def in_process(home: Home, broker: Any) -> Iterator[InProcessBridge]:
    running = InProcessBridge(str(home.config), broker.mqtt_port)
    yield running
    running.stop()


@pytest.fixture
def call(in_process: InProcessBridge, home: Home) -> Any:
    """The admin API through Flask's test client (no socket), as the admin key."""

    def calling(method: str, path: str, body: object = None, secret: str | None = None) -> Any:
        headers = bearer(secret if secret is not None else home.secrets["admin"])
        data = None if body is None else json.dumps(body)
        return in_process.client.open(path, method=method, data=data, headers=headers)

    return calling


@pytest.mark.parametrize("broker", ["embedded"], indirect=True)
def test_an_admin_key_with_a_publish_list_is_refused_by_the_api_and_the_command_alike(call, home):
    """An admin key makes keys: no device publishing with it may hold its secret."""
    message = (
        "key 'x': an admin key has no publish list (it may publish anywhere, and make keys: "
        "no device should hold its secret); give each device a key of its own"
    )
    for_gen, for_admin = message.replace("'x'", "'gen'"), message.replace("'x'", "'admin'")
    made = call("POST", "/admin/keys", {"name": "x", "admin": True, "publish": ["A"]})
    assert (made.status_code, made.get_json()) == (400, {"error": message})
    assert keys_error(home, "add", "x", "--admin", "--publish", "A") == f"radio: {message}"
    promoted = call("PATCH", "/admin/keys/gen", {"admin": True})  # gen publishes to A
    assert (promoted.status_code, promoted.get_json()) == (400, {"error": for_gen})
    assert keys_error(home, "edit", "gen", "--admin") == f"radio: {for_gen}"
    assert keys_error(home, "edit", "admin", "--publish", "A") == f"radio: {for_admin}"
    keys = home.store().keys()
    assert "x" not in keys
    assert (keys["gen"].admin, keys["admin"].publish) == (False, frozenset())


@pytest.mark.parametrize("broker", ["embedded"], indirect=True)
def test_each_refusal_is_json_with_the_commands_message(call, home, in_process):
    def error(answer: Any, status: int) -> str:
        assert answer.status_code == status, answer.get_data(as_text=True)
        message: str = answer.get_json()["error"]
        return message

    taken = error(call("POST", "/admin/keys", {"name": "gen", "publish": ["A"]}), 409)
    refusal, _, hint = taken.partition(" (")  # each door names its own way to a new secret
    assert refusal == "a key named 'gen' exists already"
    assert keys_error(home, "add", "gen", "--publish", "A").endswith(
        f"{refusal} (use 'radio keys rotate gen' for a new secret)"
    )
    assert hint == "POST /admin/keys/gen/rotate gives it a new secret)"
    unknown = error(call("PATCH", "/admin/keys/nope", {"admin": True}), 404)
    assert unknown in keys_error(home, "edit", "nope", "--admin")
    for field, value, option in (
        ("rate", "5/fortnight", "--rate"),
        ("quota", "12/week", "--quota"),
        ("expires", "tomorrow", "--expires"),
        ("expires", "9999-12-31T23:59:59-14:00", "--expires"),  # past the calendar's end in UTC
        ("expires", "2020-01-01T00:00:00Z", "--expires"),  # a time already past
        ("rate", "1e-300/s", "--rate"),  # a token's wait past any clock
        ("burst", "0", "--burst"),
        ("burst", "\u00b2", "--burst"),  # a digit to str.isdigit, not to int()
    ):
        message = error(call("POST", "/admin/keys", {"name": "x", field: value}), 400)
        assert message in keys_error(home, "add", "x", option, value)
    for items in (["A,B"], ["A "], ["A\n"], [""], ["A", " "]):  # a list is split already: no second reading
        split = error(call("POST", "/admin/keys", {"name": "x", "publish": items}), 400)
        assert split.startswith("publish: "), split
        assert "is not one network name" in split, split
    stored = home.store().keys()
    assert "x" not in stored
    network = error(call("POST", "/admin/keys", {"name": "x", "publish": ["nowhere"]}), 400)
    assert network in keys_error(home, "add", "x", "--publish", "nowhere")
    name = error(call("POST", "/admin/keys", {"name": "key-0123456789abcdef"}), 400)
    assert name in keys_error(home, "add", "key-0123456789abcdef")
    burst = error(call("POST", "/admin/keys", {"name": "x", "burst": 3}), 400)
    assert burst in keys_error(home, "add", "x", "--burst", "3")
    service = error(call("PATCH", "/admin/keys/bridge", {"subscribe": ["A"]}), 400)
    assert service in keys_error(home, "edit", "bridge", "--subscribe", "A")
    # Revoked or rotated, the bridge's own key would leave the HTTP door refused by the broker.
    for method, path, command in (
        ("DELETE", "/admin/keys/bridge", "revoke"),
        ("POST", "/admin/keys/bridge/rotate", "rotate"),
    ):
        cut_off = error(call(method, path), 400)
        assert cut_off in keys_error(home, command, "bridge")
    assert home.store().keys()["bridge"].publish_all
    shown = call("GET", "/admin/keys/bridge").get_json()  # as `radio keys list` shows it: (every network)
    assert (shown["publish"], shown["publish_all"], shown["read_all"]) == ([], True, False)
    assert call("GET", "/admin/keys/gen").get_json()["publish_all"] is False
    assert error(call("PATCH", "/admin/keys/gen", {}), 400).startswith("nothing to change (give publish")
    assert error(call("PATCH", "/admin/keys/gen", {"admin": None}), 400).startswith("nothing to change")
    assert error(call("POST", "/admin/keys", {"name": "x", "secret": "s"}), 400).startswith(
        "unknown field 'secret'"
    )
    assert error(call("POST", "/admin/keys", {"publish": ["A"]}), 400) == "the field 'name' is missing"
    assert error(call("POST", "/admin/keys", [1]), 400) == "the body must be a JSON object"

    def posted(raw: str | bytes) -> Any:
        return in_process.client.post("/admin/keys", data=raw, headers=bearer(home.secrets["admin"]))

    too_long = '{"name": "x", "rate": ' + "9" * 5000 + "}"  # JSON, but no integer Python reads
    assert error(posted(too_long), 400) == "the body must be a JSON object: an integer in it is too long"
    assert error(posted("{"), 400) == "the body must be a JSON object: it is not JSON"
    assert (
        error(posted(b'{"name": "\xff"}'), 400) == "the body must be a JSON object: it is not JSON"
    )  # not UTF-8
    assert (
        error(posted('{"name": "x", "rate": NaN}'), 400) == "the body must be a JSON object: it is not JSON"
    )
    assert (
        error(call("POST", "/admin/keys", {"name": "x", "admin": "yes"}), 400)
        == "admin must be true or false"
    )
    for field, value, kinds in (
        ("rate", True, "a string or a number such as '5/s'"),  # a bool is not the number 1
        ("burst", [10], "a string or a number such as '10'"),
        ("quota", 10000, "a string such as '10000/day'"),  # a number says no period
        ("expires", 1798675200, "a string such as '2026-12-31T00:00:00Z'"),  # nor an offset
    ):
        refused = error(call("POST", "/admin/keys", {"name": "x", field: value}), 400)
        assert refused == f"{field} must be {kinds}, or null to remove it"
    assert error(call("GET", "/admin/usage?since=" + "9" * 5000), 400).startswith("invalid date '9999")
    assert error(call("GET", "/admin/keys?limit=" + "9" * 5000), 400).startswith(
        "limit must be a whole number"
    )
    assert "x" not in home.store().keys()  # noqa: SIM118 - nothing refused was written


@pytest.mark.parametrize("broker", ["embedded"], indirect=True)
def test_authentication_is_401_without_an_admin_key_and_403_for_another_key(call, home):
    for secret in ("", "not-a-secret"):
        refused = call("GET", "/admin/keys", secret=secret)
        assert refused.status_code == 401
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        assert refused.get_json()["error"].startswith("admin key")
    forbidden = call("GET", "/admin/keys", secret=home.secrets["gen"])
    assert forbidden.status_code == 403
    assert forbidden.get_json() == {
        "error": "key 'gen' is not an admin key (radio keys edit gen --admin makes it one)"
    }
    assert call("GET", "/admin/keys").status_code == 200


def unauthenticated(in_process: InProcessBridge, method: str, path: str, source: int) -> tuple[int, Any]:
    """The status and JSON of a request without a key, from an address of its own (none is limited)."""
    answer = in_process.client.open(path, method=method, environ_base={"REMOTE_ADDR": f"127.0.1.{source}"})
    return answer.status_code, answer.get_json(silent=True)


@pytest.mark.parametrize("broker", ["embedded"], indirect=True)
def test_a_request_without_an_admin_key_gets_the_same_answer_whatever_its_method(call, in_process):
    """The admin surface asks for its key before anything else about a request: a method its
    route does not take (405) or an OPTIONS (200, the methods it takes) said the route was there
    to anyone. With the key, the route's own answers come back."""
    methods = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")
    paths = (
        "/admin/keys",
        "/admin/keys/x",
        "/admin/keys/x/rotate",
        "/admin/usage",
        "/admin/elsewhere",
        "/admin//keys",
        "/admin/keys//x",
        "/metrics",
    )
    source = 0
    for path in paths:
        expected = unauthenticated(in_process, "GET", path, source)
        assert expected[0] == 401, path
        for method in methods:
            source += 1
            assert unauthenticated(in_process, method, path, source) == expected, (method, path)
    assert call("PUT", "/admin/keys/x").status_code == 405
    assert call("OPTIONS", "/admin/keys").status_code == 200
    assert call("GET", "/admin/elsewhere").status_code == 404
    assert in_process.client.get("/admin/openapi.json").status_code == 200  # the API's document is public


@pytest.mark.parametrize("broker", ["embedded"], indirect=True)
def test_where_the_admin_api_is_not_served_every_method_gets_404(home, broker):
    """``[bridge] admin = false``: no /admin/ route answers anything but 404, whatever the method."""
    home.config.write_text(home.config.read_text() + "\n[bridge]\nadmin = false\n")
    running = InProcessBridge(str(home.config), broker.mqtt_port)
    try:
        for source, method in enumerate(("GET", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")):
            status, _ = unauthenticated(running, method, "/admin/keys/x", source)
            assert status == 404, method
    finally:
        running.stop()


@pytest.mark.parametrize("broker", ["embedded"], indirect=True)
def test_failed_authentication_is_limited_per_address_even_for_the_right_key_next(call, in_process, home):
    guess = "a-guessed-secret"
    for _ in range(AUTH_BURST):
        assert call("GET", "/admin/keys", secret=guess).status_code == 401
    limited = call("GET", "/admin/keys", secret=guess)
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) >= 1
    # Once limited, the address cannot test a guess at all: the right key waits too.
    assert call("GET", "/admin/keys").status_code == 429
    other = in_process.client.get(
        "/admin/keys", headers=bearer(home.secrets["admin"]), environ_base={"REMOTE_ADDR": "127.0.0.2"}
    )
    assert other.status_code == 200  # per address: another source is not held back
    assert call("GET", "/metrics").status_code == 429  # the same door, the same limit
    counted = in_process.client.get(
        "/metrics", headers=bearer(home.secrets["admin"]), environ_base={"REMOTE_ADDR": "127.0.0.2"}
    ).get_data(as_text=True)
    assert 'radio_bridge_admin_refusals_total{reason="limited"}' in counted
    assert 'radio_bridge_admin_refusals_total{reason="invalid"}' in counted


@pytest.mark.parametrize("broker", ["embedded"], indirect=True)
def test_failed_authentication_is_limited_per_ipv6_64_whichever_of_its_addresses_guesses(in_process):
    """A host given an IPv6 /64 may send each guess from an address of its own: the /64 is its source."""

    def guess(address: str) -> int:
        answer = in_process.client.get(
            "/admin/keys", headers=bearer("a-guessed-secret"), environ_base={"REMOTE_ADDR": address}
        )
        return answer.status_code

    assert [guess(f"2001:db8:0:7::{n + 1:x}") for n in range(AUTH_BURST)] == [401] * AUTH_BURST
    assert guess("2001:db8:0:7:ffff::1") == 429  # another address of the same /64
    assert guess("2001:db8:0:8::1") == 401  # another /64 is another source


@pytest.mark.parametrize("broker", ["embedded"], indirect=True)
def test_a_requests_source_is_its_connections_peer_never_an_address_it_names(admin, home):
    """Failed authentication is limited, and a change audited, by the address the connection comes
    from. ``X-Forwarded-For`` and ``Forwarded`` are the client's own words: a proxy in front of the
    bridge passes them on unless told to replace them, and a client naming another address in each
    request would otherwise guess secrets without limit and write any address into the audit."""
    named = {"X-Forwarded-For": "198.51.100.7", "Forwarded": "for=198.51.100.7"}
    made = admin.call("POST", "/admin/keys", {"name": "proxied"}, headers={**admin.headers, **named})
    assert made.status_code == 201, made.text
    audited = json.loads((home.path / "audit.log").read_text().splitlines()[-1])
    assert audited["from"] == "127.0.0.1"
    for n in range(AUTH_BURST):
        named = {"X-Forwarded-For": f"203.0.113.{n}", "Forwarded": f"for=203.0.113.{n}"}
        guessed = admin.call("GET", "/admin/keys", headers={**bearer("a-guessed-secret"), **named})
        assert guessed.status_code == 401
    named = {"X-Forwarded-For": "203.0.113.99", "Forwarded": "for=203.0.113.99"}
    limited = admin.call("GET", "/admin/keys", headers={**bearer("a-guessed-secret"), **named})
    assert limited.status_code == 429


@pytest.mark.parametrize("broker", ["embedded"], indirect=True)
def test_metrics_name_keys_only_for_an_admin_key_and_healthz_is_public(call, in_process, home):
    assert in_process.client.get("/healthz").status_code == 200
    assert in_process.post(json.dumps(SAMPLE), {"API-KEY": home.secrets["gen"]}).status_code == 200
    assert in_process.client.get("/metrics").status_code == 401
    assert call("GET", "/metrics", secret=home.secrets["gen"]).status_code == 403
    shown = call("GET", "/metrics")
    assert shown.status_code == 200
    assert 'key="gen"' in shown.get_data(as_text=True)


@pytest.mark.parametrize("broker", ["embedded"], indirect=True)
def test_keys_page_by_name_and_never_show_a_secret(call, home):
    for name in ("p1", "p2", "p3"):
        home.add_key(name, subscribe=["A"])
    names, after, pages = [], "", 0
    while True:
        page = call("GET", f"/admin/keys?limit=2&after={after}").get_json()
        names += [row["name"] for row in page["keys"]]
        pages += 1
        if page["next"] is None:
            break
        after = page["next"]
    assert names == sorted(home.store().keys())
    assert pages == (len(names) + 1) // 2
    listed = call("GET", "/admin/keys?limit=1000").get_data(as_text=True)
    assert not any(secret in listed for secret in home.secrets.values())
    cli = [json.loads(line) for line in home.radio_main("keys", "list", "--json").stdout.splitlines()]
    assert json.loads(listed)["keys"] == cli  # the same rows as radio keys list --json


@pytest.mark.parametrize("broker", ["embedded"], indirect=True)
def test_usage_is_the_rows_of_radio_keys_usage_json(call, in_process, home):
    gen = {"API-KEY": home.secrets["gen"]}
    for _ in range(3):
        assert in_process.post(json.dumps(SAMPLE), gen).status_code == 200
    assert in_process.post(json.dumps({"network": "B", "data": {}}), gen).status_code == 403
    state_of(in_process.app).meter.flush()
    every = call("GET", "/admin/usage").get_json()["rows"]
    assert every == json.loads(home.radio_main("keys", "usage", "--json").stdout)
    assert {(r["kind"], r.get("samples"), r.get("reason")) for r in every} == {
        ("samples", 3, None),
        ("refusals", None, "rights"),
    }
    assert call("GET", "/admin/keys/gen/usage?since=2000-01-01").get_json()["rows"] == every
    assert call("GET", "/admin/keys/gen/usage?since=2999-01-01").get_json()["rows"] == []
    assert call("GET", "/admin/keys/reader_a/usage").get_json()["rows"] == []
    unknown = call("GET", "/admin/keys/nobody/usage")
    assert unknown.status_code == 404
    assert unknown.get_json()["error"] in cli_error(home, "keys", "usage", "nobody")


# --- Audit ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("broker", ["embedded"], indirect=True)
def test_every_change_is_audited_who_what_when_from_where_and_never_a_secret(call, home):
    made = call("POST", "/admin/keys", {"name": "acme", "publish": ["A"], "quota": "100/day"}).get_json()
    call("PATCH", "/admin/keys/acme", {"expires": "2030-01-01T00:00:00Z", "rate": "5/s"})
    rotated = call("POST", "/admin/keys/acme/rotate").get_json()
    call("DELETE", "/admin/keys/acme")
    home.radio_main("keys", "add", "cli-made", "--subscribe", "A")
    log = home.path / "audit.log"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    text = log.read_text()
    for secret in (made["secret"], rotated["secret"], *home.secrets.values()):
        assert secret not in text
    lines = [json.loads(line) for line in home.radio_main("keys", "audit", "--json").stdout.splitlines()]
    assert [(line["action"], line["key"], line["who"], line["via"], line["from"]) for line in lines] == [
        ("add", "acme", "admin", "api", "127.0.0.1"),
        ("edit", "acme", "admin", "api", "127.0.0.1"),
        ("rotate", "acme", "admin", "api", "127.0.0.1"),
        ("revoke", "acme", "admin", "api", "127.0.0.1"),
        ("add", "cli-made", getpass.getuser(), "cli", "local"),
    ]
    assert lines[0]["changed"]["publish"] == ["A"]
    assert lines[0]["changed"]["quota"] == 100
    assert lines[1]["changed"] == {"rate": 5.0, "burst": 5, "expires": "2030-01-01T00:00:00Z"}
    assert lines[2]["changed"] == {"secret": "replaced"}
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z", line["time"]) for line in lines)
    table = home.radio_main("keys", "audit", "acme").stdout
    assert re.search(r"^\S+Z\s+admin\s+api\s+127\.0\.0\.1\s+revoke\s+acme\s+-$", table, re.MULTILINE)
    assert "cli-made" not in table


@pytest.mark.parametrize("broker", ["embedded"], indirect=True)
def test_a_change_the_audit_log_cannot_take_is_not_made(call, home):
    (home.path / "audit.log").mkdir()  # not a file: it cannot be opened for appending
    refused = call("POST", "/admin/keys", {"name": "unaudited"})
    assert refused.status_code == 503
    assert refused.get_json()["error"].startswith("nothing changed: the audit log")
    assert "nothing changed: the audit log" in cli_error(home, "keys", "revoke", "gen")
    assert {"unaudited", "gen"} & set(home.store().keys()) == {"gen"}


@pytest.mark.parametrize("broker", ["embedded"], indirect=True)
@pytest.mark.parametrize("broken", ["[keys.gen\n", "", "[keys.gen]\nadmin = 'yes'\n"])
def test_a_keys_file_broken_by_hand_is_503_naming_it_and_changes_nothing(call, home, broken):
    """Not valid TOML, emptied, or mistyped: the request was right, the server cannot take it now.

    So the answer is a 503 (a back office tries again once an operator mends the file), never the
    400 that tells the caller to change its request; the file is left as it is for that operator.
    """
    home.keys.write_text(broken)
    for method, path, body in (
        ("POST", "/admin/keys", {"name": "newcomer"}),
        ("PATCH", "/admin/keys/gen", {"publish": []}),
        ("POST", "/admin/keys/gen/rotate", None),
        ("DELETE", "/admin/keys/gen", None),
        ("GET", "/admin/keys", None),
    ):
        answer = call(method, path, body)
        assert answer.status_code == 503, (method, path, answer.get_data(as_text=True))
        assert answer.get_json()["error"].startswith(f"{home.keys}: "), answer.get_json()
    assert home.keys.read_text() == broken


def test_a_line_still_being_appended_is_not_read_and_a_broken_one_is_one_clear_error(tmp_path):
    log = tmp_path / "audit.log"
    log.write_text('{"action": "add"}\n{"action": "re')
    assert audit.read(log) == [{"action": "add"}]
    log.write_text('{"action": "add"}\nnot json\n')
    with pytest.raises(audit.AuditError, match=r"audit\.log, line 2: not a JSON line"):
        audit.read(log)


# --- The OpenAPI document ------------------------------------------------------------------------


@pytest.mark.parametrize("broker", ["embedded"], indirect=True)
def test_the_openapi_document_is_valid_and_names_every_admin_route(in_process):
    served = in_process.client.get("/admin/openapi.json")  # no key needed: it holds no secret
    assert served.status_code == 200
    spec = served.get_json()
    assert spec == json.loads(json.dumps(document()))
    from openapi_spec_validator import validate  # noqa: PLC0415 - a second of import for one test, in every worker

    validate(spec)  # raises on any violation of OpenAPI 3.1
    assert spec["openapi"] == "3.1.0"
    routes = {
        (re.sub(r"<(\w+)>", r"{\1}", rule.rule), method.lower())
        for rule in in_process.app.url_map.iter_rules()
        if rule.rule.startswith("/admin/")
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS")
    }
    documented = {
        (path, method) for path, item in spec["paths"].items() for method in item if method != "parameters"
    }
    assert routes == documented


@pytest.mark.parametrize("broker", ["embedded"], indirect=True)
def test_every_answer_matches_the_openapi_document(call):
    spec = document()
    registry = Registry().with_resource("urn:radio-admin", Resource.from_contents(spec, DRAFT202012))

    def check(method: str, path: str, template: str, body: object = None) -> Any:
        """The answer, checked against the schema documented for its path, method and status."""
        answer = call(method, path, body)
        status = str(answer.status_code)
        responses = spec["paths"][template][method.lower()]["responses"]
        assert status in responses, (path, status)
        parts = ("paths", template, method.lower(), "responses", status)
        where = responses[status].get("$ref") or "#/" + "/".join(
            part.replace("~", "~0").replace("/", "~1") for part in parts
        )
        schema = {"$ref": f"urn:radio-admin{where}/content/application~1json/schema"}
        Draft202012Validator(schema, registry=registry).validate(answer.get_json())
        return answer.get_json()

    made = check("POST", "/admin/keys", "/admin/keys", {"name": "acme", "publish": ["A"], "rate": "5/s"})
    check("GET", "/admin/keys?limit=2", "/admin/keys")
    check("GET", "/admin/keys/acme", "/admin/keys/{name}")
    check("PATCH", "/admin/keys/acme", "/admin/keys/{name}", {"quota": "10/day", "expires": None})
    check("POST", "/admin/keys/acme/rotate", "/admin/keys/{name}/rotate")
    check("GET", "/admin/keys/acme/usage", "/admin/keys/{name}/usage")
    check("GET", "/admin/usage?since=2026-01-01", "/admin/usage")
    check("DELETE", "/admin/keys/acme", "/admin/keys/{name}")
    check("GET", "/admin/keys/acme", "/admin/keys/{name}")  # 404
    check("POST", "/admin/keys", "/admin/keys", {"name": "gen"})  # 409
    check("PATCH", "/admin/keys/gen", "/admin/keys/{name}", {"rate": "fast"})  # 400
    assert made["key"]["rate"] == 5.0


# --- Where the admin surface is served -------------------------------------------------------


def start_with_admin(home: Home, broker_port: int, setting: str) -> Bridge:
    """``radio bridge`` with ``[bridge] admin = setting``."""
    home.config.write_text(home.config.read_text() + f"\n[bridge]\nadmin = {setting}\n")
    return start_bridge(home, broker_port, "--workers", "1")


@pytest.mark.parametrize("broker", ["embedded"], indirect=True)
@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_an_admin_listener_of_its_own_takes_admin_and_metrics_off_the_public_port(home, broker, host):
    running = start_with_admin(home, broker.mqtt_port, f'"{host}:0"')
    admin_url = running.admin_url
    try:
        assert admin_url is not None
        assert admin_url != running.url
        key = bearer(home.secrets["admin"])
        assert requests.get(running.url + "/healthz", timeout=10).status_code == 200
        assert requests.get(running.url + "/admin/keys", headers=key, timeout=10).status_code == 404
        assert requests.get(running.url + "/metrics", headers=key, timeout=10).status_code == 404
        assert requests.get(running.url + "/admin/openapi.json", timeout=10).status_code == 404
        assert requests.get(admin_url + "/admin/keys", timeout=10).status_code == 401
        assert requests.get(admin_url + "/admin/keys", headers=key, timeout=10).status_code == 200
        assert requests.get(admin_url + "/metrics", timeout=10).status_code == 200  # the address guards it
        assert requests.get(admin_url + "/healthz", timeout=10).status_code == 200
    finally:
        running.stop()


@pytest.mark.parametrize("broker", ["embedded"], indirect=True)
def test_an_admin_listener_of_its_own_serves_nothing_but_the_admin_surface(home, broker):
    running = start_with_admin(home, broker.mqtt_port, '"127.0.0.1:0"')
    admin_url = running.admin_url
    assert admin_url is not None
    sample = {"network": "A", "data": {"n": 1}}
    gen = {"API-KEY": home.secrets["gen"]}
    try:
        for method, path in (("POST", "/publish"), ("GET", "/"), ("GET", "/networks/A"), ("GET", "/nosuch")):
            answer = requests.request(method, admin_url + path, headers=gen, json=sample, timeout=10)
            assert (answer.status_code, answer.json()) == (
                404,
                {"error": "not found: this listener serves /admin/, /metrics and /healthz only"},
            ), path
        published = requests.post(running.url + "/publish", headers=gen, json=sample, timeout=10)
        assert published.status_code == 200  # the public listener still takes it
    finally:
        running.stop()


@pytest.mark.parametrize("broker", ["embedded"], indirect=True)
def test_admin_false_switches_the_api_off_and_keeps_metrics_behind_an_admin_key(home, broker):
    running = start_with_admin(home, broker.mqtt_port, "false")
    try:
        assert running.admin_url is None
        key = bearer(home.secrets["admin"])
        assert requests.get(running.url + "/admin/keys", headers=key, timeout=10).status_code == 404
        assert requests.get(running.url + "/metrics", timeout=10).status_code == 401
        assert requests.get(running.url + "/metrics", headers=key, timeout=10).status_code == 200
    finally:
        running.stop()


def test_an_admin_address_in_use_is_one_line_and_exit_2(home):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        home.config.write_text(home.config.read_text() + f'\n[bridge]\nadmin = "127.0.0.1:{port}"\n')
        message = cli_error(home, "bridge", "--listen", "127.0.0.1:0", "--broker", "mqtt://127.0.0.1:1")
    assert message == f"radio: the bridge cannot listen on 127.0.0.1:{port}: Address already in use"


def test_an_admin_setting_that_is_neither_an_address_nor_false_is_refused(home):
    home.config.write_text(home.config.read_text() + "\n[bridge]\nadmin = true\n")
    assert "[bridge] admin must be HOST:PORT or false, not the boolean true" in cli_error(
        home, "keys", "list"
    )


# --- The README's examples -------------------------------------------------------------------------

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
MARK = "<!-- tests/test_admin_api.py runs this block -->"


@pytest.mark.parametrize("broker", ["embedded"], indirect=True)
def test_the_readmes_admin_api_examples_work_when_pasted(home, broker):
    blocks = re.findall(re.escape(MARK) + r"\n```sh\n(.+?)\n```", README, re.DOTALL)
    assert len(blocks) == 1
    home.config.write_text(home.config.read_text() + "\n[networks.sample_net]\npublic = true\n")
    running = start_bridge(home, broker.mqtt_port)
    assert running.admin_url == running.url  # by default the admin API is on the listen address
    env = {k: v for k, v in os.environ.items() if k not in ("RADIO_KEYS", "RADIO_KEY")}
    env["RADIO_CONFIG"] = str(home.config)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # this interpreter's radio
    try:
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", blocks[0].replace("http://127.0.0.1:5000", running.url)],
            cwd=home.path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        running.stop()
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    answers = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    made = answers[0]
    assert made["key"]["name"] == "globex"
    assert made["key"]["quota"] == 10000
    assert "globex" not in home.store().keys()  # noqa: SIM118 - the block ends by revoking it
    assert re.search(r"\sshop\s+api\s+127\.0\.0\.1\s+revoke\s+globex\s", result.stdout)  # radio keys audit
    for private in ("shop.key", "shop.header"):  # they hold the secret
        assert stat.S_IMODE((home.path / private).stat().st_mode) == 0o600


# --- NATS: the same wait, on every node ----------------------------------------------------------


@pytest.mark.nats
@pytest.mark.slow
def test_on_nats_a_key_made_over_http_connects_on_every_node_and_a_revoked_one_is_closed(tmp_path):
    home = make_home(tmp_path)
    cluster = start_cluster(home)
    bridge = InProcessBridge(str(home.config), cluster.nodes[0].mqtt.port)
    clients: list[Client] = []
    try:
        made = bridge.client.post(
            "/admin/keys",
            data=json.dumps({"name": "shop", "subscribe": ["A"]}),
            headers=bearer(home.secrets["admin"]),
        )
        assert made.status_code == 201, made.get_data(as_text=True)
        secret = made.get_json()["secret"]
        for node in cluster.nodes:  # in force on every node when the answer returned
            client = Client("tcp", node.mqtt.port, "shop", secret)
            clients.append(client)
            assert client.connect() == 0
        revoked = bridge.client.delete("/admin/keys/shop", headers=bearer(home.secrets["admin"]))
        assert revoked.status_code == 200
        for client in clients:
            assert client.disconnected.wait(WITHIN)
    finally:
        for client in clients:
            client.close()
        bridge.stop()
        cluster.stop()


@pytest.mark.parametrize("broker", ["embedded"], indirect=True)
def test_a_body_past_the_bridges_limit_is_413_declared_or_chunked(admin):
    """The server reads no body past its limit: the API says so, rather than that it is not JSON."""
    huge = b'{"name": "' + b"x" * 1_000_000 + b'"}'
    url, headers = admin.url + "/admin/keys", admin.headers
    declared = requests.post(url, data=huge, headers=headers, timeout=30)
    chunked = requests.post(url, data=iter([huge[:10], huge[10:]]), headers=headers, timeout=30)
    for answer in (declared, chunked):
        assert answer.status_code == 413, answer.text
        assert answer.json()["error"].startswith("request body too large: at most ")
