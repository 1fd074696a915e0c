"""Hostile input to POST /publish, generated: never a 500, always JSON, nothing published unless valid."""

from __future__ import annotations

import json

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from in_process import in_process_bridge

bridge = pytest.fixture(name="bridge")(in_process_bridge)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
NETWORKS = (
    st.sampled_from(["A", "B", "pub", "nosuch", "", "A/x", "#", "networks/A"]) | st.text(max_size=10) | JSON
)
ENVELOPES = st.fixed_dictionaries(
    {},
    optional={"network": NETWORKS, "data": JSON | st.dictionaries(st.text(max_size=8), JSON, max_size=4)},
).map(json.dumps)
HEADER_TEXT = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40
)


@st.composite
def valid_requests(draw, secrets):
    """Well-formed samples from the key that may publish to A, odd but legal JSON inside."""
    data = draw(st.dictionaries(st.text(max_size=8), JSON, max_size=4))
    extra = draw(st.dictionaries(st.sampled_from(["x", "data2", "network "]), JSON, max_size=2))
    return {"API-KEY": secrets["gen"]}, json.dumps({**extra, "network": "A", "data": data}).encode()


@st.composite
def hostile_requests(draw, secrets):
    key = draw(st.sampled_from([*secrets.values(), None, ""]) | HEADER_TEXT)
    headers = {}
    if key is not None:
        headers[draw(st.sampled_from(["API-KEY", "api-key", "Api-Key"]))] = key.strip()
    if draw(st.booleans()):
        headers[draw(st.sampled_from(["Content-Type", "X-Odd", "Authorization", "Content-Encoding"]))] = draw(
            HEADER_TEXT
        ).strip()
    body = draw(
        st.one_of(
            ENVELOPES,
            JSON.map(json.dumps),
            st.binary(max_size=200),
            st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
            st.sampled_from(
                [b"[" * 50_000, b'{"a":' * 50_000, b"\xff" * 10, b"1" * 5000, b"NaN", b"-Infinity"]
            ),
            st.integers(100_000, 300_000).map(lambda n: json.dumps({"network": "A", "data": {"x": "y" * n}})),
        )
    )
    return headers, body


@pytest.mark.slow  # seconds of waiting: the fast tier stays under two minutes
def test_hostile_requests_never_break_the_bridge_nor_leak(bridge, home, everything):
    accepted = []

    @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(valid_requests(home.secrets) | hostile_requests(home.secrets))
    def one(request):
        headers, body = request
        response = requests.post(bridge.url + "/publish", data=body, headers=headers, timeout=30)
        assert response.status_code in (200, 400, 403, 413), response.text
        assert response.headers["Content-Type"] == "application/json"
        answer = response.json()
        if response.status_code == 200:
            assert answer == {"message": "OK"}
            accepted.append(json.loads(body)["data"])
        else:
            assert set(answer) == {"error"}
            assert "Traceback" not in answer["error"]

    one()
    assert accepted, "no valid request was generated: the property says nothing about them"
    marker = {"marker": True}
    ok = requests.post(
        bridge.url + "/publish",
        json={"network": "A", "data": marker},
        headers={"API-KEY": home.secrets["gen"]},
        timeout=30,
    )
    assert ok.status_code == 200
    received = [json.loads(m.payload) for m in everything.expect(len(accepted) + 1)]
    assert received == [*accepted, marker]
    assert everything.received_so_far() == []
