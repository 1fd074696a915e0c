"""The errors Radio raises on purpose, all under one root so a caller can catch them together.

Hierarchy (each class with the module it lives in, when not here)::

    RadioError                 anything Radio refuses, with a message fit for a user
    ├── ConfigError            the configuration file is missing, malformed or invalid
    ├── InvalidName            a network or key name breaks the naming rules (also a ValueError)
    ├── KeyStoreError          the key registry refuses a change or cannot be read
    │   ├── UnreadableRegistry the keys file cannot be read as a registry (broken by hand, say)
    │   │   └── MissingRegistry    there is no keys file (an error for servers, "no keys yet"
    │   │                          for the commands that make the first key)
    │   ├── UnknownKey         no key has that name
    │   └── DuplicateKey       a key with that name exists already
    ├── Busy                   a shared file (rate buckets, usage) stayed locked: ask again
    ├── NotJSON                a payload is not a sample's strict JSON (samples; also a ValueError)
    ├── AuditError             the audit log cannot be written or read (audit)
    ├── UsageError             the usage file cannot be opened (usage)
    ├── NoHistory              no history file: no recorder has run here (history_store)
    ├── HistoryFileUnavailable the history file cannot be read now (history_store)
    ├── TlsError               a certificate, key or CA file Radio cannot use (tls)
    ├── StoreError             the embedded broker's store cannot be opened or read (broker.store)
    ├── Violation              a packet MQTT says to close the connection on (wire.framing)
    │   ├── TooLarge           a packet over the size limit (wire.framing)
    │   ├── AuthPacket         an AUTH packet: the broker takes no authentication method
    │   │                      (wire.packets)
    │   └── CodedViolation     one an MQTT 5 client is told of by a DISCONNECT reason code
    │                          (wire.mqtt5)
    ├── Malformed              an MQTT 5 property list MQTT calls malformed (wire.properties;
    │   │                      also a ValueError)
    │   ├── TooMany            more user properties or subscription ids than a packet may hold
    │   │                      (wire.properties)
    │   └── NotAllowed         a property value that parses but MQTT 5 does not allow: a
    │                          protocol error (wire.properties)
    ├── MosquittoError         Mosquitto is missing or would not start (broker.mosquitto)
    ├── NatsError              the NATS cluster cannot be planned or started (broker.nats_conf)
    ├── APIError               the HTTP door's refusal: a status, a message (bridge.errors)
    │   └── Refusal            a refusal that carries response headers (bridge.access)
    ├── BrokerUnavailable      the bridge could not publish: no broker, or no PUBACK in time
    │                          (bridge.publisher)
    ├── LinkRefused            a generator's key or server certificate refused (devices.link)
    ├── Refused                a listener's key, network or certificate refused
    │                          (subscribers.listener)
    ├── HistoryRefused         the bridge refused a history read (subscribers.history)
    ├── HistoryUnavailable     no history right now (subscribers.history)
    └── Unhealthy              ``radio health``: the door did not answer 200 (cli.health)

The bridge's ASGI server has two private ones under the root too (``bridge.asgi``: a request
cut short by a stop or by its client), which never leave it. The command line turns any
RadioError into one line on stderr and exit status 2; ``tests/unit/test_errors.py`` checks that
every exception class of the package is under the root and in this tree.

``Busy`` is no refusal but a turn to wait: a file shared between processes (the rate buckets,
the usage counts) stayed locked past the caller's wait, and nothing was taken. Its callers catch
it by name; under the root, one that escapes is still one line, not a traceback.
"""


class RadioError(Exception):
    """Root of every error Radio raises on purpose."""


class ConfigError(RadioError):
    """The configuration file cannot be used as it is."""


class InvalidName(RadioError, ValueError):
    """A network or key name breaks the naming rules."""


class KeyStoreError(RadioError):
    """The key registry refuses a change or cannot be read."""


class UnreadableRegistry(KeyStoreError):
    """The keys file cannot be read as a registry: missing, emptied, malformed or mistyped.

    A problem of the file, not of the change asked for, which stands once the file is mended.
    """


class MissingRegistry(UnreadableRegistry):
    """There is no keys file at all: never read as a registry without keys."""


class UnknownKey(KeyStoreError):
    """No key has that name."""


class DuplicateKey(KeyStoreError):
    """A key with that name exists already.

    Its message names the command that gives the key a new secret; ``name`` lets another door
    (the admin API) name its own way instead.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"a key named {name!r} exists already (use 'radio keys rotate {name}' for a new secret)"
        )

    def taken(self) -> str:
        """The refusal without the command's hint."""
        return f"a key named {self.name!r} exists already"


class Busy(RadioError):
    """A file shared between processes stayed locked: nothing was taken, ask again shortly."""


def reason(exc: BaseException) -> str:
    """What went wrong, in words: an ``OSError``'s own, such as ``Permission denied``.

    Without the ``[Errno N]`` and the path its text repeats: the message names the file itself.
    """
    words = getattr(exc, "strerror", None)
    return words if isinstance(words, str) and words else str(exc)
