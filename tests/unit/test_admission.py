"""The admission gate: each check's refusal, and their order, with a registry built in-process.

Order: rights, size, strict JSON (an object), schema, retained room, rate, quota; an admitted
sample is metered. A sample that fails several checks is refused by the first, and the later
checks cost it nothing (no rate token, no unit of quota).
"""

from __future__ import annotations

import gc
import json
import weakref
from datetime import UTC, datetime, timedelta

import pytest

from radio import rates, usage
from radio.admission import PLACES, USAGE_RETRY, Admission, Admitted, Refused, Wait
from radio.config import NetworkSettings
from radio.errors import Busy
from radio.keys import Key
from radio.schemas import Schema
from radio.topics import MEMO_TOPIC_MOST

from .build import key, registry, router

CHECKS = ["rights", "too_large", "not_json", "schema", "max_retained", "rate", "quota"]
MAX_PAYLOAD = 64
TOPIC = "networks/A/x"


class Gate:
    """A gate over network A (64 bytes, a schema, no retained topic but its own), a clock, a meter."""

    def __init__(self, tmp_path) -> None:
        path = tmp_path / "speed.json"
        path.write_text(json.dumps({"properties": {"speed": {"minimum": 0}}}))
        self.network = NetworkSettings(max_payload=MAX_PAYLOAD, schema=Schema.load(path), max_retained=0)
        self.now = 1_000.0
        self.buckets = rates.Buckets()
        self.meter = usage.Meter(tmp_path / "usage.db")
        self.admission = Admission("mqtt", self.meter, self.take_token, self.retained_full)
        self.fanout = router()
        self.taken = 0
        self.rates_locked = False

    def retained_full(self, topic: str) -> int | None:
        return self.fanout.retained_full(topic)

    def take_token(self, key: Key) -> tuple[float, float]:
        if self.rates_locked:
            raise Busy
        self.taken += 1
        rate = key.terms.rate
        assert rate is not None
        return self.buckets.take(key.id, rate, key.terms.bucket, now=self.now), 0.0

    def admit(self, key: Key | None, payload: bytes, *, retain: bool = False, topic: str = TOPIC, **kwargs):
        current = registry({"A": self.network}, *([key] if key is not None else []))
        self.fanout = router(current)
        return self.admission.admit(current, key, topic, payload, retain=retain, quota_wait=1.0, **kwargs)


@pytest.fixture
def gate(tmp_path):
    gate = Gate(tmp_path)
    yield gate
    gate.meter.close()


def publisher(name: str = "gen", *, may: bool = True, **terms: object) -> Key:
    return key(name, publish=("A",) if may else (), **({"rate": 1.0, "burst": 1, "quota": 1} | terms))


def payload(*, large: bool = False, json_ok: bool = True, schema_ok: bool = True) -> bytes:
    body = json.dumps({"speed": 1 if schema_ok else -1}).encode() if json_ok else b'{"speed": NaN}'
    return body + b" " * (MAX_PAYLOAD + 1 - len(body) if large else 0)


def with_faults(gate: Gate, faults: set[str]):
    """The verdict on one sample that fails exactly these checks."""
    sender = publisher(may="rights" not in faults)
    if "rate" in faults:
        gate.take_token(sender)  # its one token is gone
    if "quota" in faults:
        assert isinstance(gate.meter.take(sender), usage.Unit)  # its one unit is gone
    gate.taken = 0
    body = payload(
        large="too_large" in faults, json_ok="not_json" not in faults, schema_ok="schema" not in faults
    )
    return sender, gate.admit(sender, body, retain="max_retained" in faults)


@pytest.mark.parametrize("first", range(len(CHECKS)), ids=CHECKS)
def test_a_sample_failing_a_check_and_every_later_one_is_refused_by_that_check(gate, first):
    _, verdict = with_faults(gate, set(CHECKS[first:]))
    assert getattr(verdict, "reason", None) == CHECKS[first]
    assert gate.taken == (1 if first >= CHECKS.index("rate") else 0)  # no token spent before the rate
    # A refusal is counted against the key; a wait is counted by the door, if it turns it into one.
    counted = {} if CHECKS[first] == "rate" else {("gen", "mqtt", CHECKS[first]): 1}
    assert dict(gate.meter.refused) == counted
    assert not gate.meter.totals  # nothing metered


