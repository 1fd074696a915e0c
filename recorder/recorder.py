"""The recorder: an MQTT client that numbers every sample of every network as the broker hands it over.

It connects under its own service key (``radio.recorder.identity``: it may read every network,
publish nothing) with a persistent session (a fixed client id, clean session off) and subscribes
to ``networks/#`` at QoS 1, so the broker keeps what arrives while it restarts and hands it over
when it is back. paho acknowledges a QoS 1 sample only once ``on_message`` returns, and the
sample is committed to the history file before that: a sample the broker considers delivered is
numbered.

A retained sample handed over by a (re)subscription is not numbered: it was published before, and
numbered then if the recorder was there. A payload that is not strict JSON (``radio/samples.py``:
``NaN``, ``1e999`` are what both doors refuse) is not a sample: it is logged and skipped, so
every number in the history is a sample every reader can parse. Works with either broker: it is a
client like any other.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Sequence
from typing import Final

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from radio import samples
from radio.config import Address
from radio.errors import reason as in_words
from radio.failover import FailoverCursor
from radio.history_store import HistoryStore
from radio.mqtt_clients import connect, make_client, stop_loop
from radio.registry import LiveRegistry, Registry
from radio.timestamps import utc_now
from radio.topics import MISSED_TOPIC, network_of_topic
from radio.urls import BrokerURL

log = logging.getLogger("radio.recorder")

CLIENT_ID: Final = "radio-recorder"
FILTER: Final = "networks/#"
REFRESH_INTERVAL: Final = 0.5
"""Seconds between checks of the configuration (a network's ``history`` setting may change)."""


def now() -> str:
    """The platform's time of acceptance: UTC, milliseconds, ``Z``."""
    return utc_now()


class Recorder:
    """Numbers samples into a ``HistoryStore`` until stopped."""

    def __init__(
        self,
        registry: LiveRegistry,
        store: HistoryStore,
        broker: Address | Sequence[Address],
        username: str,
        password: str,
    ) -> None:
        self.registry = registry
        self.store = store
        self._cursor = FailoverCursor([broker] if isinstance(broker, Address) else broker)
        """The nodes of a cluster, tried in turn: the next after a lost or failed connection."""
        self._stopping = False
        self._outage_said = False
        """Whether the current outage was logged: once per outage, not once per attempt."""
        self.subscribed = threading.Event()
        """Set once the broker granted the subscription (cleared while the link is down)."""
        self.failed: str | None = None
        """Why the history file could not be written, until the recorder reconnects to try again."""
        self._write_outage = False
        """The history file's failure was said, and its end not yet: said once per outage."""
        self._refreshed = 0.0
        self._client = make_client(
            BrokerURL("tcp", self.broker.host, self.broker.port),
            CLIENT_ID,
            credentials=(username, password),
            persistent=True,
            manual_ack=True,  # a sample is acknowledged once it is written, not before
        )
        self._client.reconnect_delay_set(min_delay=1, max_delay=5)
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    def start(self) -> None:
        """Connect in the background, and keep reconnecting."""
        connect(self._client, self.broker.host, self.broker.port, persistent=True, background=True)
        self._client.loop_start()

    @property
    def brokers(self) -> tuple[Address, ...]:
        """The nodes of a cluster, tried in turn."""
        return self._cursor.items

    @property
    def broker(self) -> Address:
        """The broker connected to (or tried next)."""
        return self._cursor.current

    def _next_broker(self, client: mqtt.Client, *, worked: bool = False) -> None:
        """On paho's thread: the next reconnect goes to the next node (a cluster keeps the session).

        paho paces the reconnects itself (``reconnect_delay_set``), so a failed round needs no wait here.
        """
        if len(self._cursor) < 2 or self._stopping:
            return
        self._cursor.move_on(worked=worked)
        connect(client, self.broker.host, self.broker.port, persistent=True, background=True)
        log.info("trying the broker at %s next", self.broker)

    def _on_connect_fail(self, client: mqtt.Client, _u: object) -> None:
        if not self._outage_said and not self._stopping:
            self._outage_said = True  # once per outage, not once per attempt
            failure = sys.exc_info()[1] or Exception("no reason given")
            log.warning("cannot reach the broker at %s (%s); retrying", self.broker, in_words(failure))
        self._next_broker(client)

    def stop(self) -> None:
        """Say goodbye (the broker keeps the session for the next start) and stop the network thread."""
        self._stopping = True
        self._client.disconnect()
        stop_loop(self._client)

    def _on_connect(
        self, client: mqtt.Client, _u: object, _f: object, reason: ReasonCode, _p: object
    ) -> None:
        if reason.is_failure:
            log.error("the broker at %s refused the recorder: %s", self.broker, reason)
            self._next_broker(client)
            return
        self.failed = None  # the broker sends again what was not acknowledged: tried afresh
        client.subscribe(FILTER, qos=1)

    def _on_disconnect(
        self, client: mqtt.Client, _u: object, _f: object, reason: ReasonCode, _p: object
    ) -> None:
        worked = self.subscribed.is_set()
        self.subscribed.clear()
        if reason.is_failure:
            if not self._write_outage:  # else its own doing, to try the history file again
                self._outage_said = True  # said here: the attempts that fail next say nothing
                log.warning("lost the broker at %s (%s): reconnecting", self.broker, reason)
            self._next_broker(client, worked=worked)

    def _on_subscribe(
        self, _c: mqtt.Client, _u: object, _mid: int, codes: list[ReasonCode], _p: object
    ) -> None:
        if any(code.is_failure for code in codes):
            log.error("the broker refused the recorder's subscription to %s", FILTER)
            return
        self.subscribed.set()
        self._outage_said = False
        log.info("recording %s from %s", FILTER, self.broker)

    def _on_message(self, client: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        if self.failed is not None:
            return  # not acknowledged: the broker sends it again once the recorder is back
        try:
            self._record(message)
        except sqlite3.Error as exc:
            self._cannot_write(client, exc)
            return
        if self._write_outage:
            self._write_outage = False
            log.warning("%s can be written again", self.store.path)
        client.ack(message.mid, message.qos)

    def _cannot_write(self, client: mqtt.Client, exc: sqlite3.Error) -> None:
        """Drop the connection, and take what was not acknowledged again as paho reconnects.

        paho reconnects after a second (``reconnect_delay_set``), and the broker sends the
        unacknowledged samples first, then the queue, as after any lost connection. A full disk is
        often a passing thing; a recorder that stopped for good would, under ``radio up``, stop
        the whole platform with it.
        """
        self.failed = f"cannot write {self.store.path}: {exc}"
        if not self._write_outage:
            self._write_outage = True
            log.error(
                "%s: no sample is acknowledged until it can be; the broker keeps them meanwhile, "
                "and the recorder tries again as it reconnects",
                self.failed,
            )
        held = client.socket()
        if isinstance(held, socket.socket):  # its TCP socket (TLS included)
            with contextlib.suppress(OSError):
                held.shutdown(socket.SHUT_RDWR)  # paho's loop sees the connection lost

    def _record(self, message: mqtt.MQTTMessage) -> None:
        if message.topic == MISSED_TOPIC:
            self._skip(message)
            return
        if message.retain:
            return  # a retained sample brought by the subscription: published, and numbered, before
        network = network_of_topic(message.topic)
        registry = self._registry()
        if network is None or network not in registry.networks:
            return
        payload = bytes(message.payload)
        try:
            samples.parse(payload)
        except samples.NotJSON as exc:
            log.warning("skipped a payload on %s (%d bytes): %s", message.topic, len(payload), exc)
            return
        text = payload.decode("utf-8")
        self.store.append(network, message.topic, text, now(), registry.networks[network].history)

    def _skip(self, message: mqtt.MQTTMessage) -> None:
        """The broker dropped samples from this session's queue: leave their numbers out."""
        try:
            missed = json.loads(bytes(message.payload))["networks"]
            counts = {str(n): int(c) for n, c in missed.items() if int(c) > 0}
        except (ValueError, TypeError, KeyError, AttributeError):
            log.warning("skipped a malformed report of missed samples: %r", bytes(message.payload)[:200])
            return
        registry = self._registry()
        for network, count in sorted(counts.items()):
            if network not in registry.networks:
                continue
            last = self.store.skip(network, count, registry.networks[network].history)
            log.warning(
                "the broker dropped %d samples of %s from the recorder's queue: numbers %d to %d are "
                "left out of the history (raise [broker] recorder_max_queued to keep more)",
                count,
                network,
                last - count + 1,
                last,
            )

    def _registry(self) -> Registry:
        clock = time.monotonic()
        if clock - self._refreshed >= REFRESH_INTERVAL:
            self._refreshed = clock
            self.registry.refresh()
        return self.registry.current
