"""The recorder's own broker identity: a service key that may read every network and publish nothing.

Like the bridge's: ``RADIO_RECORDER_KEY`` (the secret) wins; otherwise the secret lives in
``recorder.key`` beside the configuration (mode 0600), and on first start, with neither, the key
and the file are made together. A key whose file was lost is rotated: only a new secret can help.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from radio.config import Settings
from radio.errors import RadioError
from radio.keys import KeyStore, read_keys

SERVICE_KEY: Final = "recorder"
ENVIRONMENT: Final = "RADIO_RECORDER_KEY"


def key_file(settings: Settings) -> Path:
    """Where the recorder keeps its secret when it made the key itself."""
    return settings.state_dir / "recorder.key"


def recorder_credentials(settings: Settings) -> tuple[str, str]:
    """The recorder's MQTT username and password, making the service key on first start."""
    keys = read_keys(settings.keys_path)
    key = keys.get(SERVICE_KEY)
    secret = os.environ.get(ENVIRONMENT)
    if secret:
        if key is None or not key.matches(secret):
            msg = f"${ENVIRONMENT} is not the secret of the key {SERVICE_KEY!r} in {settings.keys_path}"
            raise RadioError(msg)
        return SERVICE_KEY, secret
    path = key_file(settings)
    if path.exists():
        secret = path.read_text(encoding="utf-8").strip()
        if key is None or not key.matches(secret):
            msg = (
                f"{path} no longer matches the key {SERVICE_KEY!r} in {settings.keys_path} "
                "(revoked or rotated?): delete the file to let the recorder make a new key"
            )
            raise RadioError(msg)
        return SERVICE_KEY, secret
    if key is not None and not key.read_all:
        msg = f"a key named {SERVICE_KEY!r} exists and is not the recorder's: revoke or rename it"
        raise RadioError(msg)
    store = KeyStore(settings.keys_path, settings.networks)
    secret = store.rotate(SERVICE_KEY) if key is not None else store.add(SERVICE_KEY, read_all=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(secret + "\n")
    return SERVICE_KEY, secret
