"""The registry as NATS configuration: one file per node, one users file they all include.

NATS speaks MQTT 3.1.1 (TCP and WebSocket) and keeps retained messages and sessions in JetStream,
replicated across the cluster, so Radio runs on several machines by exporting its rights to it:

- ``users.conf`` (0600): every key twice, under its name and under the username its secret
  implies (``radio.credentials.secret_username``), with its bcrypt hash and its rights as NATS
  subject permissions; and the anonymous user, who may read the public networks only. No secret
  is in it.
- ``radio-N.conf`` (0600: it holds the cluster's route password): the node's listeners, its
  JetStream folder, the routes to every node, and ``include users.conf``.
- ``cluster.secret`` (0600): the route password, made on the first export and kept, so that the
  nodes of one cluster, exported again after a key change, still accept each other.

MQTT topic ``networks/x/y`` is NATS subject ``networks.x.y``; ``networks/x/#`` is the two subjects
``networks.x`` and ``networks.x.>``. A ``.`` inside a topic level is ``//`` in its subject (NATS's
own escape), so network ``a.b`` is ``networks.a//b``, never network ``a``'s ``networks.a.b``.
Every user is limited to MQTT connections (``MQTT``,
``MQTT_WS``): the NATS protocol would let a key subscribe to the subjects the MQTT layer uses
internally, where other clients' deliveries pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from radio.config import Address, Settings
from radio.errors import RadioError, reason
from radio.files import write_private
from radio.registry import Registry
from radio.tls import check_server
from radio.topics import network_topic
from radio.wire import packet_limit

log = logging.getLogger(__name__)

ANONYMOUS: Final = "_anonymous"
"""The user NATS gives a client that sends no username; no key can have this name (no leading '_')."""
PROBE: Final = "_probe"
"""The user ``radio broker`` connects as to see a node serve MQTT: it may publish and read nothing."""
MQTT_ONLY: Final = ("MQTT", "MQTT_WS")
DEFAULT_PORTS: Final = {"client": 4222, "cluster": 6222, "monitor": 8222}
"""NATS's own defaults for its client, route and monitoring ports."""
NODE_PORTS: Final = ("mqtt", "websocket", *DEFAULT_PORTS)
"""Every address a node listens on, by its field of ``Node``."""
MAX_PORT: Final = 65535
MAX_REPLICAS: Final = 3
"""JetStream's useful maximum: 3 copies survive one lost node with a majority left."""
SYSTEM: Final = "_system"
"""The user ``radio broker`` asks nodes through (NATS's system account) to end a connection."""
CLUSTER_NAME: Final = "radio"
ROUTE_USER: Final = "radio-route"


class NatsError(RadioError):
    """The cluster cannot be planned, exported, found or started."""


