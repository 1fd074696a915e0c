"""``EmbeddedBroker``: amqtt configured from the registry, with Radio's rights and fixes.

It binds MQTT over TCP and MQTT over WebSocket, reports the ports it actually bound (port 0 is
allowed everywhere, for tests and for running several platforms on one machine), and watches the
registry: when the keys file or the configuration changes, the new rights apply at once, and the
connections of a revoked or rotated key are closed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

from amqtt.broker import Broker, RetainedApplicationMessage
from amqtt.contexts import ListenerConfig
from amqtt.session import ApplicationMessage, Session

from radio.broker import session as attrs
from radio.broker.fixes import (
    BoundedHandlerStop,
    ConnectSequence,
    DollarPublishKeepsConnection,
    FanoutOverSnapshotAtMinQos,
    InlineTopicChecks,
    RetainedOnlyOnSubscribe,
    SocketClosedOnExit,
    WebSocketListenerLimits,
)
from radio.broker.fixes.packet_gate import packet_limit
from radio.broker.persistence import SAVE_INTERVAL, Message, Snapshot, Store, StoredSession
from radio.config import Address
from radio.registry import LiveRegistry, Registry
from radio.topics import network_of_topic

log = logging.getLogger("radio.broker")

RELOAD_INTERVAL: Final = 0.25
"""Seconds between checks of the registry files: well inside the 2 s promised for a revocation."""
WEBSOCKET_PATH: Final = "/mqtt"
"""The path clients use; amqtt's WebSocket listener accepts any path, so this is advisory."""


class RadioBroker(
    ConnectSequence,
    WebSocketListenerLimits,
    RetainedOnlyOnSubscribe,
    FanoutOverSnapshotAtMinQos,  # before DollarPublish: its publish QoS must wrap every delivery
    DollarPublishKeepsConnection,
    SocketClosedOnExit,
    BoundedHandlerStop,
    InlineTopicChecks,
    Broker,
):
    """amqtt's broker with the fixes of ``broker.fixes`` and Radio's network settings.

    It owns its event loop: stopping it ends every task left on the loop (see EmbeddedBroker.stop).
    """

    registry: LiveRegistry | None = None
    restore_from: Snapshot | None = None

    def _may_take_over(self, existing: Session, incoming: Session) -> bool:
        """A client id belongs to one key: another key can neither resume its session nor close it."""
        return attrs.key_name(existing) == attrs.key_name(incoming)

    async def _authenticate(self, session: Session, listener: ListenerConfig) -> bool:
        """Note the listener (tcp or ws) so the log can say where a client came in."""
        session.attributes[attrs.TRANSPORT] = str(listener.type)
        return await super()._authenticate(session, listener)

    async def _start_listeners(self) -> None:
        """Restore what the last run saved before the first client can connect."""
        if self.restore_from is not None:
            self.restore(self.restore_from)
        await super()._start_listeners()

    def restore(self, snapshot: Snapshot) -> None:
        """Put saved retained messages and persistent sessions back, as offline sessions."""
        registry = self.registry.current if self.registry is not None else None
        for message in snapshot.retained:
            self._retained_messages[message.topic] = RetainedApplicationMessage(
                None, message.topic, message.data, message.qos
            )
        for stored in snapshot.sessions:
            name = stored.attributes.get(attrs.KEY_NAME)
            if registry is not None and not (
                registry.allow_anonymous if name is None else name in registry.keys
            ):
                continue  # its key was revoked while the broker was down
            handler, session = self.create_offline_session(stored.client_id)
            session.clean_session = False
            session.attributes.update(stored.attributes)
            self._sessions[stored.client_id] = (session, handler)
            for topic_filter, qos in stored.subscriptions:
                self._subscriptions.setdefault(topic_filter, []).append((session, qos))
            for message in stored.queued:
                session.retained_messages.put_nowait(
                    RetainedApplicationMessage(None, message.topic, message.data, message.qos)
                )
        if snapshot.retained or snapshot.sessions:
            log.info(
                "restored %d retained message(s) and %d persistent session(s)",
                len(snapshot.retained),
                len(snapshot.sessions),
            )

    def snapshot(self) -> Snapshot:
        """The durable state now: retained messages, and every persistent session with its queue."""
        retained = [
            Message(topic, bytes(message.data), message.qos or 0)
            for topic, message in self._retained_messages.items()
            if message.data
        ]
        subscriptions: dict[str, list[tuple[str, int]]] = {}
        for topic_filter, subscribers in self._subscriptions.items():
            for session, qos in subscribers:
                if session.clean_session is False and session.client_id is not None:
                    subscriptions.setdefault(session.client_id, []).append((topic_filter, qos))
        sessions = []
        for client_id, (session, _) in self._sessions.items():
            if session.clean_session is not False:
                continue
            waiting = [*session.inflight_out.values(), *_peek(session.retained_messages)]
            sessions.append(
                StoredSession(
                    client_id,
                    {k: v for k, v in session.attributes.items() if k in (attrs.KEY_NAME, attrs.KEY_DIGEST)},
                    sorted(subscriptions.get(client_id, [])),
                    [Message(m.topic, bytes(m.data or b""), m.qos or 0) for m in waiting],
                )
            )
        return Snapshot(retained=retained, sessions=sessions)

    async def retain_message(
        self,
        source_session: Session | None,
        topic_name: str | None,
        data: bytes | bytearray | None,
        qos: int | None = None,
    ) -> None:
        """Keep a last sample only for networks that say ``retain = true``."""
        if self.registry is not None and topic_name is not None:
            network = self.registry.current.networks.get(network_of_topic(topic_name) or "")
            if network is not None and not network.retain:
                return
        await super().retain_message(source_session, topic_name, data, qos)


