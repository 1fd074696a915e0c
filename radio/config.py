"""The configuration file: networks, listener addresses, and where the keys live.

One TOML file (``--config PATH``, else ``RADIO_CONFIG``, else ``radio.toml`` in the current folder)
holds everything an operator sets by hand. It is validated strictly, because a typo in a
setting that controls who may read what must not be silently ignored: every problem is reported
as one line naming the file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from radio import files
from radio.errors import ConfigError, InvalidName, reason
from radio.schemas import Schema
from radio.toml_values import kind as toml_kind
from radio.toml_values import shown
from radio.toml_values import table as toml_table
from radio.topics import NetworkName
from radio.urls import unresolvable

DEFAULT_CONFIG_NAME: Final = "radio.toml"
DEFAULT_KEYS_NAME: Final = "keys.toml"
DEFAULT_MAX_PAYLOAD: Final = 64 * 1024
DEFAULT_PERSISTENCE: Final = "broker.db"
DEFAULT_HISTORY: Final = 1000
DEFAULT_MAX_RETAINED: Final = 1000
MAX_RETAINED: Final = 10_000_000
HISTORY_FILE: Final = "history.db"
"""The recorder's SQLite file, beside the configuration: it writes it, the bridge reads it."""
MAX_HISTORY: Final = 10_000_000
# MQTT's own limit on a packet's remaining length.
MQTT_MAX_PAYLOAD: Final = 268_435_455

_ADDRESS = re.compile(r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.-]+)):(?P<port>[0-9]{1,5})")


