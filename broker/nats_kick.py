"""Ending the access of NATS users whose rights shrank, on every node, after a reload.

nats-server applies a reload's new permissions to live MQTT clients only in part: it may go on
delivering to a subscription the new rights no longer allow, and a persistent session keeps its
subscriptions, and what is queued for them, until its client comes back. So once every node has
reread ``users.conf``, the runner ends, for every user that lost a right (or its password, or its
place in the file), both:

- its connections, found in each node's ``/connz`` by user and closed through the node's system
  account (``$SYS.REQ.SERVER.<id>.KICK``, nats-server 2.10 and later); the client reconnects and
  is let in, or refused, under its new rights;
- its sessions: each client id the node saw it use (open or among its recently closed
  connections) is taken over by a clean-session MQTT CONNECT of the probe user and disconnected,
  which discards that session, its subscriptions and its queue, cluster-wide.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import socket
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from radio import wire
from radio.broker.nats_conf import Node, Rights
from radio.config import Address

log = logging.getLogger(__name__)

TIMEOUT: Final = 5.0
"""Seconds for a node to answer one request: a node that does not is logged, and the next change retries."""
PAGE: Final = 1024


def lost(before: dict[str, Rights], after: dict[str, Rights]) -> set[str]:
    """The users ``before`` listed that ``after`` drops or gives less (a right, or their password)."""
    return {user for user, rights in before.items() if user not in after or not after[user].covers(rights)}


def leaving(before: dict[str, Rights], after: dict[str, Rights]) -> dict[str, str]:
    """The users ``before`` listed that ``after`` drops or gives another password, with their old one.

    A reload closes such a user's connections under the rights it had until then.
    """
    return {
        user: rights.password
        for user, rights in before.items()
        if user not in after or after[user].password != rights.password
    }


def _get(address: Address, path: str, **query: object) -> Any:
    url = f"http://{address}{path}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=TIMEOUT) as answer:
        return json.load(answer)


def config_time(node: Node) -> str | None:
    """When the node last (re)read its configuration, or None if it does not answer."""
    try:
        return str(_get(node.monitor.local(), "/varz")["config_load_time"])
    except (OSError, ValueError, KeyError):
        return None


def wait_reloaded(node: Node, before: str | None, timeout: float = TIMEOUT) -> datetime | None:
    """When the node reread its configuration after ``before`` (its SIGHUP was handled).

    Returns once it has; None if it did not within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while True:
        now = config_time(node)
        if now is not None and now != before:
            return _instant(now)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)


def _instant(text: str) -> datetime:
    """A time nats-server reports (RFC 3339, nanoseconds, UTC), to the microsecond."""
    return datetime.fromisoformat(re.sub(r"(\.\d{6})\d*", r"\1", text))


@dataclass
class Found:
    """One node's connections of the users that lost rights: open ones by id, every client id seen."""

    server_id: str
    open: list[int] = field(default_factory=list)
    client_ids: set[str] = field(default_factory=set)


def find(node: Node, users: Iterable[str], reloaded: datetime) -> Found:
    """The node's connections of ``users`` made before it ``reloaded``, open and recently closed.

    ``/connz`` keeps the last closed ones. Connections made since the reload run under the new
    rights already, and are left alone.
    """
    found = Found(str(_get(node.monitor.local(), "/varz")["server_id"]))
    for user in sorted(users):
        for connection in _connections(node, user):
            if connection.get("authorized_user") != user or _instant(connection["start"]) >= reloaded:
                continue
            if "stop" not in connection:
                found.open.append(int(connection["cid"]))
            if connection.get("mqtt_client"):
                found.client_ids.add(str(connection["mqtt_client"]))
    return found


