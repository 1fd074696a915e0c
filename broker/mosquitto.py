"""Mosquitto as Radio's production broker: the registry exported to its files, and the process run.

The embedded broker is one Python process; operators who need more run Mosquitto with the same
rights. Three files make that so, all written here from the registry:

- ``passwd``: for each key, ``NAME:$7$...`` and ``key-<16 hex>:$7$...`` (the username a client
  holding only the secret sends, see ``radio.credentials.secret_username``), PBKDF2-SHA512 hashes that
  Mosquitto 2.0 accepts. No secret is in it.
- ``acl``: design section 3 as acl_file rules. Anonymous reads of public networks come first
  (rules before any ``user`` line are the anonymous client's), then one block per username.
- ``mosquitto.conf``: the repository's commented ``mosquitto.conf`` with the listener addresses
  (the TLS ones with ``[tls]``'s certificate and key), the file paths and the limits of
  ``radio.toml`` put in.

``MosquittoBroker`` runs Mosquitto with them and watches the registry as the embedded broker
does: on a change it writes the files again and sends SIGHUP, and Mosquitto reloads the password
and ACL files and disconnects clients whose credentials no longer hold. An expired key is left out
of both files, and the runner exports again the moment a key expires, so its clients are
disconnected as a revoked key's are. A Mosquitto that dies is started again on the same ports,
after growing delays; one that keeps dying is given up, for a service manager to take over.
Rates, quotas and schemas are not enforced by Mosquitto (docs/access.md).
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import math
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Final, Self

from radio.config import Address, Settings
from radio.errors import RadioError, reason
from radio.executables import find_executable
from radio.files import write_atomic, write_private
from radio.keys import Key
from radio.registry import LiveRegistry, Registry
from radio.stopping import dies_with_us
from radio.tls import check_server
from radio.topics import network_topic
from radio.wire import packet_limit

log = logging.getLogger(__name__)

TEMPLATE: Final = resources.files("radio.broker") / "mosquitto.conf"
"""The commented configuration, shipped inside the package (the repository's root ``mosquitto.conf``)."""
"""The repository's commented configuration, which every export renders."""
RELOAD_INTERVAL: Final = 0.25
STARTUP_TIMEOUT: Final = 10.0
RESTART_DELAYS: Final = (0.5, 1.0, 2.0, 4.0, 8.0)
"""Seconds before each restart of a Mosquitto that died, while it keeps dying; then the runner gives up."""
STEADY: Final = 60.0
"""Seconds a restarted Mosquitto must run before a later death starts the delays over."""


class MosquittoError(RadioError):
    """Mosquitto is missing, would not start, or its files cannot be written."""


def _valid_keys(registry: Registry) -> list[Key]:
    """The keys Mosquitto is told of: an expired key is left out, as if revoked."""
    now = datetime.now(UTC)
    return [k for k in sorted(registry.keys.values(), key=lambda k: k.name) if not k.expired(now)]


def passwd_text(registry: Registry) -> str:
    """The password file: each key under its name and under the username its secret implies."""
    lines = []
    for key in _valid_keys(registry):
        lines.append(f"{key.name}:{key.mosquitto}")
        lines.append(f"{key.alias}:{key.mosquitto}")
    return "\n".join(lines) + "\n"


def _read_rules(networks: list[str]) -> list[str]:
    return [
        rule
        for n in networks
        for rule in (f"topic read {network_topic(n)}", f"topic read {network_topic(n)}/#")
    ]


def acl_text(registry: Registry) -> str:
    """The ACL file: what each username may read and write, exactly as the registry says."""
    public = sorted(n for n, s in registry.networks.items() if s.public)
    out = ["# Written by `radio mosquitto export` from the key registry: edit the keys, not this file.", ""]
    out.append("# Anonymous clients: the public networks, read only.")
    out.extend(_read_rules(public) if registry.allow_anonymous else [])
    for key in _valid_keys(registry):
        access = registry.access(key.name)
        rules = []
        if access.admin:
            rules = ["topic readwrite #", "topic readwrite $SYS/#"]
        else:
            for network in sorted(access.publish):
                rules += [f"topic write {network_topic(network)}", f"topic write {network_topic(network)}/#"]
            rules += _read_rules(sorted(access.read))
        for username in (key.name, key.alias):
            out += ["", f"user {username}", *rules]
    return "\n".join(out) + "\n"


LISTENERS: Final = ("mqtt", "websocket", "mqtts", "wss")
"""The template's listener blocks, in order."""
TLS_LISTENERS: Final = frozenset({"mqtts", "wss"})


def render_conf(
    template: str,
    settings: Settings,
    registry: Registry,
    folder: Path,
    *,
    listeners: dict[str, Address],
) -> str:
    """The template with this platform's values in the options marked [rendered].

    Each listener block (from its ``listener`` line to the next blank line) is written out when
    ``listeners`` has it and commented out when not; a TLS block gets ``[tls]``'s files.
    """
    broker = settings.broker
    limit = packet_limit(broker.max_packet_size, registry.largest_payload)
    values = {
        "allow_anonymous": "true" if broker.allow_anonymous else "false",
        "password_file": str(folder / "passwd"),
        "acl_file": str(folder / "acl"),
        "max_packet_size": str(limit),
        "max_connections": str(broker.max_connections or -1),
        "max_queued_messages": str(max(broker.max_queued, broker.recorder_max_queued)),
        "max_queued_bytes": str(max(broker.max_queued_bytes, broker.recorder_max_queued_bytes)),
        "persistent_client_expiration": f"{max(1, math.ceil(broker.session_expiry / 3600))}h",
        "persistence_location": f"{folder}/",
        "user": getpass.getuser(),
    }
    if settings.tls is not None:
        values |= {"certfile": str(settings.tls.cert), "keyfile": str(settings.tls.key)}
    blocks = iter(LISTENERS)
    current: str | None = None  # the listener block the line is in, if any
    lines = []
    for line in template.splitlines():
        option = line.split(" ", 1)[0]
        setting = option.removeprefix("#")
        if setting == "listener":
            current = next(blocks)
        elif not line.strip():
            current = None
        if current is not None and line != "#" and not line.startswith("# "):
            address = listeners.get(current)
            if address is None:
                lines.append("#" + line.removeprefix("#"))
                continue
            if setting == "listener":
                line = f"listener {address.port} {address.host}"  # noqa: PLW2901 - the rendered line
            elif setting in values:
                line = f"{setting} {values[setting]}"  # noqa: PLW2901
            else:
                line = line.removeprefix("#")  # noqa: PLW2901
        elif option in values:
            line = f"{option} {values[option]}"  # noqa: PLW2901
        lines.append(line)
    return "\n".join(lines) + "\n"


def listeners_of(
    settings: Settings,
    *,
    mqtt: Address | None = None,
    websocket: Address | None = None,
    mqtts: Address | None = None,
    wss: Address | None = None,
) -> dict[str, Address]:
    """The listeners the configuration asks for, by block name; an address given turns one on."""
    broker = settings.broker
    found: dict[str, Address] = {}
    if mqtt is not None or broker.mqtt_enabled:
        found["mqtt"] = mqtt or broker.mqtt
    if websocket is not None or broker.websocket_enabled:
        found["websocket"] = websocket or broker.websocket
    for name, given, configured in (("mqtts", mqtts, broker.mqtts), ("wss", wss, broker.wss)):
        if (address := given or configured) is not None:
            found[name] = address
    if TLS_LISTENERS & set(found):
        if settings.tls is None:
            msg = f"{settings.path}: mqtts and wss need a [tls] table with cert and key (radio certs dev)"
            raise MosquittoError(msg)
        check_server(settings.tls)  # one line naming the file now, rather than Mosquitto exiting
    return found


def export(
    settings: Settings,
    registry: Registry,
    folder: Path,
    mqtt: Address | None = None,
    websocket: Address | None = None,
    *,
    mqtts: Address | None = None,
    wss: Address | None = None,
    listeners: dict[str, Address] | None = None,
) -> Path:
    """Write passwd, acl and mosquitto.conf into ``folder``; return the configuration's path."""
    if listeners is None:
        listeners = listeners_of(settings, mqtt=mqtt, websocket=websocket, mqtts=mqtts, wss=wss)
    folder = folder.absolute()
    try:
        template = TEMPLATE.read_text(encoding="utf-8")
    except OSError as exc:
        msg = f"cannot read the Mosquitto template {TEMPLATE}: {exc}"
        raise MosquittoError(msg) from None
    conf = render_conf(template, settings, registry, folder, listeners=listeners)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # Each in one step: Mosquitto may reload at any moment and must never read half a file.
        write_private(folder / "passwd", passwd_text(registry))
        write_private(folder / "acl", acl_text(registry))  # it names every key and its rights
        write_atomic(folder / "mosquitto.conf", conf, mode=0o644)
    except OSError as exc:
        msg = f"cannot write the Mosquitto configuration into {folder}: {reason(exc)}"
        raise MosquittoError(msg) from None
    return folder / "mosquitto.conf"


PORT_ATTEMPTS: Final = 3
"""Starts of Mosquitto on freshly chosen ports before its exit at start is reported."""


def concrete(*addresses: Address) -> list[Address]:
    """The addresses with each port 0 replaced by a free port, all different.

    Mosquitto cannot bind port 0 and report the port it got, so the system is asked for free
    ports first; the probes stay open until all are chosen, or the same port could come twice.
    """
    with contextlib.ExitStack() as probes:
        chosen = []
        for address in addresses:
            if address.port:
                chosen.append(address)
                continue
            probe = probes.enter_context(socket.socket())
            probe.bind((address.host, 0))
            chosen.append(Address(address.host, probe.getsockname()[1]))
        return chosen


class MosquittoBroker:
    """Mosquitto in a child process, with the registry's rights, reloaded when the registry changes."""

    engine = "mosquitto"

    def __init__(
        self,
        registry: LiveRegistry,
        folder: Path,
        *,
        mqtt: Address | None = None,
        websocket: Address | None = None,
        mqtts: Address | None = None,
        wss: Address | None = None,
        reload_interval: float = RELOAD_INTERVAL,
        restart_delays: tuple[float, ...] = RESTART_DELAYS,
        on_failure: Callable[[], object] | None = None,
    ) -> None:
        self.registry = registry
        self.folder = folder
        self._wanted = listeners_of(registry.settings, mqtt=mqtt, websocket=websocket, mqtts=mqtts, wss=wss)
        self._choose_ports()
        self.reload_interval = reload_interval
        self.process: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.reloads = 0
        self.restart_delays = restart_delays
        self.on_failure = on_failure
        """Called (from the watcher) when Mosquitto died and could not be brought back."""
        self.restarts = 0
        self.failed = False
        self._deaths: list[float] = []
        """When Mosquitto died or failed to start again, recently: how long the next restart waits."""
        self._stderr: int | None = None

    @property
    def mqtt_port(self) -> int:
        """The port of MQTT over TCP."""
        return self.mqtt.port

    @property
    def ws_port(self) -> int:
        """The port of MQTT over WebSocket."""
        return self.websocket.port

    def port(self, listener: str) -> int:
        """A listener's port, by the embedded broker's names (``default``, ``ws``, ``mqtts``, ``wss``)."""
        return self.addresses[listener].port

    def _choose_ports(self) -> None:
        """Give each listener asked for on port 0 a free port (``concrete``)."""
        self._listeners = dict(zip(self._wanted, concrete(*self._wanted.values()), strict=True))
        names = {"mqtt": "default", "websocket": "ws"}
        self.addresses = {names.get(name, name): address for name, address in self._listeners.items()}
        """The listeners by the embedded broker's names (``default``, ``ws``, ``mqtts``, ``wss``)."""
        settings = self.registry.settings.broker
        self.mqtt = self._listeners.get("mqtt", settings.mqtt)
        self.websocket = self._listeners.get("websocket", settings.websocket)

    def start(self, stderr: int | None = None) -> Self:
        """Export, start Mosquitto, and return once both listeners accept connections.

        A port chosen free for a listener asked on port 0 can be taken by another process before
        Mosquitto binds it, and Mosquitto then exits at start: it is started again on other free
        ports, up to ``PORT_ATTEMPTS`` times. A fixed port is never changed.
        """
        self._stderr = stderr
        chosen = any(not address.port for address in self._wanted.values())
        try:
            for attempt in range(1, PORT_ATTEMPTS + 1):
                try:
                    self._launch()
                    break
                except MosquittoError:
                    exited = self.process is not None and self.process.poll() is not None
                    if not (chosen and exited) or attempt == PORT_ATTEMPTS:
                        raise
                    log.warning("Mosquitto exited at start; starting it again on other free ports")
                    self._choose_ports()
        except BaseException:
            self.stop()
            raise
        self._watcher = threading.Thread(target=self._watch, name="radio-mosquitto-watcher", daemon=True)
        self._watcher.start()
        return self

    def _launch(self) -> None:
        """Export and run Mosquitto; return once every listener accepts connections."""
        binary = find_binary()
        conf = export(self.registry.settings, self.registry.current, self.folder, listeners=self._listeners)
        command = [binary, "-c", str(conf)]
        self.process = subprocess.Popen(  # noqa: S603 - our own files
            command,
            stderr=self._stderr,
            stdout=subprocess.DEVNULL,
            preexec_fn=dies_with_us(),  # noqa: PLW1509 - see dies_with_us
        )
        self._wait_until_listening()

    def _wait_until_listening(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        for address in (a.local() for a in self._listeners.values()):
            while True:
                assert self.process is not None  # noqa: S101 - set by start
                if self.process.poll() is not None:
                    msg = f"Mosquitto exited at start (status {self.process.returncode}); see its log above"
                    raise MosquittoError(msg)
                try:
                    socket.create_connection((address.host, address.port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        msg = f"Mosquitto did not listen on {address} within {STARTUP_TIMEOUT:g}s"
                        raise MosquittoError(msg) from None
                    time.sleep(0.05)

    def reload(self) -> None:
        """Write the files again and have Mosquitto reread them (and drop what they no longer allow)."""
        export(self.registry.settings, self.registry.current, self.folder, listeners=self._listeners)
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGHUP)
            self.reloads += 1
            log.info("registry changed: Mosquitto reloaded its password and ACL files")

    def _watch(self) -> None:
        while not self._stop.wait(self.reload_interval):
            if self.process is not None and self.process.poll() is not None and not self._revive():
                return
            try:
                if self.registry.refresh():  # a key's expiry is a change too (LiveRegistry)
                    self.reload()
            except Exception:
                log.exception("applying a registry change to Mosquitto failed; will retry on the next change")

    def _revive(self) -> bool:
        """Mosquitto died on its own: start it again after a growing delay, or give up and say so.

        Clients reconnect by themselves; what Mosquitto had saved (``mosquitto.db``) is read back.
        Each death or failed start within ``STEADY`` seconds of the previous one waits the next
        delay; past the last, ``on_failure`` is called, so that the command exits non-zero and a
        service manager (systemd, a container runtime) takes over. Whether it came back.
        """
        assert self.process is not None  # noqa: S101 - only called once it ran
        while True:
            now = time.monotonic()
            self._deaths = [t for t in self._deaths if now - t < STEADY] + [now]
            if len(self._deaths) > len(self.restart_delays):
                break
            delay = self.restart_delays[len(self._deaths) - 1]
            log.warning(
                "Mosquitto exited on its own (status %s): restarting it in %gs",
                self.process.returncode,
                delay,
            )
            if self._stop.wait(delay):
                return False
            try:
                self._launch()
            except (MosquittoError, OSError) as exc:
                log.warning("Mosquitto did not come back: %s", exc)
                self._kill()
                continue
            self.restarts += 1
            log.warning("Mosquitto restarted: listening again on the same ports")
            return True
        self.failed = True
        log.error(
            "Mosquitto exited %d times within %gs (last status %s): giving up",
            len(self._deaths),
            STEADY,
            self.process.returncode,
        )
        if self.on_failure is not None:
            self.on_failure()
        return False

    def _kill(self) -> None:
        """A start that failed may leave a process that never listened: no second Mosquitto."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        """Stop Mosquitto (SIGTERM, which saves its persistence file) and the watcher."""
        self._stop.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout=5)
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def find_binary() -> str:
    """Mosquitto's executable: ``RADIO_MOSQUITTO`` if set, else on PATH or where Debian puts it."""
    places = (shutil.which("mosquitto"), "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
    install = "Debian: apt-get install mosquitto"
    return find_executable("RADIO_MOSQUITTO", "Mosquitto", places, MosquittoError, install)


def version() -> str | None:
    """The installed Mosquitto's version, or None."""
    try:
        binary = find_binary()
    except MosquittoError:
        return None
    try:
        command = [binary, "-h"]
        out = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False).stdout  # noqa: S603
    except OSError:
        return None
    match = re.search(r"mosquitto version (\S+)", out)
    return match[1] if match else None
