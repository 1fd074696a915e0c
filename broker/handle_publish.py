"""PUBLISH and its acknowledgements both ways (PUBACK, PUBREC, PUBREL, PUBCOMP), and wills.

Every sample passes the admission gate (``broker/access.py``) before anything is stored or
delivered: a PUBLISH here, a will when it fires (``Router.publish_will``). A publisher's
acknowledgements keep their order: one that waits for the store holds back those after it.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from radio import wire as codec
from radio.admission import Refused
from radio.broker.message import Message
from radio.broker.protocol5 import TOPIC_ALIASES
from radio.logs import shown
from radio.topics import LEVELS_MOST, too_deep
from radio.wire import mqtt5, reasons
from radio.wire import properties as props

if TYPE_CHECKING:
    from radio.broker.connection import Connection
    from radio.broker.protocol5 import Peer
    from radio.broker.router import Router
    from radio.broker.sessions import Session, Will

log = logging.getLogger("radio.broker")


def on_publish(connection: Connection, first: int, body: bytes) -> None:
    """An MQTT 3.1.1 client's PUBLISH."""
    topic, qos, pid, payload = codec.decode_publish(first, body)
    if len(topic) >= LEVELS_MOST and too_deep(topic):
        raise codec.Violation(_too_deep(topic))
    _take(connection, first, body, Message(topic, payload, qos, bool(first & 0x01)), pid)


def on_publish5(connection: Connection, peer: Peer, first: int, body: bytes) -> None:
    """An MQTT 5 client's PUBLISH: its topic alias resolved, its properties kept for its subscribers."""
    topic, qos, pid, found, payload = mqtt5.decode_publish(first, body)
    alias = found.get(props.TOPIC_ALIAS)
    if alias is not None:
        if not 0 < alias <= TOPIC_ALIASES:
            msg = f"topic alias {alias}, outside 1..{TOPIC_ALIASES} [MQTT-3.3.2-9]"
            raise mqtt5.CodedViolation(reasons.TOPIC_ALIAS_INVALID, msg)
        if topic:
            peer.aliases_in[alias] = topic
        elif (topic := peer.aliases_in.get(alias, "")) == "":
            msg = f"topic alias {alias}, which this connection never set [MQTT-3.3.4]"
            raise mqtt5.CodedViolation(reasons.PROTOCOL_ERROR, msg)
    elif not topic:
        msg = "a PUBLISH with an empty topic and no topic alias [MQTT-3.3.2-1]"
        raise mqtt5.CodedViolation(reasons.PROTOCOL_ERROR, msg)
    if len(topic) >= LEVELS_MOST and too_deep(topic):
        raise mqtt5.CodedViolation(reasons.TOPIC_NAME_INVALID, _too_deep(topic))
    if props.SUBSCRIPTION_ID in found:
        msg = "a PUBLISH from a client with a subscription identifier [MQTT-3.3.4-6]"
        raise mqtt5.CodedViolation(reasons.PROTOCOL_ERROR, msg)
    expiry = found.get(props.MESSAGE_EXPIRY)
    expires = time.monotonic() + expiry if expiry is not None else None
    message = Message(topic, payload, qos, bool(first & 0x01), props.passed_on(found), expires)
    _take(connection, first, body, message, pid)


def _too_deep(topic: str) -> str:
    return f"a PUBLISH to {shown(topic)}, a topic of more than {LEVELS_MOST} levels, the broker's limit"


