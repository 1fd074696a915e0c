"""A key's secret, and the hashes kept of it: no one keeps the secret itself.

- SHA-256 (``radio.credentials.secret_digest``), checked on every CONNECT and every HTTP publish.
- PBKDF2-SHA512 in Mosquitto's ``$7$`` format (``mosquitto_hash``), for ``radio mosquitto export``.
- bcrypt (``bcrypt_hash``), the one hash NATS accepts in its users list (``radio nats export``).

A key's id is random too (``new_key_id``), or, for a key stored before keys had one, fixed by
its digest (``derived_key_id``).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterable
from typing import Final

import bcrypt

MOSQUITTO_ITERATIONS: Final = 101
"""mosquitto_passwd's own default: secrets are random, so iterations add nothing but CONNECT cost."""


def mosquitto_hash(secret: str, salt: bytes | None = None) -> str:
    """The secret as a Mosquitto 2.0 password_file entry (PBKDF2-SHA512, ``$7$``)."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    derived = hashlib.pbkdf2_hmac("sha512", secret.encode(), salt, MOSQUITTO_ITERATIONS)
    return f"$7${MOSQUITTO_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(derived).decode()}"


def new_key_id(taken: Iterable[str] = ()) -> str:
    """A fresh id: 64 random bits, never one already in use."""
    used = frozenset(taken)
    while (key_id := secrets.token_hex(8)) in used:
        pass
    return key_id


def derived_key_id(digest: str) -> str:
    """The id of a key stored before keys had one: fixed by the digest it had then.

    It is written to the file at the next change of the registry, so a later rotation (a new
    digest) keeps it. Hashed again, with a label, so that it is not the ``key-`` username.
    """
    return hashlib.sha256(b"radio key id\0" + digest.encode()).hexdigest()[:16]


BCRYPT_COST: Final = 4
"""bcrypt's lowest cost: a 256-bit random secret needs no key stretching, and NATS checks it per CONNECT."""


def bcrypt_hash(secret: str) -> str:
    """The secret as NATS takes a password from its users list (bcrypt, ``$2b$``).

    Kept beside the other hashes because NATS accepts no SHA-256 or PBKDF2, and no one may keep
    the secret itself to hash it later. Keys made before this hash existed have none: rotating
    them gives them one.
    """
    return bcrypt.hashpw(secret.encode(), bcrypt.gensalt(BCRYPT_COST)).decode()


def new_secret() -> str:
    """A fresh secret: 256 random bits, URL-safe so it fits headers and MQTT passwords as is.

    Never starting with '-': a command line would take ``--key -x...`` for an option.
    """
    while (secret := secrets.token_urlsafe(32)).startswith("-"):
        pass
    return secret