@pytest.mark.parametrize(
    ("check", "verdict", "message"),
    [
        ("rights", Refused, "You cannot broadcast to this channel"),
        ("too_large", Refused, "sample too large: 65 bytes, network 'A' accepts at most 64"),
        ("not_json", Refused, "the payload is not JSON: NaN is not JSON"),
        (
            "schema",
            Refused,
            "sample does not match the network's schema: speed: -1 must be bigger than or equal to 0",
        ),
        ("max_retained", Refused, "network 'A' retains at most 0 topics"),
        ("rate", Wait, None),
        ("quota", Refused, "quota exceeded: 1 samples per day; it resets at "),
    ],
)
def test_each_check_alone_refuses_with_its_reason_and_message(gate, check, verdict, message):
    _, got = with_faults(gate, {check})
    assert type(got) is verdict
    assert got.reason == check
    if message is not None:
        assert got.message.startswith(message)  # type: ignore[union-attr]


def test_a_sample_failing_no_check_is_admitted_metered_and_holds_its_unit(gate):
    sender, verdict = with_faults(gate, set())
    assert isinstance(verdict, Admitted)
    assert (verdict.key, verdict.network, verdict.size) == (sender, "A", len(payload()))
    assert verdict.unit is not None
    assert dict(gate.meter.totals) == {("gen", "mqtt", "A"): [1, len(payload())]}
    gate.admission.release(verdict)  # the broker was away: not charged after all
    assert dict(gate.meter.totals) == {("gen", "mqtt", "A"): [0, 0]}
    gate.now += 1.0  # a token again
    assert isinstance(gate.admit(sender, payload()), Admitted)  # the unit given back is spent again


def test_the_rate_wait_is_the_time_until_the_next_token(gate):
    sender = publisher(rate=4.0, burst=2, quota=None)
    assert [type(gate.admit(sender, payload())) for _ in range(2)] == [Admitted, Admitted]
    verdict = gate.admit(sender, payload())
    assert verdict == Wait("rate", 0.25, 0.0)
    gate.now += 0.25
    assert isinstance(gate.admit(sender, payload()), Admitted)


def test_shared_rates_that_cannot_be_read_now_say_wait_rather_than_refuse(gate):
    gate.rates_locked = True  # another process holds the shared bucket file
    assert gate.admit(publisher(), payload()) == Wait("rates_unavailable", USAGE_RETRY)
    assert not gate.meter.refused


def test_the_right_comes_before_anything_is_read_even_for_an_empty_retained_publish(gate):
    verdict = gate.admit(publisher(may=False), b"", retain=True)
    assert isinstance(verdict, Refused)
    assert verdict.reason == "rights"


def test_an_empty_retained_publish_passes_with_the_right_alone_and_costs_nothing(gate):
    sender = publisher()
    gate.take_token(sender)  # no token left
    gate.meter.take(sender)  # and no unit
    gate.taken = 0
    verdict = gate.admit(sender, b"", retain=True)
    assert verdict == Admitted(sender, "A", 0, None)
    assert gate.taken == 0
    assert not gate.meter.totals


def test_anonymous_clients_publish_nothing(gate):
    verdict = gate.admit(None, payload())
    assert isinstance(verdict, Refused)
    assert verdict.reason == "rights"


def test_an_expired_key_is_refused_at_once(gate):
    expired = publisher(expires=datetime.now(UTC) - timedelta(seconds=1))
    verdict = gate.admit(expired, payload())
    assert isinstance(verdict, Refused)
    assert (verdict.reason, verdict.message) == ("rights", "key 'gen' has expired")


@pytest.mark.parametrize(
    "body", [b"[1, 2]", b'"speed"', b"3", b"null"], ids=["array", "string", "number", "null"]
)
def test_a_sample_must_be_a_json_object(gate, body):
    verdict = gate.admit(publisher(), body)
    assert verdict == Refused("not_json", "the sample is not a JSON object")


def test_data_the_door_parsed_already_is_checked_not_parsed_again(gate):
    verdict = gate.admit(publisher(), b'{"speed": 1}', data=[{"speed": 1}])
    assert verdict == Refused("not_json", "the sample is not a JSON object")


def test_outside_every_network_only_the_right_applies(gate):
    admin = Key("root", "ab" * 32, "", admin=True)
    verdict = gate.admit(admin, b"not json at all" * 10, topic="$SYS/test", retain=True)
    assert verdict == Admitted(admin, "", 150, None)


def test_each_registry_snapshot_is_asked_afresh_for_the_right_to_publish():
    """What the gate remembers per key and topic holds for one registry snapshot only: a right
    taken away (or given) in a reload counts from the very next sample."""
    admission = Admission("mqtt", None, lambda _: (0.0, 0.0))
    network = {"A": NetworkSettings()}
    allowed = registry(network, key("gen", publish=("A",)))
    denied = registry(network, key("gen"))
    body = b'{"speed": 1}'
    for snapshot, admitted in [(allowed, True), (allowed, True), (denied, False), (allowed, True)]:
        verdict = admission.admit(snapshot, snapshot.keys["gen"], TOPIC, body, quota_wait=0)
        if admitted:
            assert isinstance(verdict, Admitted), verdict
        else:
            assert isinstance(verdict, Refused), verdict
            assert verdict.reason == "rights"


