"""Selling access: per-key rates, quotas, expiry, per-network schemas and usage, on both doors.

Real components throughout: the embedded broker on free ports (and Mosquitto for expiry), the
bridge under gunicorn with two workers, paho clients, and the ``radio`` command line.
"""

from __future__ import annotations

import functools
import json
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import polling
import pytest
import requests
from benchmarks import smoke
from conftest import ENGINES, Home, running_broker, start_bridge
from embedded import embedded_broker
from mqtt_client import NOT_AUTHORIZED, Client, listening
from polling import until
from raw_mqtt import read_packet, session, subscribe

from radio.errors import KeyStoreError
from radio.keys import Terms, parse_keys

SCHEMA = {
    "type": "object",
    "properties": {"speed": {"type": "number", "minimum": 0}, "lane": {"type": "integer"}},
    "required": ["speed"],
}


def add_key(home: Home, name: str, *options: str) -> str:
    """`radio keys add`, as an operator runs it: returns once running servers have the key."""
    secret = home.radio_main("keys", "add", name, "--publish", "A", *options).stdout.strip()
    home.secrets[name] = secret
    return secret


def usage(home: Home, *args: str) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = json.loads(home.radio_main("keys", "usage", "--json", *args).stdout)
    return rows


eventually = functools.partial(polling.eventually, every=0.1)
"""Retry until truthy: what is awaited here shows no event a test could wait on."""


def post(bridge, secret: str, data: object, network: str = "A") -> requests.Response:
    return bridge.post(json.dumps({"network": network, "data": data}), headers={"API-KEY": secret})


# The registry: every new field is type-checked, and the command line refuses bad values in one line.


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ('rate = "5/s"', "rate must be a positive number"),
        ("rate = 0", "rate must be a positive number"),
        ("burst = 2.5\nrate = 1", "burst must be a positive whole number"),
        ("burst = 3", "burst is set without a rate"),
        ("quota = -1", "quota must be a positive whole number"),
        ('quota = 10\nquota_period = "week"', "quota_period must be the string 'day' or 'month'"),
        ('expires = "2026-12-31T00:00:00Z"', "expires must be a TOML date-time with its offset"),
        ("expires = 2026-12-31T00:00:00", "expires must be a TOML date-time with its offset"),
        ("expires = 9999-12-31T23:59:59-14:00", "expires must be a TOML date-time"),  # past year 9999 in UTC
    ],
)
def test_terms_of_a_key_are_type_checked(home: Home, field: str, expected: str) -> None:
    text = home.keys.read_text().replace("[keys.gen]\n", f"[keys.gen]\n{field}\n")
    with pytest.raises(KeyStoreError, match=expected):
        parse_keys(text, home.keys)


@pytest.mark.parametrize(
    "option",
    [
        "--rate=5/y",
        "--rate=-1/s",
        "--rate=1e-300/s",
        "--rate=\u0663/s",  # a digit of another script: refused here as in a quota or a burst
        "--rate=1_0/s",
        "--quota=10/week",
        "--quota=x/day",
        "--quota=\u00b2/day",
        "--burst=\u00b2",
        f"--quota={'9' * 5000}/day",  # past the 4,300 digits int() reads
        f"--burst={'9' * 5000}",
        "--expires=2026-12-31",
        "--expires=9999-12-31T23:59:59-14:00",
    ],
)
def test_a_bad_term_on_the_command_line_is_one_line_and_status_2(home: Home, option: str) -> None:
    result = home.radio("keys", "add", "x", "--publish", "A", option, check=False)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    term = option[2:].split("=", maxsplit=1)[0]
    assert f"invalid {ITS_VALUE.get(term, term)} " in result.stderr, (
        result.stderr
    )  # Radio's line, not Python's


ITS_VALUE = {"burst": "count", "expires": "expiry"}
"""What the refusal of each option calls its value."""


