"""One persistent MQTT connection per process, and a publish that returns only once the broker has it.

paho's network thread is started once (``loop_start``); each request publishes at QoS 1 and waits
for the PUBACK with ``wait_for_publish``: never an event loop inside a request. Under a
pre-forking server every worker makes its own connection, after the fork.

The bridge's promise is that a 200 means the broker has the sample and a 503 means the caller
should retry. So a sample is never left in paho's queue to go out later, after its request was
answered 503: a publish attempted while the link is down is dropped at once, and whatever is
still unacknowledged when the link comes back is dropped instead of resent.

Over TLS (``tls``, an ``ssl.SSLContext`` from ``radio.tls.client_context``) the broker's
certificate is verified before the bridge's key is sent; a certificate that cannot be verified is
logged as one line (once per reason) and the link keeps trying, answering 503 meanwhile, so that
a renewed certificate is picked up without a restart.
"""

from __future__ import annotations

import logging
import os
import ssl
import sys
import threading
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from radio.config import Address
from radio.tls import verify_failure

log = logging.getLogger("radio.bridge")


class BrokerUnavailable(Exception):
    """The sample was not published: the broker is unreachable or did not confirm in time."""


class Publisher:
    """This process's link to the broker, under the bridge's own key."""

    def __init__(
        self,
        broker: Address,
        username: str,
        password: str,
        timeout: float = 5.0,
        *,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.broker = broker
        self.timeout = timeout
        self._connected = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"radio-bridge-{os.getpid()}-{uuid.uuid4().hex[:8]}",
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        if tls is not None:
            self._client.tls_set_context(tls)
        self._last_refusal: str | None = None
        self._client.username_pw_set(username, password)
        # Retry quickly: requests are waiting (up to the timeout) for the link to come back.
        self._client.reconnect_delay_set(min_delay=1, max_delay=2)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_connect_fail = self._on_connect_fail
        self._started = False

    def start(self) -> None:
        """Connect in the background; publishing waits (up to the timeout) for the link."""
        if self._started:
            return
        self._started = True
        self._client.connect_async(self.broker.host, self.broker.port, keepalive=30)
        self._client.loop_start()

    def stop(self) -> None:
        """Close the link."""
        if self._started:
            self._client.disconnect()
            self._client.loop_stop()
            self._started = False

    @property
    def connected(self) -> bool:
        """Whether the broker link is up right now."""
        return self._connected.is_set()

    def publish(self, topic: str, payload: bytes, retain: bool) -> None:
        """Publish at QoS 1 and return once the broker acknowledged it; else BrokerUnavailable."""
        deadline = time.monotonic() + self.timeout
        if not self._connected.wait(self.timeout):
            msg = "the broker is unreachable: nothing was published, retry later"
            raise BrokerUnavailable(msg)
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self._client.drop_out_messages()
            msg = "the broker link dropped: nothing was published, retry later"
            raise BrokerUnavailable(msg)
        try:
            info.wait_for_publish(max(deadline - time.monotonic(), 0.001))
            published = info.is_published()
        except (RuntimeError, ValueError):
            published = False
        if not published:
            msg = f"the broker did not confirm the sample within {self.timeout:g} s: retry later"
            raise BrokerUnavailable(msg)

    def _on_connect(
        self, client: mqtt.Client, _u: object, _f: object, reason: ReasonCode, _p: object
    ) -> None:
        if reason.is_failure:
            log.error("the broker refused the bridge's key: %s", reason)
            return
        # Every request with an unacknowledged sample has been (or will be) answered 503.
        dropped = client.drop_out_messages()
        if dropped:
            log.warning("dropped %d unconfirmed samples, already answered 503", len(dropped))
        log.info("connected to the broker at %s", self.broker)
        self._connected.set()

    def _on_connect_fail(self, _c: mqtt.Client, _u: object) -> None:
        """Called inside paho's ``except``: a refused certificate is said once, not at every retry."""
        refusal = verify_failure(sys.exc_info()[1] or Exception(), f"the broker at {self.broker}")
        if refusal is not None and refusal != self._last_refusal:
            log.error("%s", refusal)
        self._last_refusal = refusal

    def _on_disconnect(self, _c: mqtt.Client, _u: object, _f: object, reason: ReasonCode, _p: object) -> None:
        if self._connected.is_set():
            log.warning("lost the broker at %s (%s); reconnecting", self.broker, reason)
        self._connected.clear()
