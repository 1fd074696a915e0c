"""The keys Radio's own servers hold, each a key like any other, so that every broker knows it.

The bridge's may publish to every network, the recorder's read every network.

The secret comes from an environment variable if set; otherwise from a file beside the
configuration (mode 0600). On first start, with neither, the key and the file are made together;
a key whose file was lost is rotated, since only a new secret can help.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from radio.config import Settings
from radio.errors import RadioError
from radio.files import write_private
from radio.keys import KeyStore, read_keys

Role = Literal["publish_all", "read_all"]


def key_file(settings: Settings, name: str) -> Path:
    """Where a server keeps its secret when it made its key itself."""
    return settings.state_dir / f"{name}.key"


def service_credentials(settings: Settings, name: str, environment: str, role: Role) -> tuple[str, str]:
    """A server's MQTT username and password, making its service key on first start."""
    keys = read_keys(settings.keys_path)
    key = keys.get(name)
    secret = os.environ.get(environment)
    if secret:
        if key is None or not key.matches(secret):
            msg = f"${environment} is not the secret of the key {name!r} in {settings.keys_path}"
            raise RadioError(msg)
        return name, secret
    path = key_file(settings, name)
    if path.exists():
        secret = path.read_text(encoding="utf-8").strip()
        if key is None or not key.matches(secret):
            msg = (
                f"{path} no longer matches the key {name!r} in {settings.keys_path} "
                f"(revoked or rotated?): delete the file to let the {name} make a new key"
            )
            raise RadioError(msg)
        return name, secret
    if key is not None and not getattr(key, role):
        msg = f"a key named {name!r} exists and is not the {name}'s: revoke or rename it"
        raise RadioError(msg)
    store = KeyStore(settings.keys_path, settings.networks)
    if key is not None:
        secret = store.rotate(name, service=True)
    else:
        secret = store.add(name, publish_all=role == "publish_all", read_all=role == "read_all")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, secret + "\n", durable=True)
    return name, secret
