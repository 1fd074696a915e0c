"""PUBLISH and its acknowledgements both ways (PUBACK, PUBREC, PUBREL, PUBCOMP), and wills.

Every sample passes the admission gate (``broker/access.py``) before anything is stored or
delivered: a PUBLISH here, a will when it fires (``publish_will``). A publisher's
acknowledgements keep their order: one that waits for the store holds back those after it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

from radio.broker import codec
from radio.broker.access import GO
from radio.broker.message import Message

if TYPE_CHECKING:
    from radio.broker.connection import Connection
    from radio.broker.sessions import Session, Will

log = logging.getLogger("radio.broker")

WILL_ATTEMPTS: Final = 40
"""Times a will waits for its key's quota to be readable (``USAGE_RETRY`` apart) before it is dropped."""


def on_publish(connection: Connection, first: int, body: bytes) -> None:
    """A client's PUBLISH: through the gate, then to the router, then acknowledged once durable."""
    topic, qos, pid, payload = codec.decode_publish(first, body)
    session = connection.session
    assert session is not None  # noqa: S101 - only after CONNECT
    broker = connection.broker
    router = broker.router
    if qos == 2 and pid in session.incoming_qos2:
        ack(connection, codec.ack(codec.PUBREC, pid))  # a resend: admitted, delivered and charged once
        return
    if qos == 2 and len(session.incoming_qos2) >= router.limits.max_incoming_qos2:
        # Before the gate: a sample the broker will not take must not be charged to its key.
        connection.close(
            f"{len(session.incoming_qos2)} QoS 2 samples awaiting their PUBREL, "
            "the limit [broker] max_incoming_qos2"
        )
        return
    gate = router.gate
    if gate is not None:
        verdict = gate.publish(session, topic, payload, bool(first & 0x01))
        if verdict > 0:  # over its rate: read nothing more from this client until a token is back
            connection.hold(verdict, first, body)
            return
        if verdict < 0:  # dropped (quota, schema): acknowledged all the same, MQTT 3.1.1 has no refusal
            _ack_dropped(connection, qos, pid)
            return
    if qos == 2:
        session.incoming_qos2.add(pid)
    store = broker.store
    mark = store.pending if store is not None else 0
    router.publish(Message(topic, payload, qos, bool(first & 0x01)))
    if not qos:
        return
    answer = codec.ack(codec.PUBACK if qos == 1 else codec.PUBREC, pid)
    if store is not None and (store.pending != mark or connection.acks_waiting):
        connection.acks_waiting += 1
        store.after_commit(lambda ok: _durable(connection, answer, ok), since=mark)
    else:
        connection.write(answer)


def _ack_dropped(connection: Connection, qos: int, pid: int) -> None:
    if qos == 1:
        ack(connection, codec.ack(codec.PUBACK, pid))
    elif qos == 2:
        ack(connection, codec.ack(codec.PUBREC, pid))


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


def on_puback(connection: Connection, session: Session, body: bytes) -> None:
    """PUBACK (QoS 1) or PUBCOMP (QoS 2): a delivery to this client is done."""
    connection.broker.router.acknowledged(session, codec.packet_id(body, "an acknowledgement"))


def on_pubrec(connection: Connection, session: Session, body: bytes) -> None:
    """PUBREC: the client has a QoS 2 delivery; it is released, only PUBCOMP is awaited."""
    pid = codec.packet_id(body, "a PUBREC")
    delivery = session.inflight.get(pid)
    if delivery is not None:
        delivery.released = True
    connection.write(codec.ack(codec.PUBREL, pid))


def on_pubrel(connection: Connection, session: Session, body: bytes) -> None:
    """PUBREL: the client's QoS 2 sample is complete on both sides."""
    pid = codec.packet_id(body, "a PUBREL")
    session.incoming_qos2.discard(pid)
    ack(connection, codec.ack(codec.PUBCOMP, pid))


def publish_will(connection: Connection, session: Session, will: Will, attempt: int = 0) -> None:
    """A will is a sample like any other: it passes the gate, as its key stands now."""
    router = connection.broker.router
    gate = router.gate
    verdict = gate.will(session, will.topic, will.payload, will.retain) if gate is not None else GO
    if verdict > 0:  # the key's quota cannot be read this instant: ask again shortly
        if attempt < WILL_ATTEMPTS:
            connection.loop.call_later(verdict, publish_will, connection, session, will, attempt + 1)
        else:
            log.warning("dropped the will of %s: its key's quota could not be read", connection.who())
        return
    if verdict == GO:
        router.publish(Message(will.topic, will.payload, will.qos, will.retain))
