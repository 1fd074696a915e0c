"""The bridge's own broker identity: a service key like any other, so every broker knows it.

``RADIO_BRIDGE_KEY`` (the secret) wins; otherwise the secret lives in ``bridge.key`` beside the
configuration (mode 0600). On first start, with neither, the key and the file are made together.
The key may publish to every network and do nothing else.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from radio.config import Settings
from radio.errors import RadioError
from radio.keys import KeyStore, read_keys

SERVICE_KEY: Final = "bridge"
ENVIRONMENT: Final = "RADIO_BRIDGE_KEY"


def key_file(settings: Settings) -> Path:
    """Where the bridge keeps its secret when it made the key itself."""
    return settings.state_dir / "bridge.key"


def bridge_credentials(settings: Settings) -> tuple[str, str]:
    """The bridge's MQTT username and password, making the service key on first start."""
    keys = read_keys(settings.keys_path)
    secret = os.environ.get(ENVIRONMENT)
    if secret:
        key = keys.get(SERVICE_KEY)
        if key is None or not key.matches(secret):
            msg = f"${ENVIRONMENT} is not the secret of the key {SERVICE_KEY!r} in {settings.keys_path}"
            raise RadioError(msg)
        return SERVICE_KEY, secret

    path = key_file(settings)
    if path.exists():
        secret = path.read_text(encoding="utf-8").strip()
        key = keys.get(SERVICE_KEY)
        if key is None or not key.matches(secret):
            msg = (
                f"{path} no longer matches the key {SERVICE_KEY!r} in {settings.keys_path} "
                "(revoked or rotated?): delete the file to let the bridge make a new key"
            )
            raise RadioError(msg)
        return SERVICE_KEY, secret

    store = KeyStore(settings.keys_path, settings.networks)
    # A key without its file has lost its secret: only a new secret can help.
    secret = store.rotate(SERVICE_KEY) if SERVICE_KEY in keys else store.add(SERVICE_KEY, publish_all=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(secret + "\n")
    return SERVICE_KEY, secret