def test_a_network_s_new_settings_apply_from_the_next_sample():
    admission = Admission("mqtt", None, lambda _: (0.0, 0.0))
    sender = key("gen", publish=("A",))
    body = b'{"speed": 1}'
    roomy = registry({"A": NetworkSettings(max_payload=64)}, sender)
    tight = registry({"A": NetworkSettings(max_payload=8)}, sender)
    assert isinstance(admission.admit(roomy, sender, TOPIC, body, quota_wait=0), Admitted)
    refused = admission.admit(tight, sender, TOPIC, body, quota_wait=0)
    assert isinstance(refused, Refused)
    assert refused.reason == "too_large"


def test_a_publisher_of_ever_new_topics_costs_no_memory_past_a_bound():
    admission = Admission("mqtt", None, lambda _: (0.0, 0.0))
    sender = key("gen", publish=("A",))
    snapshot = registry({"A": NetworkSettings()}, sender)
    for i in range(PLACES + 10):
        topic = f"networks/A/{i}"
        assert isinstance(admission.admit(snapshot, sender, topic, b"{}", quota_wait=0), Admitted)
        assert len(admission._places) <= PLACES
    # and what it still remembers is right
    assert isinstance(admission.admit(snapshot, sender, "networks/A/1", b"{}", quota_wait=0), Admitted)
    outside = admission.admit(snapshot, sender, "networks/B/1", b"{}", quota_wait=0)
    assert isinstance(outside, Refused)
    assert outside.reason == "rights"


def test_a_topic_too_long_to_remember_is_worked_out_at_each_sample():
    """4,096 topics of 65,535 bytes would hold 256 MiB: a long topic is never kept."""
    admission = Admission("mqtt", None, lambda _: (0.0, 0.0))
    sender = key("gen", publish=("A",))
    snapshot = registry({"A": NetworkSettings()}, sender)
    for length in (MEMO_TOPIC_MOST + 1, 65_000):
        topic = "networks/A/" + "x" * length
        assert isinstance(admission.admit(snapshot, sender, topic, b"{}", quota_wait=0), Admitted)
        refused = admission.admit(snapshot, sender, "networks/B/" + "x" * length, b"{}", quota_wait=0)
        assert isinstance(refused, Refused)
        assert refused.reason == "rights"
    assert admission._places == {}
    short = "networks/A/" + "x" * (MEMO_TOPIC_MOST - len("networks/A/"))
    assert isinstance(admission.admit(snapshot, sender, short, b"{}", quota_wait=0), Admitted)
    assert len(admission._places) == 1  # up to the bound, a topic is remembered


def test_a_place_kept_by_a_door_does_not_keep_its_registry_snapshot_alive():
    """A broker keeps one place per publishing session: each would otherwise pin the snapshot of
    its last sample, and a registry edited often would pile up old snapshots behind idle sessions."""
    admission = Admission("mqtt", None, lambda _: (0.0, 0.0))
    sender = key("gen", publish=("A",))
    old = registry({"A": NetworkSettings()}, sender)
    kept = admission.place(old, sender, TOPIC)
    new = registry({"A": NetworkSettings()}, key("gen", publish=("B",)))
    admission.place(new, new.keys["gen"], TOPIC)  # the door moves on to the next snapshot
    gone = weakref.ref(old)
    del old
    gc.collect()
    assert gone() is None
    assert kept.serial != new.serial  # and it is never taken for the new one's
    refused = admission.admit_at(admission.place(new, new.keys["gen"], TOPIC), TOPIC, b"{}", quota_wait=0)
    assert isinstance(refused, Refused)
    assert refused.reason == "rights"


def test_a_door_that_records_later_records_each_admitted_sample_once_when_it_asks(tmp_path):
    """The broker records a sample's usage after its deliveries; its quota unit is taken at once."""
    meter = usage.Meter(tmp_path / "usage.db")
    admission = Admission("mqtt", meter, lambda _: (0.0, 0.0), record_later=True)
    sender = key("gen", publish=("A",), quota=5)
    snapshot = registry({"A": NetworkSettings()}, sender)
    for _ in range(2):
        assert isinstance(admission.admit(snapshot, sender, TOPIC, b"{}", quota_wait=1.0), Admitted)
    assert dict(meter.totals) == {}  # not yet recorded
    admission.record_admitted()
    admission.record_admitted()  # nothing more to record
    assert dict(meter.totals) == {("gen", "mqtt", "A"): [2, 4]}
