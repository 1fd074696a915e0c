"""The keys Radio's own servers hold, each a key like any other, so that every broker knows it.

The bridge's may publish to every network, the recorder's read every network. ``radio up``'s demo
publisher keeps its key the same way (``saved_secret``, ``make_and_keep``).

The secret comes from an environment variable if set; otherwise from a file in the state folder
(mode 0600). On first start, with neither, the key and the file are made together;
a key whose file was lost is rotated, since only a new secret can help.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
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
    secret = saved_secret(settings, name)
    if secret is not None:
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
    secret = make_and_keep(
        settings,
        name,
        rotate=key is not None,
        service=True,
        publish_all=role == "publish_all",
        read_all=role == "read_all",
    )
    return name, secret


def saved_secret(settings: Settings, name: str) -> str | None:
    """The secret kept in a key's file (``key_file``); None when there is no file."""
    try:
        return key_file(settings, name).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None


def make_and_keep(
    settings: Settings,
    name: str,
    *,
    rotate: bool,
    service: bool = False,
    publish: Iterable[str] = (),
    publish_all: bool = False,
    read_all: bool = False,
) -> str:
    """Give the key a new secret (``rotate``) or make it, and keep the secret in its file.

    The key is written first: a crash between the two leaves a file that does not match, which
    the next start treats as lost. ``service``: a service key may be rotated, by its own server.
    """
    store = KeyStore(settings.keys_path, settings.networks, settings.path)
    if rotate:
        secret = store.rotate(name, service=service)
    else:
        secret = store.add(name, publish=publish, publish_all=publish_all, read_all=read_all)
    path = key_file(settings, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, secret + "\n", durable=True)
    return secret
