"""CONNECT: authentication first, then the session this connection continues.

The order is the safety of the broker: the client is authenticated before any session is looked
at; only then is an existing session resumed, or taken over (its old connection closed); a
refused CONNECT gets its CONNACK and a closed socket, and leaves nothing behind. Packets that
arrive while the CONNECT is being authenticated wait, unread, until it is decided.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Final

from amqtt.utils import gen_client_id

from radio import wire as codec
from radio.broker import attributes as attrs
from radio.broker.per_source import Slot
from radio.broker.protocol5 import SERVER_KEEP_ALIVE, TOPIC_ALIASES, Peer
from radio.broker.sessions import Session, Will
from radio.logs import shown
from radio.topics import LEVELS_MOST, too_deep
from radio.wire import mqtt5, reasons
from radio.wire import properties as props

if TYPE_CHECKING:
    from radio.broker.connection import Connection

log = logging.getLogger("radio.broker")

REFUSALS: Final = {
    "missing": (reasons.NOT_AUTHORIZED, "API-KEY missing: this broker takes no anonymous clients"),
    "invalid": (reasons.BAD_USER_NAME_OR_PASSWORD, "API-KEY not valid"),
    "will": (reasons.NOT_AUTHORIZED, "You cannot broadcast to this channel (the will's topic)"),
}
"""What an MQTT 5 client is told when the auth plugin refuses it (``attrs.REFUSED``): the words
of the HTTP door, which also never says whether a key exists, was revoked or expired."""


def on_connect(connection: Connection, body: bytes) -> None:
    """The first packet: decode it, then authenticate it off the reading path."""
    request = codec.decode_connect(body)
    connection.pending = []
    extras = None
    if not request.supported and request.level == mqtt5.LEVEL:
        request, extras = mqtt5.decode_connect(body)
        connection.v5 = Peer(extras.properties)
    elif not request.supported:
        why = f"protocol level {request.level} (Radio speaks MQTT 3.1.1 and 5)"
        refuse(connection, codec.UNACCEPTABLE_PROTOCOL, why)
        return
    if not request.client_id and not request.clean_session and extras is None:
        why = "an empty client id with clean session 0 [MQTT-3.1.3-8]"
        refuse(connection, codec.IDENTIFIER_REJECTED, why, reasons.CLIENT_IDENTIFIER_NOT_VALID)
        return
    router = connection.broker.router
    client_id = request.client_id or gen_client_id()
    candidate = Session(client_id, request.clean_session, router.limits.keyed)
    candidate.username, candidate.password = request.username, request.password
    candidate.remote_address, candidate.remote_port = connection.peer
    candidate.attributes[attrs.TRANSPORT] = connection.listener
    if request.will_topic is not None:
        if too_deep(request.will_topic):
            topic = shown(request.will_topic)
            msg = f"the will topic {topic} has more than {LEVELS_MOST} levels, the broker's limit"
            raise codec.Violation(msg)
        candidate.will = Will(request.will_topic, request.will_payload, request.will_qos, request.will_retain)
    answer: props.Properties = {}
    if extras is not None:
        if not _connect5(connection, extras, candidate):
            return
        if not request.client_id:
            answer[props.ASSIGNED_CLIENT_ID] = client_id
    connection.link.pause_reading()
    connection.spawn(_admit(connection, candidate, request, answer))


def _connect5(connection: Connection, extras: mqtt5.Extras, candidate: Session) -> bool:
    """What a level 5 CONNECT adds: session expiry, the will's properties; False if refused."""
    found = extras.properties
    if props.AUTHENTICATION_METHOD in found:
        why = "enhanced authentication: Radio takes a key name and secret as user name and password"
        refuse(connection, codec.NOT_AUTHORIZED, why, reasons.BAD_AUTHENTICATION_METHOD)
        return False
    if found.get(props.RECEIVE_MAXIMUM) == 0 or found.get(props.MAXIMUM_PACKET_SIZE) == 0:
        why = "a receive maximum or maximum packet size of 0 (MQTT 5.0, 3.1.2.11)"
        refuse(connection, codec.NOT_AUTHORIZED, why, reasons.PROTOCOL_ERROR)
        return False
    if found.get(props.REQUEST_PROBLEM_INFO, 0) > 1 or found.get(props.REQUEST_RESPONSE_INFO, 0) > 1:
        why = "a request for problem or response information other than 0 or 1 (MQTT 5.0, 3.1.2.11)"
        refuse(connection, codec.NOT_AUTHORIZED, why, reasons.PROTOCOL_ERROR)
        return False
    expiry = found.get(props.SESSION_EXPIRY, 0)
    candidate.clean_session = not expiry  # an expiry of 0: the session ends with its connection
    candidate.expiry = expiry
    will = candidate.will
    if will is not None:
        will_found = extras.will_properties
        will.fields = props.passed_on(will_found)
        will.expiry = will_found.get(props.MESSAGE_EXPIRY)
        will.delay = will_found.get(props.WILL_DELAY, 0)
    return True