def test_a_key_added_already_ended_says_it_is_refused_from_the_start(home: Home) -> None:
    # A key made with `--expires now` is one no door accepts: its secret, handed to a buyer, would
    # fail on first use with nothing at the making of it to say why.
    gone = home.radio_main("keys", "add", "gone", "--publish", "A", "--expires", "now")
    assert "already expired (EXPIRED " in gone.stderr
    assert "radio keys edit gone --expires" in gone.stderr
    later = home.radio_main("keys", "add", "later", "--publish", "A", "--expires", "2099-01-01T00:00:00Z")
    assert "expired" not in later.stderr


def test_keys_list_shows_limits_and_what_has_expired(home: Home) -> None:
    add_key(home, "sold", "--rate", "5/s", "--burst", "10", "--quota", "10000/day")
    home.add_key("gone", publish=["A"], terms=Terms(expires=datetime(2020, 1, 1, tzinfo=UTC)))
    home.radio_main("keys", "edit", "gen", "--expires", "2099-01-01T00:00:00+01:00")
    listing = home.radio_main("keys", "list").stdout
    lines = {line.split()[0]: line for line in listing.splitlines()}
    assert "rate 5/s burst 10, quota 10000/day" in lines["sold"]
    assert "EXPIRED 2020-01-01T00:00:00Z" in lines["gone"]
    assert "2098-12-31T23:00:00Z" in lines["gen"]
    assert "EXPIRED" not in lines["gen"]
    rows = {
        r["name"]: r for r in map(json.loads, home.radio_main("keys", "list", "--json").stdout.splitlines())
    }
    assert rows["gone"]["expired"] is True
    assert rows["sold"]["rate"] == 5.0
    home.radio_main("keys", "edit", "sold", "--rate", "off", "--quota", "off")
    rows = {
        r["name"]: r for r in map(json.loads, home.radio_main("keys", "list", "--json").stdout.splitlines())
    }
    assert (rows["sold"]["rate"], rows["sold"]["burst"], rows["sold"]["quota"]) == (None, None, None)


def test_an_expiry_already_past_is_refused_and_now_ends_a_key_at_once(home: Home) -> None:
    """A time already past, given to `keys add` or `keys edit`, makes a key refused everywhere from
    the moment it is written: far more often a mistyped year than a wish. It is refused in one line,
    status 2, with nothing written; `--expires now` says the wish in so many words."""
    for command in (("add", "late", "--publish", "A"), ("edit", "gen")):
        result = home.radio("keys", *command, "--expires", "2020-01-01T00:00:00+01:00", check=False)
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "invalid expiry '2020-01-01T00:00:00+01:00': that time has passed" in result.stderr
        assert "'now' to end the key now" in result.stderr
    keys = home.store().keys()
    assert "late" not in keys
    assert keys["gen"].terms.expires is None
    home.radio_main("keys", "edit", "gen", "--expires", "now")
    assert home.store().keys()["gen"].expired()
    assert "EXPIRED" in home.radio_main("keys", "list").stdout


# Rates.


def test_http_over_the_rate_is_429_with_rate_limit_headers(home: Home, broker, bridge) -> None:
    secret = add_key(home, "metered", "--rate", "1/min", "--burst", "3")
    answers = [post(bridge, secret, {"speed": i}) for i in range(6)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429, 429, 429]
    refused = answers[3]
    assert "rate limit exceeded" in refused.json()["error"]
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["RateLimit-Limit"] == "3"
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert int(refused.headers["RateLimit-Reset"]) >= 1
    # Another key is not slowed by it.
    assert post(bridge, home.secrets["gen"], {"speed": 1}).status_code == 200


