"""What the broker notes on a session about the client behind it.

The plugin API gives plugins ``session.attributes`` to share per-client data; these are the names
Radio uses there, kept in one place so the auth plugin, the ACL plugin and the broker agree.
"""

from typing import Any, Final, Protocol

from radio import logs


class PluginSession(Protocol):
    """What the plugins read of a session: amqtt's own, or the embedded broker's."""

    @property
    def attributes(self) -> dict[str, Any]:
        """Per-client data the plugins share."""

    @property
    def client_id(self) -> str | None:
        """The MQTT client id."""

    @property
    def remote_address(self) -> str | None:
        """The client's address."""

    @property
    def remote_port(self) -> int | None:
        """The client's port."""


KEY_NAME: Final = "radio.key"
"""The key the client authenticated with, or None for an anonymous client."""
KEY_ID: Final = "radio.key_id"
"""The id of that key: a session belongs to one key for its whole life, not to a name."""
KEY_DIGEST: Final = "radio.digest"
"""The digest of the secret it presented: a rotated key's old connections no longer match it."""
REFUSED: Final = "radio.refused"
"""Why the auth plugin refused a CONNECT: ``missing`` (no key, anonymous access off), ``invalid``
(unknown, revoked, expired or wrong secret) or ``will`` (a will the key may not publish);
MQTT 5 clients are told it as a CONNACK reason code."""
TRANSPORT: Final = "radio.transport"
"""The listener it came in on (tcp or ws), for the log."""
UNAUTHENTICATED: Final = "\x00unauthenticated"
"""Stands for a session no plugin has vouched for: no key has this name, so it gets no rights."""


def key_name(session: PluginSession) -> str | None:
    """The key behind a session: a name, None for anonymous, or a name no key has."""
    name: str | None = session.attributes.get(KEY_NAME, UNAUTHENTICATED)
    return name


shown: Final = logs.shown
"""How a log line quotes a client id or a topic: ``radio.logs.shown``, at hand for the broker's modules."""


def describe(session: PluginSession) -> str:
    """A client as the log names it: never with its secret."""
    transport = session.attributes.get(TRANSPORT, "?")
    where = f"{session.remote_address}:{session.remote_port} ({transport})"
    return f"client {shown(session.client_id)} from {where}"