async def _admit(
    connection: Connection, candidate: Session, request: codec.Connect, answer: props.Properties
) -> None:
    try:
        accepted = await connection.broker.authenticate(candidate)
    except Exception:
        log.exception("authenticating %s failed", connection.who())
        accepted = False
    if connection.closed:
        return
    if not accepted:
        code, says = REFUSALS[candidate.attributes.get(attrs.REFUSED, "invalid")]
        refuse(connection, codec.NOT_AUTHORIZED, None, code, says)
        return
    keep_alive = request.keep_alive
    peer = connection.v5
    if peer is not None:
        if keep_alive > SERVER_KEEP_ALIVE or not keep_alive:  # 0 asks for none: the longest of all
            keep_alive = answer[props.SERVER_KEEP_ALIVE] = SERVER_KEEP_ALIVE
        candidate.limits = connection.broker.router.limits_for(candidate.key_name)  # the session's
        _terms(connection, candidate, answer)
        if not _fitted(peer, answer):  # before the session is taken: a refusal leaves it as it was
            why = f"its maximum packet size, {peer.max_packet} bytes, cannot hold the CONNACK it must be sent"
            refuse(connection, codec.SERVER_UNAVAILABLE, why, reasons.PACKET_TOO_LARGE)
            return
    taken = _take_session(connection, candidate, request.clean_session)
    if taken is None:
        return
    session, present = taken
    connection.bounded = not connection.broker.router.registry().access(session.key_name).publishes
    if peer is None:
        connection.write(codec.connack(present, codec.ACCEPTED))
    else:
        connection.write(mqtt5.connack(present, reasons.SUCCESS, answer))
    connection.start_keep_alive(keep_alive)
    if present:
        connection.broker.router.resume(session)
    connection.read_again()


def _terms(connection: Connection, session: Session, answer: props.Properties) -> None:
    """The CONNACK's word on the broker's limits, where they differ from MQTT 5's defaults."""
    broker = connection.broker
    limits = broker.router.limits
    if session.expiry is not None and session.expiry > session.limits.expiry:
        answer[props.SESSION_EXPIRY] = int(session.limits.expiry)
    answer[props.RECEIVE_MAXIMUM] = limits.max_incoming_qos2
    answer[props.TOPIC_ALIAS_MAXIMUM] = TOPIC_ALIASES
    if broker.max_packet_size < codec.MQTT_LIMIT:
        answer[props.MAXIMUM_PACKET_SIZE] = largest_packet(broker.max_packet_size)


def _fitted(peer: Peer, answer: props.Properties) -> bool:
    """Whether the CONNACK fits the client's Maximum Packet Size (MQTT-3.1.2-24).

    Once what it can do without has gone, that is: its Topic Alias Maximum (absent, the client sends
    no alias, which the broker never needs). The rest it must be told: an assigned client id, the
    terms it must follow.
    """
    most = peer.max_packet
    if not most or len(mqtt5.connack(False, reasons.SUCCESS, answer)) <= most:  # noqa: FBT003
        return True
    answer.pop(props.TOPIC_ALIAS_MAXIMUM, None)
    return len(mqtt5.connack(False, reasons.SUCCESS, answer)) <= most  # noqa: FBT003