def _peek(queue: asyncio.Queue[ApplicationMessage]) -> list[ApplicationMessage]:
    """What a queue holds, left in place (no await between taking and putting back)."""
    items = [queue.get_nowait() for _ in range(queue.qsize())]
    for item in items:
        queue.put_nowait(item)
    return items


class EmbeddedBroker:
    """One broker process's worth of MQTT, started and stopped inside a running event loop."""

    def __init__(
        self,
        registry: LiveRegistry,
        *,
        mqtt: Address | None = None,
        websocket: Address | None = None,
        broker_class: type[Broker] = RadioBroker,
        reload_interval: float = RELOAD_INTERVAL,
    ) -> None:
        self.registry = registry
        self.mqtt = mqtt or registry.settings.broker.mqtt
        self.websocket = websocket or registry.settings.broker.websocket
        self.broker_class = broker_class
        self.reload_interval = reload_interval
        self._amqtt: Broker | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._saver: asyncio.Task[None] | None = None
        self.store: Store | None = None
        self._saved: Snapshot | None = None

    @property
    def max_packet_size(self) -> int:
        """The configured packet limit, or the largest network payload plus a PUBLISH's headers."""
        return packet_limit(
            self.registry.settings.broker.max_packet_size, self.registry.current.largest_payload
        )

    def amqtt_config(self) -> dict[str, Any]:
        """Amqtt's configuration: two listeners, and Radio's plugins in place of every default."""
        plugin_config = {"registry": self.registry}
        limit = self.registry.settings.broker.max_connections or -1
        return {
            "listeners": {
                "default": {"type": "tcp", "bind": str(self.mqtt), "max_connections": limit},
                "ws": {"type": "ws", "bind": str(self.websocket), "max_connections": limit},
            },
            "plugins": {
                "radio.broker.auth.RadioAuthPlugin": plugin_config,
                "radio.broker.acl.RadioTopicPlugin": plugin_config,
            },
        }

    async def start(self) -> None:
        """Bind the listeners and start watching the registry."""
        amqtt = self.broker_class(self.amqtt_config())
        if isinstance(amqtt, RadioBroker):
            amqtt.registry = self.registry
            amqtt.connect_timeout = self.registry.settings.broker.connect_timeout
            amqtt.max_packet_size = self.max_packet_size
            path = self.registry.settings.broker.persistence
            if path is not None:
                self.store = Store(path)
                self._saved = amqtt.restore_from = self.store.load()
        try:
            await amqtt.start()
        except BaseException:
            if self.store is not None:
                self.store.close()
                self.store = None
            raise
        self._amqtt = amqtt
        self._watcher = asyncio.create_task(self._watch_registry(), name="radio-registry-watcher")
        if self.store is not None:
            self._saver = asyncio.create_task(self._save_changes(), name="radio-persistence")

    async def stop(self) -> None:
        """Close every connection and the listeners."""
        for task in (self._watcher, self._saver):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._watcher = self._saver = None
        if self._amqtt is not None:
            self.save()  # before shutdown, which forgets every session
            await self._amqtt.shutdown()
            self._amqtt = None
        if self.store is not None:
            self.store.close()
            self.store = None
        # amqtt's shutdown leaves the handlers of clients still connecting: end them, so each
        # closes its socket now rather than when the loop is gone.
        leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)

    @property
    def amqtt(self) -> Broker:
        """The running amqtt broker."""
        if self._amqtt is None:
            msg = "the broker is not running"
            raise RuntimeError(msg)
        return self._amqtt

    def port(self, listener: str) -> int:
        """The port a listener (``default`` for TCP, ``ws``) actually bound: port 0 becomes a real one."""
        server = self.amqtt._servers[listener].instance
        sockets = server.sockets
        port: int = next(iter(sockets)).getsockname()[1]
        return port

    @property
    def mqtt_port(self) -> int:
        """The bound port of MQTT over TCP."""
        return self.port("default")

    @property
    def ws_port(self) -> int:
        """The bound port of MQTT over WebSocket."""
        return self.port("ws")

    def save(self) -> None:
        """Write the durable state if it changed since the last save."""
        if self.store is None or not isinstance(self._amqtt, RadioBroker):
            return
        snapshot = self._amqtt.snapshot()
        if snapshot != self._saved:
            self.store.save(snapshot)
            self._saved = snapshot

    async def _save_changes(self) -> None:
        while True:
            await asyncio.sleep(SAVE_INTERVAL)
            try:
                self.save()
            except Exception:
                log.exception("saving the broker's state failed; will retry")

    async def _watch_registry(self) -> None:
        while True:
            await asyncio.sleep(self.reload_interval)
            try:
                if self.registry.refresh():
                    await self.enforce(self.registry.current)
            except Exception:
                log.exception("applying a registry change failed; will retry on the next change")

    async def enforce(self, registry: Registry) -> None:
        """Close the connections whose key was revoked or rotated, and forget revoked keys' sessions."""
        closing = []
        for client_id, (session, handler) in list(self.amqtt.sessions.items()):
            name = attrs.key_name(session)
            if name is None:
                entitled = registry.allow_anonymous
            else:
                key = registry.keys.get(name)
                entitled = key is not None and key.digest == session.attributes.get(attrs.KEY_DIGEST)
            if entitled:
                continue
            if session.transitions.state == "connected" and handler.writer is not None:
                log.warning("closing %s: its key %r was revoked or rotated", attrs.describe(session), name)
                # The will is a publish: a key that lost its rights publishes nothing more.
                session.will_flag = False
                closing.append(handler.writer.close())
            elif name is None or name not in registry.keys:
                await self.amqtt._cleanup_session(client_id)
        await asyncio.gather(*closing, return_exceptions=True)
