"""The one paho set-up: protocol, session, transport and credentials as asked, and refusals said plainly."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from radio.mqtt_clients import describe, key_credentials, make_client, stop_loop
from radio.urls import BrokerURL

TCP = BrokerURL("tcp", "127.0.0.1", 1883)


@pytest.mark.parametrize(("version", "protocol"), [("3.1.1", mqtt.MQTTv311), ("5", mqtt.MQTTv5)])
def test_the_version_asked_is_the_protocol_spoken(version, protocol):
    assert make_client(TCP, "c", version=version).protocol == protocol


def test_a_websocket_url_gives_a_websocket_client_with_its_path():
    client = make_client(BrokerURL("websockets", "127.0.0.1", 8080, "/deep/mqtt"), "c")
    assert client.transport == "websockets"
    assert client._websocket_path == "/deep/mqtt"


def test_a_secret_is_presented_under_its_derived_username():
    secret = "a-secret"  # noqa: S105 - made up here
    username, password = key_credentials(secret) or ("", "")
    assert username.startswith("key-")
    assert password == secret
    assert key_credentials(None) is None
    assert key_credentials("") is None
    client = make_client(TCP, "c", credentials=(username, password))
    assert client.username == username


def test_a_refusal_over_mqtt_5_names_its_code_and_over_3_1_1_its_reason():
    refused = ReasonCode(PacketTypes.CONNACK, identifier=0x87)
    assert describe(refused, make_client(TCP, "c", version="5")) == "Not authorized (reason code 0x87)"
    assert describe(refused, make_client(TCP, "c")) == "Not authorized"


def test_a_broker_that_does_not_speak_mqtt_5_is_said_so():
    unsupported = ReasonCode(PacketTypes.CONNACK, identifier=0x84)
    said = describe(unsupported, make_client(TCP, "c", version="5"))
    assert said.endswith("the broker does not speak MQTT 5 (use --mqtt-version 3.1.1)")


class EndsAtTheCheck(mqtt.Client):
    """A client whose network thread ends (and paho clears ``_thread``) right after it is first read.

    The race cannot be timed for real: the thread must end between two reads of one attribute.
    """

    @property
    def _thread(self) -> threading.Thread | None:
        thread, self._held = self._held, None
        return thread

    @_thread.setter
    def _thread(self, value: threading.Thread | None) -> None:
        self._held = value


def test_stopping_the_network_thread_survives_it_ending_at_the_same_moment():
    client = EndsAtTheCheck(mqtt.CallbackAPIVersion.VERSION2)
    thread = threading.Thread(target=threading.Event().wait, args=(0.05,))
    thread.start()
    client._thread = thread
    stop_loop(client)
    assert not thread.is_alive()
    assert client._thread_terminate


def test_stopping_a_client_whose_thread_already_ended_does_nothing():
    client = make_client(TCP, "c")
    stop_loop(client)
    assert not client._thread_terminate