def last_holder(nodes: Iterable[Node], client_id: str) -> str | None:
    """The user of the latest connection any node knows with this client id, open or closed.

    A session belongs to the client that connected last with its id, whatever its key (nats-server
    hands it over): that user is the one whose session it now is. None if no node knows the id
    or answers.
    """
    latest: tuple[datetime, str] | None = None
    for node in nodes:
        try:
            connections = _get(
                node.monitor.local(), "/connz", auth="true", state="all", mqtt_client=client_id, limit=PAGE
            )["connections"]
        except (OSError, ValueError, KeyError):
            continue
        for connection in connections:
            if connection.get("mqtt_client") != client_id:
                continue
            held = (_instant(connection["start"]), str(connection.get("authorized_user", "")))
            if latest is None or held > latest:
                latest = held
    return None if latest is None else latest[1]


def _connections(node: Node, user: str) -> Iterator[dict[str, Any]]:
    offset = 0
    while True:
        page = _get(
            node.monitor.local(), "/connz", auth="true", state="all", user=user, limit=PAGE, offset=offset
        )["connections"]
        yield from page
        if len(page) < PAGE:
            return
        offset += PAGE


class SystemClient:
    """A NATS protocol connection as the system user, to send one node requests and read the answers."""

    def __init__(self, address: Address, user: str, password: str) -> None:
        self._socket = socket.create_connection((address.host, address.port), timeout=TIMEOUT)
        self._file = self._socket.makefile("rb")
        self._inbox = f"_INBOX.radio.{secrets.token_hex(8)}"
        self._file.readline()  # INFO
        hello = {"user": user, "pass": password, "verbose": False, "pedantic": False, "protocol": 1}
        self._socket.sendall(f"CONNECT {json.dumps(hello)}\r\nSUB {self._inbox} 1\r\n".encode())

    def request(self, subject: str, body: dict[str, object]) -> dict[str, Any]:
        """Send a request and return its JSON answer; an error line or no answer raises OSError."""
        payload = json.dumps(body).encode()
        self._socket.sendall(f"PUB {subject} {self._inbox} {len(payload)}\r\n".encode() + payload + b"\r\n")
        while True:
            line = self._file.readline()
            if not line:
                msg = "the node closed the system connection"
                raise OSError(msg)
            if line.startswith(b"PING"):
                self._socket.sendall(b"PONG\r\n")
            elif line.startswith(b"-ERR"):
                raise OSError(line.decode(errors="replace").strip())
            elif line.startswith(b"MSG"):
                size = int(line.split()[-1])
                answer: dict[str, Any] = json.loads(self._file.read(size + 2)[:size])
                return answer

    def close(self) -> None:
        """End the connection (the node forgets its inbox subscription with it)."""
        self._file.close()
        self._socket.close()


def kick(node: Node, server_id: str, cids: list[int], user: str, password: str) -> None:
    """Close the node's connections ``cids`` through its system account."""
    if not cids:
        return
    client = SystemClient(node.client.local(), user, password)
    try:
        for cid in cids:
            answer = client.request(f"$SYS.REQ.SERVER.{server_id}.KICK", {"cid": cid})
            if "error" in answer:  # gone meanwhile: nothing left to close
                log.debug("node %s: connection %d: %s", node.name, cid, answer["error"])
    finally:
        client.close()


def discard_session(address: Address, client_id: str, user: str, password: str) -> bool:
    """Take over the session ``client_id`` with a clean-session CONNECT, then DISCONNECT: it is gone."""
    hello = wire.connect(client_id, user, password, keep_alive=10)
    try:
        with socket.create_connection((address.host, address.port), timeout=TIMEOUT) as connection:
            connection.sendall(hello)
            answer = connection.recv(4)
            connection.sendall(wire.DISCONNECT_PACKET)
            connection.shutdown(socket.SHUT_WR)
            while connection.recv(64):  # the node closes once it has ended the session
                pass
    except OSError:
        return False
    return answer[:2] == b"\x20\x02" and answer[3:4] == b"\x00"


def mqtt_accepts(address: Address, user: str, password: str) -> bool:
    """Whether an MQTT 3.1.1 CONNECT (clean session, a fresh client id) gets CONNACK 0."""
    return discard_session(address, f"radio-probe-{secrets.token_hex(6)}", user, password)
