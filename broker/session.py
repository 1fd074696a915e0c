"""What the broker notes on an amqtt session about the client behind it.

amqtt gives plugins ``session.attributes`` to share per-client data; these are the names Radio
uses there, kept in one place so the auth plugin, the ACL plugin and the registry watcher agree.
"""

from typing import Final

from amqtt.session import Session

KEY_NAME: Final = "radio.key"
"""The key the client authenticated with, or None for an anonymous client."""
KEY_DIGEST: Final = "radio.digest"
"""The digest of the secret it presented: a rotated key's old connections no longer match it."""
TRANSPORT: Final = "radio.transport"
"""The listener it came in on (tcp or ws), for the log."""
UNAUTHENTICATED: Final = "\x00unauthenticated"
"""Stands for a session no plugin has vouched for: no key has this name, so it gets no rights."""


def key_name(session: Session) -> str | None:
    """The key behind a session: a name, None for anonymous, or a name no key has."""
    name: str | None = session.attributes.get(KEY_NAME, UNAUTHENTICATED)
    return name


def describe(session: Session) -> str:
    """A client as the log names it: never with its secret."""
    transport = session.attributes.get(TRANSPORT, "?")
    return f"client {session.client_id!r} from {session.remote_address}:{session.remote_port} ({transport})"
