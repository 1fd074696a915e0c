"""``RadioBroker``: Radio's MQTT broker (3.1.1 and 5), with its listeners, plugins, store and timers.

It puts the parts together: ``listeners`` accept clients, each becomes a ``Connection``; the
``Router`` holds sessions, subscriptions and retained samples; the ``Store`` keeps what must
survive a restart; the auth and topic plugins (amqtt's plugin API) decide who may do what.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from amqtt.contexts import Action

from radio import memory
from radio.broker import access, listeners, plugins
from radio.broker.attributes import PluginSession
from radio.broker.connection import Connection, Link
from radio.broker.output import Flusher, SendBuffers
from radio.broker.per_source import Connecting
from radio.broker.router import Limits, Router
from radio.broker.sessions import Session
from radio.broker.store import Store
from radio.config import Address
from radio.logsummary import Summary
from radio.rates import SharedBuckets, platform_path
from radio.registry import LiveRegistry, Registry
from radio.usage import Meter, UsageError, usage_path
from radio.wire import reasons

log = logging.getLogger(__name__)

REFUSAL_LOG_EVERY: Final = 10.0
"""Connections refused over the limit are logged at most once per this many seconds, with a count."""
EXPIRY_CHECK: Final = 60.0
"""Seconds between sweeps for expired offline sessions (sooner when an expiry is shorter)."""
DELIVERIES_TICK: Final = 0.5
"""Seconds between hand-overs of listening keys' delivery counts to the meter."""


@dataclass(frozen=True)
class Listener:
    """One way in: its name (``default``, ``ws``, ``mqtts``, ``wss``), kind, address and TLS context."""

    name: str
    websocket: bool
    address: Address
    tls: ssl.SSLContext | None = None


