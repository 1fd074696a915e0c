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
import os
import socket
from collections.abc import Iterable

from radio.config import Address
from radio.errors import RadioError


def check_free(part: str, addresses: Iterable[Address]) -> None:
    """Refuse, in one line naming it, the first address something else listens on."""
    for address in addresses:
        if address.port == 0:
            continue
        problem = _bind_problem(address)
        if problem is not None:
            raise RadioError(bind_failure(part, address, problem))


def bind_failure(part: str, address: Address, error: OSError) -> str:
    """A failed bind as the one line a command stops with (the bridge's own bind says the same)."""
    reason = os.strerror(error.errno) if error.errno else error.strerror or str(error)
    return f"the {part} cannot listen on {address}: {reason}"


def _bind_problem(address: Address) -> OSError | None:
    """Why a server could not bind the address now (as servers bind: SO_REUSEADDR), or None."""
    try:
        infos = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        return OSError(0, f"cannot resolve {address.host!r} ({exc.strerror})")
    # An address this machine does not have (EADDRNOTAVAIL) is a mistake too, unless the name
    # also stands for one it has (localhost on a machine without IPv6): then servers bind that.
    missing: OSError | None = None
    bound = False
    for family, kind, proto, _name, where in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(where)
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    return exc
                if exc.errno == errno.EADDRNOTAVAIL:
                    missing = missing or exc
                continue
            bound = True
    return None if bound else missing
