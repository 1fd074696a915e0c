"""A blocking MQTT client for tests: real paho underneath, every step awaited on an event."""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.client import ConnectFlags
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from polling import until

from radio.mqtt_clients import stop_loop

TIMEOUT = 10.0
NOT_AUTHORIZED = 135  # paho reports MQTT 3.1.1's CONNACK code 5 as MQTT 5's "Not authorized"
BAD_CREDENTIALS = 134  # MQTT 5's "Bad user name or password"
REFUSED = {4: 0x80, 5: 0x87}
"""A refused SUBSCRIBE's code: MQTT 3.1.1 has one, MQTT 5 says "not authorized"."""


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: object = None


class Client:
    """One MQTT connection over TCP or WebSocket, with the broker's answers awaited, never slept on."""

    def __init__(
        self,
        transport: str,
        port: int,
        username: str | None = None,
        password: str | None = None,
        *,
        client_id: str | None = None,
        clean_session: bool = True,
        protocol: int = 4,
    ) -> None:
        self.client_id = client_id if client_id is not None else f"test-{uuid.uuid4().hex[:12]}"
        self.protocol = protocol
        self.refused = REFUSED[protocol]
        self._clean = clean_session
        self._paho = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            # MQTT 5 has no clean session: clean start and a session expiry (connect()) say it.
            clean_session=clean_session if protocol == 4 else None,
            protocol=mqtt.MQTTv311 if protocol == 4 else mqtt.MQTTv5,
            transport="websockets" if transport == "ws" else "tcp",
            # A test sees each disconnect as it happens; paho's reconnecting would also hold close()
            # for up to a second, in a sleep of its loop thread.
            reconnect_on_failure=False,
        )
        if transport == "ws":
            self._paho.ws_set_options(path="/mqtt")
        if username is not None:
            self._paho.username_pw_set(username, password)
        self.port = port
        self.messages: queue.Queue[Message] = queue.Queue()
        self.connack: ReasonCode | None = None
        self.connack_properties: Properties | None = None
        self.session_present: bool | None = None
        self.disconnect_reason: ReasonCode | None = None
        self._connack = threading.Event()
        self.disconnected = threading.Event()
        self._subacks: dict[int, list[int]] = {}
        self._suback = threading.Condition()
        self._paho.on_connect = self._on_connect
        self._paho.on_disconnect = self._on_disconnect
        self._paho.on_message = self._on_message
        self._paho.on_subscribe = self._on_subscribe
        self._paho.on_unsubscribe = self._on_subscribe  # UNSUBACK: a code per filter, as SUBACK

    def will_set(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> None:
        self._paho.will_set(topic, payload, qos, retain, properties)

    def connect(self, keepalive: int = 60, properties: Properties | None = None) -> int:
        """Connect and return the CONNACK as paho reports it (0 accepted, 135 not authorized).

        An MQTT 5 client that keeps its session asks the longest expiry (the broker bounds it).
        """
        if self.protocol == 5:
            if properties is None and not self._clean:
                properties = Properties(PacketTypes.CONNECT)
                properties.SessionExpiryInterval = 0xFFFFFFFF
            self._paho.connect(
                "127.0.0.1", self.port, keepalive=keepalive, clean_start=self._clean, properties=properties
            )
        else:
            self._paho.connect("127.0.0.1", self.port, keepalive=keepalive)
        self._paho.loop_start()
        if not self._connack.wait(TIMEOUT):
            msg = "no CONNACK"
            raise TimeoutError(msg)
        assert self.connack is not None
        return self.connack.value

    def subscribe(self, topic_filter: str, qos: int = 0, options: SubscribeOptions | None = None) -> int:
        """Subscribe and return the granted QoS, or the refusal's code (``self.refused``: no right)."""
        if options is not None:
            result, mid = self._paho.subscribe(topic_filter, options=options)
        else:
            result, mid = self._paho.subscribe(topic_filter, qos)
        assert result == mqtt.MQTT_ERR_SUCCESS
        return self._answer(mid, f"no SUBACK for {topic_filter}")

    def unsubscribe(self, topic_filter: str) -> int:
        """Unsubscribe and return the UNSUBACK's code (MQTT 5: 0 held, 17 not held)."""
        result, mid = self._paho.unsubscribe(topic_filter)
        assert result == mqtt.MQTT_ERR_SUCCESS
        return self._answer(mid, f"no UNSUBACK for {topic_filter}")

    def _answer(self, mid: int, missing: str) -> int:
        """The first code of the SUBACK or UNSUBACK to packet ``mid``, once it came."""
        with self._suback:
            if not self._suback.wait_for(lambda: mid in self._subacks, TIMEOUT):
                raise TimeoutError(missing)
            return self._subacks.pop(mid)[0]

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> None:
        """Publish and wait until it left (QoS 0) or was acknowledged (QoS 1 and 2)."""
        info = self._paho.publish(topic, payload, qos, retain, properties)
        info.wait_for_publish(TIMEOUT)
        assert info.is_published()

    def expect(self, count: int, timeout: float = TIMEOUT) -> list[Message]:
        """The next ``count`` messages, in arrival order."""
        return [self.messages.get(timeout=timeout) for _ in range(count)]

    def received_so_far(self) -> list[Message]:
        """Whatever has arrived and not been taken yet."""
        found = []
        while True:
            try:
                found.append(self.messages.get_nowait())
            except queue.Empty:
                return found

    def close(self) -> None:
        """Disconnect cleanly and wait for it, so no socket is left for the garbage collector."""
        if self._paho.is_connected():
            self._paho.disconnect()
            self.disconnected.wait(TIMEOUT)
        stop_loop(self._paho)
        # paho closes its socket and its wake-up socket pair only in __del__, which the garbage
        # collector may run after finalizing the sockets themselves (a ResourceWarning).
        self._paho._reset_sockets()

    def _on_connect(
        self, _c: object, _u: object, flags: ConnectFlags, reason: ReasonCode, p: Properties
    ) -> None:
        self.session_present = flags.session_present
        self.connack = reason
        self.connack_properties = p
        self._connack.set()

    def _on_disconnect(self, _c: object, _u: object, _f: object, reason: ReasonCode, _p: object) -> None:
        self.disconnect_reason = reason
        if not self._connack.is_set():
            # Refused or dropped before a CONNACK arrived: report it as such.
            self.connack = reason
            self._connack.set()
        self.disconnected.set()

    def _on_message(self, _c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        properties = getattr(message, "properties", None)
        self.messages.put(
            Message(message.topic, message.payload, message.qos, bool(message.retain), properties)
        )

    def _on_subscribe(self, _c: object, _u: object, mid: int, codes: list[ReasonCode], _p: object) -> None:
        with self._suback:
            self._subacks[mid] = [c.value for c in codes]
            self._suback.notify_all()


@contextlib.contextmanager
def connected(port: int, key: str | None = None, secret: str | None = None) -> Iterator[Client]:
    """A client of ``key`` (None: anonymous) connected over TCP, closed afterwards."""
    client = Client("tcp", port, key, secret)
    try:
        assert client.connect() == 0
        yield client
    finally:
        client.close()


@contextlib.contextmanager
def listening(
    port: int, key: str | None, secret: str | None, topic_filter: str, qos: int = 1
) -> Iterator[Client]:
    """A client of ``key`` (None: anonymous) subscribed to ``topic_filter`` over TCP, closed afterwards."""
    client = Client("tcp", port, key, secret)
    try:
        assert client.connect() == 0
        assert client.subscribe(topic_filter, qos=qos) == qos
        yield client
    finally:
        client.close()


def away_on_a(port: int, secret: str, client_id: str) -> None:
    """reader_a's persistent session ``client_id`` subscribes to A, then leaves: A is queued for it."""
    away = Client("tcp", port, "reader_a", secret, client_id=client_id, clean_session=False)
    assert away.connect() == 0
    assert away.subscribe("networks/A", qos=1) == 1
    away.close()


def away_while_published(port: int, secrets: dict[str, str]) -> None:
    """Leave a persistent session of reader_a ("durable") subscribed to A, then, while it is away,
    an admin publishes a retained sample to pub and a live one to A (queued for "durable")."""
    away_on_a(port, secrets["reader_a"], "durable")
    admin = Client("tcp", port, "admin", secrets["admin"])
    assert admin.connect() == 0
    admin.publish("networks/pub", b'{"last": "value"}', qos=1, retain=True)
    admin.publish("networks/A", b'{"queued": "while away"}', qos=1)
    admin.close()


def unused_port() -> int:
    """A port of 127.0.0.1 that nothing listens on: a connect there is refused at once."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        return int(unused.getsockname()[1])


def failed_connects(client: mqtt.Client) -> list[int]:
    """A list that grows by one at each connect paho fails to make; the client's own callback still runs."""
    failures: list[int] = []
    own = client.on_connect_fail

    def counted(paho: mqtt.Client, userdata: object) -> None:
        failures.append(1)
        if own is not None:
            own(paho, userdata)

    client.on_connect_fail = counted
    return failures


def said_while_unreachable(
    caplog: Any, client: mqtt.Client, start: Callable[[], None], stop: Callable[[], None]
) -> list[str]:
    """What a part logged of "cannot reach" between its ``start`` and its ``stop``, its paho
    ``client`` having failed two connects (paho retries after a second)."""
    failures = failed_connects(client)
    start()
    try:
        assert until(lambda: len(failures) >= 2, within=20)
    finally:
        stop()
    return [r.getMessage() for r in caplog.records if "cannot reach" in r.getMessage()]
