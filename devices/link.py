"""How a generator sends its samples, and keeps them through a broker outage.

Both links keep what they could not send in a bounded buffer: when it is full the oldest sample is
dropped, counted, and logged, so a long outage costs the oldest data and never the process's
memory. Everything else is delivered, in order, once the broker (or the bridge) is back; QoS 1 may
deliver a sample twice around a reconnect, never zero times.

Given several broker URLs (a cluster's nodes), the MQTT link moves to the next one whenever its
connection is lost or a connect fails, round the list, at paho's reconnect pace.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import paho.mqtt.client as mqtt
import requests
from paho.mqtt.reasoncodes import ReasonCode

from radio.errors import RadioError
from radio.errors import reason as in_words
from radio.mqtt_clients import (
    FINAL_REFUSALS,
    broker_cursor,
    connect,
    describe,
    key_credentials,
    make_client,
    stop_loop,
)
from radio.stopping import Stop
from radio.tls import SYSTEM_TRUST, TlsError, Trust, certificate_refusal, verify_failure
from radio.urls import DEFAULT_MQTT_VERSION, BrokerURL, MqttVersion

log = logging.getLogger("radio.device")
DEFAULT_BUFFER = 10_000


class LinkRefused(RadioError):
    """What a generator cannot cure by retrying: its key, or the server's certificate, refused."""


@dataclass(frozen=True)
class Will:
    """What the broker publishes for a client that vanishes."""

    topic: str
    payload: bytes
    retain: bool = True


class MqttLink:
    """One MQTT connection that reconnects by itself (paho's backoff) and buffers while it is down."""

    _unreachable: ClassVar[set[str]] = set()
    """Brokers this process's links said they cannot reach: a hundred sensors say it once."""
    _unreachable_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        url: BrokerURL | Sequence[BrokerURL],
        secret: str | None,
        client_id: str,
        *,
        buffer: int = DEFAULT_BUFFER,
        will: Will | None = None,
        on_connect: Any = None,
        trust: Trust = SYSTEM_TRUST,
        version: MqttVersion = DEFAULT_MQTT_VERSION,
    ) -> None:
        self._cursor = broker_cursor(url)
        self.dropped = 0
        self.refused: str | None = None
        """Why the link stopped for good: the broker's certificate, or the key, was refused.
        Retrying cannot cure either; the generator reads this and stops."""
        self.publish_refusals: set[int] = set()
        """The PUBACK reason codes (MQTT 5, 0x80 and up) the broker refused samples with, each logged once."""
        self._pending: deque[tuple[str, bytes, bool]] = deque()
        self._limit = buffer
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._user_on_connect = on_connect
        self._stopping = False
        self._outage_said = False
        """Whether the current outage was logged: once per outage, not once per attempt."""
        self._client = make_client(
            self.url, client_id, credentials=key_credentials(secret), version=version, trust=trust
        )
        if will is not None:
            self._client.will_set(will.topic, will.payload, qos=1, retain=will.retain)
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.max_inflight_messages_set(100)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_publish = self._on_publish

    @property
    def urls(self) -> tuple[BrokerURL, ...]:
        """Tried in turn, all of one transport (paho fixes it when the client is made)."""
        return self._cursor.items

    @property
    def url(self) -> BrokerURL:
        """The broker connected to (or tried next)."""
        return self._cursor.current

    def _next_broker(self, client: mqtt.Client, *, worked: bool = False) -> None:
        """On paho's thread, after a lost or failed connection: its next reconnect goes to the next URL.

        paho paces the reconnects itself (``reconnect_delay_set``), so a failed round needs no wait here.
        """
        if len(self._cursor) < 2 or self._stopping or self.refused is not None:
            return
        self._cursor.move_on(worked=worked)
        connect(client, self.url.host, self.url.port, background=True)
        log.info("trying the broker at %s next", self.url)

    def start(self) -> None:
        """Connect in the background; publishing works at once (it buffers until connected)."""
        connect(self._client, self.url.host, self.url.port, background=True)
        self._client.loop_start()

    def wait_connected(self, timeout: float) -> bool:
        """Whether the link came up within the timeout."""
        return self._connected.wait(timeout)

    def stop(self) -> None:
        """Disconnect cleanly: no last will."""
        self._stopping = True
        self._client.disconnect()
        stop_loop(self._client)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Send at QoS 1 now, or keep it for when the broker is back."""
        with self._lock:
            if self._connected.is_set():
                self._client.publish(topic, payload, qos=1, retain=retain)
                return
            if len(self._pending) >= self._limit:
                self._pending.popleft()
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.warning(
                        "buffer full (%d samples): dropped %d oldest so far", self._limit, self.dropped
                    )
            self._pending.append((topic, payload, retain))

    def _on_connect(
        self, client: mqtt.Client, _u: object, _f: object, reason: ReasonCode, _p: object
    ) -> None:
        if reason.is_failure:
            if reason.value in FINAL_REFUSALS and self.refused is None:
                why = describe(reason, client)
                self.refused = f"the broker at {self.url} refused the key: {why} (is the key right?)"
                client.disconnect()  # no more attempts: a wrong key stays wrong
                return
            log.error("the broker at %s refused the connection: %s", self.url, describe(reason, client))
            return
        with self._lock:
            backlog = len(self._pending)
            while self._pending:
                topic, payload, retain = self._pending.popleft()
                client.publish(topic, payload, qos=1, retain=retain)
            self._connected.set()
        self._outage_said = False
        with self._unreachable_lock:
            self._unreachable.discard(str(self.url))
        log.info(
            "connected to %s%s",
            self.url,
            f"; sent {backlog} buffered sample{'s' * (backlog != 1)}" if backlog else "",
        )
        if self._user_on_connect is not None:
            self._user_on_connect(self)

    def _on_connect_fail(self, client: mqtt.Client, _u: object) -> None:
        """Called inside paho's ``except``: a refused certificate stops the link; all else retries."""
        failure = sys.exc_info()[1] or Exception()
        refusal = verify_failure(failure, str(self.url))
        if refusal is not None and self.refused is None:
            self.refused = refusal
            log.error("%s", refusal)
            client.disconnect()  # no more attempts: the key is never sent to a server not verified
            return
        if not self._outage_said and not self._stopping:
            self._outage_said = True
            with self._unreachable_lock:
                said = str(self.url) in self._unreachable
                self._unreachable.add(str(self.url))
            if not said:
                log.warning(
                    "cannot reach the broker at %s (%s); retrying, samples are kept meanwhile",
                    self.url,
                    in_words(failure),
                )
        self._next_broker(client)

    def _on_disconnect(
        self, client: mqtt.Client, _u: object, _f: object, reason: ReasonCode, _p: object
    ) -> None:
        with self._lock:
            was_connected = self._connected.is_set()
            self._connected.clear()
        if was_connected and not self._stopping:
            self._outage_said = True  # this line says it: the attempts that fail next say nothing
            log.warning(
                "lost the broker at %s (%s); reconnecting, samples are kept meanwhile", self.url, reason
            )
        self._next_broker(client, worked=was_connected)

    def _on_publish(self, client: mqtt.Client, _u: object, _mid: int, reason: ReasonCode, _p: object) -> None:
        """An MQTT 5 broker says in the PUBACK when it refused a sample: say it once per reason."""
        if reason.value < 0x80 or reason.value in self.publish_refusals:
            return
        self.publish_refusals.add(reason.value)
        log.error(
            "the broker at %s refused a sample: %s (said once per reason)",
            self.url,
            describe(reason, client),
        )