def test_a_fast_mqtt_publisher_is_slowed_to_its_rate_and_loses_nothing(
    home: Home, broker, transport: str
) -> None:
    secret = add_key(home, "fast", "--rate", "20/s", "--burst", "5")
    total = 60
    with listening(broker.mqtt_port, "reader_a", home.secrets["reader_a"], "networks/A/#") as reader:
        port = broker.ws_port if transport == "ws" else broker.mqtt_port
        publisher = Client(transport, port, "fast", secret)
        assert publisher.connect() == 0
        sender = threading.Thread(
            target=lambda: [
                publisher.publish("networks/A/fast", json.dumps({"i": i}), qos=1) for i in range(total)
            ]
        )
        sender.start()
        first = reader.expect(1)[0]
        started = time.monotonic()
        window = [first]
        while time.monotonic() - started < 1.0:
            window.extend(reader.received_so_far())
            time.sleep(0.01)
        # 1 s at 20/s plus a burst of 5 is 25; unlimited, all 60 would be there already.
        assert 10 <= len(window) <= 35, len(window)
        rest = reader.expect(total - len(window), timeout=30)
        sender.join(30)
        publisher.close()
    payloads = [m.payload for m in window + rest]
    assert payloads == [json.dumps({"i": i}).encode() for i in range(total)]


def test_a_rate_is_one_bucket_for_both_doors(home: Home, broker, bridge) -> None:
    """A key's rate holds whichever door its samples take: the broker and the bridge's workers
    take tokens from one bucket, so HTTP and MQTT together never go past the rate plus its burst."""
    gate = broker.broker.radio.router.gate
    for name, first in (("mqtt-first", "mqtt"), ("http-first", "http")):
        secret = add_key(home, name, "--rate", "1/min", "--burst", "1")
        with listening(broker.mqtt_port, "reader_a", home.secrets["reader_a"], "networks/A/#") as reader:
            publisher = Client("tcp", broker.mqtt_port, name, secret)
            assert publisher.connect() == 0
            try:
                if first == "mqtt":
                    publisher.publish(f"networks/A/{name}", b'{"n": 1}', qos=1)
                    assert [m.payload for m in reader.expect(1)] == [b'{"n": 1}']
                    assert post(bridge, secret, {"n": 2}).status_code == 429  # the burst is spent
                else:
                    assert post(bridge, secret, {"n": 1}).status_code == 200
                    assert [m.payload for m in reader.expect(1)] == [b'{"n": 1}']
                    waits = gate.rate_waits
                    publisher._paho.publish(f"networks/A/{name}", b'{"n": 2}', qos=1)
                    assert until(lambda w=waits: gate.rate_waits > w)  # held: no token is left
                assert_next_is_a_sentinel(broker, home, reader, "networks/A/sentinel")
            finally:
                publisher.close()


# Quotas: shared by both doors, counted in usage.db, kept across a restart.


