"""Every address a command will listen on, checked free before anything starts.

A port another program holds is a mistake of the operator's, like a bad setting: it deserves one
line naming the address, and exit status 2, whichever part would have bound it (the broker's
MQTT, WebSocket and metrics listeners on any engine, the bridge's HTTP) and whichever command
started it (``radio up`` starts several). Checking up front gives that one line before a child
process, Mosquitto or gunicorn prints its own account of the failure. Port 0 (any free port)
cannot be busy and is not checked.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Mapping
from typing import Final

from radio.config import Address
from radio.errors import RadioError

LABELS: Final = {
    "mqtt": "MQTT",
    "websocket": "MQTT over WebSocket",
    "mqtts": "MQTT over TLS",
    "wss": "MQTT over WebSocket with TLS",
    "metrics": "the broker's metrics",
}
"""What a listener serves, by its name in ``[broker]``, as the refusal names it."""


def check_free(part: str, addresses: Mapping[str, Address]) -> None:
    """Refuse, in one line naming it, the first address something else listens on."""
    for what, address in addresses.items():
        if address.port == 0:
            continue
        problem = _bind_problem(address)
        if problem is not None:
            msg = f"cannot start the {part} on {address} ({LABELS.get(what, what)}): {problem}"
            raise RadioError(msg)


def bind_failure(part: str, address: Address, what: str, error: OSError) -> str:
    """A failed bind as the one line a command stops with."""
    return f"cannot start the {part} on {address} ({what}): {_reason(error)}"


def _bind_problem(address: Address) -> str | None:
    """Why a server could not bind the address now (as servers bind: SO_REUSEADDR), or None."""
    try:
        infos = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        return f"cannot resolve {address.host!r} ({exc.strerror})"
    for family, kind, proto, _name, where in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(where)
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    return _reason(exc)
    return None


def _reason(error: OSError) -> str:
    if error.errno == errno.EADDRINUSE:
        return "address already in use (another program listens there: stop it, or choose another port)"
    if error.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges: choose a port from 1024)"
    return error.strerror or str(error)