@dataclass(frozen=True)
class Node:
    """One NATS server of the cluster: where it listens and how the others reach it."""

    index: int
    host: str
    """How the other nodes reach this one (the host part of its route URL)."""
    mqtt: Address
    websocket: Address
    client: Address
    cluster: Address
    monitor: Address
    mqtt_tls: bool = False
    """Its MQTT listener serves TLS (radio.toml's [broker] mqtts): NATS has one MQTT listener a node."""
    websocket_tls: bool = False
    """Its WebSocket listener serves TLS (radio.toml's [broker] wss)."""

    @property
    def name(self) -> str:
        """Its ``server_name``, unique in the cluster (JetStream requires one)."""
        return f"radio-{self.index}"

    @property
    def route(self) -> str:
        """Its route URL, without credentials."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"nats://{host}:{self.cluster.port}"


def plan(
    settings: Settings,
    nodes: int,
    hosts: list[str] | None = None,
    *,
    mqtt: Address | None = None,
    websocket: Address | None = None,
    tls: bool = False,
) -> list[Node]:
    """Where each node listens.

    On one machine (no host, or one host for all) the nodes take consecutive ports from the
    configured ones, or free ports where the configured port is 0. On several machines (one
    host per node) every node takes the same ports, and the routes name the hosts.

    With ``tls`` (and ``[tls]`` in radio.toml), a node's MQTT listener takes ``[broker] mqtts``
    and its WebSocket listener ``[broker] wss``, each serving TLS, where those are set: NATS has
    one listener of each kind per node.
    """
    if nodes < 1:
        msg = f"--nodes must be at least 1, not {nodes}"
        raise NatsError(msg)
    secure = settings.broker if tls and settings.tls is not None else None
    mqtt_tls = secure is not None and secure.mqtts is not None
    websocket_tls = secure is not None and secure.wss is not None
    mqtt = mqtt or (settings.broker.mqtts if mqtt_tls and settings.broker.mqtts else settings.broker.mqtt)
    websocket = websocket or (
        settings.broker.wss if websocket_tls and settings.broker.wss else settings.broker.websocket
    )
    layers = {"mqtt_tls": mqtt_tls, "websocket_tls": websocket_tls}
    hosts = list(hosts or [])
    if len(hosts) > 1 and len(hosts) != nodes:
        msg = f"give one --host per node ({nodes}) or a single one for all, not {len(hosts)}"
        raise NatsError(msg)
    if len(set(hosts)) > 1:
        if 0 in (mqtt.port, websocket.port):
            msg = "a cluster on several machines needs fixed MQTT and WebSocket ports, not port 0"
            raise NatsError(msg)
        return [
            Node(
                index=i + 1,
                host=host,
                mqtt=mqtt,
                websocket=websocket,
                client=Address("127.0.0.1", DEFAULT_PORTS["client"]),
                cluster=Address("0.0.0.0", DEFAULT_PORTS["cluster"]),
                monitor=Address("127.0.0.1", DEFAULT_PORTS["monitor"]),
                **layers,
            )
            for i, host in enumerate(hosts)
        ]
    route_host = hosts[0] if hosts else mqtt.local().host
    free = mqtt.port == 0
    last = nodes - 1
    past = [
        f"{name} {base}+{last}"
        for name, base in (("MQTT", mqtt.port), ("WebSocket", websocket.port), *DEFAULT_PORTS.items())
        if base and not free and base + last > MAX_PORT
    ]
    if past:
        msg = (
            f"{nodes} nodes on one machine take consecutive ports, and these run past {MAX_PORT}: "
            f"{', '.join(past)}"
        )
        raise NatsError(msg)
    with contextlib.ExitStack() as probes:

        def port(host: str, base: int, i: int) -> Address:
            if base and not free:
                return Address(host, base + i)
            # Probes stay open until every port is chosen, or the same one could come twice.
            probe = probes.enter_context(socket.socket())
            probe.bind((Address(host, 0).local().host, 0))
            return Address(host, probe.getsockname()[1])

        return [
            Node(
                index=i + 1,
                host=route_host,
                mqtt=port(mqtt.host, mqtt.port, i),
                websocket=port(websocket.host, websocket.port, i),
                client=port("127.0.0.1", DEFAULT_PORTS["client"], i),
                cluster=port(route_host, DEFAULT_PORTS["cluster"], i),
                monitor=port("127.0.0.1", DEFAULT_PORTS["monitor"], i),
                **layers,
            )
            for i in range(nodes)
        ]


def subject_of(topic: str) -> str:
    """The NATS subject of a concrete MQTT topic, as nats-server maps it.

    Levels are joined by ``.``, and a ``.`` inside a level becomes ``//`` (an empty level is
    ``/``): NATS's own escape, so that the topic ``networks/a.b`` is not ``networks/a/b``.
    """
    return ".".join(level.replace(".", "//") or "/" for level in topic.split("/"))


def subjects(network: str) -> list[str]:
    """The NATS subjects of a network's MQTT topics: ``networks/x`` and everything below it."""
    subject = subject_of(network_topic(network))
    return [subject, f"{subject}.>"]


def internal_password(route_password: str, user: str) -> str:
    """The password of one of Radio's own users (anonymous, probe), the same on every export.

    Derived from the cluster's route password (``cluster.secret``, mode 0600): NATS closes the
    connections of a user whose password changed on a reload, so a fresh one per export would
    disconnect every anonymous listener on every key change.
    """
    return hmac.new(route_password.encode(), user.encode(), hashlib.sha256).hexdigest()


def _quote(text: str) -> str:
    """A NATS configuration string: JSON's quoting is a subset the NATS parser reads."""
    return json.dumps(text)


def _list(items: list[str]) -> str:
    return "[" + ", ".join(_quote(i) for i in items) + "]"


NOTHING: Final = '{deny: [">"]}'
"""The permission that allows no subject: NATS reads an empty list, ``[]``, as no limit at all."""


