"""Where a client finds the broker: ``mqtt[s]://HOST:PORT`` or ``ws[s]://HOST:PORT/PATH``.

Shared by the clients (generators and listeners) as topic names are: plain parsing, no MQTT code,
so the command line reads ``--url`` and ``--mqtt-version`` without loading an MQTT library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, get_args
from urllib.parse import urlsplit

MqttVersion = Literal["3.1.1", "5"]
"""The protocol versions a client may speak (``--mqtt-version``)."""
MQTT_VERSIONS: Final[tuple[str, ...]] = get_args(MqttVersion)
DEFAULT_MQTT_VERSION: Final[MqttVersion] = "3.1.1"
"""Every engine speaks 3.1.1; MQTT 5 adds reason codes on refusals (CONNACK, PUBACK)."""

_SCHEMES: dict[str, tuple[Literal["tcp", "websockets"], bool, int]] = {
    "mqtt": ("tcp", False, 1883),
    "tcp": ("tcp", False, 1883),
    "mqtts": ("tcp", True, 8883),
    "ssl": ("tcp", True, 8883),
    "ws": ("websockets", False, 8080),
    "wss": ("websockets", True, 443),
}
"""Scheme: (paho's transport, TLS, default port). 8883 is MQTT over TLS's registered port; wss
defaults to HTTPS's, where a proxy in front of the broker usually serves it."""


def unresolvable(host: str, text: str) -> str | None:
    """Why no resolver can look ``host`` up (``text`` names where it came from), or None.

    A name is looked up in its IDNA form, and a dot-separated part that is empty or over 63
    characters has none: the lookup would raise ``UnicodeError`` inside a client's connect, in
    its own thread, as a traceback, and the command would go on without a connection. An IP
    address always has one.
    """
    try:
        host.encode("idna")
    except UnicodeError:
        return (
            f"{text!r} names a host no resolver can look up: each part of a name between dots "
            "must be 1 to 63 characters"
        )
    return None


WEBSOCKET_PATH: Final = "/mqtt"
"""The path Radio's brokers serve MQTT over WebSocket at (the embedded broker answers others 404)."""


@dataclass(frozen=True)
class BrokerURL:
    """A broker address with its transport."""

    transport: Literal["tcp", "websockets"]
    """paho's names for MQTT over TCP and over WebSocket."""
    host: str
    port: int
    path: str = WEBSOCKET_PATH
    tls: bool = False
    """mqtts:// or wss://: the connection is TLS, and the broker's certificate is verified."""

    @classmethod
    def parse(cls, text: str) -> BrokerURL:
        """Read ``mqtt[s]://HOST[:PORT]`` (port 1883, 8883) or ``ws[s]://HOST[:PORT][/PATH]`` (8080, 443)."""
        parts = urlsplit(text)
        if parts.scheme not in _SCHEMES or not parts.hostname:
            msg = (
                f"{text!r} is not a broker URL: use mqtt://HOST:PORT or ws://HOST:PORT/mqtt "
                "(mqtts:// and wss:// for TLS)"
            )
            raise ValueError(msg)
        if (problem := unresolvable(parts.hostname, text)) is not None:
            raise ValueError(problem)
        transport, tls, default_port = _SCHEMES[parts.scheme]
        try:
            port = default_port if parts.port is None else parts.port
        except ValueError:
            msg = f"{text!r} has an invalid port"
            raise ValueError(msg) from None
        if port == 0:  # a server's "any free port": where it is, only its own banner says
            msg = f"{text!r} has port 0, which no server listens on"
            raise ValueError(msg)
        return cls(transport, parts.hostname, port, parts.path or WEBSOCKET_PATH, tls)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        secure = "s" if self.tls else ""
        if self.transport == "websockets":
            return f"ws{secure}://{host}:{self.port}{self.path}"
        return f"mqtt{secure}://{host}:{self.port}"


def parse_urls(text: str) -> list[BrokerURL]:
    """Read ``URL1,URL2,...``: brokers a client fails over between, round the list.

    All of one transport and one security: a client's transport and TLS are fixed when it is
    made, so a list mixing mqtt:// and ws://, or mqtt:// and mqtts://, could not be followed.
    """
    urls = [BrokerURL.parse(part.strip()) for part in text.split(",") if part.strip()]
    if not urls:
        msg = f"{text!r} names no broker URL"
        raise ValueError(msg)
    kinds = {(url.transport, url.tls) for url in urls}
    if len(kinds) > 1:
        msg = f"{text!r} mixes transports: list brokers of one kind (all mqtt://, mqtts://, ws:// or wss://)"
        raise ValueError(msg)
    return urls
