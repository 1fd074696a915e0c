"""What Radio's broker relies on in the libraries under it, so that an upgrade fails here, by name.

amqtt gives the plugin API (the auth and topic plugins, their ``Config``); websockets gives the
WebSocket listener, whose synchronous sending path (``protocol.send_binary`` then ``send_data``)
the broker uses to write without a task per write. Each check says which part changed.
"""

from __future__ import annotations

import inspect
from importlib.metadata import version

import pytest
import websockets
from amqtt.contexts import Action, BaseContext
from amqtt.plugins.base import BaseAuthPlugin, BasePlugin, BaseTopicPlugin
from websockets.asyncio.server import ServerConnection
from websockets.protocol import Protocol, State

from radio.broker.acl import RadioTopicPlugin
from radio.broker.auth import RadioAuthPlugin
from radio.broker.plugins import AMQTT_VERSION, SyncTopicCheck


def keyword_only(function: object) -> set[str]:
    return {
        name
        for name, parameter in inspect.signature(function).parameters.items()  # type: ignore[arg-type]
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    }


def test_the_pinned_amqtt_is_installed():
    assert version("amqtt") == AMQTT_VERSION, (
        "pyproject pins amqtt; radio.broker.plugins names the same version"
    )


def test_amqtts_plugin_api_is_what_the_plugins_implement():
    assert keyword_only(BaseAuthPlugin.authenticate) == {"session"}, "BaseAuthPlugin.authenticate changed"
    assert keyword_only(BaseTopicPlugin.topic_filtering) == {"session", "topic", "action"}, (
        "BaseTopicPlugin.topic_filtering changed"
    )
    assert {a.name for a in Action} >= {"SUBSCRIBE", "PUBLISH", "RECEIVE"}, "amqtt's Action lost a member"
    assert list(inspect.signature(BasePlugin.__init__).parameters) == ["self", "context"], (
        "BasePlugin.__init__ no longer takes only a context"
    )
    context = BaseContext()
    assert hasattr(context, "config"), "BaseContext has no config for the plugin's Config"


def test_radios_plugins_offer_the_synchronous_checks_the_broker_calls():
    assert issubclass(RadioAuthPlugin, BaseAuthPlugin)
    assert issubclass(RadioTopicPlugin, BaseTopicPlugin)
    for name in ("allows", "reader"):
        assert callable(getattr(RadioTopicPlugin, name, None)), f"RadioTopicPlugin.{name} is missing"
    assert {"allows", "reader"} <= set(dir(SyncTopicCheck))


def test_websockets_sending_path_is_still_synchronous():
    assert version("websockets") == "15.0.1", "pyproject pins websockets 15.0.1"
    assert callable(getattr(Protocol, "send_binary", None)), "websockets' Protocol.send_binary is gone"
    assert callable(getattr(ServerConnection, "send_data", None)), "ServerConnection.send_data is gone"
    assert not inspect.iscoroutinefunction(ServerConnection.send_data), "send_data became a coroutine"
    assert inspect.iscoroutinefunction(ServerConnection.drain), (
        "ServerConnection.drain is no longer awaitable"
    )
    assert State.OPEN.name == "OPEN"


@pytest.mark.parametrize("option", ["ping_interval", "max_size", "subprotocols", "logger"])
def test_websockets_serve_takes_the_options_the_listener_sets(option):
    assert option in inspect.signature(websockets.serve.__init__).parameters, (
        f"websockets.serve lost {option}"
    )
