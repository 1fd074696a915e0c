"""Running servers say which registry they have loaded, so a key change can wait until it is live.

``radio keys add`` writes ``keys.toml`` and returns; each running broker, Mosquitto runner and
bridge worker picks the change up on its own timer. Without this module, a script that adds a key
and uses it in the very next command races those timers and sometimes loses.

Each process that holds a ``LiveRegistry`` keeps one small JSON file in ``running/`` beside the
configuration: its pid, and the version (the ``stat`` signature of the configuration and keys
files) it has put in force, or the version it refused and why. ``wait_for_servers`` re-reads
those files until every live process reports the files' current version, within a bound.

"In force" is stricter than "loaded": a caller of ``LiveRegistry.refresh()`` that is told of a
new snapshot applies it (closes revoked connections, rewrites Mosquitto's files and signals it)
before its next call, so a version is confirmed on the call after the one that handed it over.
A process that stops calling ``refresh()`` for a while (an idle bridge worker, which refreshes
on the request path) has its registry refreshed and confirmed by a watcher thread instead. The
watcher confirms only where reading a snapshot is applying it (the bridge, the recorder): a
broker that has not called ``refresh()`` since a change has not closed what it revokes, so it
stays unconfirmed (and the writer's wait names it) until it has.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from radio.files import write_private
from radio.pids import alive

log = logging.getLogger(__name__)

FOLDER: Final = "running"
"""Beside the configuration: one file per process holding a LiveRegistry."""
IDLE_AFTER: Final = 1.0
"""Seconds without a ``refresh()`` call after which the watcher thread reloads instead: four of
the brokers' 0.25 s polls, so it steps in for a process that does not poll (an idle bridge
worker), not ahead of a broker that is about to apply the change itself (and it confirms a
broker's change only once the broker has applied it)."""
WATCH_INTERVAL: Final = 0.25

Version = list[list[int] | None]
"""The ``stat`` signatures of the configuration and keys files, as JSON keeps them."""

_instances = itertools.count()


def file_version(*paths: Path) -> Version:
    """What a reader and the servers compare: inode, modification time and size of each file."""
    version: Version = []
    for path in paths:
        try:
            st = path.stat()
        except FileNotFoundError:
            version.append(None)
        else:
            version.append([st.st_ino, st.st_mtime_ns, st.st_size])
    return version


def folder_of(config: Path) -> Path:
    """Where the processes using this configuration confirm what they loaded."""
    return config.parent / FOLDER


def _started(pid: int) -> str | None:
    """When a process started (clock ticks since boot), to tell a reused pid from its old owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def _command() -> str:
    """What this process is, for a person reading a report: ``radio broker``, ``radio bridge``."""
    args = sys.argv[1:2]
    return "radio " + args[0] if args and not args[0].startswith("-") else Path(sys.argv[0]).name


class Confirmer:
    """One process's confirmation file, kept up to date by its ``LiveRegistry``."""

    def __init__(self, config: Path, keys: Path) -> None:
        self.config, self.keys = config, keys
        self.path = folder_of(config) / f"{os.getpid()}-{next(_instances)}.json"
        self.lock = threading.RLock()
        self.last_call = time.monotonic()
        self.unreported = False
        """A snapshot the watcher loaded that no ``refresh()`` caller has been told about yet."""
        self._written: tuple[Any, ...] | None = None
        self._warned = False
        self._closed = False

    def confirm(self, version: Version, failed: Version | None, error: str | None) -> None:
        """Write the file if what it says changed; a server never fails for want of writing it."""
        record = (version, failed, error)
        if record == self._written or self._closed:
            return
        data = {
            "pid": os.getpid(),
            "started": _started(os.getpid()),
            "command": _command(),
            "config": str(self.config),
            "keys": str(self.keys),
            "version": version,
            "failed": failed,
            "error": error,
        }
        try:
            self.path.parent.mkdir(mode=0o700, exist_ok=True)  # never re-create a removed folder
            write_private(self.path, json.dumps(data))
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("cannot confirm registry changes in %s: %s", self.path.parent, exc)
            return
        self._written = record

    def close(self) -> None:
        """The process (or its registry) is gone: nobody should wait for it, now or later."""
        with self.lock:
            self._closed = True
            with contextlib.suppress(OSError):
                self.path.unlink()


def watch(owner: object, step: Callable[[Any], None]) -> None:
    """Call ``step(owner)`` every ``WATCH_INTERVAL`` on a daemon thread, for as long as owner lives."""
    ref = weakref.ref(owner)

    def run() -> None:
        while True:
            time.sleep(WATCH_INTERVAL)
            target = ref()
            if target is None:
                return
            try:
                step(target)
            except Exception:
                log.exception("watching the registry failed; will retry")
            del target

    threading.Thread(target=run, name="radio-registry-watch", daemon=True).start()


@dataclass(frozen=True)
class Server:
    """A running process that uses the registry, as its confirmation file describes it."""

    pid: int
    command: str
    version: Version
    failed: Version | None
    error: str | None

    def __str__(self) -> str:
        return f"{self.command} (pid {self.pid})"


@dataclass(frozen=True)
class Report:
    """What the running servers made of the current registry files."""

    confirmed: list[Server]
    refused: list[Server]
    pending: list[Server]

    def summary(self) -> str:
        """One line for the person who made the change."""
        if not (self.confirmed or self.refused or self.pending):
            return "No server using this configuration is running; it takes effect when one starts."
        parts = []
        if self.confirmed:
            parts.append(f"In force on {len(self.confirmed)} running server(s).")
        parts.extend(f"{s} refused the files and keeps the previous rights: {s.error}." for s in self.refused)
        if self.pending:
            names = ", ".join(str(s) for s in self.pending)
            parts.append(f"Not yet confirmed by {names}; it takes effect there within 2 seconds.")
        return " ".join(parts)


def running_servers(config: Path, keys: Path) -> list[Server]:
    """The live processes using this configuration and keys file; stale files are removed."""
    servers = []
    for path in sorted(folder_of(config).glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            pid = int(data["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not _alive(pid, data.get("started")):
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        if data.get("config") != str(config) or data.get("keys") != str(keys):
            continue
        servers.append(
            Server(pid, str(data.get("command")), data.get("version"), data.get("failed"), data.get("error"))
        )
    return servers


def holding_keys(config: Path, keys: Path) -> Server | None:
    """A running server that has a keys file of this path in force (one it read), if any.

    Should the file go missing, such a server keeps the rights it holds (a deleted registry is
    never read as one without keys). A new file made then would be read as the registry instead,
    and every key it lacks revoked at once, Radio's own service keys included.
    """
    for server in running_servers(config, keys):
        if len(server.version) == 2 and server.version[1] is not None:  # [config, keys]: a keys file
            return server
    return None


def _alive(pid: int, started: object) -> bool:
    """The process is there, and is the one that wrote the file (not a new one given its pid)."""
    return alive(pid) and (started is None or _started(pid) in (None, started))


def wait_for_servers(config: Path, keys: Path, timeout: float = 5.0) -> Report:
    """Wait until every running server has put the current files in force (or refused them)."""
    deadline = time.monotonic() + timeout
    while True:
        current = file_version(config, keys)
        servers = running_servers(config, keys)
        report = Report(
            confirmed=[s for s in servers if s.version == current],
            refused=[s for s in servers if s.version != current and s.failed == current],
            pending=[s for s in servers if current not in (s.version, s.failed)],
        )
        if not report.pending or time.monotonic() >= deadline:
            return report
        time.sleep(0.05)