def test_a_quota_is_shared_by_both_doors_and_shown_in_usage(home: Home, broker, bridge) -> None:
    secret = add_key(home, "quota", "--quota", "3/day")
    with listening(broker.mqtt_port, "reader_a", home.secrets["reader_a"], "networks/A/#") as reader:
        publisher = Client("tcp", broker.mqtt_port, "quota", secret)
        assert publisher.connect() == 0
        publisher.publish("networks/A/q", b'{"n": 1}', qos=1)
        publisher.publish("networks/A/q", b'{"n": 2}', qos=1)
        # The broker writes its counts once a second; the bridge counts into the same file.
        assert eventually(lambda: any(r.get("samples") == 2 for r in usage(home, "quota")))
        assert post(bridge, secret, {"n": 3}).status_code == 200
        refused = post(bridge, secret, {"n": 4})
        assert refused.status_code == 429
        assert "quota exceeded: 3 samples per day; it resets at" in refused.json()["error"]
        tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
        assert f"{tomorrow}T00:00:00Z" in refused.json()["error"]
        assert int(refused.headers["Retry-After"]) >= 1
        assert eventually(lambda: any(r.get("door") == "http" for r in usage(home, "quota")))
        publisher.publish("networks/A/q", b'{"n": 5}', qos=1)  # over the quota: acknowledged, dropped
        publisher.publish("networks/A/q", b'{"n": 6}', qos=1)
        got = [m.payload for m in reader.expect(3)]
        assert sorted(got) == [b'{"n": 1}', b'{"n": 2}', b'{"n": 3}']
        assert reader.received_so_far() == []
        publisher.close()

    def tallied():
        rows = usage(home, "quota")
        samples = {
            (r["door"], r["network"]): (r["samples"], r["bytes"]) for r in rows if r["kind"] == "samples"
        }
        refusals = {(r["door"], r["reason"]): r["count"] for r in rows if r["kind"] == "refusals"}
        # Each bridge worker writes its own counts once a second: the one that took sample 3 may
        # write after the one that refused sample 4. Both doors' rows are there once all wrote.
        complete = len(samples) == 2 and len(refusals) == 2 and refusals.get(("mqtt", "quota")) == 2
        return (samples, refusals) if complete else None

    samples, refusals = eventually(tallied)
    assert samples == {("mqtt", "A"): (2, 16), ("http", "A"): (1, 8)}
    assert refusals == {("http", "quota"): 1, ("mqtt", "quota"): 2}
    text = home.radio_main("keys", "usage", "quota").stdout
    assert "quota  http  A" in text
    assert "quota" in text.split("REFUSED FOR", 1)[1]
    usage_db = home.path / "usage.db"
    assert stat.S_IMODE(usage_db.stat().st_mode) == 0o600
    admin = {"Authorization": f"Bearer {home.secrets['admin']}"}  # /metrics names keys: not public
    metrics = requests.get(bridge.url + "/metrics", headers=admin, timeout=10).text
    assert 'radio_key_samples_total{door="http",key="quota",network="A"} 1.0' in metrics


def test_a_quota_survives_a_broker_restart(home: Home) -> None:
    secret = add_key(home, "daily", "--quota", "2/day")
    with embedded_broker(home) as broker:
        publisher = Client("tcp", broker.mqtt_port, "daily", secret)
        assert publisher.connect() == 0
        publisher.publish("networks/A/d", b'{"n": 1}', qos=1)
        publisher.publish("networks/A/d", b'{"n": 2}', qos=1)
        publisher.close()
    with (
        embedded_broker(home) as broker,
        listening(broker.mqtt_port, "reader_a", home.secrets["reader_a"], "networks/A/#") as reader,
    ):
        publisher = Client("tcp", broker.mqtt_port, "daily", secret)
        assert publisher.connect() == 0
        publisher.publish("networks/A/d", b'{"n": 3}', qos=1)
        assert_next_is_a_sentinel(broker, home, reader, "networks/A/d")
        publisher.close()
    rows = usage(home, "daily")
    assert [(r["samples"]) for r in rows if r["kind"] == "samples"] == [2]
    assert [(r["reason"], r["count"]) for r in rows if r["kind"] == "refusals"] == [("quota", 1)]


# Schemas.


@pytest.fixture
def schema_home(home: Home) -> Home:
    (home.path / "city.schema.json").write_text(json.dumps(SCHEMA))
    home.config.write_text(
        home.config.read_text().replace("[networks.A]\n", '[networks.A]\nschema = "city.schema.json"\n')
    )
    return home


def test_http_a_sample_against_the_schema_is_400_naming_the_field(schema_home: Home, broker, bridge) -> None:
    secret = schema_home.secrets["gen"]
    with listening(broker.mqtt_port, "reader_a", schema_home.secrets["reader_a"], "networks/A/#") as reader:
        refused = post(bridge, secret, {"speed": -3})
        assert refused.status_code == 400
        assert refused.json() == {
            "error": "sample does not match the network's schema: speed: -3 must be bigger than or equal to 0"
        }
        missing = post(bridge, secret, {"lane": 2})
        assert missing.status_code == 400
        assert "speed" in missing.json()["error"]
        assert post(bridge, secret, {"speed": 3, "lane": 1}).status_code == 200
        assert [json.loads(m.payload) for m in reader.expect(1)] == [{"speed": 3, "lane": 1}]
        assert reader.received_so_far() == []
    # A network without a schema takes anything.
    assert post(bridge, schema_home.secrets["admin"], {"speed": -3}, "B").status_code == 200