def largest_packet(limit: int) -> int:
    """The Maximum Packet Size a CONNACK gives for a limit on the remaining length: the whole packet.

    MQTT counts the fixed header in it: one byte, then the remaining length in as few bytes as it
    takes. A packet of exactly this size is taken; one byte more is over the limit, and closed.
    """
    return 1 + len(props.encode_varint(limit)) + limit


def new_expiry(session: Session, found: props.Properties) -> None:
    """A DISCONNECT may change the session expiry interval, not from 0 (MQTT-3.14.2-2).

    A session whose CONNECT gave 0 ends with its connection: a DISCONNECT that gives it another
    is not a valid DISCONNECT but a protocol error (DISCONNECT 0x82; its will goes).
    """
    expiry = found.get(props.SESSION_EXPIRY)
    if expiry is None:
        return
    if session.clean_session or session.expiry == 0:
        if expiry:
            msg = f"a DISCONNECT giving a session expiry of {expiry}s after 0 at CONNECT [MQTT-3.14.2-2]"
            raise mqtt5.CodedViolation(reasons.PROTOCOL_ERROR, msg)
        return
    session.expiry = expiry


def _expired(session: Session) -> bool:
    since = session.offline_since
    return since is not None and time.time() - since > session.lifetime


def _take_session(
    connection: Connection, candidate: Session, clean_start: bool
) -> tuple[Session, bool] | None:
    """The session this connection continues (and whether it existed), or None if refused.

    Sessions are the key's own: only a client of the same key (anonymous clients are one)
    takes over or resumes one. A new anonymous persistent session must fit its caps.
    """
    router = connection.broker.router
    candidate.limits = router.limits_for(candidate.key_name)
    ident = candidate.ident
    existing = router.sessions.get(ident)
    if existing is not None and existing.connection is None and _expired(existing):
        _will_now(connection, existing)
        router.discard(existing)  # gone past its expiry, though the sweep has not come by yet
        existing = None
    # An MQTT 5 client resuming with a session expiry of 0 continues its session, which then ends
    # with this connection (its expiry is 0 from now: see _carry_over).
    fresh = existing is None or clean_start or existing.clean_session
    if fresh and candidate.persistent and _over_caps(connection, candidate):
        return None
    if existing is not None and existing.connection is not None:
        log.warning(
            "client %s connected again: closing its previous connection", attrs.shown(candidate.client_id)
        )
        existing.connection.close(
            None, reasons.SESSION_TAKEN_OVER, "another connection took the session over"
        )
        existing = router.sessions.get(ident)
    if not _hold_slot(connection, candidate):
        return None
    if existing is not None and fresh:
        _will_now(connection, existing)  # a clean start ends the session it names
        router.discard(existing)
        existing = None
    session = candidate if existing is None else _carry_over(existing, candidate)
    _attach(connection, session)
    return session, existing is not None


def _hold_slot(connection: Connection, candidate: Session) -> bool:
    """Count the client in its source's share of connections; False (refused) past it.

    An anonymous client counts against its address, a keyed one against its key (one buyer's).
    After a takeover: the connection taken over (the same key's, and client id's) gave its back.
    """
    router = connection.broker.router
    name, key_id = candidate.key_name, candidate.key_id
    refusal: str | None
    if name is None or key_id is None:
        address = connection.peer[0]
        if router.anonymous_connections.open(address):
            connection.slot = Slot(router.anonymous_connections, address)
            return True
        most = router.anonymous_connections.limit
        refusal = (
            f"{most} anonymous clients connected from {address}, "
            "the limit [broker] anonymous_max_connections_per_address"
        )
    else:
        refusal = router.key_connections.refusal(key_id, name)
        if refusal is None:
            connection.slot = Slot(router.key_connections, key_id)
            return True
    refuse(connection, codec.SERVER_UNAVAILABLE, refusal)
    return False


