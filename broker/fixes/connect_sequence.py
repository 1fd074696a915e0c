"""Fix: the CONNECT sequence touches sessions before authentication, and more (amqtt 0.12.1).

Stock ``Broker._client_connected`` and the two methods it calls get the order wrong:

1. a refused CONNECT is registered as a session in the "connected" state and never removed: about
   36 KB per refusal, for ever (5,000 bad logins: 28 to 206 MiB);
2. sessions are looked up, deleted or updated *before* authentication: an unauthenticated CONNECT
   reusing a victim's client id with clean session deletes the victim's subscriptions, and the
   victim, still connected, silently receives nothing more;
3. a takeover (a second CONNECT with a client id already connected) stops the old connection's
   handler but leaves its socket open: the old client believes it is connected and gets nothing
   (MQTT-3.1.4-2 asks the server to close it);
7. nothing bounds the wait for the CONNECT, so a socket that never sends one is held for ever;
11. ``max_connections`` makes extra clients wait on a semaphore, connected but unanswered, instead
    of refusing them;
14. messages queued for an offline session go out with the retain flag set (MQTT-3.3.1-9).

Here one method runs the sequence in the right order: read the CONNECT, within
``connect_timeout`` and through a ``PacketGate``; authenticate; only then look at the existing
session, closing its connection on a takeover; answer; serve. A refused CONNECT gets its CONNACK
and a closed socket, and leaves nothing behind. A connection over ``max_connections`` is closed at
once and counted in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any, Final

from amqtt.adapters import ReaderAdapter, WriterAdapter
from amqtt.broker import Broker, Server
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.events import BrokerEvents
from amqtt.mqtt.connack import IDENTIFIER_REJECTED, NOT_AUTHORIZED, ConnackPacket
from amqtt.session import Session
from amqtt.utils import gen_client_id

from radio.broker.fixes.keep_alive import KeepAliveEnforced
from radio.broker.fixes.packet_gate import PacketGate
from radio.broker.fixes.redelivery import UnackedKeptForRedelivery

if TYPE_CHECKING:
    from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler

log = logging.getLogger("radio.broker")

CONNECT_TIMEOUT: Final = 10.0
TAKEOVER_WAIT: Final = 5.0
"""How long a takeover waits for the old connection to wind down before forcing it."""
REFUSAL_LOG_EVERY: Final = 10.0
"""Connections refused over the limit are logged at most once per this many seconds, with a count."""
NO_LIMIT: Final = 2**28 + 5
"""MQTT's own largest packet: the default until the broker is told its limit."""


class ConnectionHandler(KeepAliveEnforced, UnackedKeptForRedelivery):
    """amqtt's connection handler with the keep-alive and redelivery fixes."""


