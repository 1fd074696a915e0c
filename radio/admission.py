"""The admission gate: whether a sample may enter the platform, and what it costs its key.

Every sample passes here, whatever carried it: a PUBLISH at QoS 0, 1 or 2, retained or not, a
last will at the moment it fires (the embedded broker, ``broker/access.py``), and a
``POST /publish`` (the bridge, ``bridge/access.py``). A door only turns the verdict into its
own protocol, so a new way in cannot skip a check, and both doors refuse the same samples:

=============  =====================  ===========  ====================  ==================
check          verdict                HTTP         MQTT PUBLISH          will
=============  =====================  ===========  ====================  ==================
rights         ``Refused("rights")``  403          dropped               dropped
size           ``Refused("too_large")``  413       dropped               dropped
strict JSON    ``Refused("not_json")``  400        dropped               dropped
schema         ``Refused("schema")``  400          dropped               dropped
retained room  ``Refused("max_retained")``  n/a    dropped               dropped
rate           ``Wait("rate")``       429          held (TCP pushes      dropped (no client
                                                   back on the client)   left to slow down)
quota          ``Refused("quota")``   429          dropped               dropped
admitted       ``Admitted``           200          delivered             delivered
=============  =====================  ===========  ====================  ==================

The cheap checks that need no shared state come first, so a sample that could never be
delivered takes no rate token and no unit of quota. What does not depend on the payload or the
clock (the key's right to the topic, the topic's network and its settings) is worked out once per
key, topic and registry snapshot, not once per sample (``Admission._place``). An admitted sample
has taken its unit of quota (exact across doors and processes, ``radio/usage.py``) and is
metered: at once, or, for a door that asks (the broker: ``record_later``), once it is delivered;
a door whose sample then fails (the broker is away) gives both back with ``release``.

Size, JSON and schema apply to samples, that is to topics inside a network; elsewhere only an
admin key may publish (tests, ``$SYS``), and only rights apply.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from radio import samples
from radio.errors import Busy
from radio.keys import Key
from radio.registry import Registry
from radio.topics import MEMO_TOPIC_MOST, MEMO_TOPICS, network_of_topic
from radio.usage import Meter, QuotaState, Unit

UNPARSED: Final[Any] = object()
"""``admit``'s ``data`` when the door has not parsed the payload itself."""
USAGE_RETRY: Final = 0.05
"""Seconds a sample waits when its key's rate or quota cannot be read without waiting."""

PLACES: Final = MEMO_TOPICS
"""(key, topic) pairs whose rights and network settings ``Admission`` remembers (``place``)."""

TokenTaker = Callable[[Key], tuple[float, float]]
"""Takes one of the key's rate tokens: (seconds to wait, 0 if taken; tokens left)."""
RetainedFull = Callable[[str], "int | None"]
"""The network's ``max_retained`` if retaining a topic would keep one topic past it, else None."""


class Admitted:
    """The sample may go on; it is metered, and holds its unit of quota.

    A plain class, not a frozen dataclass like the other verdicts: every admitted sample builds
    one before its first delivery, and a frozen dataclass's ``__init__`` is interpreted Python
    even in the compiled build, slower on a cold start than the rest of the verdict's way back.
    """

    __slots__ = ("key", "network", "size", "unit")

    def __init__(self, key: Key | None, network: str, size: int, unit: Unit | None) -> None:
        self.key: Final = key
        self.network: Final = network
        self.size: Final = size
        self.unit: Final = unit

    def _fields(self) -> tuple[Key | None, str, int, Unit | None]:
        return self.key, self.network, self.size, self.unit

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Admitted) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return f"Admitted(key={self.key!r}, network={self.network!r}, size={self.size!r}, unit={self.unit!r})"


@dataclass(frozen=True, slots=True)
class Refused:
    """The sample is refused for good; ``message`` is the HTTP door's error text."""

    reason: str
    """One of ``radio.usage.REASONS``."""
    message: str
    quota: QuotaState | None = None


@dataclass(frozen=True, slots=True)
class Wait:
    """Not now: over the rate, or the shared rate or usage records cannot be read at once."""

    reason: str
    """``rate``, ``rates_unavailable`` or ``usage_unavailable``."""
    seconds: float
    tokens: float = 0.0


Verdict = Admitted | Refused | Wait

_NOT_OBJECT: Final = ("not_json", "the sample is not a JSON object")