class HttpLink:
    """The article's ``publish()``: POST each sample to the bridge, keeping it while the bridge is away."""

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        buffer: int = DEFAULT_BUFFER,
        timeout: float = 10.0,
        trust: Trust = SYSTEM_TRUST,
    ) -> None:
        self.url = url.rstrip("/") + "/publish"
        self.dropped = 0
        self._pending: deque[tuple[str, dict[str, Any]]] = deque(maxlen=buffer)
        self._session = trust.session()
        self._verify = trust.verify()
        self._session.headers.update({"content-type": "application/json", "API-KEY": secret})
        self._timeout = timeout

    def publish(self, network: str, data: dict[str, Any]) -> bool:
        """Queue the sample and send everything queued; False if some must wait for a retry."""
        if len(self._pending) == self._pending.maxlen:
            self.dropped += 1
            log.warning("buffer full: dropped the oldest sample (%d so far)", self.dropped)
        self._pending.append((network, data))
        while self._pending:
            network, data = self._pending[0]
            try:
                response = self._session.post(
                    self.url,
                    data=json.dumps({"network": network, "data": data}),
                    timeout=self._timeout,
                    verify=self._verify,
                )
            except requests.exceptions.SSLError as exc:
                refusal = certificate_refusal(exc, self.url)
                if refusal is not None:
                    raise TlsError(refusal) from None
                log.warning("the TLS handshake with the bridge failed; %d samples kept", len(self._pending))
                return False
            except requests.RequestException as exc:
                log.warning(
                    "the bridge is unreachable (%s); %d samples kept",
                    exc.__class__.__name__,
                    len(self._pending),
                )
                return False
            if response.status_code == 503:
                log.warning("the bridge could not publish (503); %d samples kept", len(self._pending))
                return False
            if response.status_code in FINAL_HTTP or _error_of(response) == KEY_NOT_VALID:
                msg = f"the bridge at {self.url} refused: {_error_of(response) or response.status_code}"
                raise LinkRefused(msg)
            self._pending.popleft()
            if response.status_code != 200:
                log.error("sample refused, %d: %s", response.status_code, response.text.strip())
        return True


FINAL_HTTP = frozenset({401, 403})
"""The bridge's answers no retry cures: no such key, or a network the key may not publish to."""
KEY_NOT_VALID = "API-KEY not valid"
"""The legacy contract's 400 for a key the bridge does not know."""


def _error_of(response: requests.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, str) else None


def sleep_until(deadline: float, stop: Stop) -> bool:
    """Wait for a deadline; True if asked to stop meanwhile."""
    return stop.wait(max(0.0, deadline - time.monotonic()))