class ConnectSequence(Broker):
    """Authenticate first, then touch sessions; close what must be closed; leave nothing behind."""

    connect_timeout: float = CONNECT_TIMEOUT
    max_packet_size: int = NO_LIMIT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._live: dict[str, asyncio.Future[None]] = {}
        """The connection serving each connected client id: done when its handling has ended."""
        self._over_limit = 0
        self._over_limit_logged = 0.0

    def _may_take_over(self, existing: Session, incoming: Session) -> bool:
        """Whether an authenticated client may take over an existing session with its client id."""
        del existing, incoming
        return True

    async def _client_connected(
        self, listener_name: str, reader: ReaderAdapter, writer: WriterAdapter
    ) -> None:
        server = self._servers[listener_name]
        peer = writer.get_peer_info()
        if peer is None:
            await _close(writer)
            return
        if 0 < server.max_connections <= server.conn_count:
            self._count_refusal(listener_name, server)
            await _close(writer)
            return
        server.conn_count += 1
        try:
            await self._serve_connection(listener_name, reader, writer, f"{peer[0]}:{peer[1]}")
        finally:
            server.conn_count -= 1

    def _count_refusal(self, listener_name: str, server: Server) -> None:
        self._over_limit += 1
        now = time.monotonic()
        if now - self._over_limit_logged >= REFUSAL_LOG_EVERY:
            self._over_limit_logged = now
            log.warning(
                "refused a connection on listener %r: %d connections is its max_connections "
                "(%d refused over the limit since the broker started)",
                listener_name,
                server.max_connections,
                self._over_limit,
            )

    async def _serve_connection(
        self, listener_name: str, reader: ReaderAdapter, writer: WriterAdapter, peer: str
    ) -> None:
        gate = PacketGate(reader, self.max_packet_size, lambda: f"the client at {peer} ({listener_name})")
        try:
            handler, session = await asyncio.wait_for(
                ConnectionHandler.init_from_connect(gate, writer, self.plugins_manager),
                self.connect_timeout,
            )
        except TimeoutError:
            log.warning("closing the client at %s: no CONNECT within %gs", peer, self.connect_timeout)
            await _close(writer)
            return
        except (AMQTTError, MQTTError, NoDataError) as exc:
            if str(exc) not in ("", "None"):
                log.warning("closing the client at %s: %s", peer, exc)
            await _close(writer)
            return

        if not await self._authenticate(session, self.listeners_config[listener_name]):
            await _refuse(writer, NOT_AUTHORIZED)
            return
        existing = self._sessions.get(session.client_id) if session.client_id else None
        if existing is not None and not self._may_take_over(existing[0], session):
            log.warning(
                "refused the client at %s: client id %r belongs to another key", peer, session.client_id
            )
            await _refuse(writer, IDENTIFIER_REJECTED)
            return
        if existing is not None and existing[0].transitions.state == "connected":
            await self._take_over(*existing)
        session = await self._adopt(session)
        assert session.client_id is not None  # noqa: S101 - _adopt gives every session an id
        client_id = session.client_id

        handler.attach(session, gate, writer)
        session.transitions.connect()
        self._sessions[client_id] = (session, handler)
        ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._live[client_id] = ended
        try:
            await handler.mqtt_connack_authorize(authorize=True)
            await self.plugins_manager.fire_event(
                BrokerEvents.CLIENT_CONNECTED, client_id=client_id, client_session=session
            )
            await handler.start()
            await self._deliver_queued(session, handler)
            await self._client_message_loop(session, handler)
        finally:
            if (
                session.transitions.state == "connected"
                and self._sessions.get(client_id, (None,))[0] is session
            ):
                # The loop ended without a disconnect being handled (an error): end it here.
                await self._stop_handler(handler)
                session.transitions.disconnect()
            if self._live.get(client_id) is ended:
                del self._live[client_id]
            ended.set_result(None)

    async def _take_over(self, old_session: Session, old_handler: BrokerProtocolHandler) -> None:
        """Close the connection that held this client id, as if it had dropped (its will goes out)."""
        log.warning("client %r connected again: closing its previous connection", old_session.client_id)
        ended = self._live.get(old_session.client_id or "")
        await old_handler.handle_connection_closed()
        if ended is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(ended), TAKEOVER_WAIT)
        if old_session.transitions.state == "connected":
            await self._stop_handler(old_handler)
            old_session.transitions.disconnect()

    async def _adopt(self, incoming: Session) -> Session:
        """The session this connection continues: a new one, or the persistent one it resumes."""
        client_id = incoming.client_id
        if incoming.clean_session:
            if client_id:
                await self._delete_session(client_id)
            else:
                incoming.client_id = gen_client_id()
            incoming.parent = 0
            return incoming
        existing = self._sessions.get(client_id or "")
        if existing is None:
            incoming.parent = 0
            return incoming
        session = existing[0]
        # The new CONNECT brings its own will, keep-alive and credentials, and the key they proved.
        session.will_flag = incoming.will_flag
        session.will_message = incoming.will_message
        session.will_topic = incoming.will_topic
        session.will_qos = incoming.will_qos
        session.will_retain = incoming.will_retain
        session.keep_alive = incoming.keep_alive
        session.username = incoming.username
        session.password = incoming.password
        session.remote_address = incoming.remote_address
        session.remote_port = incoming.remote_port
        session.attributes.update(incoming.attributes)
        session.parent = 1
        return session

    async def _deliver_queued(self, session: Session, handler: BrokerProtocolHandler) -> None:
        """Send what arrived while the session was offline: live messages, so retain is 0."""
        sends = []
        while not session.retained_messages.empty():
            message = session.retained_messages.get_nowait()
            sends.append(
                asyncio.ensure_future(
                    handler.mqtt_publish(message.topic, message.data, message.qos, retain=False)
                )
            )
        if sends:
            await asyncio.wait(sends)


async def _refuse(writer: WriterAdapter, code: int) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        await ConnackPacket.build(0, code).to_stream(writer)
    await _close(writer)


async def _close(writer: WriterAdapter) -> None:
    with contextlib.suppress(Exception):
        await writer.close()
