"""The audit log: one JSON line per change to the key registry, whoever made it and by which door.

``audit.log`` lives beside the configuration, mode 0600 (it names keys and their rights). It is
only ever appended to: each line is written by one ``write`` on a descriptor opened with
``O_APPEND``, so lines from the CLI and from every bridge worker never interleave or overwrite one
another, and nothing in Radio rewrites or truncates the file. A line says who (an admin key's
name, or the OS user of a ``radio keys`` command), how (``api`` or ``cli``), from where (the
remote address, or ``local``), when, the action, the key, and the fields it changed, with their
new values. Never a secret: a rotation records that the secret changed, not what it became.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from radio.errors import RadioError, reason
from radio.files import open_private

FILE_NAME: Final = "audit.log"


class AuditError(RadioError):
    """The audit log cannot be written or read."""


@dataclass(frozen=True)
class Actor:
    """Who makes a change, through which door, from where."""

    who: str
    via: str
    """``cli`` or ``api``."""
    source: str
    """The remote address of an API request; ``local`` for a command on the server."""


def audit_path(state_dir: Path) -> Path:
    """Where a platform's audit log lives: beside its configuration."""
    return state_dir / FILE_NAME


@contextlib.contextmanager
def appending(path: Path) -> Iterator[Callable[[Actor, str, str, dict[str, Any]], None]]:
    """Open the log for one change, before it is made: a log that cannot be opened refuses it.

    Yields ``record(actor, action, key, changed)``, to call once the change is written.
    """
    try:
        fd = open_private(path, os.O_WRONLY | os.O_APPEND)
    except OSError as exc:
        msg = f"nothing changed: the audit log {path} cannot be written: {exc}"
        raise AuditError(msg) from None

    def record(actor: Actor, action: str, key: str, changed: dict[str, Any]) -> None:
        line = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "who": actor.who,
            "via": actor.via,
            "from": actor.source,
            "action": action,
            "key": key,
            "changed": changed,
        }
        try:
            os.write(fd, (json.dumps(line) + "\n").encode())  # one write: lines never interleave
            os.fsync(fd)
        except OSError as exc:
            msg = f"the change is made, but the audit log {path} cannot be written: {exc}"
            raise AuditError(msg) from None

    try:
        yield record
    finally:
        os.close(fd)


def read(path: Path) -> list[dict[str, Any]]:
    """Every line of the log, oldest first; none if no change was made yet."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"cannot read the audit log {path}: {reason(exc)}"
        raise AuditError(msg) from None
    complete = text[: text.rfind("\n") + 1]  # a line still being appended is not read yet
    lines = []
    for number, line in enumerate(complete.splitlines(), 1):
        try:
            entry = json.loads(line)
        except ValueError:
            msg = f"{path}, line {number}: not a JSON line"
            raise AuditError(msg) from None
        if not isinstance(entry, dict):
            msg = f"{path}, line {number}: not a JSON object"
            raise AuditError(msg)
        lines.append(entry)
    return lines
