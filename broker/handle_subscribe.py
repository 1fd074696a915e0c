"""SUBSCRIBE and UNSUBSCRIBE: each filter granted or refused by the key's rights, then its retained ones."""

from __future__ import annotations

from typing import TYPE_CHECKING

from radio import wire as codec
from radio.broker.attributes import shown
from radio.broker.shared import PREFIX as SHARED_PREFIX
from radio.wire import mqtt5, reasons
from radio.wire import properties as props

if TYPE_CHECKING:
    from radio.broker.connection import Connection
    from radio.broker.sessions import Session


def on_subscribe(connection: Connection, session: Session, body: bytes) -> None:
    """SUBACK with a code per filter, then the retained samples each granted filter brings."""
    pid, requests = codec.decode_subscribe(body)
    router = connection.broker.router
    codes = router.subscribe(session, requests)
    connection.write(codec.suback(pid, codes))
    granted = [
        (f, code) for (f, _), code in zip(requests, codes, strict=True) if code != codec.SUBSCRIBE_FAILURE
    ]
    router.send_retained(session, granted)


def on_unsubscribe(connection: Connection, session: Session, body: bytes) -> None:
    """Drop the filters the session holds; UNSUBACK."""
    pid, filters = codec.decode_unsubscribe(body)
    connection.broker.router.unsubscribe(session, filters)
    connection.write(codec.ack(codec.UNSUBACK, pid))


def on_subscribe5(connection: Connection, session: Session, body: bytes) -> None:
    """An MQTT 5 SUBSCRIBE: options per filter, a subscription id, a reason code per filter.

    Retained samples follow as the retain handling asks: 0 always, 1 only for a filter the
    session did not hold, 2 never (MQTT-3.3.1-9..11).
    """
    pid, found, requests = mqtt5.decode_subscribe(body)
    ids = found.get(props.SUBSCRIPTION_ID, [])
    if len(ids) > 1 or 0 in ids:
        msg = "a SUBSCRIBE with a subscription identifier of 0 or more than one [MQTT-3.8.2.1.2]"
        raise mqtt5.CodedViolation(reasons.PROTOCOL_ERROR, msg)
    for topic_filter, options in requests:
        if options & mqtt5.NO_LOCAL and topic_filter.startswith(SHARED_PREFIX):
            msg = "a shared subscription with no-local set [MQTT-3.8.3-4]"
            raise mqtt5.CodedViolation(reasons.PROTOCOL_ERROR, msg)
    ident = ids[0] if ids else 0
    held = {f for f, _ in requests if f in session.subscriptions}
    router = connection.broker.router
    codes = router.subscribe(session, requests, v5=True, ident=ident)
    peer = connection.v5
    refused = [f for (f, _), code in zip(requests, codes, strict=True) if code == reasons.NOT_AUTHORIZED]
    says = _may_not_read(refused) if refused and peer is not None else None
    said = peer.reason(says, len(codes)) if peer is not None else None
    connection.write(mqtt5.suback(codec.SUBACK, pid, codes, said))
    granted = [
        (f, code)
        for (f, options), code in zip(requests, codes, strict=True)
        if code < reasons.UNSPECIFIED_ERROR and _retained_wanted(options >> 4 & 0x03, f in held)
    ]
    router.send_retained(session, granted, ident)


NAMED_MOST = 3
"""Filters a SUBACK's reason string names, each cut short as the log quotes them: one SUBSCRIBE may
hold thousands of filters of up to 65,535 bytes each."""


def _may_not_read(refused: list[str]) -> str:
    named = ", ".join(shown(f) for f in refused[:NAMED_MOST])
    more = f" and {len(refused) - NAMED_MOST} more" if len(refused) > NAMED_MOST else ""
    return f"this key may not read {named}{more}"


def _retained_wanted(handling: int, held: bool) -> bool:
    return handling == 0 or (handling == 1 and not held)


def on_unsubscribe5(connection: Connection, session: Session, body: bytes) -> None:
    """An MQTT 5 UNSUBSCRIBE: UNSUBACK says, per filter, whether the session held it."""
    pid, filters = mqtt5.decode_unsubscribe(body)
    held = connection.broker.router.unsubscribe(session, filters)
    codes = [reasons.SUCCESS if h else reasons.NO_SUBSCRIPTION_EXISTED for h in held]
    connection.write(mqtt5.suback(codec.UNSUBACK, pid, codes))
