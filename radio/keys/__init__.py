"""API keys: what each may publish and read, stored as hashes only.

A key is a name, a stable id, a random secret and two lists of networks. The secret is shown once,
when the key is made; the file keeps two hashes of it:

- SHA-256, checked on every CONNECT and every HTTP publish. Secrets are 256 random bits, so a
  slow KDF would buy nothing but a stalled event loop (amqtt's argon2 plugin costs 0.26 s per
  CONNECT), and the digest doubles as the lookup index for the bridge, which sees only the secret.
- PBKDF2-SHA512 in Mosquitto's ``$7$`` format, so the production broker can be handed the same keys
  (``radio mosquitto export``) without anyone knowing the secrets.
- bcrypt, the one hash NATS accepts in its users list (``radio nats export``): see ``bcrypt_hash``.

The id names the key itself, not its name or its secret: ``rotate`` and ``edit`` keep it, while a
key revoked and added again under the same name gets a new one, so whatever is bound to the id (a
broker's sessions) never passes from an old key to a new one.

The file is written only by ``radio keys``: atomically (write, fsync, rename), mode 0600, under a
lock so two commands at once cannot lose a change. It is read strictly: a missing, emptied or
mistyped file is refused as a whole (docs/registry.md), because reading it as "fewer keys" or
"more rights" would close or open doors by accident.

The package's parts: ``terms`` (rate, quota, expiry), ``hashing`` (secrets, ids and the hashes
kept of them), ``model`` (``Key`` and the strict reading of its table), ``loading`` (the file,
read whole) and ``store`` (``KeyStore``, the locked read-change-write). Every public name is
here, so callers import ``from radio.keys import ...`` and never a part.
"""

from __future__ import annotations

from radio.keys.hashing import (
    BCRYPT_COST,
    MOSQUITTO_ITERATIONS,
    bcrypt_hash,
    derived_key_id,
    mosquitto_hash,
    new_key_id,
    new_secret,
)
from radio.keys.loading import load_keys, parse_keys, read_keys
from radio.keys.model import KEY_ID, Key, check_key_name
from radio.keys.store import KeyStore
from radio.keys.terms import (
    MAX_COUNT,
    MAX_RATE,
    MIN_RATE,
    PERIODS,
    Terms,
    format_rate,
    parse_expiry,
    parse_quota,
    parse_rate,
    within_count,
)

__all__ = [
    "BCRYPT_COST",
    "KEY_ID",
    "MAX_COUNT",
    "MAX_RATE",
    "MIN_RATE",
    "MOSQUITTO_ITERATIONS",
    "PERIODS",
    "Key",
    "KeyStore",
    "Terms",
    "bcrypt_hash",
    "check_key_name",
    "derived_key_id",
    "format_rate",
    "load_keys",
    "mosquitto_hash",
    "new_key_id",
    "new_secret",
    "parse_expiry",
    "parse_keys",
    "parse_quota",
    "parse_rate",
    "read_keys",
    "within_count",
]
