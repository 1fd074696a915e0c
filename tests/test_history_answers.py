"""What the history API answers: strict JSON whatever was stored, bounded pages, and no 500 for any
query string on any route."""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from pathlib import Path

import history_fixtures
import pytest
from history_fixtures import history, history_app, recording, wait_for_last

from radio.config import load_settings
from radio.history_store import HistoryStore

app = history_fixtures.app
home = history_fixtures.home

AT = "2026-12-06T10:00:00.000Z"


@pytest.fixture
def store(home):
    store = HistoryStore(load_settings(home.config).history_path)
    yield store
    store.close()


def strict(text: str):
    """Parse as a strict parser (a browser's JSON.parse) would: NaN and Infinity are errors."""

    def refuse(name):
        raise ValueError(name)

    return json.loads(text, parse_constant=refuse)


NOT_STRICT = [
    '{"v": NaN}',
    '{"v": -Infinity}',
    '{"v": 1e999}',
    '{"v": ' + "7" * 5000 + "}",
    '{"v": "\\ud800"}',
]


OLD_SCHEMA = """
CREATE TABLE sequences (network TEXT PRIMARY KEY, last_seq INTEGER NOT NULL);
CREATE TABLE samples (
    network TEXT NOT NULL, seq INTEGER NOT NULL, received_at TEXT NOT NULL, topic TEXT NOT NULL,
    payload TEXT NOT NULL, PRIMARY KEY (network, seq)
) WITHOUT ROWID;
"""


def written_before(path: Path, network: str, payloads: list[str]) -> None:
    """A history file as a recorder that checked payloads only with ``json.loads`` wrote it."""
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    for seq, payload in enumerate(payloads, 1):
        db.execute(
            "INSERT INTO samples VALUES (?, ?, ?, ?, ?)", (network, seq, AT, f"networks/{network}", payload)
        )
    db.execute("INSERT INTO sequences VALUES (?, ?)", (network, len(payloads)))
    db.commit()
    db.close()


def test_a_stored_sample_that_is_not_strict_json_keeps_its_number_and_the_answer_stays_json(home, app):
    """History written before such samples were refused is still served as JSON every parser reads."""
    path = load_settings(home.config).history_path
    written_before(path, "pub", ['{"v": 1}', *NOT_STRICT])

    def check(last):
        for params in ({}, {"after": 0}, {"limit": 3}):
            response = app.get("/networks/pub/samples", query_string=params)
            assert response.status_code == 200
            assert strict(response.get_data(as_text=True))["samples"][-1]["data"] == last
        body = strict(app.get("/networks/pub/samples").get_data(as_text=True))
        assert body["samples"][0]["data"] == {"v": 1}
        assert "invalid" not in body["samples"][0]
        for bad in body["samples"][1 : 1 + len(NOT_STRICT)]:
            assert bad["data"] is None
            assert "not strict JSON" in bad["invalid"]
        return [s["seq"] for s in body["samples"]]

    assert check(None) == list(range(1, 7))
    store = HistoryStore(path)  # a recorder opens the old file: its old rows stay unchecked
    try:
        store.append("pub", "networks/pub", '{"v": 2}', AT, 1000)
    finally:
        store.close()
    assert check({"v": 2}) == list(range(1, 8))


def test_the_recorder_does_not_number_a_sample_that_is_not_strict_json(home, broker, app, store):
    from mqtt_client import Client  # noqa: PLC0415

    store.close()
    publisher = Client("tcp", broker.mqtt_port, "gen_all", home.secrets["gen_all"])
    assert publisher.connect() == 0
    try:
        with recording(home, broker.mqtt_port):
            for payload in NOT_STRICT:
                publisher.publish("networks/pub", payload, qos=1)
            publisher.publish("networks/pub", '{"v": 1}', qos=1)
            body = wait_for_last(app, "pub", 1)
    finally:
        publisher.close()
    assert [(s["seq"], s["data"]) for s in body["samples"]] == [(1, {"v": 1})]


@pytest.mark.parametrize("name", ["limit", "after"])
@pytest.mark.parametrize("value", ["9" * 5000, "1" + "0" * 4999, "0" * 5000 + "5", "1" * 20])
def test_whole_number_parameters_of_thousands_of_digits_are_400_json(app, store, name, value, caplog):
    store.append("pub", "networks/pub", '{"v": 1}', AT, 1000)
    caplog.set_level(logging.ERROR, logger="radio.bridge")
    status, body = history(app, "pub", **{name: value})
    if value == "0" * 5000 + "5":  # a whole number in range, however written
        assert status == 200
        return
    assert status == 400
    assert body["error"].startswith(f"{name} must be a whole number from")
    assert len(body["error"]) < 200
    assert not caplog.records


