"""The MQTT door of the admission gate (``radio/admission.py``), and expiry.

Every sample that enters the embedded broker passes ``Gate.publish`` (a PUBLISH at any QoS,
retained or not) or ``Gate.will`` (a last will, when it fires): rights, size, strict JSON,
schema, rate, quota and metering, in that order, by the rules both doors share. This module only
turns the verdict into what MQTT can say:

- **Refused** (rights, size, JSON, schema, quota): the sample is dropped, counted against the
  key, and logged once per key and reason every 10 s; a QoS 1 or 2 sample is still acknowledged,
  as MQTT 3.1.1 has no negative acknowledgement; an MQTT 5 client gets the reason code
  (``radio/wire/reasons.py`` ``GATE``) and the HTTP door's words as its reason string.
- **Over the rate**: a PUBLISH is held, not refused: its connection stops reading its socket
  until the key has a token again, and TCP's flow control pushes back on the client. A will has
  no client left to slow down: over the rate it is dropped and counted.
- **Rate or quota not readable now** (a bridge worker holds the shared rate file this instant,
  the usage file's writer has it, or another process locks either): the sample waits a moment
  and is asked again, rather than stall the event loop and everyone on it.
- **Rates are the platform's**: a key's bucket is in a file the bridge's workers take from too
  (``radio.rates.platform_path``), so its MQTT and HTTP samples together keep to its rate.
- **Expiry.** ``sweep`` closes the connections of keys whose expiry has come; the core calls it
  on a timer (``EXPIRY_TICK``) well inside the 2 seconds promised.

The bridge's service key (``publish_all``) passes to any network uncharged: its samples went
through the same gate at the HTTP door, under the generator's own key, and were charged there.
Only to a network: the HTTP door publishes nowhere else, so neither may its key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from radio.admission import Admission, Admitted, Place, Refused, RetainedFull, Verdict
from radio.keys import Key
from radio.logs import shown
from radio.rates import Buckets, SharedBuckets
from radio.registry import Registry
from radio.usage import Meter

if TYPE_CHECKING:
    from radio.broker.sessions import Session

log = logging.getLogger(__name__)

DOOR: Final = "mqtt"
GO: Final = 0.0
DROP: Final = -1.0
EXPIRY_TICK: Final = 0.5
"""Seconds between expiry checks: a key's connections close within this of its expiry."""
LOG_EVERY: Final = 10.0


class _Gone:
    """The key of a session whose key was revoked or replaced: it may publish nothing."""


_GONE: Final = _Gone()
_KEY_GONE: Final = Refused("rights", "the key that opened this session is gone")
_NOT_A_NETWORK: Final = Refused("rights", "You cannot broadcast to this channel")


class Standing:
    """Where one session's samples to one topic stand under one registry snapshot.

    Each session remembers the last (``Session.standing``): a publisher sends to the same topic
    sample after sample, and its key, its rights there and the network's settings change only
    with the snapshot. Kept by the snapshot's number, so a session never keeps an old one alive.
    """

    __slots__ = ("place", "serial", "settled", "topic")

    def __init__(self, serial: int, topic: str, settled: Refused | None, place: Place | None) -> None:
        self.serial: Final = serial
        self.topic: Final = topic
        self.settled: Final = settled
        """With no ``place``: the verdict for every sample (a key gone, or the service key's None)."""
        self.place: Final = place