def _permission(subjects: list[str]) -> str:
    """Subjects a user may publish to or read, as NATS reads them: none is a deny of every one."""
    return _list(subjects) if subjects else NOTHING


def _user(name: str, password: str, publish: list[str], subscribe: list[str]) -> str:
    return (
        f"    {{user: {_quote(name)}, password: {_quote(password)},"
        f" allowed_connection_types: {_list(list(MQTT_ONLY))},\n"
        f"     permissions: {{publish: {_permission(publish)}, subscribe: {_permission(subscribe)}}}}}"
    )


def users_text(
    registry: Registry,
    route_password: str,
    *,
    probe: bool = False,
    fenced: Mapping[str, str] | None = None,
) -> str:
    """The users file: what each username may publish and read, exactly as the registry says.

    With ``probe``, the user that may do nothing but connect, for readiness checks. An expired
    key is left out, as if revoked: a reload then closes its connections.

    ``fenced`` maps usernames to the password they had: each is listed with it and may do
    nothing, in place of what the registry says of it (see ``NatsCluster.reload``).
    """
    fenced = fenced or {}
    out = [
        "# Written by `radio nats export` from the key registry: edit the keys, not this file.",
        "# Each key is listed under its name and under the username its secret implies (key-<16 hex>),",
        "# with the bcrypt hash of its secret (never the secret). A permission is a NATS subject:",
        "# MQTT topic networks/x/y is subject networks.x.y. Every user may connect over MQTT only.",
        "users = [",
    ]
    entries = []
    # The anonymous user's password is handed to no one. It stays plain: NATS logs in a client
    # without credentials by presenting this password for it, which a bcrypt hash would not
    # match. Knowing it gives nothing beyond anonymous rights.
    anonymous_reads = _anonymous_reads(registry)
    entries.append(
        "    # Anonymous clients (no_auth_user): the public networks, read only.\n"
        + _user(ANONYMOUS, internal_password(route_password, ANONYMOUS), [], anonymous_reads)
    )
    if probe:
        entries.append(
            "    # Readiness checks of `radio broker`: may connect, nothing else.\n"
            + _user(PROBE, internal_password(route_password, PROBE), [], [])
        )
    now = datetime.now(UTC)
    for key in sorted(registry.keys.values(), key=lambda k: k.name):
        if key.expired(now):
            entries.append(f"    # {key.name}: expired; left out until `radio keys edit` extends it.")
            continue
        if not key.bcrypt:
            log.warning(
                "key %r has no bcrypt hash (made before NATS support): rotate it to use it on NATS", key.name
            )
            entries.append(
                f"    # {key.name}: no bcrypt hash yet; `radio keys rotate {key.name}` gives it one."
            )
            continue
        publish, subscribe, what = _key_rights(registry, key.name)
        users = [u for u in (key.name, key.alias) if u not in fenced]
        if users:
            entries.append(
                f"    # {key.name} ({what})\n"
                + ",\n".join(_user(u, key.bcrypt, publish, subscribe) for u in users)
            )
    entries += [
        f"    # {user}: losing its access; may do nothing until the next reload.\n"
        + _user(user, password, [], [])
        for user, password in sorted(fenced.items())
    ]
    out.append(",\n".join(entries))
    out.append("]")
    return "\n".join(out) + "\n"


def _anonymous_reads(registry: Registry) -> list[str]:
    """The anonymous user's subjects: every public network's, if anonymous clients are let in."""
    if not registry.allow_anonymous:
        return []
    return [s for n in sorted(n for n, net in registry.networks.items() if net.public) for s in subjects(n)]


def _key_rights(registry: Registry, name: str) -> tuple[list[str], list[str], str]:
    """A key's subjects to publish and to read, and a comment saying what they mean."""
    access = registry.access(name)
    if access.admin:
        return [">"], [">"], "admin: any subject"
    if registry.keys[name].read_all:  # the recorder: every network, so its networks/# filter is granted
        return [], ["networks", "networks.>"], "read every network"
    publish = [s for n in sorted(access.publish) for s in subjects(n)]
    subscribe = [s for n in sorted(access.read) for s in subjects(n)]
    writes, reads = ",".join(sorted(access.publish)) or "-", ",".join(sorted(access.read)) or "-"
    return publish, subscribe, f"publish {writes}; read {reads}"


