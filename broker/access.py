"""What a key may spend on the MQTT door of the embedded broker: rate, quota, schema; and expiry.

Asked for each PUBLISH after the rights check, in the HTTP door's order: rate, quota, schema.

- **Rate.** MQTT 3.1.1 has no way to say "not now" to a publisher, so a key over its rate is
  slowed down, not refused: its connection stops reading its socket until the key has a token
  again, and TCP's flow control pushes back on the client. Nothing is dropped, and no sample of
  the key is delivered faster than its rate plus its burst.
- **Quota.** Past it, the key's samples are dropped (a QoS 1 sample is still acknowledged, as
  for any refused publish), counted, and logged once per key and period. A quota that cannot be
  read without waiting (the usage file's writer has it, or another process locks the file) holds
  the PUBLISH a moment, like a rate, rather than stall the event loop and everyone on it.
- **Schema.** A sample that is not JSON or does not match its network's schema is dropped and
  counted against the key: no subscriber receives it.
- **Expiry.** ``sweep`` closes the connections of keys whose expiry has come; the core calls it
  on a timer (``EXPIRY_TICK``) well inside the 2 seconds promised.

The bridge's service key (``publish_all``) passes: its samples were checked and counted at the
HTTP door under the generator's own key.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from radio.keys import Key
from radio.rates import Buckets
from radio.registry import Registry
from radio.topics import network_of_topic
from radio.usage import Busy, Meter

if TYPE_CHECKING:
    from radio.broker.sessions import Session

log = logging.getLogger("radio.broker")

DOOR: Final = "mqtt"
GO: Final = 0.0
DROP: Final = -1.0
EXPIRY_TICK: Final = 0.5
"""Seconds between expiry checks: a key's connections close within this of its expiry."""
LOG_EVERY: Final = 10.0
QUOTA_RETRY: Final = 0.05
"""Seconds a PUBLISH waits when its key's quota cannot be read without waiting on the loop."""


class Gate:
    """Rates, quotas and schemas for one broker; counts into the platform's usage file."""

    def __init__(self, registry: Callable[[], Registry], meter: Meter | None) -> None:
        self.registry = registry
        self.meter = meter
        self.buckets = Buckets()
        self.rate_waits = 0
        """Times a publisher was paused for its rate (for the metrics)."""
        self.quota_waits = 0
        """Times a PUBLISH was held because its key's quota could not be read at once."""
        self._logged: dict[tuple[str, str], float] = {}
        self._swept: tuple[Registry | None, datetime] = (None, datetime.now(UTC))

    def _key(self, session: Session) -> Key | None:
        name = session.key_name
        if name is None:
            return None
        key = self.registry().keys.get(name)
        if key is None or key.id != session.key_id or key.publish_all:
            return None
        return key

    def admit(self, session: Session, topic: str, payload: bytes) -> float:
        """``GO``, ``DROP``, or the seconds to wait before handling this PUBLISH again."""
        key = self._key(session)
        if key is None:
            return GO
        terms = key.terms
        if terms.rate is not None:
            wait = self.buckets.take(key.id, terms.rate, terms.bucket)
            if wait:
                self.rate_waits += 1
                return wait
        meter = self.meter
        if meter is not None and terms.quota is not None and (verdict := self._quota(meter, key)) != GO:
            return verdict
        network = network_of_topic(topic) or ""
        settings = self.registry().networks.get(network)
        if settings is not None and settings.schema is not None:
            try:
                problem = settings.schema.problem(json.loads(payload))
            except (ValueError, RecursionError):
                problem = "the payload is not JSON"
            if problem is not None:
                self._refuse(key, "schema", f"dropped a sample of key {key.name!r} to {topic!r}: {problem}")
                return DROP
        if meter is not None:
            meter.record(key, DOOR, network, len(payload))
        return GO

    def _quota(self, meter: Meter, key: Key) -> float:
        """``GO`` within the key's quota, ``DROP`` past it, a short wait if it cannot be read now."""
        try:
            state = meter.quota(key, within=0)  # this is the event loop: never stall it
        except (Busy, sqlite3.Error) as exc:
            self._usage_unavailable(exc)
            return QUOTA_RETRY
        if state is not None and state.exceeded:
            meter.over_quota(key, DOOR, state)
            return DROP
        return GO

    def _usage_unavailable(self, exc: Exception) -> None:
        """The usage file is busy or unreadable: the sample waits, and this is said once a while."""
        self.quota_waits += 1
        if isinstance(exc, Busy):
            return  # the writer, or another process, has it for a moment: the usual case
        now = time.monotonic()
        if now - self._logged.get(("", "usage"), -LOG_EVERY) >= LOG_EVERY:
            self._logged[("", "usage")] = now
            log.warning("quotas cannot be checked, keys with one wait to publish: %s", exc)

    def refused_rights(self, session: Session) -> None:
        """Count a publish refused for lack of rights against its key."""
        key = self._key(session)
        if key is not None and self.meter is not None:
            self.meter.refuse(key, DOOR, "rights")

    def _refuse(self, key: Key, reason: str, message: str) -> None:
        if self.meter is not None:
            self.meter.refuse(key, DOOR, reason)
        now = time.monotonic()
        if now - self._logged.get((key.id, reason), -LOG_EVERY) >= LOG_EVERY:
            self._logged[(key.id, reason)] = now
            log.warning("%s", message)

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
