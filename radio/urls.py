"""Where a client finds the broker: ``mqtt://HOST:PORT`` or ``ws://HOST:PORT/PATH``.

Shared by the clients (generators and listeners) as topic names are: plain parsing, no MQTT code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit


@dataclass(frozen=True)
class BrokerURL:
    """A broker address with its transport."""

    transport: Literal["tcp", "websockets"]
    """paho's names for MQTT over TCP and over WebSocket."""
    host: str
    port: int
    path: str = "/mqtt"

    @classmethod
    def parse(cls, text: str) -> BrokerURL:
        """Read ``mqtt://HOST[:PORT]`` (default 1883) or ``ws://HOST[:PORT][/PATH]`` (default 8080)."""
        parts = urlsplit(text)
        schemes: dict[str, tuple[Literal["tcp", "websockets"], int]] = {
            "mqtt": ("tcp", 1883),
            "tcp": ("tcp", 1883),
            "ws": ("websockets", 8080),
        }
        if parts.scheme not in schemes or not parts.hostname:
            msg = f"{text!r} is not a broker URL: use mqtt://HOST:PORT or ws://HOST:PORT/mqtt"
            raise ValueError(msg)
        transport, default_port = schemes[parts.scheme]
        try:
            port = parts.port or default_port
        except ValueError:
            msg = f"{text!r} has an invalid port"
            raise ValueError(msg) from None
        return cls(transport, parts.hostname, port, parts.path or "/mqtt")

    def __str__(self) -> str:
        if self.transport == "websockets":
            return f"ws://{self.host}:{self.port}{self.path}"
        return f"mqtt://{self.host}:{self.port}"
