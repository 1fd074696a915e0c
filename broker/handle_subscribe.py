"""SUBSCRIBE and UNSUBSCRIBE: each filter granted or refused by the key's rights, then its retained ones."""

from __future__ import annotations

from typing import TYPE_CHECKING

from radio.broker import codec

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
    for packet in router.retained_for(session, granted):
        connection.write(packet)


def on_unsubscribe(connection: Connection, session: Session, body: bytes) -> None:
    """Drop the filters the session holds; UNSUBACK."""
    pid, filters = codec.decode_unsubscribe(body)
    connection.broker.router.unsubscribe(session, filters)
    connection.write(codec.ack(codec.UNSUBACK, pid))