class Gate:
    """The admission gate on the MQTT door of one broker; counts into the platform's usage file."""

    def __init__(
        self,
        registry: Callable[[], Registry],
        meter: Meter | None,
        retained_full: RetainedFull | None = None,
        buckets: SharedBuckets | None = None,
    ) -> None:
        self.registry = registry
        self.meter = meter
        self.buckets = buckets
        """The platform's rate buckets, which the bridge's workers take from too (None: ``_own``)."""
        self._own = Buckets()
        self.admission = Admission(DOOR, meter, self._take_token, retained_full, record_later=True)
        self.rate_waits = 0
        """Times a publisher was paused for its rate (for the metrics)."""
        self.quota_waits = 0
        """Times a sample was held because its key's quota could not be read at once."""
        self.refused = 0
        """Samples dropped by the gate (for the metrics)."""
        self.refused_retained = 0
        """Of those, retained ones past their network's ``max_retained``."""
        self.refusal: Refused | None = None
        """The refusal behind the last ``DROP`` (an MQTT 5 client is told its reason code and text)."""
        self._logged: dict[tuple[str, str], float] = {}
        self._swept: tuple[Registry | None, datetime] = (None, datetime.now(UTC))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._absorbing = False
        self._due = False
        """A sample was admitted since the last ``published``: the meter has queued its record."""

    def _take_token(self, key: Key) -> tuple[float, float]:
        terms = key.terms
        assert terms.rate is not None  # noqa: S101 - asked only for keys with a rate
        if self.buckets is None:
            return self._own.take(key.id, terms.rate, terms.bucket), 0.0
        return self.buckets.take(key.id, terms.rate, terms.bucket, within=0.0)  # never wait: Busy

    def _key(self, session: Session, registry: Registry) -> Key | _Gone | None:
        """The key the session proved, None for anonymous; ``_GONE`` if that key is no more."""
        name = session.key_name
        if name is None:
            return None
        key = registry.keys.get(name)
        if key is None or key.id != session.key_id:
            return _GONE
        return key

    def _verdict(self, session: Session, topic: str, payload: bytes, retain: bool) -> Verdict | None:
        """The gate's verdict, or None for a sample the HTTP door admitted already."""
        registry = self.registry()
        standing = session.standing
        if standing is None or standing.serial != registry.serial or standing.topic != topic:
            standing = session.standing = self._standing(session, registry, topic)
        place = standing.place
        if place is None:
            return standing.settled
        return self.admission.admit_at(place, topic, payload, retain=retain, quota_wait=0)  # never wait

    def _standing(self, session: Session, registry: Registry, topic: str) -> Standing:
        key = self._key(session, registry)
        if isinstance(key, _Gone):
            return Standing(registry.serial, topic, _KEY_GONE, None)
        if key is not None and key.publish_all:
            # Uncharged, as the HTTP door charged it; but that door publishes to networks alone.
            may = registry.access(key.name).may_publish(topic)
            return Standing(registry.serial, topic, None if may else _NOT_A_NETWORK, None)
        return Standing(registry.serial, topic, None, self.admission.place(registry, key, topic))

    def publish(self, session: Session, topic: str, payload: bytes, retain: bool) -> float:
        """``GO``, ``DROP``, or the seconds to hold this PUBLISH before asking again."""
        return self._settle(session, topic, self._verdict(session, topic, payload, retain), will=False)

    def will(self, session: Session, topic: str, payload: bytes, retain: bool) -> float:
        """``GO``, ``DROP``, or the seconds after which to ask again (the quota could not be read)."""
        return self._settle(session, topic, self._verdict(session, topic, payload, retain), will=True)

    def published(self) -> None:
        """The router has the samples admitted so far: they are recorded, and added up when the turn ends.

        Each is recorded (``Admission.record_admitted``: the meter's queue) only now, once its
        deliveries are written (``Router.publish`` calls this last): on a cold start, the call into
        the meter cost the first subscriber about what half the admission checks did. Adding them
        up then too would delay the next sample, and leaving it to the meter's writer thread would
        add up a second of samples at once, holding the interpreter meanwhile. A sample the gate
        admits always goes to the router, a PUBLISH or a will; should the router fail on one, it is
        recorded with the next.
        """
        if not self._due:
            return
        self._due = False
        self.admission.record_admitted()
        if self._absorbing or self.meter is None:
            return
        self._absorbing = True
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        loop.call_soon(self._absorb)

    def _absorb(self) -> None:
        self._absorbing = False
        if self.meter is not None:
            self.meter.absorb()

    def _settle(self, session: Session, topic: str, verdict: Verdict | None, *, will: bool) -> float:
        """What the verdict makes of the sample: delivered now, dropped, or held for a while."""
        if verdict is None:
            return GO
        if isinstance(verdict, Admitted):
            self._due = True
            return GO
        what = "the will" if will else "a sample"
        if isinstance(verdict, Refused):
            self._dropped(session, topic, verdict, what)
            return DROP
        if verdict.reason != "rate":
            self.quota_waits += 1
        elif not will:
            self.rate_waits += 1
        else:  # a will over its key's rate: nobody is left to slow down
            key = self._key(session, self.registry())
            self.admission.count_refusal(key if isinstance(key, Key) else None, "rate")
            self._dropped(session, topic, Refused("rate", "over its key's rate"), what)
            return DROP
        return verdict.seconds

    def _dropped(self, session: Session, topic: str, refused: Refused, what: str) -> None:
        self.refusal = refused
        self.refused += 1
        if refused.reason == "max_retained":
            self.refused_retained += 1
        name = session.key_name or ""
        now = time.monotonic()
        if now - self._logged.get((name, refused.reason), -LOG_EVERY) >= LOG_EVERY:
            self._logged[(name, refused.reason)] = now
            log.warning("dropped %s of %s to %s: %s", what, session.describe(), shown(topic), refused.message)

    def sweep(self, sessions: list[Session], now: datetime | None = None) -> list[Session]:
        """The connected sessions whose key has expired: to be closed like a revoked key's.

        Cheap when nothing is due: it walks the sessions only when the registry changed or a
        key's expiry passed since the last call.
        """
        now = now or datetime.now(UTC)
        registry = self.registry()
        seen, last = self._swept
        self._swept = (registry, now)
        if registry is seen:
            due = registry.next_expiry(last)
            if due is None or due > now:
                return []
        closing = []
        for session in sessions:
            name = session.key_name
            key = registry.keys.get(name) if name is not None else None
            if key is not None and session.connection is not None and key.expired(now):
                closing.append(session)
        return closing