class Place:
    """What a sample of one key to one topic needs that neither its payload nor the clock changes.

    Worked out once per key, topic and registry snapshot (``Admission.place``), with what the
    checks read of the key's terms and the network's settings copied in: a sample then reads
    plain fields of one compiled object, not the registry's dictionaries and dataclasses.
    """

    __slots__ = (
        "expires",
        "key",
        "max_payload",
        "may_publish",
        "network",
        "quota",
        "rate",
        "schema",
        "serial",
        "settings",
    )

    def __init__(self, registry: Registry, key: Key | None, topic: str) -> None:
        self.serial: Final = registry.serial
        """The snapshot it was worked out under (``Registry.serial``): under any other, it is
        worked out again. Its number, not the snapshot: a place kept does not keep that alive."""
        self.key: Final = key
        self.may_publish: Final = registry.access(key.name if key is not None else None).may_publish(topic)
        self.network: Final = network_of_topic(topic) or ""
        """The topic's network ("" outside every network)."""
        settings = registry.networks.get(self.network)
        self.settings: Final = settings
        """That network's settings: None outside every network (rights alone apply there)."""
        self.max_payload: Final = settings.max_payload if settings is not None else 0
        self.schema: Final = settings.schema if settings is not None else None
        terms = key.terms if key is not None else None
        self.expires: Final = terms is not None and terms.expires is not None
        """Whether the key expires at all: only then is the clock asked, per sample."""
        self.rate: Final = terms is not None and terms.rate is not None
        self.quota: Final = terms is not None and terms.quota is not None