def _take(connection: Connection, first: int, body: bytes, message: Message, pid: int) -> None:
    """Through the gate, then to the router, then acknowledged once durable."""
    session = connection.session
    assert session is not None  # noqa: S101 - only after CONNECT
    broker = connection.broker
    router = broker.router
    qos = message.qos
    if qos == 2 and session.awaits_pubrel(pid):
        ack(connection, codec.ack(codec.PUBREC, pid))  # a resend: admitted, delivered and charged once
        return
    if qos == 2 and session.awaiting_pubrel >= router.limits.max_incoming_qos2:
        # Before the gate: a sample the broker will not take must not be charged to its key.
        connection.close(
            f"{session.awaiting_pubrel} QoS 2 samples awaiting their PUBREL, "
            "the limit [broker] max_incoming_qos2",
            reasons.RECEIVE_MAXIMUM_EXCEEDED,
        )
        return
    gate = router.gate
    if gate is not None:
        verdict = gate.publish(session, message.topic, message.payload, message.retain)
        if verdict > 0:  # over its rate: read nothing more from this client until a token is back
            connection.hold(verdict, first, body)
            return
        if verdict < 0:  # dropped (quota, schema): MQTT 3.1.1 has no refusal, MQTT 5 says why
            if qos == 2 and connection.v5 is None:
                # Its PUBREC is a success: the client sends it again until PUBREL, and each resend
                # is this same sample, refused (and counted) once; a persistent session keeps the
                # id in the store before the PUBREC goes, so after a restart too. An MQTT 5 PUBREC
                # with a refusal code ends the exchange: no PUBREL comes.
                session.await_pubrel(pid)
                _saved_then(connection, session, codec.ack(codec.PUBREC, pid), changed=True)
                return
            _ack_dropped(connection, qos, pid, gate.refusal)
            return
    store = broker.store
    mark = store.pending if store is not None else 0
    if qos == 2:
        _await_pubrel(router, session, pid)
    message.origin = session
    router.publish(message)
    if not qos:
        return
    answer = codec.ack(codec.PUBACK if qos == 1 else codec.PUBREC, pid)
    if store is not None and (store.pending != mark or connection.acks_waiting):
        connection.acks_waiting += 1
        store.after_commit(lambda ok: _durable(connection, answer, ok), since=mark)
    else:
        connection.write(answer)


def _await_pubrel(router: Router, session: Session, pid: int) -> None:
    """The client's QoS 2 sample ``pid`` was taken: its PUBREL is awaited.

    A persistent session keeps that in the store, so that a resend after a restart is this same
    sample too (its PUBREC waits for the store).
    """
    session.await_pubrel(pid)
    if session.persistent:
        router.save(session)


def _ack_dropped(connection: Connection, qos: int, pid: int, refused: Refused | None) -> None:
    if not qos:
        return
    kind = codec.PUBACK if qos == 1 else codec.PUBREC
    peer = connection.v5
    if peer is None or refused is None:
        ack(connection, codec.ack(kind, pid))
        return
    code = reasons.GATE.get(refused.reason, reasons.UNSPECIFIED_ERROR)
    ack(connection, mqtt5.ack(kind, pid, code, peer.reason(refused.message)))


def _durable(connection: Connection, answer: bytes, ok: bool) -> None:
    connection.acks_waiting -= 1
    if connection.closed:
        return
    if ok:
        connection.write(answer)
    else:
        connection.close("the broker's store cannot be written: its sample was not acknowledged")


def ack(connection: Connection, answer: bytes) -> None:
    """An acknowledgement that stores nothing, kept in order behind any waiting on the store."""
    store = connection.broker.store
    if store is not None and connection.acks_waiting:
        connection.acks_waiting += 1  # stores nothing itself: it only keeps its place in the order
        store.after_commit(lambda ok: _durable(connection, answer, ok), since=store.pending)
    else:
        connection.write(answer)


def _ack_id(body: bytes, what: str) -> int:
    """The packet id of an MQTT 3.1.1 PUBACK, PUBREC, PUBREL or PUBCOMP: its whole body (MQTT-3.4.1).

    Only MQTT 5 adds a reason code and properties after the id; in 3.1.1 a longer body is
    malformed, and a client that sends one is out of step with the broker.
    """
    if len(body) > 2:  # the two bytes of the packet id
        msg = f"{what} with {len(body)} bytes after its fixed header (it has 2) [MQTT-3.4.1]"
        raise codec.Violation(msg)
    return codec.packet_id(body, what)


def on_puback(connection: Connection, session: Session, body: bytes) -> None:
    """PUBACK (QoS 1) or PUBCOMP (QoS 2): a delivery to this client is done."""
    connection.broker.router.acknowledged(session, _ack_id(body, "an acknowledgement"))


