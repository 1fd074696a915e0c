"""The bridge's own broker identity: a service key like any other, so every broker knows it.

``RADIO_BRIDGE_KEY`` (the secret) wins; otherwise the secret lives in ``bridge.key`` beside the
configuration (mode 0600). On first start, with neither, the key and the file are made together.
The key may publish to every network and do nothing else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from radio import service_keys
from radio.config import Settings

SERVICE_KEY: Final = "bridge"
ENVIRONMENT: Final = "RADIO_BRIDGE_KEY"


def key_file(settings: Settings) -> Path:
    """Where the bridge keeps its secret when it made the key itself."""
    return service_keys.key_file(settings, SERVICE_KEY)


def bridge_credentials(settings: Settings) -> tuple[str, str]:
    """The bridge's MQTT username and password, making the service key on first start."""
    return service_keys.service_credentials(settings, SERVICE_KEY, ENVIRONMENT, "publish_all")
