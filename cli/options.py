"""What the command line accepts: one-line refusals, checked values, and where a secret may come from.

A bad option is refused before anything starts, as one line on stderr with exit status 2: a
traceback tells a user nothing about what to type instead.

Secrets never travel on a command line: any user of the machine can read every process's
arguments (``ps``, ``/proc/*/cmdline``), and shells keep them in their history. A command that
needs a key reads it from a private file (``--key-file``) or from the environment (``RADIO_KEY``).
"""

from __future__ import annotations

import argparse
import math
import os
import stat
from pathlib import Path
from typing import Final, NoReturn
from urllib.parse import urlsplit

from radio.config import Address
from radio.errors import RadioError
from radio.urls import BrokerURL

SECRET_ENVIRONMENT: Final = "RADIO_KEY"  # noqa: S105 - the variable's name, not a secret
KEY_ON_COMMAND_LINE: Final = (
    "--key is refused: a secret on the command line is visible to every user of this machine "
    f"(ps, /proc); use --key-file PATH (a file only you can read) or the {SECRET_ENVIRONMENT} "
    "environment variable"
)


class Parser(argparse.ArgumentParser):
    """argparse, with its refusals as one line (no usage block) and no abbreviated options.

    Abbreviations are off because ``--key`` would otherwise be read as ``--keys`` (a path) by a
    command that has no ``--key``.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        """One line naming the command, then exit status 2."""
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


class RefuseSecret(argparse.Action):
    """``--key SECRET``: refused, saying why and what to use instead."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        _namespace: argparse.Namespace,
        _values: object,
        _option_string: str | None = None,
    ) -> None:
        """Refuse at once, before the secret is used for anything."""
        parser.error(KEY_ON_COMMAND_LINE)


def add_key_options(parser: argparse.ArgumentParser, what: str) -> None:
    """``--key-file PATH``, and a ``--key`` that only says why it is refused."""
    parser.add_argument(
        "--key-file",
        metavar="PATH",
        type=Path,
        help=f"a file holding {what}, readable by you alone (or set ${SECRET_ENVIRONMENT})",
    )
    parser.add_argument("--key", nargs="?", action=RefuseSecret, help=argparse.SUPPRESS)


def read_secret(key_file: Path | None, *, required: bool) -> str | None:
    """The secret from ``--key-file``, else from ``RADIO_KEY``; None if neither and not required."""
    if key_file is not None:
        try:
            info = key_file.stat()
            text = key_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            msg = f"cannot read the key file {key_file}: {getattr(exc, 'strerror', None) or exc}"
            raise RadioError(msg) from None
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            msg = (
                f"the key file {key_file} is open to group or others (mode {mode:04o}): "
                f"make it private with chmod 600 {key_file}"
            )
            raise RadioError(msg)
        secret = text.strip()
        if not secret or "\n" in secret:
            msg = f"the key file {key_file} must hold one secret on one line"
            raise RadioError(msg)
        return secret
    secret = os.environ.get(SECRET_ENVIRONMENT, "").strip()
    if secret:
        return secret
    if required:
        msg = f"this command needs a key: --key-file PATH, or the secret in ${SECRET_ENVIRONMENT}"
        raise RadioError(msg)
    return None


def address(text: str) -> Address:
    """``HOST:PORT``."""
    try:
        return Address.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def broker_url(text: str) -> str:
    """``mqtt://HOST:PORT`` or ``ws://HOST:PORT/PATH``, checked now rather than when connecting."""
    try:
        BrokerURL.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def client_url(text: str) -> str:
    """A broker URL, or the bridge's ``http(s)://HOST[:PORT]`` for ``--via http``."""
    parts = urlsplit(text)
    if parts.scheme in {"http", "https"}:
        try:
            parts.port  # noqa: B018 - reading it validates it
        except ValueError:
            msg = f"{text!r} has an invalid port"
            raise argparse.ArgumentTypeError(msg) from None
        if not parts.hostname:
            msg = f"{text!r} is not a URL: use http://HOST:PORT"
            raise argparse.ArgumentTypeError(msg)
        return text
    try:
        BrokerURL.parse(text)
    except ValueError:
        msg = f"{text!r} is not a URL: use mqtt://HOST:PORT, ws://HOST:PORT/mqtt or http://HOST:PORT"
        raise argparse.ArgumentTypeError(msg) from None
    return text


def is_http(url: str) -> bool:
    """Whether a URL names the HTTP bridge rather than a broker."""
    return urlsplit(url).scheme in {"http", "https"}


def positive_number(text: str) -> float:
    """A finite number above zero (a period, a rate)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        msg = f"{text!r} is not a number above 0"
        raise argparse.ArgumentTypeError(msg)
    return value


def positive_whole(text: str) -> int:
    """A whole number from 1 (a count)."""
    if not text.strip().isdigit() or int(text) < 1:
        msg = f"{text!r} is not a whole number from 1"
        raise argparse.ArgumentTypeError(msg)
    return int(text)


def size(text: str) -> tuple[int, int]:
    """A town's grid, ``ROWSxCOLUMNS``."""
    rows, _, columns = text.lower().partition("x")
    if not (rows.isdigit() and columns.isdigit()) or int(rows) < 1 or int(rows) * int(columns) < 2:
        msg = f"{text!r} is not ROWSxCOLUMNS (say 3x3)"
        raise argparse.ArgumentTypeError(msg)
    return int(rows), int(columns)