@dataclass(frozen=True)
class Rights:
    """What one NATS user may do, as users.conf says it: enough to tell when it lost something."""

    password: str
    """Its bcrypt hash (a key's) or its derived password (anonymous): a new one is a rotation."""
    publish: frozenset[str]
    subscribe: frozenset[str]

    def covers(self, before: Rights) -> bool:
        """Whether these rights keep everything ``before`` gave, under the same password."""
        return (
            self.password == before.password
            and _covers(self.publish, before.publish)
            and _covers(self.subscribe, before.subscribe)
        )


def _covers(now: frozenset[str], before: frozenset[str]) -> bool:
    return ">" in now or before <= now


def user_rights(registry: Registry, route_password: str, now: datetime) -> dict[str, Rights]:
    """Every user users.conf lists at ``now`` (the probe aside), with its rights.

    ``users_text`` writes exactly these: a user missing from the next export (a key revoked or
    expired) or holding less there is one whose connections and sessions must end.
    """
    anonymous = Rights(
        internal_password(route_password, ANONYMOUS), frozenset(), frozenset(_anonymous_reads(registry))
    )
    rights = {ANONYMOUS: anonymous}
    for key in registry.keys.values():
        if key.expired(now) or not key.bcrypt:
            continue
        publish, subscribe, _ = _key_rights(registry, key.name)
        for user in (key.name, key.alias):
            rights[user] = Rights(key.bcrypt, frozenset(publish), frozenset(subscribe))
    return rights


def node_text(
    node: Node, nodes: list[Node], settings: Settings, registry: Registry, *, folder: Path, route_secret: str
) -> str:
    """One node's configuration, every option commented."""
    broker = settings.broker
    limit = packet_limit(broker.max_packet_size, registry.largest_payload)
    replicas = min(len(nodes), MAX_REPLICAS)
    anonymous = (
        f"no_auth_user: {_quote(ANONYMOUS)}"
        if broker.allow_anonymous
        else "# no_auth_user: not set: allow_anonymous = false, so a client without a key is refused."
    )
    connections = (
        f"max_connections: {broker.max_connections}"
        if broker.max_connections
        else "# max_connections: no limit (radio.toml: max_connections = 0)"
    )
    cluster = (
        _cluster_text(node, nodes, route_secret)
        if len(nodes) > 1
        else "# No cluster block: a single node runs JetStream on its own.\n\n"
    )
    mqtt_tls = _tls_text(settings) if node.mqtt_tls else ""
    websocket_tls = _tls_text(settings) if node.websocket_tls else _PLAIN_WEBSOCKET
    return f"""\
# NATS node {node.index} of {len(nodes)} for Radio, written by `radio nats export` from radio.toml
# and the key registry. Edit those, not this file: every export rewrites it. Mode 0600: the route
# URLs below carry the cluster's password.

# The node's name in the cluster: JetStream needs a unique one to elect its leaders.
server_name: {_quote(node.name)}

# The NATS protocol's own port. Radio's users may connect over MQTT only (users.conf), so no
# key can use it; it stays on loopback for operators' tools.
listen: {_quote(str(node.client))}

# Monitoring (/healthz, /varz, /connz) over HTTP, on loopback: `radio broker` waits on /healthz.
http: {_quote(str(node.monitor))}

# The largest message: the largest max_payload of radio.toml's networks plus a PUBLISH's headers.
max_payload: {limit}

# Connections per node (radio.toml's max_connections).
{connections}

# JetStream keeps MQTT's state: retained messages, sessions and unacknowledged QoS 1 and 2
# messages, in streams replicated across the cluster (see stream_replicas below).
jetstream {{
    # This node's own copy of the streams. Each node needs its own folder.
    store_dir: {_quote(str(folder / "data" / node.name))}
}}

{cluster}# MQTT 3.1.1 over TCP (radio.toml's [broker] mqtt, or mqtts with TLS).
mqtt {{
    listen: {_quote(str(node.mqtt))}
{mqtt_tls}    # Copies of each MQTT stream (sessions, retained messages, QoS 1 and 2 messages): a sample
    # retained on one node is served by any other, and survives the loss of a minority of nodes.
    # Applies to streams made from now on; NATS keeps the replicas of existing ones.
    stream_replicas: {replicas}
    # A QoS 1 message not acknowledged within this time is sent again, with DUP set.
    ack_wait: "30s"
    # QoS 1 messages in flight to one subscription before NATS waits for PUBACKs.
    max_ack_pending: 1024
}}

# MQTT over WebSocket (radio.toml's [broker] websocket): clients connect to ws://HOST:PORT/mqtt.
websocket {{
    listen: {_quote(str(node.websocket))}
{websocket_tls}}}

# Clients that send no username are the anonymous user of users.conf: public networks only.
{anonymous}

# NATS's own system account, with one user: `radio broker` connects as it, on the loopback
# client port above, to close the connections of a key whose rights shrank (its KICK request).
# Its password is derived from the route password and is in no other file.
accounts {{
    "$SYS" {{
        users = [{{user: {_quote(SYSTEM)}, password: {_quote(internal_password(route_secret, SYSTEM))},
                  allowed_connection_types: ["STANDARD"]}}]
    }}
}}

# Who may connect and what each may publish and read: users.conf, written from the key registry.
# `radio broker --engine nats` rewrites it on every key change and sends each node SIGHUP, which
# rereads it and closes the connections of keys that no longer hold; then it closes those of
# keys that lost a right, and discards their sessions, so they start again under the new rights.
authorization {{
    include "users.conf"
}}
"""