class Admission:
    """One door's gate: the registry's rules, its rate buckets, and the platform's usage meter."""

    def __init__(
        self,
        door: str,
        meter: Meter | None,
        take_token: TokenTaker,
        retained_full: RetainedFull | None = None,
        *,
        record_later: bool = False,
    ) -> None:
        self.door = door
        self.meter = meter
        self._take_token = take_token
        self._retained_full = retained_full
        self._unrecorded: list[tuple[Key, str, int]] | None = [] if record_later else None
        """With ``record_later``, what was admitted and is not yet recorded (``record_admitted``)."""
        self._places: dict[tuple[str | None, str], Place] = {}
        """By (key name, topic): see ``place``."""
        self._places_for: Registry | None = None

    def admit(
        self,
        registry: Registry,
        key: Key | None,
        topic: str,
        payload: bytes,
        *,
        data: Any = UNPARSED,
        retain: bool = False,
        quota_wait: float,
    ) -> Verdict:
        """The verdict on one sample of ``key`` (None: anonymous) to ``topic``.

        ``data`` is the payload already parsed strictly by the door, if it was; ``quota_wait``
        the seconds the caller may wait for the usage file (0 on an event loop). An empty retained
        PUBLISH is MQTT's way to clear a topic's retained sample: it is not a sample, and costs
        nothing, but only a key that may publish there may clear it.
        """
        return self.admit_at(
            self.place(registry, key, topic), topic, payload, data=data, retain=retain, quota_wait=quota_wait
        )

    def place(self, registry: Registry, key: Key | None, topic: str) -> Place:
        """Where a sample of ``key`` to ``topic`` stands under this registry snapshot.

        None of it depends on the payload or the clock, so it is worked out once per key, topic
        and snapshot rather than once per sample: a reloaded registry (a right taken away, a key
        revoked) is a new snapshot, asked again. A client publishing to ever new topics costs a
        lookup each, never memory: past ``PLACES`` topics the memo starts again, and a topic longer
        than ``MEMO_TOPIC_MOST`` is never kept (radio/topics.py). Each place names its snapshot,
        so one worked out by a thread still on the old snapshot is never taken for the new one.
        A door that can remember a place itself (the broker, per session) asks here only when
        the snapshot or the topic changed.
        """
        name = key.name if key is not None else None
        place = self._places.get((name, topic))
        if place is not None and place.serial == registry.serial and place.key is key:
            return place
        if registry is not self._places_for or len(self._places) >= PLACES:
            self._places, self._places_for = {}, registry  # nor does it keep an old snapshot alive
        place = Place(registry, key, topic)
        if len(topic) <= MEMO_TOPIC_MOST:
            self._places[name, topic] = place
        return place

    def admit_at(
        self,
        place: Place,
        topic: str,
        payload: bytes,
        *,
        data: Any = UNPARSED,
        retain: bool = False,
        quota_wait: float,
    ) -> Verdict:
        """``admit`` for a place the door already has (``place``): the checks that read the sample."""
        key = place.key
        if (refusal := _rights_problem(place)) is not None:
            return self._refuse(key, "rights", refusal)
        network = place.network
        if retain and not payload:
            return Admitted(key, network, 0, None)
        if place.settings is not None and (problem := _problem(place, payload, data)) is not None:
            return self._refuse(key, *problem)
        if retain and self._retained_full is not None and (most := self._retained_full(topic)) is not None:
            return self._refuse(key, "max_retained", f"network {network!r} retains at most {most} topics")
        if key is None:
            return Admitted(None, network, len(payload), None)
        return self._spend(key, place, len(payload), quota_wait)

    def _spend(self, key: Key, place: Place, size: int, quota_wait: float) -> Verdict:
        """What a sample costs its key: a rate token, a unit of quota, a line of usage."""
        network = place.network
        if place.rate:
            try:
                wait, tokens = self._take_token(key)
            except Busy:
                return Wait("rates_unavailable", USAGE_RETRY)
            if wait:
                return Wait("rate", wait, tokens)
        unit = None
        meter = self.meter
        if meter is not None and place.quota:
            try:
                taken = meter.take(key, within=quota_wait)
            except (Busy, sqlite3.Error):
                return Wait("usage_unavailable", USAGE_RETRY)
            if isinstance(taken, QuotaState):
                meter.over_quota(key, self.door, taken)
                resets = taken.resets.isoformat().replace("+00:00", "Z")
                period = key.terms.quota_period
                message = f"quota exceeded: {taken.limit} samples per {period}; it resets at {resets}"
                return Refused("quota", message, taken)
            unit = taken
        if meter is not None:
            if self._unrecorded is None:
                meter.record(key, self.door, network, size)
            else:
                self._unrecorded.append((key, network, size))
        return Admitted(key, network, size, unit)

    def record_admitted(self) -> None:
        """Record what was admitted since the last call: for a door that records after delivering.

        A door built with ``record_later`` (the broker) calls this once the samples it admitted are
        delivered: their usage lines then do not delay their first subscriber. Its quota unit is
        taken at once all the same, before the verdict.
        """
        unrecorded, meter = self._unrecorded, self.meter
        if not unrecorded or meter is None:
            return
        self._unrecorded = []
        for key, network, size in unrecorded:
            meter.record(key, self.door, network, size)

    def release(self, admitted: Admitted) -> None:
        """An admitted sample did not go through: its key is not charged for it."""
        meter, key = self.meter, admitted.key
        if meter is None or key is None:
            return
        meter.unrecord(key, self.door, admitted.network, admitted.size)
        if admitted.unit is not None:
            meter.give_back(admitted.unit)

    def count_refusal(self, key: Key | None, reason: str) -> None:
        """A refusal the door decided on a ``Wait`` (a 429, a will over its rate)."""
        if key is not None and self.meter is not None:
            self.meter.refuse(key, self.door, reason)

    def _refuse(self, key: Key | None, reason: str, message: str) -> Refused:
        self.count_refusal(key, reason)
        return Refused(reason, message)


def _rights_problem(place: Place) -> str | None:
    """Why this key may not publish to the place's topic now, or None.

    An expired key may publish nothing: the broker closes its connections within a sweep, but
    what they send (or a will that fires) in between must not pass.
    """
    key = place.key
    if place.expires and key is not None and key.expired():
        return f"key {key.name!r} has expired"  # said first: an expired key has no rights left to lack
    if not place.may_publish:
        return "You cannot broadcast to this channel"
    return None


def _problem(place: Place, payload: bytes, data: Any) -> tuple[str, str] | None:
    """Why a payload is not a sample the place's network takes: (reason, message), or None."""
    if len(payload) > place.max_payload:
        size, most, network = len(payload), place.max_payload, place.network
        return "too_large", f"sample too large: {size} bytes, network {network!r} accepts at most {most}"
    schema = place.schema
    if data is UNPARSED:
        try:
            if schema is None:  # only the verdict matters: no value is built
                return None if samples.is_object(payload) else _NOT_OBJECT
            data = samples.parse(payload)
        except samples.NotJSON as exc:
            return "not_json", str(exc)
    if not isinstance(data, dict):
        return _NOT_OBJECT
    if schema is not None and (problem := schema.problem(data)) is not None:
        return "schema", f"sample does not match the network's schema: {problem}"
    return None
