"""Fixes for amqtt's defects, one module each, stacked as mixins by ``broker.server.RadioBroker``.

Each fix is a subclass of ``amqtt.broker.Broker`` that overrides as little as it can and calls
``super()`` wherever it can. Removing a fix is deleting its module, its import here and its name
in RadioBroker's bases. They are written against amqtt 0.12.1's internals, so any other version
is refused at import: a silent upgrade would leave the fixes patching code that is no longer there.
"""

from importlib.metadata import version

from radio.broker.fixes.bounded_handler_stop import BoundedHandlerStop
from radio.broker.fixes.connect_sequence import ConnectSequence
from radio.broker.fixes.dollar_publish import DollarPublishKeepsConnection
from radio.broker.fixes.fanout import FanoutOverSnapshotAtMinQos
from radio.broker.fixes.inline_topic_checks import InlineTopicChecks
from radio.broker.fixes.retained_on_subscribe import RetainedOnlyOnSubscribe
from radio.broker.fixes.socket_closed_on_exit import SocketClosedOnExit
from radio.broker.fixes.websocket_listener import WebSocketListenerLimits

AMQTT_VERSION = "0.12.1"

if version("amqtt") != AMQTT_VERSION:  # pragma: no cover - only on a broken install
    msg = f"Radio's broker fixes are written for amqtt {AMQTT_VERSION}, found {version('amqtt')}"
    raise ImportError(msg)

__all__ = [
    "AMQTT_VERSION",
    "BoundedHandlerStop",
    "ConnectSequence",
    "DollarPublishKeepsConnection",
    "FanoutOverSnapshotAtMinQos",
    "InlineTopicChecks",
    "RetainedOnlyOnSubscribe",
    "SocketClosedOnExit",
    "WebSocketListenerLimits",
]
