"""The recorder's own broker identity: a service key that may read every network and publish nothing.

Like the bridge's: ``RADIO_RECORDER_KEY`` (the secret) wins; otherwise the secret lives in
``recorder.key`` beside the configuration (mode 0600), and on first start, with neither, the key
and the file are made together. A key whose file was lost is rotated: only a new secret can help.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from radio import service_keys
from radio.config import Settings

SERVICE_KEY: Final = "recorder"
ENVIRONMENT: Final = "RADIO_RECORDER_KEY"


def key_file(settings: Settings) -> Path:
    """Where the recorder keeps its secret when it made the key itself."""
    return service_keys.key_file(settings, SERVICE_KEY)


def recorder_credentials(settings: Settings) -> tuple[str, str]:
    """The recorder's MQTT username and password, making the service key on first start."""
    return service_keys.service_credentials(settings, SERVICE_KEY, ENVIRONMENT, "read_all")