HOSTILE_QUERIES = [
    "limit=" + "9" * 5000,
    "after=" + "9" * 5000,
    "limit=1&after=" + "1" * 4400,
    "x=" + "9" * 5000,
    "limit=%00",
    "after=%ff%fe",
    "limit=1&limit=" + "9" * 5000,
    "limit=%EF%BC%91",  # a fullwidth digit
    "a" * 10000,
    "=&&=",
]
ROUTES = [
    "/",
    "/networks",
    "/networks/pub",
    "/networks/pub/samples",
    "/networks/A/samples",
    "/networks/nowhere/samples",
    "/networks/" + "9" * 5000 + "/samples",
    "/networks/" + "%ff" * 100,
    "/healthz",
    "/metrics",
    "/static/live.js",
]


@pytest.mark.parametrize("query", HOSTILE_QUERIES, ids=lambda q: q[:24])
def test_no_query_string_makes_any_route_fail(home, app, store, query, caplog):
    """Each route reads only the parameters it knows, and refuses bad ones with 4xx JSON."""
    store.append("pub", "networks/pub", '{"v": 1}', AT, 1000)
    caplog.set_level(logging.ERROR, logger="radio.bridge")
    for route in ROUTES:
        with app.get(f"{route}?{query}") as response:
            assert response.status_code < 500, (route, response.get_data(as_text=True)[:300])
            if response.status_code >= 400:
                assert set(response.get_json()) == {"error"}, route
    posted = app.post(
        f"/publish?{query}",
        json={"network": "pub", "data": {"v": 2}},
        headers={"API-KEY": home.secrets["gen_all"]},
    )
    assert posted.status_code == 200, posted.get_json()
    assert not caplog.records, [r.getMessage() for r in caplog.records]


CAPPED = "\n[bridge]\nhistory_page_bytes = 65536\n"


def test_a_history_answer_is_cut_at_its_byte_cap_and_says_where_to_go_on(home, broker, store):
    with history_app(home, broker.mqtt_port, CAPPED) as client:
        for i in range(12):
            store.append("pub", "networks/pub", json.dumps({"i": i, "pad": "x" * 20_000}), AT, 1000)

        response = client.get("/networks/pub/samples", query_string={"after": 0, "limit": 1000})
        assert len(response.data) <= 65536 + 200  # the envelope around the samples
        body = response.get_json()
        assert [s["seq"] for s in body["samples"]] == [1, 2, 3]
        assert body["more"] is True
        assert re.fullmatch(
            r'</networks/pub/samples\?after=3&limit=1000>; rel="next"', response.headers["Link"]
        )

        seen, link = [], "/networks/pub/samples?after=0&limit=1000"
        while link:
            page = client.get(link)
            seen += [s["data"]["i"] for s in page.get_json()["samples"]]
            found = re.fullmatch(r'<([^>]+)>; rel="next"', page.headers.get("Link", ""))
            link = found[1] if found else ""
            assert page.get_json()["more"] is bool(found)
        assert seen == list(range(12))  # every sample once, in order

        newest = client.get("/networks/pub/samples", query_string={"limit": 5}).get_json()
        assert [s["seq"] for s in newest["samples"]] == [8, 9, 10]  # the newest 5 start at 8
        assert newest["more"] is True
        rest = client.get("/networks/pub/samples", query_string={"after": 10, "limit": 5}).get_json()
        assert [s["seq"] for s in rest["samples"]] == [11, 12]
        assert rest["more"] is False


def test_a_sample_larger_than_the_cap_is_served_alone(home, broker, store):
    with history_app(home, broker.mqtt_port, CAPPED) as client:
        store.append("pub", "networks/pub", json.dumps({"pad": "y" * 100_000}), AT, 1000)
        store.append("pub", "networks/pub", json.dumps({"small": 1}), AT, 1000)
        body = client.get("/networks/pub/samples", query_string={"after": 0}).get_json()
        assert [s["seq"] for s in body["samples"]] == [1]
        assert body["more"] is True


def test_the_page_cap_is_a_checked_setting(home):
    home.config.write_text(home.config.read_text() + "\n[bridge]\nhistory_page_bytes = 10\n")
    result = home.radio_main("keys", "list", check=False)
    assert result.returncode == 2
    assert "history_page_bytes must be a whole number from 65536" in result.stderr
