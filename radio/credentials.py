"""What a client needs to present a key: the secret's digest and the username derived from it.

The generators and listeners import this module and nothing else of the registry: they hold a
secret, never the keys file, so they need neither its lock nor its writer.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

ALIAS: Final = re.compile(r"key-[0-9a-f]{16}")
"""Usernames derived from secrets (``secret_username``): reserved, never a key's name."""


def secret_username(secret: str) -> str:
    """The MQTT username a client holding only a secret sends: ``key-`` and 16 hex digits of its digest.

    MQTT wants a username beside a password. The embedded broker would take any label (the secret
    alone names the key), but Mosquitto checks username and password together: deriving the
    username from the secret lets the password file list it beside the key's name, so a client
    given just ``--key SECRET`` works on both brokers. 64 bits of a SHA-256 digest of a 256-bit
    secret reveal nothing usable.
    """
    return "key-" + secret_digest(secret)[:16]


def secret_digest(secret: str) -> str:
    """The SHA-256 hex digest under which a secret is stored and looked up."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()