def test_mqtt_samples_against_the_schema_reach_no_subscriber(
    schema_home: Home, broker, transport: str
) -> None:
    port = broker.ws_port if transport == "ws" else broker.mqtt_port
    with listening(broker.mqtt_port, "admin", schema_home.secrets["admin"], "#") as everything:
        publisher = Client(transport, port, "gen", schema_home.secrets["gen"])
        assert publisher.connect() == 0
        for bad in (b'{"speed": -3}', b'{"lane": 1}', b"not json", b'{"speed": "fast"}'):
            publisher.publish("networks/A/s", bad, qos=1)
        publisher.publish("networks/A/s", b'{"speed": 4}', qos=1)
        assert [m.payload for m in everything.expect(1)] == [b'{"speed": 4}']
        assert everything.received_so_far() == []
        publisher.close()

    def refused():
        rows = usage(schema_home, "gen")
        return [(r["door"], r["reason"], r["count"]) for r in rows if r["kind"] == "refusals"]

    assert eventually(lambda: refused() == [("mqtt", "not_json", 1), ("mqtt", "schema", 3)]), refused()


def test_a_schema_that_is_not_valid_stops_the_command_in_one_line(home: Home) -> None:
    (home.path / "bad.json").write_text('{"type": "nonsense"}')
    home.config.write_text(home.config.read_text() + '\n[networks.C]\nschema = "bad.json"\n')
    result = home.radio_main("keys", "list", check=False)
    assert result.returncode == 2
    assert "[networks.C] schema file" in result.stderr
    assert "not a valid JSON Schema" in result.stderr


# Expiry: refused from that instant on both doors; live sessions closed within 2 s, both brokers.


@pytest.fixture(params=ENGINES)
def any_engine(request, home: Home):
    with running_broker(request.param, home) as running:
        yield running


def test_expiry_closes_live_sessions_within_2s_and_refuses_the_key(home: Home, any_engine) -> None:
    expires = datetime.now(UTC) + timedelta(seconds=3)  # a loaded machine runs `radio` slowly
    home.radio_main("keys", "edit", "gen", "--expires", expires.isoformat())
    client = Client("tcp", any_engine.mqtt_port, "gen", home.secrets["gen"])
    assert client.connect() == 0
    assert not client.disconnected.is_set()
    to_expiry = (expires - datetime.now(UTC)).total_seconds()
    assert client.disconnected.wait(to_expiry + 2.0)  # closed within 2 s of its expiry
    assert datetime.now(UTC) >= expires
    client.close()
    again = Client("tcp", any_engine.mqtt_port, "gen", home.secrets["gen"])
    assert again.connect() == NOT_AUTHORIZED
    again.close()
    # Another key is not affected.
    other = Client("tcp", any_engine.mqtt_port, "reader_a", home.secrets["reader_a"])
    assert other.connect() == 0
    other.close()


