"""The one way Radio's MQTT clients are made: the generators, the listener and the recorder.

Each needs the same paho set-up: the URL's transport (TCP, or WebSocket with its path), TLS that
verifies the broker against ``--ca`` or the system's trust store, the key as username and
password, a clean or a persistent session, and the protocol version, MQTT 3.1.1 or 5.
``make_client`` does it, and ``connect`` sends the CONNECT that goes with it: MQTT 5 asks for a
persistent session at connect time (clean start off, a session expiry), not when the client is
made, and paho's reconnects repeat what the first connect asked. ``stop_loop`` ends a client's
network thread without the race in paho's own ``loop_stop()``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from radio.credentials import secret_username
from radio.failover import FailoverCursor
from radio.tls import SYSTEM_TRUST, Trust
from radio.urls import DEFAULT_MQTT_VERSION, BrokerURL, MqttVersion

KEEPALIVE: Final = 30
"""Seconds between the client's PINGREQs on an idle link: a dead broker is noticed within a minute."""
FINAL_REFUSALS: Final = frozenset({134, 135})
"""CONNACK codes no retry cures: bad user name or password, not authorized (paho's codes for MQTT
3.1.1's 4 and 5, and MQTT 5's own). Any other (136, server unavailable; 128, unspecified) may pass,
on another broker or later."""
UNSUPPORTED_PROTOCOL_VERSION: Final = 0x84
"""MQTT 5's CONNACK code for a protocol version the broker does not speak (3.1.1's code 1)."""
SESSION_NEVER_EXPIRES: Final = 0xFFFFFFFF
"""MQTT 5's session expiry for a persistent session: kept like a 3.1.1 session with clean session
off, for as long as the broker's own settings keep it."""


def key_credentials(secret: str | None) -> tuple[str, str] | None:
    """The username and password a client holding a key's secret presents; None: anonymous."""
    return (secret_username(secret), secret) if secret else None


def make_client(
    url: BrokerURL,
    client_id: str,
    *,
    credentials: tuple[str, str] | None = None,
    persistent: bool = False,
    version: MqttVersion = DEFAULT_MQTT_VERSION,
    trust: Trust = SYSTEM_TRUST,
    manual_ack: bool = False,
) -> mqtt.Client:
    """A paho client for ``url``'s transport and security, not yet connected (``connect``).

    ``url`` fixes the transport, the WebSocket path and TLS for the client's life: the brokers a
    client fails over between are all of one kind (``radio.urls.parse_urls``).
    """
    if version == "5":  # the session is asked for at connect time
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            transport=url.transport,
            manual_ack=manual_ack,
        )
    else:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=not persistent,
            protocol=mqtt.MQTTv311,
            transport=url.transport,
            manual_ack=manual_ack,
        )
    if url.transport == "websockets":
        client.ws_set_options(path=url.path)
    if url.tls:  # mqtts:// or wss://: the CA given, else the system's trust store
        client.tls_set_context(trust.context())
    if credentials is not None:
        client.username_pw_set(*credentials)
    return client


def broker_cursor(url: BrokerURL | Sequence[BrokerURL]) -> FailoverCursor[BrokerURL]:
    """The brokers a client fails over between: at least one, all of one transport and security.

    A client's transport and TLS are fixed when it is made, so it could not follow a list mixing them.
    """
    cursor = FailoverCursor([url] if isinstance(url, BrokerURL) else url)
    if len({(u.transport, u.tls) for u in cursor.items}) > 1:
        msg = "a client needs broker URLs all of one transport (all mqtt://, mqtts://, ws:// or wss://)"
        raise ValueError(msg)
    return cursor


def is_mqtt5(client: mqtt.Client) -> bool:
    """Whether the client speaks MQTT 5 (its reason codes are then the broker's own)."""
    return bool(client.protocol == mqtt.MQTTv5)


def connect(
    client: mqtt.Client, host: str, port: int, *, persistent: bool = False, background: bool = False
) -> None:
    """CONNECT to a broker: now (raising OSError if it cannot be reached), or in paho's background.

    ``persistent`` must be what ``make_client`` was told: over MQTT 5 it becomes clean start off
    and a session that never expires, over 3.1.1 the client already says clean session off.
    """
    start = client.connect_async if background else client.connect
    if not is_mqtt5(client):
        start(host, port, keepalive=KEEPALIVE)
        return
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    if persistent:
        properties.SessionExpiryInterval = SESSION_NEVER_EXPIRES
    start(host, port, keepalive=KEEPALIVE, clean_start=not persistent, properties=properties)


def describe(reason: ReasonCode, client: mqtt.Client) -> str:
    """A broker's reason as a client prints it: over MQTT 5 with the code the broker sent."""
    if not is_mqtt5(client):
        return str(reason)
    said = f"{reason} (reason code 0x{reason.value:02X})"
    if reason.value == UNSUPPORTED_PROTOCOL_VERSION:  # a 3.1.1 broker's refusal of MQTT 5
        return f"{said}: the broker does not speak MQTT 5 (use --mqtt-version 3.1.1)"
    return said


def stop_loop(client: mqtt.Client) -> None:
    """Stop a client's network thread and wait for it: paho's ``loop_stop()``, without its race.

    paho's thread clears ``client._thread`` as it ends, which it does by itself after a
    DISCONNECT; ``loop_stop()`` reads that attribute to check it, then again to join it, and
    raises AttributeError when the thread ends between the two. Here it is read once.
    """
    thread = client._thread
    if thread is None:
        return
    client._thread_terminate = True
    if thread is not threading.current_thread():
        thread.join()
