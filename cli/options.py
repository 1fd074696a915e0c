"""What the command line accepts: one-line refusals, checked values, and where a secret may come from.

A bad option is refused before anything starts, as one line on stderr with exit status 2: a
traceback tells a user nothing about what to type instead.

Secrets never travel on a command line: any user of the machine can read every process's
arguments (``ps``, ``/proc/*/cmdline``), and shells keep them in their history. A command that
needs a key reads it from a private file (``--key-file``) or from the environment (``RADIO_KEY``).
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final, NoReturn
from urllib.parse import urlsplit

from radio.errors import RadioError
from radio.urls import DEFAULT_MQTT_VERSION, MQTT_VERSIONS, BrokerURL, parse_urls, unresolvable

if TYPE_CHECKING:
    from radio.config import Address, Settings
    from radio.tls import Trust

# Every command's parser is built on each run, ``radio --help`` lists them all: what an option's
# value is checked with (the configuration, the key registry's terms) loads when one is given.

EXIT_REFUSED: Final = 2
"""The exit status of anything Radio refuses: a bad option, configuration, key or port."""
CONFIG_RULE: Final = (
    "Configuration: --config PATH, else $RADIO_CONFIG, else ./radio.toml (absent: the defaults, one "
    "public network sample_net). Keys (keys.toml) and every state file live beside it."
)

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

    refused_status: int = EXIT_REFUSED
    """The exit status of a refused option: 2, but for a command whose callers reserve 2."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        """One line naming the command, then exit status 2 (``refused_status``)."""
        self.exit(self.refused_status, f"{self.prog}: {message} (see {self.prog} --help)\n")


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
    from radio.config import Address  # noqa: PLC0415 - see the imports

    try:
        return Address.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def broker_urls(text: str) -> str:
    """Broker URLs (``mqtt://HOST:PORT``, ``ws://HOST:PORT/PATH``, ...), comma-separated to fail over.

    Checked now rather than when connecting.
    """
    try:
        parse_urls(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def broker_addresses(text: str) -> list[Address]:
    """``mqtt://HOST:PORT[,...]``: the brokers a server links to, in failover order."""
    from radio.config import Address  # noqa: PLC0415 - see the imports

    try:
        return [Address.parse_url(part.strip()) for part in text.split(",") if part.strip()] or [
            Address.parse_url(text)
        ]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
        if (problem := unresolvable(parts.hostname, text)) is not None:
            raise argparse.ArgumentTypeError(problem)
        return text
    try:
        BrokerURL.parse(text)
    except ValueError:
        msg = f"{text!r} is not a URL: use mqtt://HOST:PORT, ws://HOST:PORT/mqtt or http://HOST:PORT"
        raise argparse.ArgumentTypeError(msg) from None
    return text


def client_urls(text: str) -> str:
    """:func:`client_url`, or several broker URLs comma-separated (the bridge is one URL)."""
    if "," not in text:
        return client_url(text)
    if is_http(text):
        msg = f"{text!r}: the bridge takes one http(s):// URL (a comma-separated list is for brokers)"
        raise argparse.ArgumentTypeError(msg)
    return broker_urls(text)


def http_url(text: str) -> str:
    """The bridge's ``http(s)://HOST:PORT``."""
    if not is_http(text):
        msg = f"{text!r} is not the bridge's URL: use http://HOST:PORT (https:// with TLS)"
        raise argparse.ArgumentTypeError(msg)
    return client_url(text)


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


PERIOD_RANGE: Final = (0.001, 86_400.0)
"""Seconds between one generator's samples: from a millisecond (a generator's own pace past which
it only fills its buffer and drops) to a day (past which a wait overflows the platform's clock)."""


def period(text: str) -> float:
    """Seconds between samples, within ``PERIOD_RANGE``."""
    value = positive_number(text)
    low, high = PERIOD_RANGE
    if not low <= value <= high:
        msg = f"{text[:40]!r} is not a number of seconds from {low:g} to {high:g}"
        raise argparse.ArgumentTypeError(msg)
    return value


def rate(text: str) -> float:
    """Samples per second: the inverse of a ``period``, within the same bounds."""
    value = positive_number(text)
    low, high = 1 / PERIOD_RANGE[1], 1 / PERIOD_RANGE[0]
    if not low <= value <= high:
        msg = f"{text[:40]!r} is not a number per second from 1/{PERIOD_RANGE[1]:g} to {high:g}"
        raise argparse.ArgumentTypeError(msg)
    return value


def positive_whole(text: str) -> int:
    """A whole number from 1 (a count)."""
    if not text.strip().isdigit() or int(text) < 1:
        msg = f"{text!r} is not a whole number from 1"
        raise argparse.ArgumentTypeError(msg)
    return int(text)


SPEED_MOST: Final = 86_400
"""Simulated seconds per sample: a day. One step of a 3x3 town takes some 60 us, of a 100x100 one
15 ms; at 100,000,000 a sample never came."""


def one_to(most: int, what: str) -> Callable[[str], int]:
    """A whole number from 1 to ``most`` (``what`` names it in a refusal).

    Checked as text before ``int``, which refuses past 4,300 digits with a message of its own.
    """

    def parse(text: str) -> int:
        digits = text.isascii() and text.isdigit() and len(text.lstrip("0")) <= len(str(most))
        if not digits or not 1 <= int(text) <= most:
            msg = f"{text[:40]!r} is not {what} (1 to {most})"
            raise argparse.ArgumentTypeError(msg)
        return int(text)

    return parse


speed = one_to(SPEED_MOST, "a whole number of simulated seconds per sample")
"""The simulator's speed."""


TOWN_MOST: Final = 10_000
"""Intersections a simulated town may have: 100x100 is some 40,000 streets, 64 MB and a sample of
over 1 MB (past the default ``max_payload``); 1000x1000 took over 3 GB before its first sample."""


def size(text: str) -> tuple[int, int]:
    """A town's grid, ``ROWSxCOLUMNS``, from 2 to ``TOWN_MOST`` intersections."""
    rows, _, columns = text.lower().partition("x")
    if (
        not (rows.isdigit() and columns.isdigit())
        or int(rows) < 1
        or not 2 <= int(rows) * int(columns) <= TOWN_MOST
    ):
        msg = f"{text!r} is not ROWSxCOLUMNS of 2 to {TOWN_MOST} intersections (say 3x3)"
        raise argparse.ArgumentTypeError(msg)
    return int(rows), int(columns)


def whole(low: int, high: int) -> Callable[[str], int]:
    """A whole number from ``low`` to ``high`` (workers, threads)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            msg = f"{text!r} is not a whole number from {low} to {high}"
            raise argparse.ArgumentTypeError(msg)
        return value

    return parse


def seconds(low: float, high: float) -> Callable[[str], float]:
    """A number of seconds from ``low`` to ``high`` (a timeout)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not low <= value <= high:  # NaN is in no range
            msg = f"{text!r} is not a number of seconds from {low:g} to {high:g}"
            raise argparse.ArgumentTypeError(msg)
        return value

    return parse


MAX_NODES: Final = 64
"""Nodes a NATS cluster may have: each node's file routes to every other, so 70,000 nodes wrote
gigabytes before the first node could start; and on one machine the nodes take consecutive ports,
which past 142 nodes run from the WebSocket ports (8080 on) into the monitoring ones (8222 on)."""


nodes = one_to(MAX_NODES, "a number of nodes")
"""How many nodes a NATS cluster has."""


def sequence_number(text: str) -> int:
    """A sample number from the bridge's history (a whole number from 0 to ``MAX_SEQ``)."""
    from radio.history_store import MAX_SEQ  # noqa: PLC0415 - see the imports

    digits = text.strip().lstrip("0") or "0"
    if (
        not text.isascii()
        or not text.strip().isdigit()
        or len(digits) > len(str(MAX_SEQ))
        or int(digits) > MAX_SEQ
    ):
        msg = f"{text[:40]!r} is not a sample number (a whole number from 0 to {MAX_SEQ})"
        raise argparse.ArgumentTypeError(msg)
    return int(digits)


def network(text: str) -> str:
    """A network's name, by the rule every door applies (``radio.topics``)."""
    from radio.topics import NetworkName  # noqa: PLC0415 - see the imports

    try:
        return NetworkName(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def host(text: str) -> str:
    """A DNS name (``*`` allowed as a label) or an IP address a certificate is for."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    labels = text.rstrip(".").split(".")
    if not text or not all(
        re.fullmatch(r"\*|[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", p) for p in labels
    ):
        msg = f"{text!r} is not a host name or IP address"
        raise argparse.ArgumentTypeError(msg)
    return text.lower()


def term(name: str) -> Callable[[str], object]:
    """One of a key's terms (``rate``, ``burst``, ``quota``, ``expires``), parsed as the registry reads it."""

    def parsed(text: str) -> object:
        from radio.key_changes import parse_term  # noqa: PLC0415 - see the imports

        try:
            return parse_term(name, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parsed


def day(text: str) -> str:
    """A UTC day, ``YYYY-MM-DD``."""
    from radio.key_changes import parse_day  # noqa: PLC0415 - see the imports

    try:
        return parse_day(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_tls_listeners(parser: argparse.ArgumentParser) -> None:
    """``--mqtts`` and ``--wss``: a broker's listeners with TLS."""
    parser.add_argument(
        "--mqtts", metavar="HOST:PORT", type=address, help="MQTT over TLS (needs [tls] in the configuration)"
    )
    parser.add_argument(
        "--wss", metavar="HOST:PORT", type=address, help="MQTT over WebSocket with TLS (needs [tls])"
    )


def add_mqtt_version(parser: argparse.ArgumentParser) -> None:
    """``--mqtt-version``: the protocol a client speaks to the broker."""
    parser.add_argument(
        "--mqtt-version",
        choices=MQTT_VERSIONS,
        default=DEFAULT_MQTT_VERSION,
        help=f"the MQTT version spoken to the broker (default {DEFAULT_MQTT_VERSION}); "
        "with 5 the broker's refusals carry their reason code",
    )


def add_ca(parser: argparse.ArgumentParser) -> None:
    """``--ca FILE``: what a client trusts for mqtts:// and wss://."""
    parser.add_argument(
        "--ca",
        metavar="FILE",
        type=Path,
        help="for mqtts:// and wss://: the CA certificate(s) to trust (default: the system's trust store)",
    )


def trust(args: argparse.Namespace, settings: Settings) -> Trust:
    """Whom a client believes: the ``--ca`` file, else the system's store and the folder's own.

    The folder's own certificate is ``[tls] cert``, trusted as ``radio health`` trusts it (by
    ``radio.tls.client_context``).

    The ``--ca`` file is read and checked before the client starts, whatever its URLs' schemes. A
    client over plain ``mqtt://`` or ``ws://`` still reads the history over HTTP(S) with it, in
    its own thread: a missing or empty file found there would end that thread alone, with a
    traceback, and leave the command running with nothing to show.
    """
    from radio.tls import Trust, load_certificates, own_certificate  # noqa: PLC0415 - see the imports

    ca: Path | None = args.ca
    if ca is not None:
        load_certificates(ca, "CA file")
    return Trust(ca, own_certificate(settings.tls))


def settings(args: argparse.Namespace) -> Settings:
    """The configuration ``--config`` and ``--keys`` name (else found by ``CONFIG_RULE``)."""
    from radio.config import load_settings  # noqa: PLC0415 - see the imports

    return load_settings(getattr(args, "config", None), getattr(args, "keys", None))