def test_a_persistent_session_is_queued_nothing_while_its_key_is_expired(home: Home, broker) -> None:
    """An expired key may read nothing: its session keeps no sample published meanwhile, so a key
    renewed later (``--expires never``) does not receive the samples of the time it had no right to."""
    expires = datetime.now(UTC) + timedelta(seconds=3)  # a loaded machine runs `radio` slowly
    home.radio_main("keys", "edit", "reader_a", "--expires", expires.isoformat())
    secret = home.secrets["reader_a"]
    topic = "networks/A/lapse"
    away = Client("tcp", broker.mqtt_port, "reader_a", secret, client_id="lapsing-1", clean_session=False)
    assert away.connect() == 0
    assert away.subscribe(topic, qos=1) == 1
    away.close()
    wait = (expires - datetime.now(UTC)).total_seconds()
    if wait > 0:
        time.sleep(wait)  # the expiry is an instant on the clock: nothing else to await
    # In force on the broker within the 2 s promised for every key change.
    until(lambda: not broker.broker.registry.current.access("reader_a").read, 2.0 + 1.0)
    admin = Client("tcp", broker.mqtt_port, "admin", home.secrets["admin"])
    assert admin.connect() == 0
    admin.publish(topic, b'{"while": "expired"}', qos=1)
    admin.close()
    home.radio_main("keys", "edit", "reader_a", "--expires", "never")  # returns once the broker has it
    back = Client("tcp", broker.mqtt_port, "reader_a", secret, client_id="lapsing-1", clean_session=False)
    assert back.connect() == 0
    admin = Client("tcp", broker.mqtt_port, "admin", home.secrets["admin"])
    assert admin.connect() == 0
    admin.publish(topic, b'{"renewed": 1}', qos=1)
    admin.close()
    assert [m.payload for m in back.expect(1)] == [b'{"renewed": 1}']
    back.close()


def test_http_an_expired_key_is_not_valid(home: Home, broker, bridge) -> None:
    expires = datetime.now(UTC) + timedelta(seconds=3)  # a loaded machine runs `radio` slowly
    home.radio_main("keys", "edit", "gen", "--expires", expires.isoformat())
    assert post(bridge, home.secrets["gen"], {"speed": 1}).status_code == 200
    wait = (expires - datetime.now(UTC)).total_seconds()
    if wait > 0:
        time.sleep(wait)  # the expiry is an instant on the clock: nothing else to await
    answer = post(bridge, home.secrets["gen"], {"speed": 1})
    assert (answer.status_code, answer.json()) == (400, {"error": "API-KEY not valid"})
    home.radio_main("keys", "edit", "gen", "--expires", "never")  # returns once every server has it
    assert post(bridge, home.secrets["gen"], {"speed": 1}).status_code == 200


def test_usage_files_are_private(home: Home) -> None:
    with embedded_broker(home):
        pass
    path = home.path / "usage.db"
    assert path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.slow
def test_the_access_benchmark_runs_and_reports_every_target() -> None:
    result = smoke("access.py", timeout=120)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    medians = next(line for line in lines if "medians_us" in line)
    assert {"schema_fastjsonschema", "bucket_broker", "bucket_bridge_shared", "meter_record"} <= set(
        medians["medians_us"]
    )


def test_the_brokers_metrics_count_each_keys_samples_and_refusals(home: Home) -> None:
    home.config.write_text(home.config.read_text() + '\n[broker]\nmetrics = "127.0.0.1:0"\n')
    with embedded_broker(home) as broker:
        publisher = Client("tcp", broker.mqtt_port, "gen", home.secrets["gen"])
        assert publisher.connect() == 0
        publisher.publish("networks/A/m", b'{"x": 1}', qos=1)
        publisher.publish("networks/B/m", b'{"x": 1}', qos=1)  # not its network: refused, counted
        publisher.close()
        port = broker.broker._metrics.port
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    assert 'radio_key_samples_total{door="mqtt",key="gen",network="A"} 1.0' in text
    assert 'radio_key_bytes_total{door="mqtt",key="gen",network="A"} 8.0' in text
    assert 'radio_key_refusals_total{door="mqtt",key="gen",reason="rights"} 1.0' in text


@pytest.mark.mosquitto
def test_on_mosquitto_the_http_door_still_checks_schemas_and_rates(schema_home: Home) -> None:
    secret = add_key(schema_home, "limited", "--rate", "1/min", "--burst", "1")
    with running_broker("mosquitto", schema_home) as mosquitto:
        bridge = start_bridge(schema_home, mosquitto.mqtt_port)
        try:
            assert post(bridge, secret, {"speed": -1}).status_code == 400  # refused first: no token taken
            assert post(bridge, secret, {"speed": 1}).status_code == 200
            assert post(bridge, secret, {"speed": 1}).status_code == 429  # the minute's one token is spent
            assert post(bridge, schema_home.secrets["gen"], {"speed": 1}).status_code == 200
        finally:
            assert "Traceback" not in bridge.stop()