class RadioBroker:
    """One broker: listeners, connections, router and store, on the running event loop."""

    def __init__(
        self,
        registry: LiveRegistry,
        plugin_spec: Mapping[str, Mapping[str, Any]],
        limits: Limits,
        *,
        store: Store | None = None,
        connect_timeout: float = 10.0,
        max_packet_size: int = 268_435_455,
        max_connections: int = 0,
        max_connecting_per_address: int = 256,
        log_repeats: int = 20,
    ) -> None:
        self.registry = registry
        loaded = plugins.load(plugin_spec)
        self._auth = plugins.auth_plugins(loaded)
        self._checks = plugins.topic_checks(loaded)
        self.store = store
        self.connect_timeout = connect_timeout
        self.max_packet_size = max_packet_size
        self.max_connections = max_connections
        self.flusher = Flusher()
        """Writes to clients, flushed once per turn of the loop for every connection."""
        self.send_buffers = SendBuffers(limits.send_buffer, limits.send_buffer_max, limits.send_buffer_total)
        """The room bytes may take waiting to be written, per client and in all."""
        # The registry snapshot is read for every sample: a C-level call, not a Python frame each.
        current = functools.partial(getattr, registry, "current")
        self.router = Router(current, self._allows, self._reader, limits, store)
        self.router.reads_by_network = all(
            getattr(check, "reads_by_network", False) for check in self._checks
        )
        self.connections: set[Connection] = set()
        self.connecting = Connecting(max_connecting_per_address)
        """Sockets that have not completed their CONNECT, per source address."""
        self.log_summary = Summary(log_repeats)
        self._per_listener: dict[str, int] = {}
        self._servers: dict[str, listeners.Listening] = {}
        self._over_limit = 0
        self._over_limit_logged = 0.0
        self._sweeper: asyncio.Task[None] | None = None
        self._expiry: asyncio.Task[None] | None = None
        self._trimmer: asyncio.Task[None] | None = None
        self._tallies: asyncio.Task[None] | None = None
        self.meter: Meter | None = None
        self.buckets: SharedBuckets | None = None

    # Plugins.
    def _allows(self, session: PluginSession, topic: str, action: Action) -> bool:
        return all(check.allows(session, topic, action) for check in self._checks)

    def _reader(self, topic: str) -> Any:
        readers = [check.reader(topic) for check in self._checks]
        if len(readers) == 1:
            return readers[0]
        return lambda session: all(r(session) for r in readers)

    async def authenticate(self, session: Session) -> bool:
        """Amqtt's rule: every plugin that answers must say yes, and at least one must answer."""
        verdicts = [await plugin.authenticate(session=session) for plugin in self._auth]  # type: ignore[arg-type]
        answered = [v for v in verdicts if v is not None]
        return bool(answered) and all(answered)

    # Lifecycle.
    async def start(self, ways_in: Sequence[Listener]) -> None:
        """Bind the listeners, then start the store's writer and the expiry sweeper."""
        try:
            self.meter = Meter(usage_path(self.registry.settings.state_dir))
        except UsageError as exc:
            log.error("%s: usage is not metered and quotas are not enforced on this broker", exc)  # noqa: TRY400
        else:
            self.meter.start()
        self.router.gate = access.Gate(
            self.router.registry, self.meter, self.router.retained_full, self._rate_buckets()
        )
        self.log_summary.attach()
        if self.store is not None:
            self.router.restore(self.store.load(), self.registry.current)
            self.store.start()
            # What the restore reserved (row numbers, each session's packet ids) is on disk before
            # any client is sent anything under it.
            written: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            self.store.after_commit(written.set_result)
            await written
        try:
            for way in ways_in:
                host, port, timeout = way.address.host, way.address.port, self.connect_timeout
                label = "tcp" if way.name == "default" else way.name  # what logs call the transport
                if way.websocket:
                    self._servers[way.name] = await listeners.serve_websocket(
                        self,
                        label,
                        host,
                        port,
                        self.max_packet_size,
                        tls=way.tls,
                        handshake_timeout=timeout,
                    )
                else:
                    self._servers[way.name] = await listeners.serve_tcp(
                        self, label, host, port, tls=way.tls, handshake_timeout=timeout
                    )
        except BaseException:
            await self._close_servers()
            if self.meter is not None:
                self.meter.close()
                self.meter = None
            if self.buckets is not None:
                self.buckets.close()
                self.buckets = None
            self.log_summary.detach()
            raise
        self._sweeper = asyncio.create_task(self._sweep(), name="radio-session-expiry")
        self._expiry = asyncio.create_task(self._expire_keys(), name="radio-key-expiry")
        self._tallies = asyncio.create_task(self._meter_deliveries(), name="radio-delivery-tallies")
        self._trimmer = asyncio.create_task(self._give_memory_back(), name="radio-memory")

    def _rate_buckets(self) -> SharedBuckets | None:
        """The platform's rate buckets, which the bridge's workers share; None (logged) if unreadable.

        Without them this broker's MQTT publishers are held to their keys' rates all the same, by
        buckets of its own, but a key's HTTP and MQTT samples then each get its rate.
        """
        try:
            self.buckets = SharedBuckets(platform_path(self.registry.settings.state_dir / "running"))
        except OSError as exc:
            log.error("%s: rates are held per door, not across the broker and the bridge", exc)  # noqa: TRY400
        return self.buckets

    async def stop(self) -> None:
        """Close the listeners and every connection (persistent sessions stay in the store)."""
        for task in (self._sweeper, self._expiry, self._tallies, self._trimmer):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        for connection in list(self.connections):
            if connection.session is not None:
                connection.session.will = None  # the broker goes, not the client
            connection.close(None, reasons.SERVER_SHUTTING_DOWN, "the broker is stopping")
        await self._close_servers()
        if self.meter is not None:
            self.collect_deliveries()
            self.meter.close()
        if self.buckets is not None:
            self.buckets.close()
        self.log_summary.flush(everything=True)
        self.log_summary.detach()

    async def _close_servers(self) -> None:
        servers, self._servers = self._servers, {}
        for server in servers.values():
            server.close()
        # Each listener gives the sockets still closing their grace, all listeners at once.
        await asyncio.gather(*(server.wait_closed() for server in servers.values()))

    def port(self, listener: str) -> int:
        """The port a listener (``default`` for TCP, ``ws``, ``mqtts``, ``wss``) bound."""
        return self._servers[listener].port()

    # Connections.
    def admit(self, listener: str, address: str) -> bool:
        """A socket was accepted (before any TLS or HTTP): count it, or refuse it past a limit.

        From its TCP accept, on every listener, a socket counts against its listener's
        ``max_connections`` and its address's ``max_connecting_per_address``: its connection goes
        on counting it, or ``release`` ends the count if it closes first.
        """
        count = self._per_listener.get(listener, 0)
        if 0 < self.max_connections <= count:
            self._count_refusal(listener)
            return False
        if not self.connecting.open(address):
            log.warning(
                "closed a connection from %s at once: %d sockets from that address have not sent "
                "their CONNECT, the limit [broker] max_connecting_per_address",
                address,
                self.connecting.limit,
            )
            return False
        self._per_listener[listener] = count + 1
        return True

    def release(self, listener: str, address: str) -> None:
        """A socket counted closed before it became a connection: it counts no more.

        Its TLS handshake or WebSocket upgrade failed or timed out, or the client left first.
        """
        self._per_listener[listener] -= 1
        self.connecting.done(address)

    def connection(
        self, link: Link, listener: str, peer: tuple[str, int], accepted: float | None = None
    ) -> Connection:
        """A socket counted is ready for MQTT: its connection, which takes its count over."""
        connection = Connection(self, link, listener, peer, accepted)
        self.connections.add(connection)
        return connection

    def _open(self, link: Link, listener: str, peer: tuple[str, int]) -> Connection | None:
        """Count a socket and open its connection at once, as the plain TCP listener does."""
        if not self.admit(listener, peer[0]):
            return None
        return self.connection(link, listener, peer)

    def connection_closed(self, connection: Connection) -> None:
        """A connection ended: it no longer counts against its listener's limit."""
        if connection in self.connections:
            self.connections.discard(connection)
            self._per_listener[connection.listener] -= 1
            if connection.session is None:
                self.connecting.done(connection.peer[0])

    def connected(self, connection: Connection) -> None:
        """A connection completed its CONNECT: it no longer counts against its address's sockets."""
        self.connecting.done(connection.peer[0])

    def _count_refusal(self, listener: str) -> None:
        self._over_limit += 1
        now = time.monotonic()
        if now - self._over_limit_logged >= REFUSAL_LOG_EVERY:
            self._over_limit_logged = now
            log.warning(
                "refused a connection on listener %r: %d connections is its max_connections "
                "(%d refused over the limit since the broker started)",
                listener,
                self.max_connections,
                self._over_limit,
            )

    # Registry changes and timers.
    def enforce(self, registry: Registry) -> None:
        """Apply a registry change to live connections and stored sessions."""
        for session in self.router.enforce(registry):
            connection = session.connection
            if connection is not None:
                log.warning(
                    "closing %s: its key %r was revoked or changed", connection.who(), session.key_name
                )
                connection.close(None, reasons.ADMINISTRATIVE_ACTION, "API-KEY not valid")

    async def _sweep(self) -> None:
        limits = self.router.limits
        interval = min(EXPIRY_CHECK, limits.anonymous.expiry / 4, limits.keyed.expiry / 4)
        while True:
            await asyncio.sleep(max(interval, 0.05))
            self.log_summary.flush()
            self.router.expire()
            if self.store is not None:
                self.store.compact()  # what expired sessions and delivered samples held goes back

    @staticmethod
    async def _give_memory_back() -> None:
        """What was held for clients that are gone (bytes they never read, queues) goes back to the system."""
        while True:
            await asyncio.sleep(memory.EVERY)
            await asyncio.to_thread(memory.give_back)

    def collect_deliveries(self) -> None:
        """Hand what listening keys received since the last call to the meter."""
        meter = self.meter
        for session, tally in self.router.collect_tallies():
            name, key_id = session.key_name, session.key_id
            if meter is None or name is None or key_id is None:
                continue
            for network, (samples, size) in tally.items():
                meter.received(key_id, name, network, samples, size)

    async def _meter_deliveries(self) -> None:
        while True:
            await asyncio.sleep(DELIVERIES_TICK)
            self.collect_deliveries()

    async def _expire_keys(self) -> None:
        """Close the connections of keys whose expiry has come, as for a revocation."""
        gate = self.router.gate
        assert gate is not None  # noqa: S101 - set by start
        while True:
            await asyncio.sleep(access.EXPIRY_TICK)
            for session in gate.sweep(list(self.router.sessions.values())):
                connection = session.connection
                if connection is not None:
                    log.warning("closing %s: its key %r has expired", connection.who(), session.key_name)
                    session.will = None
                    connection.close(None, reasons.ADMINISTRATIVE_ACTION, "API-KEY not valid")
