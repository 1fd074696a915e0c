"""The errors Radio raises on purpose, all under one base so a caller can catch them together.

Hierarchy::

    RadioError                 anything Radio refuses, with a message fit for a user
    ├── ConfigError            the configuration file is missing, malformed or invalid
    ├── InvalidName            a network or key name breaks the naming rules
    └── KeyStoreError          the key registry refuses a change or cannot be read
        ├── MissingRegistry    there is no keys file (an error for servers, "no keys yet" for
        │                      the commands that make the first key)
        ├── UnknownKey         no key has that name
        └── DuplicateKey       a key with that name exists already

The command line turns any RadioError into one line on stderr and exit status 2.

``Busy`` is no refusal but a turn to wait: a file shared between processes (the rate buckets,
the usage counts) stayed locked past the caller's wait, and nothing was taken.
"""


class RadioError(Exception):
    """Base of every error Radio raises on purpose."""


class ConfigError(RadioError):
    """The configuration file cannot be used as it is."""


class InvalidName(RadioError, ValueError):
    """A network or key name breaks the naming rules."""


class KeyStoreError(RadioError):
    """The key registry refuses a change or cannot be read."""


class MissingRegistry(KeyStoreError):
    """There is no keys file at all: never read as a registry without keys."""


class UnknownKey(KeyStoreError):
    """No key has that name."""


class DuplicateKey(KeyStoreError):
    """A key with that name exists already."""


class Busy(Exception):
    """A file shared between processes stayed locked: nothing was taken, ask again shortly."""