def test_a_quota_holds_exactly_with_40_requests_at_once_on_two_workers(home: Home, broker) -> None:
    """Each request takes its unit of quota before it is forwarded: none can slip in between."""
    secret = add_key(home, "burst", "--quota", "20/day")
    bridge = start_bridge(home, broker.mqtt_port, "--workers", "2")
    try:
        with (
            listening(broker.mqtt_port, "reader_a", home.secrets["reader_a"], "networks/A") as reader,
            ThreadPoolExecutor(40) as pool,
        ):
            codes = list(pool.map(lambda n: post(bridge, secret, {"n": n}).status_code, range(200)))
            assert sorted(set(codes)) == [200, 429]
            assert codes.count(200) == 20
            assert len(reader.expect(20)) == 20
            assert_next_is_a_sentinel(broker, home, reader, "networks/A")
    finally:
        assert "Traceback" not in bridge.stop()


def test_a_quota_holds_exactly_across_both_doors_at_once(home: Home, broker) -> None:
    """HTTP requests and MQTT publishers of one key, all at once: the quota is one count."""
    secret = add_key(home, "both", "--quota", "100/day")
    bridge = start_bridge(home, broker.mqtt_port, "--workers", "2")
    publishers = [Client("tcp", broker.mqtt_port, "both", secret) for _ in range(3)]

    def mqtt(client: Client) -> None:
        for n in range(60):
            client.publish("networks/A/mqtt", json.dumps({"n": n}), qos=1)

    try:
        with listening(broker.mqtt_port, "reader_a", home.secrets["reader_a"], "networks/A/#") as reader:
            for client in publishers:
                assert client.connect() == 0
            with ThreadPoolExecutor(43) as pool:
                sending = [pool.submit(mqtt, client) for client in publishers]
                codes = list(pool.map(lambda n: post(bridge, secret, {"n": n}).status_code, range(120)))
                for done in sending:
                    done.result()
            admin = Client("tcp", broker.mqtt_port, "admin", home.secrets["admin"])
            assert admin.connect() == 0
            admin.publish("networks/A/sentinel", b'{"sentinel": 1}', qos=1)
            admin.close()
            delivered = []
            while (message := reader.expect(1)[0]).payload != b'{"sentinel": 1}':
                delivered.append(message)
        assert len(delivered) == 100
        assert len([m for m in delivered if m.topic == "networks/A"]) == codes.count(200)
        assert sorted(set(codes)) <= [200, 429]
    finally:
        for client in publishers:
            client.close()
        assert "Traceback" not in bridge.stop()