def on_puback5(connection: Connection, session: Session, body: bytes) -> None:
    """An MQTT 5 PUBACK or PUBCOMP, whatever its reason code: the delivery is over."""
    pid, _ = mqtt5.decode_ack(body, "an acknowledgement")
    connection.broker.router.acknowledged(session, pid)


def on_pubrec5(connection: Connection, session: Session, body: bytes) -> None:
    """An MQTT 5 PUBREC: a refusal (0x80 and up) ends the delivery there (MQTT-4.3.3)."""
    pid, code = mqtt5.decode_ack(body, "a PUBREC")
    if code >= reasons.UNSPECIFIED_ERROR:
        connection.broker.router.acknowledged(session, pid)
        return
    _released(connection, session, pid)


def on_pubrec(connection: Connection, session: Session, body: bytes) -> None:
    """PUBREC: the client has a QoS 2 delivery; it is released, only PUBCOMP is awaited."""
    _released(connection, session, _ack_id(body, "a PUBREC"))


def _released(connection: Connection, session: Session, pid: int) -> None:
    """The client has a QoS 2 delivery: PUBREL, and only PUBCOMP is awaited.

    A PUBREC releases a QoS 2 delivery only: one for a QoS 1 delivery leaves it awaiting its
    PUBACK. A persistent session keeps the release in the store before the PUBREL goes, so that
    after a restart the delivery is released again under its id, not sent again as a new sample
    (MQTT-4.4.0-1).
    """
    delivery = session.inflight.get(pid)
    answer = codec.ack(codec.PUBREL, pid)
    if delivery is None or delivery.qos != 2 or delivery.released:
        ack(connection, answer)
        return
    delivery.released = True
    unsent = session.unsent
    if unsent is not None and pid in unsent:  # answered before it went again: outstanding all the same
        unsent.remove(pid)
    _saved_then(connection, session, answer, changed=bool(delivery.message.row))


def on_pubrel(connection: Connection, session: Session, body: bytes) -> None:
    """PUBREL: the client's QoS 2 sample is complete on both sides."""
    _completed(connection, session, _ack_id(body, "a PUBREL"))


def on_pubrel5(connection: Connection, session: Session, body: bytes) -> None:
    """An MQTT 5 PUBREL, whatever its reason code (a client sends 0x92 for an id it has not)."""
    pid, _ = mqtt5.decode_ack(body, "a PUBREL")
    _completed(connection, session, pid)


def _completed(connection: Connection, session: Session, pid: int) -> None:
    """The client's QoS 2 sample is over: its packet id is free again, in the store too, before PUBCOMP.

    A persistent session keeps the ids awaiting PUBREL across a restart, so that a resend is the
    same sample then too; the client reuses an id once it has its PUBCOMP, so the store must have
    let it go by then, or a new sample under that id would be taken for a resend after a restart.
    """
    was = session.awaiting_pubrel
    session.released(pid)
    _saved_then(connection, session, codec.ack(codec.PUBCOMP, pid), changed=session.awaiting_pubrel != was)


def _saved_then(connection: Connection, session: Session, answer: bytes, *, changed: bool) -> None:
    """Send ``answer`` once a persistent session whose QoS 2 state ``changed`` is in the store."""
    store = connection.broker.store
    if store is None or not session.persistent or not changed:
        ack(connection, answer)
        return
    mark = store.pending
    connection.broker.router.save(session)
    connection.acks_waiting += 1
    store.after_commit(lambda ok: _durable(connection, answer, ok), since=mark)


def will_after(connection: Connection, session: Session, will: Will) -> None:
    """A connection ended without DISCONNECT: its will now, or after its delay (MQTT 5).

    A delayed will waits on its session, and a client back in time cancels it; it goes no later
    than its session ends (MQTT-3.1.3-9).
    """
    router = connection.broker.router
    delay = min(will.delay, session.lifetime) if session.persistent else 0
    if not delay:
        router.publish_will(session, will)
        return
    will.due = time.time() + delay
    router.wait_for_will(session, will, delay)
