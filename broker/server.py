"""``EmbeddedBroker``: the broker configured from the registry, started and stopped in a running loop.

It binds MQTT over TCP and MQTT over WebSocket, and their TLS twins (mqtts, wss) where the
configuration has ``[tls]`` and asks for them, reports the ports it actually bound (port 0 is
allowed everywhere, for tests and for running several platforms on one machine), and watches the
registry: when the keys file or the configuration changes, the new rights apply at once, and the
connections of a revoked or rotated key are closed.

The broker is Radio's own (``broker.core.RadioBroker``). Stock amqtt 0.12.1 can run in its place
(``broker_class=amqtt.broker.Broker``), with the same plugins: the tests and benchmarks compare
the two that way.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any, Final

from amqtt.broker import Broker

from radio.broker import attributes as attrs
from radio.broker.core import Listener, RadioBroker
from radio.broker.metrics import serve_metrics
from radio.broker.per_source import AnonymousCaps
from radio.broker.router import Limits
from radio.broker.sessions import SessionLimits
from radio.broker.store import Store
from radio.config import Address, BrokerSettings
from radio.errors import ConfigError
from radio.registry import LiveRegistry, Registry
from radio.tls import server_context
from radio.wire import packet_limit

log = logging.getLogger(__name__)

RELOAD_INTERVAL: Final = 0.25
"""Seconds between checks of the registry files: well inside the 2 s promised for a revocation."""


def limits_from(settings: BrokerSettings) -> Limits:
    """The per-client limits a configuration sets."""
    return Limits(
        keyed=SessionLimits(settings.max_queued, settings.max_queued_bytes, settings.session_expiry),
        anonymous=SessionLimits(
            settings.anonymous_max_queued,
            settings.anonymous_max_queued_bytes,
            settings.anonymous_session_expiry,
        ),
        service=SessionLimits(
            settings.recorder_max_queued,
            settings.recorder_max_queued_bytes,
            settings.session_expiry,
            report_missed=True,
        ),
        max_filters=settings.max_filters,
        max_inflight=settings.max_inflight,
        max_incoming_qos2=settings.max_incoming_qos2,
        send_buffer=settings.send_buffer,
        send_buffer_max=settings.send_buffer_max,
        send_buffer_total=settings.send_buffer_total,
        anonymous_caps=AnonymousCaps(
            settings.anonymous_max_sessions,
            settings.anonymous_max_sessions_per_address,
            settings.anonymous_total_queued_bytes,
            settings.anonymous_queued_bytes_per_address,
            settings.anonymous_max_connections_per_address,
        ),
        max_sessions_per_key=settings.max_sessions_per_key,
        max_queued_bytes_per_key=settings.max_queued_bytes_per_key,
        max_connections_per_key=settings.max_connections_per_key,
        max_shared_per_source=settings.max_shared_per_source,
    )


class EmbeddedBroker:
    """One broker process's worth of MQTT, started and stopped inside a running event loop."""

    def __init__(
        self,
        registry: LiveRegistry,
        *,
        mqtt: Address | None = None,
        websocket: Address | None = None,
        mqtts: Address | None = None,
        wss: Address | None = None,
        broker_class: type[Any] = RadioBroker,
        reload_interval: float = RELOAD_INTERVAL,
    ) -> None:
        self.registry = registry
        settings = registry.settings.broker
        self.mqtt = mqtt or settings.mqtt
        self.websocket = websocket or settings.websocket
        self.addresses: dict[str, Address] = {}
        """The listeners to bind, by name: an address given here turns its listener on."""
        for name, given, address, enabled in (
            ("default", mqtt, self.mqtt, settings.mqtt_enabled),
            ("ws", websocket, self.websocket, settings.websocket_enabled),
            ("mqtts", mqtts, mqtts or settings.mqtts, True),
            ("wss", wss, wss or settings.wss, True),
        ):
            if address is not None and (enabled or given is not None):
                self.addresses[name] = address
        self.broker_class = broker_class
        self.reload_interval = reload_interval
        self._radio: RadioBroker | None = None
        self._stock: Broker | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._metrics: Any = None

    @property
    def max_packet_size(self) -> int:
        """The configured packet limit, or the largest network payload plus a PUBLISH's headers."""
        return packet_limit(
            self.registry.settings.broker.max_packet_size, self.registry.current.largest_payload
        )

    def plugins(self) -> dict[str, dict[str, Any]]:
        """Radio's auth and topic plugins, by dotted class path, with their options."""
        options = {"registry": self.registry}
        return {"radio.broker.auth.RadioAuthPlugin": options, "radio.broker.acl.RadioTopicPlugin": options}

    async def start(self) -> None:
        """Bind the listeners and start watching the registry."""
        settings = self.registry.settings.broker
        if isinstance(self.broker_class, type) and issubclass(self.broker_class, Broker):
            await self._start_stock(settings)
        else:
            store = Store(settings.persistence) if settings.persistence is not None else None
            radio = self.broker_class(
                self.registry,
                self.plugins(),
                limits_from(settings),
                store=store,
                connect_timeout=settings.connect_timeout,
                max_packet_size=self.max_packet_size,
                max_connections=settings.max_connections,
                max_connecting_per_address=settings.max_connecting_per_address,
                log_repeats=settings.log_repeats,
            )
            try:
                await radio.start(self.listeners())
            except BaseException:
                if store is not None:
                    await store.close()
                raise
            self._radio = radio
            if settings.metrics is not None:
                self._metrics = serve_metrics(radio, settings.metrics)
        self._watcher = asyncio.create_task(self._watch_registry(), name="radio-registry-watcher")

    def listeners(self) -> list[Listener]:
        """What to bind; the TLS ones share one server context, checked before anything is bound."""
        tls = None
        if "mqtts" in self.addresses or "wss" in self.addresses:
            settings = self.registry.settings
            if settings.tls is None:
                msg = f"{settings.path}: mqtts and wss need a [tls] table with cert and key (radio certs dev)"
                raise ConfigError(msg)
            tls = server_context(settings.tls)
        return [
            Listener(name, name in {"ws", "wss"}, address, tls if name in {"mqtts", "wss"} else None)
            for name, address in self.addresses.items()
        ]

    async def _start_stock(self, settings: BrokerSettings) -> None:
        limit = settings.max_connections or -1
        stock = self.broker_class(
            {
                "listeners": {
                    "default": {"type": "tcp", "bind": str(self.mqtt), "max_connections": limit},
                    "ws": {"type": "ws", "bind": str(self.websocket), "max_connections": limit},
                },
                "plugins": self.plugins(),
            }
        )
        await stock.start()
        self._stock = stock

    async def stop(self) -> None:
        """Close every connection and the listeners; write what the store still holds."""
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None
        if self._metrics is not None:
            self._metrics.shutdown()
            self._metrics = None
        if self._radio is not None:
            await self._radio.stop()
            if self._radio.store is not None:
                await self._radio.store.close()
            self._radio = None
        stock = self._stock is not None
        if self._stock is not None:
            await self._stock.shutdown()
            self._stock = None
        # Stock amqtt's shutdown leaves the handlers of clients still connecting: end them, so each
        # closes its socket now rather than when the loop is gone.
        leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)
        if stock:
            await _close_stock_streams()

    @property
    def radio(self) -> RadioBroker:
        """Radio's running broker."""
        if self._radio is None:
            msg = "Radio's broker is not running"
            raise RuntimeError(msg)
        return self._radio

    @property
    def stock(self) -> Broker:
        """The running stock amqtt broker (only when comparing)."""
        if self._stock is None:
            msg = "stock amqtt is not running"
            raise RuntimeError(msg)
        return self._stock

    def port(self, listener: str) -> int:
        """The port a listener (``default`` for TCP, ``ws``, ``mqtts``, ``wss``) bound, port 0 made real."""
        if self._radio is not None:
            return self._radio.port(listener)
        server = self.stock._servers[listener].instance
        port: int = next(iter(server.sockets)).getsockname()[1]
        return port

    @property
    def mqtt_port(self) -> int:
        """The bound port of MQTT over TCP."""
        return self.port("default")

    @property
    def ws_port(self) -> int:
        """The bound port of MQTT over WebSocket."""
        return self.port("ws")

    @property
    def metrics_port(self) -> int | None:
        """The bound port of the metrics endpoint, if it is served."""
        return self._metrics.port if self._metrics is not None else None

    def bound(self) -> dict[str, Address]:
        """Each listener's address with the port it actually bound."""
        return {name: Address(address.host, self.port(name)) for name, address in self.addresses.items()}

    def session_count(self) -> int:
        """Sessions the broker holds, connected or not."""
        if self._radio is not None:
            return len(self._radio.router.sessions)
        return len(self.stock.sessions)

    def connection_count(self) -> int:
        """Connections open now, authenticated or not."""
        if self._radio is not None:
            return len(self._radio.connections)
        return sum(server.conn_count for server in self.stock._servers.values())

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
        if self._radio is not None:
            self._radio.enforce(registry)
            return
        closing = []
        for client_id, (session, handler) in list(self.stock.sessions.items()):
            name = attrs.key_name(session)
            if name is None:
                entitled = registry.allow_anonymous
            else:
                key = registry.keys.get(name)
                entitled = key is not None and key.digest == session.attributes.get(attrs.KEY_DIGEST)
            if entitled:
                continue
            if session.transitions.state == "connected" and handler.writer is not None:
                session.will_flag = False
                closing.append(handler.writer.close())
            elif name is None or name not in registry.keys:
                await self.stock._cleanup_session(client_id)
        await asyncio.gather(*closing, return_exceptions=True)


async def _close_stock_streams() -> None:
    """Close the connections stock amqtt keeps open past its shutdown, while their loop runs.

    Its cancelled handlers leave their stream writers open; collected once the loop is closed,
    each socket is a ResourceWarning in whatever code runs then. Stock amqtt is only run beside
    Radio's broker, for comparison; Radio's own connections are closed by its ``stop``.
    """
    gc.collect()  # those no longer reachable are closed by their own finaliser, now, on this loop
    loop = asyncio.get_running_loop()
    for obj in gc.get_objects():
        if isinstance(obj, asyncio.StreamWriter) and getattr(obj, "_loop", None) is loop:
            obj.close()
    await asyncio.sleep(0)  # each transport's connection_lost closes its socket