def _will_now(connection: Connection, session: Session) -> None:
    """A session ends: a will waiting out its delay goes now, checked by the gate as ever.

    MQTT-3.1.3-9: a delayed will goes when the delay runs out or the session ends, whichever
    comes first; a clean start (or one past the session's expiry) ends it.
    """
    will = session.will
    if will is not None and will.timer is not None:
        will.timer.cancel()
        will.timer = None
        session.will = None
        connection.broker.router.publish_will(session, will)


def _over_caps(connection: Connection, candidate: Session) -> bool:
    """Whether a new persistent session would be one too many for its source or key (refused then)."""
    router = connection.broker.router
    name = candidate.key_name
    if name is None:
        refusal = router.anonymous.refusal(candidate.remote_address)
    else:
        refusal = router.keyed.refusal(candidate.key_id, name)
    if refusal is not None:
        refuse(connection, codec.SERVER_UNAVAILABLE, refusal)
        return True
    return False


def _carry_over(session: Session, candidate: Session) -> Session:
    """The new CONNECT brings its own will, credentials and address, and the key they proved."""
    if session.will is not None and session.will.timer is not None:
        session.will.timer.cancel()  # back before its will's delay: no will (MQTT-3.1.3-9)
    session.expiry = candidate.expiry
    session.username, session.password = candidate.username, candidate.password
    session.remote_address, session.remote_port = candidate.remote_address, candidate.remote_port
    session.attributes.update(candidate.attributes)
    session.will = candidate.will
    session.limits = candidate.limits
    return session


def _attach(connection: Connection, session: Session) -> None:
    """The session is this connection's now."""
    router = connection.broker.router
    router.hold(session)
    peer = connection.v5
    router.speaks(session, peer is not None)
    most = router.limits.max_inflight
    session.window = most if peer is None else min(most, peer.receive_max)
    session.connection = connection
    session.offline_since = None
    connection.session = session
    connection.broker.connected(connection)
    if session.tally is None and router.billed(session):
        session.tally = {}
    router.save(session)
    router.stats.connections += 1


V5_CODES: Final = {
    codec.UNACCEPTABLE_PROTOCOL: reasons.UNSUPPORTED_PROTOCOL_VERSION,
    codec.IDENTIFIER_REJECTED: reasons.CLIENT_IDENTIFIER_NOT_VALID,
    codec.SERVER_UNAVAILABLE: reasons.QUOTA_EXCEEDED,
    codec.NOT_AUTHORIZED: reasons.NOT_AUTHORIZED,
}
"""The MQTT 5 code for each MQTT 3.1.1 refusal: the broker refuses on its caps (a source's or a
key's share of sessions and connections), so 0x97, where 3.1.1 can only say "unavailable"."""


def refuse(
    connection: Connection, code: int, reason: str | None, code5: int | None = None, says: str | None = None
) -> None:
    """Answer the CONNECT with a refusal, and close; an MQTT 5 client is told why."""
    if reason is not None:
        log.warning("refused %s: %s", connection.who(), reason)
    peer = connection.v5
    if peer is None:
        connection.write(codec.connack(False, code))  # noqa: FBT003
    else:
        found = {props.REASON_STRING: says or reason} if says or reason else {}
        packet = mqtt5.connack(False, code5 or V5_CODES[code], found)  # noqa: FBT003
        most = peer.max_packet
        if most and len(packet) > most:  # the reason string is left out (MQTT-3.2.2-19)
            packet = mqtt5.connack(False, code5 or V5_CODES[code], {})  # noqa: FBT003
        if not most or len(packet) <= most:  # 5 bytes: a client taking fewer is sent nothing
            connection.write(packet)
    connection.close(None)