_PLAIN_WEBSOCKET: Final = """\
    # Plain ws://, as radio.toml's [broker] websocket asks ([broker] wss and [tls] make it wss://).
    no_tls: true
"""


def _tls_text(settings: Settings) -> str:
    """A listener's TLS block: radio.toml's [tls] certificate and key (checked before export)."""
    assert settings.tls is not None  # noqa: S101 - only for nodes planned with TLS
    return f"""\
    # TLS with radio.toml's [tls] certificate and key; clients connect with mqtts:// or wss://.
    tls {{
        cert_file: {_quote(str(settings.tls.cert))}
        key_file: {_quote(str(settings.tls.key))}
    }}
"""


def _cluster_text(node: Node, nodes: list[Node], route_secret: str) -> str:
    credentials = f"{ROUTE_USER}:{route_secret}@"
    routes = ",\n".join(f"        {_quote(n.route.replace('://', '://' + credentials, 1))}" for n in nodes)
    return f"""\
# The cluster: every node lists every route (itself included, which NATS skips); "Duplicate
# Route" lines at start are the nodes finding each other twice, and are harmless.
cluster {{
    name: {_quote(CLUSTER_NAME)}
    # Where the other nodes connect to this one.
    listen: {_quote(str(node.cluster))}
    # Only nodes holding the route password (cluster.secret) may join.
    authorization {{
        user: {_quote(ROUTE_USER)}
        password: {_quote(route_secret)}
    }}
    routes: [
{routes}
    ]
}}

"""


def route_secret(folder: Path) -> str:
    """The cluster's route password: made on the first export, kept for the next ones."""
    path = folder / "cluster.secret"
    try:
        existing = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        existing = ""
    except OSError as exc:
        msg = f"cannot read {path}: {reason(exc)}"
        raise NatsError(msg) from None
    if existing:
        return existing
    secret = secrets.token_hex(32)
    write_private(path, secret + "\n", durable=True)
    return secret


def export(
    settings: Settings,
    registry: Registry,
    folder: Path,
    nodes: list[Node],
    *,
    probe: bool = False,
    fenced: Mapping[str, str] | None = None,
) -> list[Path]:
    """Write users.conf and one configuration per node into ``folder``; return the nodes' paths.

    ``fenced``: users listed under their old password with no rights (``users_text``).
    """
    folder = folder.absolute()
    if settings.tls is not None and any(n.mqtt_tls or n.websocket_tls for n in nodes):
        check_server(settings.tls)  # a bad certificate is one line now, not a node that will not start
    try:
        folder.mkdir(parents=True, exist_ok=True)
        secret = route_secret(folder)
        # Each in one step: a node may reload at any moment.
        write_private(folder / "users.conf", users_text(registry, secret, probe=probe, fenced=fenced))
        paths = []
        for node in nodes:
            path = folder / f"{node.name}.conf"
            text = node_text(node, nodes, settings, registry, folder=folder, route_secret=secret)
            write_private(path, text)
            paths.append(path)
    except OSError as exc:
        msg = f"cannot write the NATS configuration into {folder}: {reason(exc)}"
        raise NatsError(msg) from None
    return paths
