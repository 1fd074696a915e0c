"""How many files a server may hold open: each connection is one, so this caps the connections.

Most systems start a process with a soft limit of 1,024 open files (a shell's ``ulimit -n``,
systemd's ``LimitNOFILE``) and a far higher hard one, which the process may raise its own soft
limit to. Left at 1,024, a broker holds about a thousand connections whatever ``max_connections``
says, and one address holding them all (1,000 anonymous clients, which the embedded broker lets
one address hold) locks every key out: a socket the broker cannot accept is refused before it is
known to be a key's. So ``radio broker`` raises its soft limit to the hard one at start, as Go
programs (nats-server) do, and its Mosquitto inherits it.
"""

from __future__ import annotations

import logging
import resource
from typing import Final

log = logging.getLogger(__name__)

CEILING: Final = 1 << 20
"""The soft limit asked for when the hard one is unlimited (the kernel's ``nr_open`` default)."""
SPARE: Final = 64
"""Open files a broker needs beside its connections: listeners, store, logs, the registry."""


def raise_soft_limit() -> int:
    """Raise this process's soft limit on open files to its hard one; return the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = CEILING if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft
    return target


def check(connections: int) -> int:
    """Raise the limit, and say so in one line if it still holds fewer than ``connections``."""
    limit = raise_soft_limit()
    if limit != resource.RLIM_INFINITY and limit < connections + SPARE:
        log.warning(
            "open files are limited to %d (ulimit -n, systemd's LimitNOFILE): the broker holds about "
            "%d connections, fewer than the %d its listeners allow; raise the hard limit",
            limit,
            max(limit - SPARE, 0),
            connections,
        )
    return limit
