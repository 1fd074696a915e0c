"""Loading auth and topic plugins the way amqtt does: a dotted class path and its options.

Radio's broker keeps amqtt's plugin API (``BaseAuthPlugin.authenticate``,
``BaseTopicPlugin.topic_filtering``, each plugin's nested ``Config`` dataclass), so the same
plugins serve Radio's broker and stock amqtt (which the tests and benchmarks compare it with).
A topic plugin may also offer the synchronous ``allows`` and ``reader`` that Radio's fan-out
calls once per delivery; one that does not is awaited through its coroutine.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import is_dataclass
from typing import Any, Final, Protocol, runtime_checkable

from amqtt.contexts import Action, BaseContext
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin

from radio.broker.attributes import PluginSession

AMQTT_VERSION: Final = "0.12.1"
"""The amqtt whose plugin API (and, in the tests and benchmarks, whose broker) Radio is built on."""


@runtime_checkable
class SyncTopicCheck(Protocol):
    """What a topic plugin may offer besides its coroutine, for checks on the hot path."""

    def allows(self, session: PluginSession, topic: str, action: Action) -> bool:
        """The same verdict as its ``topic_filtering``, without awaiting."""

    def reader(self, topic: str) -> Callable[[PluginSession], bool]:
        """Who may receive one message on ``topic``: built once per message.

        A plugin whose verdict depends only on the registry snapshot, the topic's network and the
        session's key says so with a class attribute ``reads_by_network = True``: the broker then
        asks it once per session, network and registry snapshot, not for every delivery.
        """


def load(spec: Mapping[str, Mapping[str, Any]]) -> list[Any]:
    """Instantiate each plugin from its dotted class path, its options parsed into its ``Config``."""
    plugins = []
    for path, options in spec.items():
        module_name, _, class_name = path.rpartition(".")
        plugin_class = getattr(importlib.import_module(module_name), class_name)
        context = BaseContext()
        config_class: Any = getattr(plugin_class, "Config", None)
        config: Any = config_class(**options) if is_dataclass(config_class) else dict(options)  # type: ignore[operator]
        context.config = config
        plugins.append(plugin_class(context))
    return plugins


def auth_plugins(plugins: list[Any]) -> list[BaseAuthPlugin]:
    """The plugins that decide on CONNECTs."""
    return [p for p in plugins if isinstance(p, BaseAuthPlugin)]


def topic_checks(plugins: list[Any]) -> list[SyncTopicCheck]:
    """The topic plugins, each able to answer synchronously (Radio's broker needs that)."""
    checks: list[SyncTopicCheck] = []
    for plugin in plugins:
        if isinstance(plugin, BaseTopicPlugin):
            if not isinstance(plugin, SyncTopicCheck):
                name = type(plugin).__name__
                msg = f"{name} has no synchronous allows() and reader(): Radio's broker needs them"
                raise TypeError(msg)
            checks.append(plugin)
    return checks