@dataclass(frozen=True)
class Address:
    """A HOST:PORT to listen on; port 0 asks the system for a free port."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Address:
        """Read ``HOST:PORT`` or ``[IPv6]:PORT``."""
        match = _ADDRESS.fullmatch(text) if isinstance(text, str) else None
        if match is None or int(match["port"]) > 65535:
            msg = f"{text!r} is not HOST:PORT (a port from 0 to 65535)"
            raise ValueError(msg)
        host = match["ipv6"] or match["host"]
        if (problem := unresolvable(host, text)) is not None:
            raise ValueError(problem)
        return cls(host, int(match["port"]))

    @classmethod
    def parse_url(cls, text: str, scheme: str = "mqtt") -> Address:
        """Read ``mqtt://HOST:PORT`` (or plain ``HOST:PORT``), as ``--broker`` takes it."""
        prefix = f"{scheme}://"
        return cls.parse(text.removeprefix(prefix).rstrip("/"))

    def local(self) -> Address:
        """Where to reach this listener from the same machine: a wildcard bind is reached on loopback."""
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return Address(host, self.port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class NetworkSettings:
    """How one network behaves."""

    public: bool = False
    """Anonymous listeners may read it."""
    retain: bool = True
    """The last sample is kept for listeners who join later."""
    max_payload: int = DEFAULT_MAX_PAYLOAD
    """Largest sample accepted, in bytes."""
    schema: Schema | None = None
    """A JSON Schema every sample must match (``schema = "FILE"``, relative to the configuration)."""
    history: int = DEFAULT_HISTORY
    """How many of its latest samples the recorder keeps, numbered (0: none kept, still numbered)."""
    max_retained: int = DEFAULT_MAX_RETAINED
    """Topics of the network with a retained sample; a publish that would retain one more is
    refused (replacing one still works; so does the network's own topic, always). At the
    defaults its retained samples take at most 64 MiB (1,000 x 64 KiB) of memory and store."""


@dataclass(frozen=True)
class TlsSettings:
    """The server certificate (with its chain) and private key every TLS listener presents."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class BrokerSettings:
    """Where the embedded broker listens and whom it lets in."""

    mqtt: Address = Address("127.0.0.1", 1883)
    websocket: Address = Address("127.0.0.1", 8080)
    mqtt_enabled: bool = True
    """False (``mqtt = false``): no plain MQTT/TCP listener, e.g. when mqtts serves instead."""
    websocket_enabled: bool = True
    """False (``websocket = false``): no plain WebSocket listener."""
    mqtts: Address | None = None
    """MQTT over TCP with TLS (needs [tls]); None: not served."""
    wss: Address | None = None
    """MQTT over WebSocket with TLS (needs [tls]); None: not served."""
    allow_anonymous: bool = True
    connect_timeout: float = 10.0
    """Seconds from a socket's TCP accept to its CONNECT, a TLS handshake and a WebSocket upgrade
    included, after which it is closed."""
    max_connections: int = 10_000
    """Per listener; a connection over it is closed at once. 0 means no limit."""
    max_packet_size: int | None = None
    """Largest MQTT packet accepted, in bytes; None: the largest network max_payload plus headroom."""
    persistence: Path | None = None
    """The SQLite file keeping retained samples and persistent sessions across restarts; None: off."""
    max_queued: int = 10_000
    """Samples one keyed session keeps while its client is away or slow; the oldest go past it."""
    max_queued_bytes: int = 16 * 1024 * 1024
    """Bytes one keyed session keeps, likewise."""
    session_expiry: float = 7 * 86_400.0
    """Seconds a keyed persistent session is kept while its client is away."""
    anonymous_max_queued: int = 100
    """Like max_queued, for an anonymous session: nobody pays for it, so it gets little."""
    anonymous_max_queued_bytes: int = 64 * 1024
    """Like max_queued_bytes, for an anonymous session."""
    anonymous_session_expiry: float = 3_600.0
    """Like session_expiry, for an anonymous session."""
    recorder_max_queued: int = 1_000_000
    """Like max_queued, for the session of a key that reads every network (the history recorder's):
    a burst it cannot number at once waits there rather than leaving a hole in the history."""
    recorder_max_queued_bytes: int = 512 * 1024 * 1024
    """Like max_queued_bytes, for the recorder's session."""
    max_filters: int = 100
    """Subscriptions one client may hold; more are refused (SUBACK 0x80)."""
    max_inflight: int = 100
    """QoS 1 and 2 samples sent to one client and not yet acknowledged; more wait in its queue."""
    max_incoming_qos2: int = 20
    """QoS 2 samples from one client awaiting their PUBREL; past it the connection is closed."""
    send_buffer: int = 1024 * 1024
    """Bytes waiting to be sent to one client past which it is slow: QoS 0 samples are dropped for
    it (and counted), QoS 1 and 2 wait in its queue. A client that keeps up gets more for a burst."""
    send_buffer_max: int = 16 * 1024 * 1024
    """The most bytes that may wait for one client that keeps up (its room doubles from
    ``send_buffer`` while it reads); at least ``send_buffer``."""
    send_buffer_total: int = 256 * 1024 * 1024
    """Bytes of room granted beyond ``send_buffer`` to all clients together."""
    anonymous_max_sessions: int = 1_000
    """Anonymous persistent sessions the broker keeps in all; a CONNECT that would open one more
    is refused (CONNACK 3). Nobody pays for them, and each holds store space."""
    anonymous_max_sessions_per_address: int = 10
    """Anonymous persistent sessions opened from one address; likewise."""
    anonymous_total_queued_bytes: int = 32 * 1024 * 1024
    """Bytes queued for all anonymous sessions together past which no new one is opened."""
    anonymous_queued_bytes_per_address: int = 512 * 1024
    """Bytes queued for the anonymous sessions of one address past which it opens no new one."""
    anonymous_max_connections_per_address: int = 1_000
    """Anonymous clients connected at once from one address; past it a CONNECT gets CONNACK 3."""
    max_connecting_per_address: int = 256
    """Sockets from one address that have not completed their CONNECT; more are closed at once."""
    max_sessions_per_key: int = 1_000
    """Persistent sessions one key may hold (0: no limit); past it a new one gets CONNACK 3."""
    max_queued_bytes_per_key: int = 256 * 1024 * 1024
    """Bytes the persistent sessions of one key may queue in all (0: no limit); past it each of
    them drops its oldest samples as new ones come."""
    max_connections_per_key: int = 1_000
    """Clients connected at once with one key (0: no limit); past it a CONNECT gets CONNACK 3."""
    max_shared_per_source: int = 1_000
    """Shared subscriptions one source holds at once: a key's, or an address's anonymous ones (0:
    no limit); past it a SUBSCRIBE to one more gets SUBACK 0x97. Each costs a delivery per sample."""
    log_repeats: int = 20
    """Log lines of one kind written per minute; the rest are summed up in one line."""
    metrics: Address | None = None
    """Where the broker serves Prometheus metrics (HOST:PORT); None: not served."""

    def local_url(self) -> str:
        """The URL a client on this machine reaches MQTT/TCP at: plain if served, else mqtts."""
        if self.mqtt_enabled or self.mqtts is None:
            return f"mqtt://{self.mqtt.local()}"
        return f"mqtts://{self.mqtts.local()}"

    def local_ws_url(self) -> str:
        """The URL a client on this machine reaches MQTT over WebSocket at: plain if served, else wss."""
        if self.websocket_enabled or self.wss is None:
            return f"ws://{self.websocket.local()}/mqtt"
        return f"wss://{self.wss.local()}/mqtt"


@dataclass(frozen=True)
class BridgeSettings:
    """Where the HTTP bridge listens, and how long it waits for a request's body."""

    listen: Address = Address("127.0.0.1", 5000)
    body_timeout: float = 10.0
    """Seconds from a request's headers to the end of its body; a body later than that is 408."""
    public_websocket_url: str | None = None
    """The MQTT-over-WebSocket URL browsers use (behind a proxy: wss://NAME/mqtt); None: derived
    from ``[broker] websocket``."""
    admin: Address | None = None
    """Where the admin API (``/admin/``) and ``/metrics`` are served on a listener of their own;
    None: on ``listen``, behind an admin key."""
    admin_enabled: bool = True
    """False (``admin = false``): no admin API at all; ``/metrics`` stays on ``listen``, behind an
    admin key."""
    history_page_bytes: int = 4 * 1024 * 1024
    """Bytes of samples one history answer holds at most (always one sample); the rest by ``after``."""
    history_threads: int = 2
    """History answers one worker builds at once; more wait their turn, holding no thread."""
    idle_timeout: float = 10.0
    """Seconds a connection may stay open without completing a request's line and headers, counted
    from its opening or from its last answer: a socket that never asks is closed."""
    keep_alive: float = 5.0
    """Seconds a kept-alive connection may wait, idle, for its next request."""
    max_idle_per_source: int = 64
    """Connections from one address waiting for a request, per worker; past it, new ones are closed."""


def _default_networks() -> dict[str, NetworkSettings]:
    return {NetworkName("sample_net"): NetworkSettings(public=True)}


@dataclass(frozen=True)
class Settings:
    """Everything the configuration file says, with defaults for what it leaves out."""

    path: Path
    """The configuration file (it may not exist: then every setting is a default)."""
    keys_path: Path
    """The key registry, beside the configuration file unless set otherwise."""
    broker: BrokerSettings = BrokerSettings()
    bridge: BridgeSettings = BridgeSettings()
    networks: dict[str, NetworkSettings] = field(default_factory=_default_networks)
    tls: TlsSettings | None = None
    """[tls]: the certificate of the TLS listeners and of the bridge's HTTPS; None: no TLS."""

    @property
    def state_dir(self) -> Path:
        """The folder holding the configuration, where Radio keeps its own files too."""
        return self.path.parent

    @property
    def history_path(self) -> Path:
        """The recorder's numbered samples (SQLite), beside the configuration."""
        return self.state_dir / HISTORY_FILE


def resolve_paths(
    config: str | os.PathLike[str] | None, keys: str | os.PathLike[str] | None
) -> tuple[Path, Path, bool]:
    """Where the configuration and keys files are, and whether the configuration was named explicitly.

    Order: the argument, then ``RADIO_CONFIG`` / ``RADIO_KEYS``, then the current folder.
    """
    named = config or os.environ.get("RADIO_CONFIG")
    config_path = Path(named or DEFAULT_CONFIG_NAME).absolute()
    keys_named = keys or os.environ.get("RADIO_KEYS")
    keys_path = Path(keys_named).absolute() if keys_named else config_path.parent / DEFAULT_KEYS_NAME
    return config_path, keys_path, bool(named)


def load_settings(
    config: str | os.PathLike[str] | None = None,
    keys: str | os.PathLike[str] | None = None,
    *,
    required: bool = False,
) -> Settings:
    """Read and validate the configuration file.

    A file that was named explicitly (or is ``required``: a running server reloading the file it
    started with) must exist; the default ``radio.toml`` may be absent at start, and then the
    built-in defaults apply (one public network, ``sample_net``). A file that exists but is empty
    is refused: a truncated configuration must not read as "every default".
    """
    config_path, keys_path, named = resolve_paths(config, keys)
    try:
        text = files.read_text(config_path)
    except FileNotFoundError:
        if named or required:
            msg = f"{config_path}: no such configuration file"
            raise ConfigError(msg) from None
        persistence = config_path.parent / DEFAULT_PERSISTENCE
        return Settings(path=config_path, keys_path=keys_path, broker=BrokerSettings(persistence=persistence))
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"{config_path}: cannot read: {reason(exc)}"
        raise ConfigError(msg) from None
    return parse_settings(text, config_path, keys_path)


def parse_settings(text: str, config_path: Path, keys_path: Path) -> Settings:
    """Validate the text of a configuration file; every problem names the file."""
    empty = "the configuration file is empty (delete it to run with the defaults)"
    data = toml_table(text, config_path, ConfigError, empty)
    try:
        return _settings_from(data, config_path, keys_path)
    except (ValueError, TypeError) as exc:
        msg = f"{config_path}: {exc}"
        raise ConfigError(msg) from None


def _settings_from(data: dict[str, Any], config_path: Path, keys_path: Path) -> Settings:
    _only(data, "", {"broker", "bridge", "networks", "tls"})
    broker = _table(data, "broker")
    _only(
        broker,
        "[broker] ",
        {
            "mqtt",
            "websocket",
            "mqtts",
            "wss",
            "allow_anonymous",
            "connect_timeout",
            "max_connections",
            "max_packet_size",
            "persistence",
            *_BROKER_LIMITS,
            "metrics",
        },
    )
    bridge = _table(data, "bridge")
    _only(bridge, "[bridge] ", {"listen", "body_timeout", "public_websocket_url", "admin", *_BRIDGE_LIMITS})
    defaults = BrokerSettings()
    networks = _networks(data["networks"], config_path.parent) if "networks" in data else _default_networks()
    tls = _tls(data, config_path.parent)
    secure = {
        name: _address(broker, name, "[broker]", defaults.mqtt) for name in ("mqtts", "wss") if name in broker
    }
    if secure and tls is None:
        msg = (
            f"[broker] {min(secure)} needs a [tls] table with cert and key (make some with: radio certs dev)"
        )
        raise ValueError(msg)
    plain = {name: broker.get(name) is not False for name in ("mqtt", "websocket")}
    if not any(plain.values()) and not secure:
        msg = "[broker] mqtt and websocket are both false and there is no mqtts or wss: nothing to listen on"
        raise ValueError(msg)
    return Settings(
        path=config_path,
        keys_path=keys_path,
        tls=tls,
        broker=BrokerSettings(
            mqtt=_address(broker, "mqtt", "[broker]", defaults.mqtt) if plain["mqtt"] else defaults.mqtt,
            websocket=(
                _address(broker, "websocket", "[broker]", defaults.websocket)
                if plain["websocket"]
                else defaults.websocket
            ),
            mqtt_enabled=plain["mqtt"],
            websocket_enabled=plain["websocket"],
            mqtts=secure.get("mqtts"),
            wss=secure.get("wss"),
            allow_anonymous=_bool(broker, "allow_anonymous", "[broker]", defaults.allow_anonymous),
            connect_timeout=_number(broker, "connect_timeout", defaults.connect_timeout, 0.1, 3600.0),
            max_connections=int(
                _number(broker, "max_connections", defaults.max_connections, 0, 1_000_000, whole=True)
            ),
            max_packet_size=(
                int(_number(broker, "max_packet_size", 0, 16, MQTT_MAX_PAYLOAD, whole=True))
                if "max_packet_size" in broker
                else None
            ),
            persistence=_persistence(broker.get("persistence", DEFAULT_PERSISTENCE), config_path.parent),
            metrics=_address(broker, "metrics", "[broker]", defaults.mqtt) if "metrics" in broker else None,
            **{
                name: type(getattr(defaults, name))(
                    _number(broker, name, getattr(defaults, name), low, high, whole=whole)
                )
                for name, (low, high, whole) in _BROKER_LIMITS.items()
            },
        ),
        bridge=BridgeSettings(
            listen=_address(bridge, "listen", "[bridge]", BridgeSettings().listen),
            body_timeout=_number(
                bridge, "body_timeout", BridgeSettings().body_timeout, 0.1, 3600.0, where="[bridge]"
            ),
            public_websocket_url=_websocket_url(bridge.get("public_websocket_url")),
            admin=_admin(bridge),
            admin_enabled=bridge.get("admin") is not False,
            **{
                name: type(getattr(BridgeSettings(), name))(
                    _number(
                        bridge,
                        name,
                        getattr(BridgeSettings(), name),
                        low,
                        high,
                        whole=whole,
                        where="[bridge]",
                    )
                )
                for name, (low, high, whole) in _BRIDGE_LIMITS.items()
            },
        ),
        networks=networks,
    )


_BRIDGE_LIMITS: Final = {
    "history_page_bytes": (65_536, 1 << 30, True),
    "history_threads": (1, 256, True),
    "idle_timeout": (0.1, 3600.0, False),
    "keep_alive": (0.1, 3600.0, False),
    "max_idle_per_source": (1, 1_000_000, True),
}
"""[bridge] limits: the lowest and highest value each takes, and whether it is a whole number."""

_BROKER_LIMITS: Final = {
    "max_queued": (1, 100_000_000, True),
    "max_queued_bytes": (1024, 1 << 40, True),
    "session_expiry": (1, 10 * 365 * 86_400, False),
    "anonymous_max_queued": (1, 100_000_000, True),
    "anonymous_max_queued_bytes": (1024, 1 << 40, True),
    "anonymous_session_expiry": (1, 10 * 365 * 86_400, False),
    "recorder_max_queued": (1, 100_000_000, True),
    "recorder_max_queued_bytes": (1024, 1 << 40, True),
    "max_filters": (1, 1_000_000, True),
    "max_inflight": (1, 65_535, True),
    "max_incoming_qos2": (1, 65_535, True),
    "send_buffer": (1024, 1 << 32, True),
    "send_buffer_max": (1024, 1 << 32, True),
    "send_buffer_total": (0, 1 << 40, True),
    "anonymous_max_sessions": (0, 100_000_000, True),
    "anonymous_max_sessions_per_address": (0, 100_000_000, True),
    "anonymous_total_queued_bytes": (0, 1 << 40, True),
    "anonymous_queued_bytes_per_address": (0, 1 << 40, True),
    "anonymous_max_connections_per_address": (1, 100_000_000, True),
    "max_connecting_per_address": (1, 1_000_000, True),
    "max_sessions_per_key": (0, 100_000_000, True),
    "max_queued_bytes_per_key": (0, 1 << 40, True),
    "max_connections_per_key": (0, 100_000_000, True),
    "max_shared_per_source": (0, 100_000_000, True),
    "log_repeats": (1, 1_000_000, True),
}
"""The [broker] limits: (lowest, highest, whole numbers only)."""


def _tls(data: dict[str, Any], folder: Path) -> TlsSettings | None:
    """[tls] cert and key, relative to the configuration's folder; both or neither."""
    if "tls" not in data:
        return None
    table = _table(data, "tls")
    _only(table, "[tls] ", {"cert", "key"})
    paths = {}
    for name in ("cert", "key"):
        value = table.get(name)
        if not isinstance(value, str) or not value:
            msg = f"[tls] {name} must be a file name (a string), not {shown(value)}"
            if value is None:
                msg = f"[tls] {name} is missing: [tls] needs both cert and key (PEM files)"
            raise ValueError(msg)
        paths[name] = folder / value
    return TlsSettings(cert=paths["cert"], key=paths["key"])


def _networks(table: object, folder: Path) -> dict[str, NetworkSettings]:
    if not isinstance(table, dict):
        msg = f"[networks] must be a table of networks, such as [networks.sample_net], not {shown(table)}"
        raise TypeError(msg)
    networks: dict[str, NetworkSettings] = {}
    for raw_name, options in table.items():
        try:
            name = NetworkName(raw_name)
        except InvalidName as exc:
            msg = f"[networks] {exc}"
            raise ValueError(msg) from None
        where = f"[networks.{name}]"
        if not isinstance(options, dict):
            msg = f"{where} must be a table of settings, not {shown(options)}"
            raise TypeError(msg)
        _only(options, where + " ", {"public", "retain", "max_payload", "schema", "history", "max_retained"})
        defaults = NetworkSettings()
        networks[name] = NetworkSettings(
            public=_bool(options, "public", where, defaults.public),
            retain=_bool(options, "retain", where, defaults.retain),
            max_payload=_count(options, "max_payload", where, defaults.max_payload),
            schema=_schema(options, where, folder),
            history=_count(options, "history", where, defaults.history),
            max_retained=_count(options, "max_retained", where, defaults.max_retained),
        )
    return networks


_NETWORK_COUNTS: Final = {
    "max_payload": ("bytes", 1, MQTT_MAX_PAYLOAD),
    "history": ("samples", 0, MAX_HISTORY),
    "max_retained": ("topics", 0, MAX_RETAINED),
}
"""A network's whole-number settings: (unit, lowest, highest)."""


def _count(options: dict[str, Any], name: str, where: str, default: int) -> int:
    """A network's whole-number setting, within its bounds."""
    unit, low, high = _NETWORK_COUNTS[name]
    value = options.get(name, default)
    if type(value) is not int or not low <= value <= high:
        msg = f"{where} {name} must be a whole number of {unit} from {low} to {high}, not {shown(value)}"
        raise ValueError(msg)
    return value


def _schema(options: dict[str, Any], where: str, folder: Path) -> Schema | None:
    if "schema" not in options:
        return None
    value = options["schema"]
    if not isinstance(value, str) or not value:
        msg = f"{where} schema must be the name of a JSON Schema file (a string), not {shown(value)}"
        raise TypeError(msg)
    try:
        return Schema.load(folder / value)
    except ValueError as exc:
        msg = f"{where} {exc}"
        raise ValueError(msg) from None


def _table(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        msg = f"[{name}] must be a table, not {shown(value)}"
        raise TypeError(msg)
    return value


def _only(table: dict[str, Any], where: str, known: set[str]) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        msg = f"unknown setting {where}{unknown[0]} (known: {', '.join(sorted(known))})"
        raise ValueError(msg)


def _address(table: dict[str, Any], name: str, where: str, default: Address) -> Address:
    if name not in table:
        return default
    value = table[name]
    if not isinstance(value, str):
        msg = f"{where} {name}: {value!r} is not HOST:PORT (it must be a string, not {toml_kind(value)})"
        raise TypeError(msg)
    try:
        return Address.parse(value)
    except ValueError as exc:
        msg = f"{where} {name}: {exc}"
        raise ValueError(msg) from None


def _admin(bridge: dict[str, Any]) -> Address | None:
    """``[bridge] admin``: a listener of its own (HOST:PORT), or false for none; absent: on listen."""
    value = bridge.get("admin")
    if value is None or value is False:
        return None
    if not isinstance(value, str):
        msg = f"[bridge] admin must be HOST:PORT or false, not {shown(value)}"
        raise TypeError(msg)
    return _address(bridge, "admin", "[bridge]", BridgeSettings().listen)


def _websocket_url(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"wss?://[^\s/]+(/\S*)?", value):
        msg = (
            "[bridge] public_websocket_url must be a ws:// or wss:// URL such as "
            f"'wss://radio.example.com/mqtt', not {shown(value)}"
        )
        raise ValueError(msg)
    return value


def _persistence(value: object, folder: Path) -> Path | None:
    if value is False:
        return None
    if not isinstance(value, str) or not value:
        msg = f"[broker] persistence must be a file name or false (a string or a boolean), not {shown(value)}"
        raise ValueError(msg)
    return folder / value


def _number(
    table: dict[str, Any],
    name: str,
    default: float,
    low: float,
    high: float,
    *,
    whole: bool = False,
    where: str = "[broker]",
) -> float:
    value = table.get(name, default)
    kinds: tuple[type, ...] = (int,) if whole else (int, float)
    if type(value) not in kinds or not low <= value <= high:
        kind = "a whole number" if whole else "a number"
        msg = f"{where} {name} must be {kind} from {low:g} to {high:g}, not {shown(value)}"
        raise ValueError(msg)
    return float(value)


def _bool(table: dict[str, Any], name: str, where: str, default: bool) -> bool:
    value = table.get(name, default)
    if type(value) is not bool:
        msg = f"{where} {name} must be true or false (a boolean), not {shown(value)}"
        raise TypeError(msg)
    return value