def test_what_a_key_receives_is_counted_once_per_delivery_it_took(home: Home, broker) -> None:
    """When first written to its connection, at every QoS; a resend is not counted again; anonymous not at all.

    Counted on acknowledgement, a client that never acknowledged took samples uncounted.
    """
    meter = broker.broker.radio.meter
    sample = b'{"speed": 1}'
    raw = session(broker.mqtt_port, "raw-reader", "reader_a", home.secrets["reader_a"], clean=False)
    try:
        raw.sendall(subscribe("networks/A", qos=1, packet_id=1))
        assert read_packet(raw)[0] == 0x90  # SUBACK
        with (
            listening(broker.mqtt_port, "reader_a", home.secrets["reader_a"], "networks/A", qos=0) as plain,
            listening(broker.mqtt_port, "admin", home.secrets["admin"], "networks/A", qos=0) as admin,
        ):
            anonymous = Client("tcp", broker.mqtt_port)
            assert anonymous.connect() == 0
            assert anonymous.subscribe("networks/pub", qos=1) == 1
            gen = Client("tcp", broker.mqtt_port, "gen", home.secrets["gen"])
            assert gen.connect() == 0
            gen.publish("networks/A", sample, qos=1)
            admin_client = Client("tcp", broker.mqtt_port, "admin", home.secrets["admin"])
            assert admin_client.connect() == 0
            admin_client.publish("networks/pub", sample, qos=1)
            admin_client.close()
            gen.close()
            assert plain.expect(1)[0].payload == sample
            assert admin.expect(1)[0].payload == sample
            assert anonymous.expect(1)[0].payload == sample
            anonymous.close()
            first, _ = read_packet(raw)
            assert first & 0xF0 == 0x30  # the PUBLISH, never acknowledged: counted all the same
            assert until_counted(meter, "reader_a", 2)
    finally:
        raw.close()
    # Back, its session resumed: the sample goes again (DUP), and is not counted again.
    raw = session(broker.mqtt_port, "raw-reader", "reader_a", home.secrets["reader_a"], clean=False)
    try:
        first, body = read_packet(raw)
        assert first & 0xF8 == 0x38  # the PUBLISH again, DUP set
        raw.sendall(b"\x40\x02" + body[2 + 10 : 2 + 12])  # its PUBACK
        raw.sendall(b"\xc0\x00")  # PINGREQ: its PINGRESP comes once the PUBACK was handled
        assert read_packet(raw)[0] == 0xD0

        async def collect() -> None:  # what the broker's timer does twice a second, now
            broker.broker.radio.collect_deliveries()

        broker.call(collect)
    finally:
        raw.close()
    assert meter.received_totals[("reader_a", "A")] == [2, 2 * len(sample)]
    assert {name for name, _ in meter.received_totals} == {"reader_a", "admin"}  # no anonymous one
    rows = eventually(  # the usage file is written once a second: await both deliveries in it
        lambda: [r for r in usage(home, "reader_a") if r["kind"] == "received" and r["samples"] == 2] or None
    )
    assert rows == [
        {
            "kind": "received",
            "day": rows[0]["day"],
            "key": "reader_a",
            "network": "A",
            "samples": 2,
            "bytes": 24,
        }
    ]
    table = home.radio_main("keys", "usage", "reader_a", "--csv").stdout.splitlines()
    assert table[0] == "kind,day,key,door,network,reason,samples,bytes,count"
    assert f"received,{rows[0]['day']},reader_a,,A,,2,24," in table


def assert_next_is_a_sentinel(broker, home: Home, reader, topic: str) -> None:
    """An admin's sample published now is the next ``reader`` gets: nothing sent before it is on its way."""
    admin = Client("tcp", broker.mqtt_port, "admin", home.secrets["admin"])
    assert admin.connect() == 0
    admin.publish(topic, b'{"sentinel": 1}', qos=1)
    admin.close()
    assert [m.payload for m in reader.expect(1)] == [b'{"sentinel": 1}']


def until_counted(meter, key: str, samples: int) -> bool:
    """The broker hands its delivery counts to the meter twice a second: await that."""
    return until(lambda: meter.received_totals.get((key, "A"), [0, 0])[0] >= samples) and (
        meter.received_totals[(key, "A")][0] == samples
    )


def test_usage_of_a_name_nobody_had_is_an_error_and_json_is_always_a_list(home: Home) -> None:
    nobody = home.radio("keys", "usage", "nobody", check=False)
    assert (nobody.returncode, nobody.stdout) == (2, "")
    assert nobody.stderr == "radio: no key named 'nobody', and no usage recorded under that name\n"
    assert json.loads(home.radio_main("keys", "usage", "gen", "--json").stdout) == []
    assert json.loads(home.radio_main("keys", "usage", "--json").stdout) == []
    said = home.radio_main("keys", "usage", "gen", "--since", "2026-11-01").stderr
    assert said.startswith("No usage recorded for key 'gen' since 2026-11-01 in "), said
