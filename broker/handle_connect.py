"""CONNECT: authentication first, then the session this connection continues.

The order is the safety of the broker: the client is authenticated before any session is looked
at; only then is an existing session resumed, or taken over (its old connection closed); a
refused CONNECT gets its CONNACK and a closed socket, and leaves nothing behind. Packets that
arrive while the CONNECT is being authenticated wait, unread, until it is decided.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from amqtt.utils import gen_client_id

from radio.broker import attributes as attrs
from radio.broker import codec
from radio.broker.sessions import Session, Will

if TYPE_CHECKING:
    from radio.broker.connection import Connection

log = logging.getLogger("radio.broker")


def on_connect(connection: Connection, body: bytes) -> None:
    """The first packet: decode it, then authenticate it off the reading path."""
    request = codec.decode_connect(body)
    connection.pending = []
    if not request.supported:
        refuse(
            connection,
            codec.UNACCEPTABLE_PROTOCOL,
            f"protocol level {request.level} (Radio speaks MQTT 3.1.1)",
        )
        return
    if not request.client_id and not request.clean_session:
        why = "an empty client id with clean session 0 [MQTT-3.1.3-8]"
        refuse(connection, codec.IDENTIFIER_REJECTED, why)
        return
    router = connection.broker.router
    candidate = Session(request.client_id or gen_client_id(), request.clean_session, router.limits.keyed)
    candidate.username, candidate.password = request.username, request.password
    candidate.remote_address, candidate.remote_port = connection.peer
    candidate.attributes[attrs.TRANSPORT] = connection.listener
    if request.will_topic is not None:
        candidate.will = Will(request.will_topic, request.will_payload, request.will_qos, request.will_retain)
    connection.link.pause_reading()
    connection.spawn(_admit(connection, candidate, request.keep_alive))


async def _admit(connection: Connection, candidate: Session, keep_alive: int) -> None:
    try:
        accepted = await connection.broker.authenticate(candidate)
    except Exception:
        log.exception("authenticating %s failed", connection.who())
        accepted = False
    if connection.closed:
        return
    if not accepted:
        refuse(connection, codec.NOT_AUTHORIZED, None)
        return
    taken = _take_session(connection, candidate)
    if taken is None:
        return
    session, present = taken
    connection.write(codec.connack(present, codec.ACCEPTED))
    connection.start_keep_alive(keep_alive)
    if present:
        connection.broker.router.resume(session)
    connection.read_again()


def _take_session(connection: Connection, candidate: Session) -> tuple[Session, bool] | None:
    """The session this connection continues (and whether it existed), or None if refused.

    Sessions are the key's own: only a client of the same key (anonymous clients are one)
    takes over or resumes one. A new anonymous persistent session must fit its caps.
    """
    router = connection.broker.router
    candidate.limits = router.limits_for(candidate.key_name)
    ident = candidate.ident
    existing = router.sessions.get(ident)
    opens = existing is None or candidate.clean_session or existing.clean_session
    if opens and candidate.persistent:
        name = candidate.key_name
        if name is None:
            refusal = router.anonymous.refusal(candidate.remote_address)
        else:
            refusal = router.keyed.refusal(candidate.key_id, name)
        if refusal is not None:
            refuse(connection, codec.SERVER_UNAVAILABLE, refusal)
            return None
    if existing is not None and existing.connection is not None:
        log.warning(
            "client %s connected again: closing its previous connection", attrs.shown(candidate.client_id)
        )
        existing.connection.close(None)
        existing = router.sessions.get(ident)
    if candidate.key_name is None:
        if not router.anonymous_connections.open(connection.peer[0]):
            most = router.anonymous_connections.limit
            refuse(
                connection,
                codec.SERVER_UNAVAILABLE,
                f"{most} anonymous clients connected from {connection.peer[0]}, "
                "the limit [broker] anonymous_max_connections_per_address",
            )
            return None
        connection.anonymous = True
    if existing is not None and (candidate.clean_session or existing.clean_session):
        router.discard(existing)
        existing = None
    session = candidate if existing is None else existing
    if existing is not None:
        # The new CONNECT brings its own will, credentials and address, and the key they proved.
        session.username, session.password = candidate.username, candidate.password
        session.remote_address, session.remote_port = candidate.remote_address, candidate.remote_port
        session.attributes.update(candidate.attributes)
        session.will = candidate.will
        session.limits = candidate.limits
    router.hold(session)
    session.connection = connection
    session.offline_since = None
    connection.session = session
    connection.broker.connected(connection)
    if session.tally is None and router.billed(session):
        session.tally = {}
    router.save(session)
    router.stats.connections += 1
    return session, existing is not None


def refuse(connection: Connection, code: int, reason: str | None) -> None:
    """Answer the CONNECT with a refusal, and close."""
    if reason is not None:
        log.warning("refused %s: %s", connection.who(), reason)
    connection.write(codec.connack(False, code))  # noqa: FBT003
    connection.close(None)
