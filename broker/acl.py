"""The amqtt topic plugin: every PUBLISH, SUBSCRIBE and delivery asks the registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from amqtt.contexts import Action
from amqtt.plugins.base import BaseTopicPlugin
from amqtt.session import Session

from radio.broker import attributes as attrs
from radio.registry import LiveRegistry
from radio.topics import network_of_topic


class RadioTopicPlugin(BaseTopicPlugin):
    """Applies design section 3: the rights of the session's key, as the registry says right now.

    RECEIVE runs once per message per subscriber, so it is two dict lookups and a string slice.
    Rights are looked up by key name on every call, so a changed key applies to open connections
    at once; a revoked or rotated key's connections are closed by the registry watcher.
    """

    reads_by_network = True
    """Its read verdict depends only on the registry snapshot, the topic's network and the
    session's key: the embedded broker may remember it per session until the registry changes."""

    @dataclass
    class Config:
        """The registry is shared with the auth plugin and the watcher that reloads it."""

        registry: LiveRegistry

    async def topic_filtering(
        self, *, session: Session | None = None, topic: str | None = None, action: Action | None = None
    ) -> bool:
        """Allow or deny one action on one topic (or, for SUBSCRIBE, one filter)."""
        if session is None or topic is None or action is None:
            return False
        return self.allows(session, topic, action)

    def reader(self, topic: str) -> Callable[[attrs.PluginSession], bool]:
        """Who may receive one message: worked out once per message, asked once per subscriber.

        The embedded broker's fan-out calls the result for every delivery, so it is one dict
        lookup and one set lookup against the registry snapshot current when the message came.
        """
        network = network_of_topic(topic)
        access = self.config.registry.current.access

        def may_read(session: attrs.PluginSession) -> bool:
            rights = access(attrs.key_name(session))
            return rights.admin or network in rights.read

        return may_read

    def allows(self, session: attrs.PluginSession, topic: str, action: Action) -> bool:
        """The verdict itself, synchronous: the broker asks it once per message per subscriber."""
        access = self.config.registry.current.access(attrs.key_name(session))
        if action is Action.RECEIVE:
            return bool(access.may_read(topic))
        if action is Action.PUBLISH:
            return bool(access.may_publish(topic))
        if action is Action.SUBSCRIBE:
            return bool(access.may_subscribe(topic))
        return False
