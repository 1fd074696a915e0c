"""The ``radio`` command: each part of the platform, and the key registry.

Every subcommand finds its configuration by one rule (``CONFIG_RULE``) and takes ``--config`` and
``--keys``. Anything Radio refuses (a bad option, a bad configuration, an unknown key, a port in
use) is one line on stderr and exit status 2, never a traceback. Commands that hand out a secret
print it alone on stdout and talk to the human on stderr, so ``SECRET=$(radio keys add gen
--publish a)`` works; commands that need one never take it as an argument (``cli.options``).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from radio import __version__, ports, statelock
from radio.cli import health, options, preflight
from radio.cli.options import Parser
from radio.config import Address, Settings, load_settings
from radio.errors import MissingRegistry, RadioError
from radio.key_changes import (
    CONFIRM_TIMEOUT,
    TERMS,
    KeyChanges,
    cli_actor,
    key_row,
    nothing_to_change,
    parse_day,
    parse_term,
    split_names,
    usage_rows,
)
from radio.keys import Key, format_rate, load_keys
from radio.stopping import Stop
from radio.topics import NetworkName
from radio.urls import parse_urls

EXIT_REFUSED = 2
CONFIG_RULE = (
    "Configuration: --config PATH, else $RADIO_CONFIG, else ./radio.toml (absent: the defaults, one "
    "public network sample_net). Keys (keys.toml) and every state file live beside it."
)
ENGINES = ("embedded", "mosquitto", "nats")
ENGINE_HELP = (
    "embedded (Radio's own broker, in this process; the default), mosquitto (installed separately) "
    "or nats (a local cluster: pip install 'radio-broadcast[nats]')"
)
NODES_HELP = "with --engine nats: how many nodes in the local cluster (default 3)"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``radio`` console script."""
    from radio.cli.parent import follow_parent  # noqa: PLC0415

    follow_parent()
    parser = _parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except RadioError as exc:
        print(f"radio: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 0


def _parser() -> argparse.ArgumentParser:
    # --config/--keys may come before or after the subcommand; SUPPRESS lets the later one win.
    common = Parser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="configuration file (default: $RADIO_CONFIG, else ./radio.toml); state files live beside it",
    )
    common.add_argument(
        "--keys",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="key registry (default: $RADIO_KEYS, else keys.toml beside the configuration)",
    )
    parser = Parser(
        prog="radio",
        description="Radio: a broadcast platform for live data.",
        epilog=CONFIG_RULE,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"radio {__version__}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    broker = commands.add_parser(
        "broker", parents=[common], help="run the MQTT broker (TCP and WebSocket): embedded, or Mosquitto"
    )
    broker.add_argument("--mqtt", metavar="HOST:PORT", type=_address, help="MQTT over TCP (port 0: any free)")
    broker.add_argument("--ws", metavar="HOST:PORT", type=_address, help="MQTT over WebSocket, path /mqtt")
    _add_tls_listeners(broker)
    broker.add_argument("--engine", choices=ENGINES, default="embedded", help=ENGINE_HELP)
    broker.add_argument("--nodes", type=_count, default=3, help=NODES_HELP)
    broker.add_argument("-v", "--verbose", action="store_true", help="log every decision in detail")
    broker.set_defaults(handler=_broker)

    mosquitto = commands.add_parser("mosquitto", parents=[common], help="Mosquitto as the production broker")
    mosquitto_commands = mosquitto.add_subparsers(title="actions", required=True, metavar="ACTION")
    export = mosquitto_commands.add_parser(
        "export", parents=[common], help="write mosquitto.conf, passwd and acl from the registry"
    )
    export.add_argument("--dir", required=True, type=Path, help="the folder to write them to")
    export.add_argument(
        "--mqtt", metavar="HOST:PORT", type=_address, help="MQTT over TCP (default: config's)"
    )
    export.add_argument(
        "--ws", metavar="HOST:PORT", type=_address, help="MQTT over WebSocket (default: config's)"
    )
    _add_tls_listeners(export)
    export.set_defaults(handler=_mosquitto_export)
    _add_nats_commands(commands, common)

    bridge = commands.add_parser("bridge", parents=[common], help="run the HTTP bridge (POST /publish)")
    bridge.add_argument(
        "--listen", metavar="HOST:PORT", type=_address, help="where to serve HTTP (port 0: any)"
    )
    bridge.add_argument(
        "--broker",
        metavar="mqtt://HOST:PORT[,...]",
        type=_broker_urls,
        help="the broker, or several to fail over between, comma-separated (default: the config's MQTT)",
    )
    bridge.add_argument(
        "--workers",
        type=_whole(1, 64),
        default=2,
        help="worker processes, one broker link each (1 to 64, default 2)",
    )
    bridge.add_argument(
        "--threads",
        type=_whole(1, 256),
        default=16,
        help="threads per worker for every route but POST /publish, which runs on the event loop "
        "(1 to 256, default 16)",
    )
    bridge.add_argument(
        "--timeout",
        type=_seconds(0.1, 3600),
        default=5.0,
        help="seconds to wait for the broker's PUBACK (0.1 to 3600, default 5)",
    )
    bridge.add_argument(
        "--body-timeout",
        type=_seconds(0.1, 3600),
        help="seconds for a request's body to arrive, else 408 (default: [bridge] body_timeout, 10)",
    )
    bridge.set_defaults(handler=_bridge)

    recorder = commands.add_parser(
        "recorder",
        parents=[common],
        help="number and keep every network's latest samples (history.db beside the configuration)",
    )
    recorder.add_argument(
        "--broker",
        metavar="mqtt://HOST:PORT[,...]",
        type=_broker_urls,
        help="the broker, or several to fail over between, comma-separated (default: the config's MQTT)",
    )
    recorder.set_defaults(handler=_recorder)

    _add_platform_commands(commands, common)
    _add_certs_commands(commands, common)
    health.add_command(commands, common, timeout=_seconds(0.1, 60))

    _add_key_commands(commands, common)
    return parser


def _add_key_commands(commands: argparse._SubParsersAction[Parser], common: Parser) -> None:
    """``radio keys add|list|revoke|rotate|edit``."""
    keys = commands.add_parser("keys", parents=[common], help="manage API keys")
    key_commands = keys.add_subparsers(title="key commands", required=True, metavar="ACTION")
    add = key_commands.add_parser("add", parents=[common], help="make a key; prints its secret once")
    add.add_argument("name")
    add.add_argument(
        "--publish", action="append", default=[], metavar="NET,...", help="networks it may publish to"
    )
    add.add_argument(
        "--subscribe", action="append", default=[], metavar="NET,...", help="networks it may read"
    )
    add.add_argument("--admin", action="store_true", help="operator key: any topic, $SYS included")
    _add_terms_options(add, clearing=False)
    add.set_defaults(handler=_keys_add)
    listing = key_commands.add_parser("list", parents=[common], help="list keys (never secrets)")
    listing.add_argument("--json", action="store_true", help="one JSON object per key")
    listing.set_defaults(handler=_keys_list)
    revoke = key_commands.add_parser(
        "revoke", parents=[common], help="delete a key; it stops working at once"
    )
    revoke.add_argument("name")
    revoke.set_defaults(handler=_keys_revoke)
    rotate = key_commands.add_parser("rotate", parents=[common], help="give a key a new secret")
    rotate.add_argument("name")
    rotate.set_defaults(handler=_keys_rotate)
    edit = key_commands.add_parser(
        "edit", parents=[common], help="change a key's rights; its secret and id stay"
    )
    edit.add_argument("name")
    edit.add_argument(
        "--publish",
        action="append",
        metavar="NET,...",
        help="the networks it may publish to, replacing its list ('' for none)",
    )
    edit.add_argument(
        "--subscribe",
        action="append",
        metavar="NET,...",
        help="the networks it may read, replacing its list ('' for none)",
    )
    admin = edit.add_mutually_exclusive_group()
    admin.add_argument("--admin", action="store_true", default=None, help="make it an operator key")
    admin.add_argument("--no-admin", dest="admin", action="store_false", help="no longer an operator key")
    _add_terms_options(edit, clearing=True)
    edit.set_defaults(handler=_keys_edit)
    usage = key_commands.add_parser(
        "usage", parents=[common], help="samples and bytes published and received per key, network and day"
    )
    usage.add_argument("name", nargs="?", help="one key (default: every key)")
    usage.add_argument("--since", type=_day, metavar="DATE", help="from this day on (YYYY-MM-DD, UTC)")
    shape = usage.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true", help="one JSON list of rows")
    shape.add_argument("--csv", action="store_true", help="one CSV table of every row")
    usage.set_defaults(handler=_keys_usage)
    audit = key_commands.add_parser(
        "audit", parents=[common], help="every change to the keys: who, what, when, from where"
    )
    audit.add_argument("name", nargs="?", help="one key's changes (default: every key's)")
    audit.add_argument("--json", action="store_true", help="the log's JSON lines as written")
    audit.set_defaults(handler=_keys_audit)


_UNSET = object()
"""An option of ``keys edit`` that was not given: the key keeps that term."""


def _add_terms_options(parser: Parser, *, clearing: bool) -> None:
    """``--rate``, ``--burst``, ``--quota`` and ``--expires`` (docs/access.md)."""
    off = " ('off' removes it)" if clearing else ""
    never = " ('never' removes it)" if clearing else ""
    default = _UNSET if clearing else None
    parser.add_argument(
        "--rate", type=_term("rate"), default=default, metavar="N/s",
        help=f"samples it may publish per second (or /min, /h), such as 5/s{off}",
    )  # fmt: skip
    parser.add_argument(
        "--burst", type=_term("burst"), default=default, metavar="N",
        help="samples it may publish at once after a pause (default: one second's worth)",
    )  # fmt: skip
    parser.add_argument(
        "--quota", type=_term("quota"), default=default, metavar="N/day",
        help=f"samples it may publish per day or month (UTC), such as 10000/day{off}",
    )  # fmt: skip
    parser.add_argument(
        "--expires", type=_term("expires"), default=default, metavar="TIME",
        help=f"refused from this instant, such as 2026-12-31T00:00:00Z{never}",
    )  # fmt: skip


def _term(name: str) -> Callable[[str], object]:
    def parsed(text: str) -> object:
        try:
            return parse_term(name, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parsed


def _day(text: str) -> str:
    try:
        return parse_day(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _terms_changes(args: argparse.Namespace) -> dict[str, object]:
    """The terms ``keys add|edit`` was given, parsed (None: remove that term)."""
    return {name: value for name in TERMS if (value := getattr(args, name)) is not _UNSET}


def _add_platform_commands(commands: argparse._SubParsersAction[Parser], common: Parser) -> None:
    """``radio up``, ``radio listen`` and ``radio device ...``."""
    up = commands.add_parser(
        "up",
        parents=[common],
        help="run the whole platform: broker, bridge and the demo traffic simulator",
        description="Run the whole platform until Ctrl-C, SIGTERM or SIGHUP; nothing outlives it. "
        "Without a configuration file it writes ./radio.toml (the defaults) and keeps its state "
        "beside it, where every other radio command run in this folder finds it.",
        epilog=CONFIG_RULE,
    )
    up.add_argument("--mqtt", metavar="HOST:PORT", type=_address, help="MQTT over TCP (port 0: any free)")
    up.add_argument("--ws", metavar="HOST:PORT", type=_address, help="MQTT over WebSocket")
    _add_tls_listeners(up)
    up.add_argument("--http", metavar="HOST:PORT", type=_address, help="the HTTP bridge")
    up.add_argument("--engine", choices=ENGINES, default="embedded", help=ENGINE_HELP)
    up.add_argument("--nodes", type=_count, default=3, help=NODES_HELP)
    up.set_defaults(handler=_up)

    listen = commands.add_parser(
        "listen", parents=[common], help="print the samples of networks, one JSON line each"
    )
    listen.add_argument("networks", nargs="+", metavar="NETWORK", type=_network)
    listen.add_argument(
        "--url",
        type=_broker_url_list,
        help="ws://HOST:PORT/mqtt (default: the configuration's), mqtt://HOST:PORT, or wss:// and mqtts://; "
        "several, comma-separated, to fail over between",
    )
    listen.add_argument(
        "--since",
        metavar="SEQ",
        type=_sequence_number,
        help="first replay the history after sample number SEQ (from the bridge), then go on live",
    )
    listen.add_argument(
        "--http",
        metavar="URL",
        type=_http_url,
        help="the bridge, for --since (default: the configuration's [bridge] listen; https:// with [tls])",
    )
    options.add_key_options(listen, "a key that may read the networks (default: anonymous)")
    _add_ca(listen)
    listen.set_defaults(handler=_listen)

    device = commands.add_parser("device", parents=[common], help="run a data generator")
    devices = device.add_subparsers(title="generators", required=True, metavar="GENERATOR")
    traffic = devices.add_parser("traffic", parents=[common], help="the traffic simulator")
    traffic.add_argument("--network", required=True, type=_network)
    options.add_key_options(traffic, "a key that may publish to the network")
    _add_ca(traffic)
    traffic.add_argument(
        "--period", type=options.positive_number, default=1.0, help="seconds between samples (default 1)"
    )
    traffic.add_argument(
        "--via",
        choices=["mqtt", "http"],
        help="publish over MQTT or the bridge (default: http if --url is http://, else mqtt)",
    )
    traffic.add_argument(
        "--url",
        type=_client_urls,
        help="broker (mqtt[s]://, ws[s]://; several, comma-separated, to fail over between) "
        "or bridge (http[s]://) URL; default: the config's",
    )
    traffic.add_argument(
        "--speed", type=options.positive_whole, default=10, help="simulated seconds per sample (default 10)"
    )
    traffic.add_argument(
        "--size", type=options.size, default=(3, 3), metavar="ROWSxCOLUMNS", help="the town's grid"
    )
    traffic.add_argument("--seed", type=int, help="for a reproducible run")
    traffic.set_defaults(handler=_traffic)
    sensors = devices.add_parser("sensors", parents=[common], help="many simulated sensors with last wills")
    sensors.add_argument("--network", required=True, type=_network)
    options.add_key_options(sensors, "a key that may publish to the network")
    _add_ca(sensors)
    sensors.add_argument("--count", type=options.positive_whole, default=100, help="sensors (default 100)")
    sensors.add_argument(
        "--rate", type=options.positive_number, default=1.0, help="readings per second per sensor"
    )
    sensors.add_argument(
        "--url",
        type=_broker_url_list,
        help="broker URL, or several comma-separated to fail over between (default: the config's MQTT)",
    )
    sensors.add_argument("--seed", type=int)
    sensors.set_defaults(handler=_sensors)


def _add_nats_commands(commands: argparse._SubParsersAction[Parser], common: Parser) -> None:
    """``radio nats export``: a NATS cluster's files, for nodes Radio does not start."""
    nats = commands.add_parser("nats", parents=[common], help="NATS as the distributed engine")
    actions = nats.add_subparsers(title="actions", required=True, metavar="ACTION")
    export = actions.add_parser(
        "export", parents=[common], help="write one configuration per node and users.conf from the registry"
    )
    export.add_argument("--dir", required=True, type=Path, help="the folder to write them to")
    export.add_argument("--nodes", type=_count, default=3, help="how many nodes (default 3)")
    export.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="NAME",
        help="where each node runs, once per node in order (default: all on this machine)",
    )
    export.set_defaults(handler=_nats_export)


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        msg = f"{text!r} is not a number of nodes (1 or more)"
        raise argparse.ArgumentTypeError(msg)
    return int(text)


def _add_tls_listeners(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mqtts", metavar="HOST:PORT", type=_address, help="MQTT over TLS (needs [tls] in the configuration)"
    )
    parser.add_argument(
        "--wss", metavar="HOST:PORT", type=_address, help="MQTT over WebSocket with TLS (needs [tls])"
    )


def _add_ca(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ca",
        metavar="FILE",
        type=Path,
        help="for mqtts:// and wss://: the CA certificate(s) to trust (default: the system's trust store)",
    )


def _add_certs_commands(commands: argparse._SubParsersAction[Parser], common: Parser) -> None:
    """``radio certs dev``."""
    certs = commands.add_parser("certs", parents=[common], help="TLS certificates")
    actions = certs.add_subparsers(title="actions", required=True, metavar="ACTION")
    dev = actions.add_parser(
        "dev",
        parents=[common],
        help="a development CA and a server certificate signed by it (ca.pem, server.pem, server.key)",
        description="Write a development CA (ca.pem) and a server certificate and key signed by it "
        "(server.pem, server.key, mode 0600), to try TLS on one machine. Clients trust it with "
        "--ca DIR/ca.pem. For a server others reach, use a certificate from a real CA instead.",
    )
    dev.add_argument("--dir", required=True, type=Path, help="the folder to write them to")
    dev.add_argument(
        "--host",
        action="append",
        type=_host,
        metavar="NAME",
        help="a DNS name or IP address the certificate is for; repeat for more "
        "(default: localhost and 127.0.0.1)",
    )
    dev.set_defaults(handler=_certs_dev)


def _host(text: str) -> str:
    import ipaddress  # noqa: PLC0415

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


def _certs_dev(args: argparse.Namespace) -> int:
    from radio.cli.certs import DEFAULT_HOSTS, dev  # noqa: PLC0415 - cryptography loads only for this command

    hosts = args.host or list(DEFAULT_HOSTS)
    ca, cert, key = dev(args.dir, hosts)
    print(
        f"Wrote {ca} (the development CA), {cert} and {key} (mode 0600) for {', '.join(hosts)}.\n"
        f"Servers, in radio.toml:  [tls] cert = {str(cert)!r}  key = {str(key)!r}\n"
        f"Clients:                 --ca {ca}  (radio listen NET --url wss://{hosts[0]}:PORT/mqtt --ca {ca})",
        file=sys.stderr,
    )
    return 0


def _address(text: str) -> Address:
    return options.address(text)


def _network(text: str) -> str:
    try:
        return NetworkName(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _sequence_number(text: str) -> int:
    if not text.isascii() or not text.strip().isdigit():
        msg = f"{text!r} is not a sample number (a whole number from 0)"
        raise argparse.ArgumentTypeError(msg)
    return int(text)


def _http_url(text: str) -> str:
    if not options.is_http(text):
        msg = f"{text!r} is not the bridge's URL: use http://HOST:PORT (https:// with TLS)"
        raise argparse.ArgumentTypeError(msg)
    return options.client_url(text)


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(getattr(args, "config", None), getattr(args, "keys", None))


def _bridge_url(settings: Settings) -> str:
    """Where a client on this machine reaches the bridge: HTTPS when the configuration has [tls]."""
    return f"{'https' if settings.tls is not None else 'http'}://{settings.bridge.listen.local()}"


def _broker_urls(text: str) -> list[Address]:
    try:
        return [Address.parse_url(part.strip()) for part in text.split(",") if part.strip()] or [
            Address.parse_url(text)
        ]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _broker_url_list(text: str) -> str:
    try:
        parse_urls(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _client_urls(text: str) -> str:
    if "," not in text:
        return options.client_url(text)
    if options.is_http(text):
        msg = f"{text!r}: the bridge takes one http(s):// URL (a comma-separated list is for brokers)"
        raise argparse.ArgumentTypeError(msg)
    return _broker_url_list(text)


def _changes(args: argparse.Namespace) -> KeyChanges:
    """The registry, changed as the OS user running this command (audited so)."""
    return KeyChanges(load_settings(getattr(args, "config", None), getattr(args, "keys", None)), cli_actor())


def _broker(args: argparse.Namespace) -> int:
    from radio import logs  # noqa: PLC0415
    from radio.broker.run import run, serve_mosquitto  # noqa: PLC0415 - the broker loads only for this command
    from radio.cli.up import broker_listeners  # noqa: PLC0415
    from radio.registry import LiveRegistry  # noqa: PLC0415

    settings = _settings(args)
    statelock.hold(settings.state_dir, "broker")  # before broker.db or mosquitto/ is touched
    listeners = {"mqtt": args.mqtt, "websocket": args.ws, "mqtts": args.mqtts, "wss": args.wss}
    ports.check_free("broker", broker_listeners(settings, args.engine, **listeners).values())
    logs.setup(verbose=args.verbose)
    registry = LiveRegistry(getattr(args, "config", None), getattr(args, "keys", None))
    tls = {"mqtts": args.mqtts, "wss": args.wss}
    if args.engine == "mosquitto":
        return serve_mosquitto(registry, mqtt=args.mqtt, websocket=args.ws, **tls)
    if args.engine == "nats":
        from radio.broker.nats import serve_nats  # noqa: PLC0415

        serve_nats(registry, args.nodes, mqtt=args.mqtt, websocket=args.ws)
    else:
        run(registry, mqtt=args.mqtt, websocket=args.ws, **tls)
    return 0


def _mosquitto_export(args: argparse.Namespace) -> int:
    from radio.broker.mosquitto import export  # noqa: PLC0415
    from radio.registry import Registry  # noqa: PLC0415

    settings = load_settings(getattr(args, "config", None), getattr(args, "keys", None))
    conf = export(
        settings,
        Registry.at_hand(settings),
        args.dir,
        mqtt=args.mqtt,
        websocket=args.ws,
        mqtts=args.mqtts,
        wss=args.wss,
    )
    print(f"Wrote {conf}, {conf.parent / 'passwd'} and {conf.parent / 'acl'}.", file=sys.stderr)
    print(f"Run: mosquitto -c {conf}", file=sys.stderr)
    print(
        f"After a key change: radio mosquitto export --dir {args.dir}, then kill -HUP <mosquitto pid>.",
        file=sys.stderr,
    )
    return 0


def _nats_export(args: argparse.Namespace) -> int:
    from radio.broker.nats_conf import export, plan  # noqa: PLC0415
    from radio.registry import Registry  # noqa: PLC0415

    settings = _settings(args)
    nodes = plan(settings, args.nodes, args.host, tls=True)
    paths = export(settings, Registry.at_hand(settings), args.dir, nodes)
    print(f"Wrote {', '.join(str(p) for p in paths)} and {args.dir / 'users.conf'}.", file=sys.stderr)
    for node, path in zip(nodes, paths, strict=True):
        print(f"On {node.host}: nats-server -c {path}", file=sys.stderr)
    print(
        f"After a key change: radio nats export --dir {args.dir} (same options), then kill -HUP each node.",
        file=sys.stderr,
    )
    return 0


def _whole(low: int, high: int) -> Callable[[str], int]:
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


def _seconds(low: float, high: float) -> Callable[[str], float]:
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


def _bridge(args: argparse.Namespace) -> int:
    from radio.bridge.serve import run  # noqa: PLC0415 - the bridge's dependencies load only for this command

    settings = _settings(args)
    statelock.hold(settings.state_dir, "bridge")  # before bridge.key or usage.db is touched
    run(
        getattr(args, "config", None),
        getattr(args, "keys", None),
        listen=args.listen,
        broker=args.broker,
        workers=args.workers,
        timeout=args.timeout,
        body_timeout=args.body_timeout,
        threads=args.threads,
    )
    return 0


def _recorder(args: argparse.Namespace) -> int:
    from radio import logs  # noqa: PLC0415
    from radio.recorder.run import run  # noqa: PLC0415 - loads paho only for this command

    statelock.hold(_settings(args).state_dir, "recorder")  # before history.db or recorder.key is touched
    logs.setup()
    run(getattr(args, "config", None), getattr(args, "keys", None), broker=args.broker)
    return 0


def _up(args: argparse.Namespace) -> int:
    from radio.cli.up import up  # noqa: PLC0415

    return up(
        getattr(args, "config", None),
        getattr(args, "keys", None),
        mqtt=args.mqtt,
        ws=args.ws,
        http=args.http,
        engine=args.engine,
        nodes=args.nodes,
        mqtts=args.mqtts,
        wss=args.wss,
    )


def _listen(args: argparse.Namespace) -> int:
    from radio.subscribers.cli import listen  # noqa: PLC0415 - a client: loads paho only for this command

    settings = _settings(args)
    secret = options.read_secret(args.key_file, required=False)
    preflight.check_read(settings, args.networks, secret)  # what Mosquitto would not say
    url = args.url or settings.broker.local_ws_url()
    http = args.http or _bridge_url(settings)
    return listen(args.networks, url, secret, since=args.since, http=http, ca=args.ca)


def _device_logging() -> Stop:
    from radio import logs  # noqa: PLC0415
    from radio.devices.run import stop_on_signals  # noqa: PLC0415

    logs.setup()
    return stop_on_signals()


def _traffic(args: argparse.Namespace) -> int:
    from radio.devices.run import traffic  # noqa: PLC0415

    settings = _settings(args)
    secret = options.read_secret(args.key_file, required=True)
    assert secret is not None  # noqa: S101 - required=True
    preflight.check_publish(settings, args.network, secret)  # what MQTT would not say
    via = args.via or ("http" if args.url and options.is_http(args.url) else "mqtt")
    if args.url and (via == "http") != options.is_http(args.url):
        wanted = "the bridge's http://HOST:PORT" if via == "http" else "a broker's mqtt:// or ws:// URL"
        msg = f"--via {via} takes {wanted}, not {args.url}"
        raise RadioError(msg)
    default = _bridge_url(settings) if via == "http" else settings.broker.local_url()
    traffic(
        network=args.network,
        secret=secret,
        url=args.url or default,
        via=via,
        period=args.period,
        speed=args.speed,
        size=args.size,
        seed=args.seed,
        stop=_device_logging(),
        ca=args.ca,
    )
    return 0


def _sensors(args: argparse.Namespace) -> int:
    from radio.devices.run import sensor_agents  # noqa: PLC0415

    settings = _settings(args)
    url = args.url or settings.broker.local_url()
    secret = options.read_secret(args.key_file, required=True)
    assert secret is not None  # noqa: S101 - required=True
    preflight.check_publish(settings, args.network, secret)  # what MQTT would not say
    sensor_agents(
        network=args.network,
        secret=secret,
        url=url,
        count=args.count,
        rate=args.rate,
        seed=args.seed,
        stop=_device_logging(),
        ca=args.ca,
    )
    return 0


def _keys_add(args: argparse.Namespace) -> int:
    changes = _changes(args)
    secret, key = changes.add(
        args.name,
        publish=split_names(args.publish),
        subscribe=split_names(args.subscribe),
        admin=args.admin,
        terms=_terms_changes(args),
    )
    print(secret, flush=True)
    print(
        f"Key {args.name!r} created (id {key.id}). "
        "Its secret (above) is shown only this once: store it now.\n"
        f"  MQTT: username {args.name!r}, password = the secret\n"
        "  HTTP: header 'API-KEY: <secret>' (or 'Authorization: Bearer <secret>')",
        file=sys.stderr,
    )
    _await_servers(changes)
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    settings = load_settings(getattr(args, "config", None), getattr(args, "keys", None))
    try:
        keys = load_keys(settings.keys_path)
    except MissingRegistry:
        print(
            f"No keys: {settings.keys_path} does not exist yet. "
            "Make one with: radio keys add NAME --publish NET",
            file=sys.stderr,
        )
        return 0
    if args.json:
        for key in sorted(keys.values(), key=lambda k: k.name):
            print(json.dumps(key_row(key)))
        return 0
    if not keys:
        print(
            f"No keys in {settings.keys_path}. Make one with: radio keys add NAME --publish NET",
            file=sys.stderr,
        )
        return 0
    # The LIMITS and EXPIRES columns appear once some key has a limit or an expiry.
    ordered = sorted(keys.values(), key=lambda k: k.name)
    limited = any(k.terms.rate is not None or k.terms.quota is not None for k in ordered)
    expiring = any(k.terms.expires is not None for k in ordered)
    rows: list[tuple[str, ...]] = [
        (
            "NAME",
            "PUBLISH",
            "SUBSCRIBE",
            *(("LIMITS",) * limited),
            *(("EXPIRES",) * expiring),
            "CREATED",
            "ID",
        )
    ]
    rows.extend(
        (k.name, *_rights(k), *((_limits(k),) * limited), *((_expiry(k),) * expiring), k.created, k.id)
        for k in ordered
    )
    _print_table(rows)
    return 0


def _limits(key: Key) -> str:
    """A key's rate and quota, as ``radio keys list`` shows them."""
    terms, parts = key.terms, []
    if terms.rate is not None:
        parts.append(f"rate {format_rate(terms.rate)} burst {terms.bucket}")
    if terms.quota is not None:
        parts.append(f"quota {terms.quota}/{terms.quota_period}")
    return ", ".join(parts) or "-"


def _expiry(key: Key) -> str:
    """When a key expires, and whether it has."""
    expires = key.terms.expires
    if expires is None:
        return "never"
    shown = expires.isoformat().replace("+00:00", "Z")
    return f"EXPIRED {shown}" if key.expired() else shown


CSV_COLUMNS: Final = ("kind", "day", "key", "door", "network", "reason", "samples", "bytes", "count")
"""The columns of ``radio keys usage --csv``: every kind of row in one table, blank where not set."""


def _keys_usage(args: argparse.Namespace) -> int:
    from radio import usage  # noqa: PLC0415

    settings = _settings(args)
    path = usage.usage_path(settings.state_dir)
    rows = usage_rows(settings, args.name, args.since)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if args.csv:
        writer = csv.DictWriter(sys.stdout, CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return 0
    if not rows:
        print(f"No usage recorded in {path}.", file=sys.stderr)
        return 0
    tables = (
        ("samples", ("DAY", "KEY", "DOOR", "NETWORK", "SAMPLES", "BYTES")),
        ("received", ("DAY", "KEY", "RECEIVED FROM", "SAMPLES", "BYTES")),
        ("refusals", ("DAY", "KEY", "DOOR", "REFUSED FOR", "COUNT")),
    )
    printed = False
    for kind, header in tables:
        chosen = [row for row in rows if row["kind"] == kind]
        if not chosen:
            continue
        if printed:
            print()
        fields = [name for name in CSV_COLUMNS[1:] if name in chosen[0]]
        _print_table([header, *(tuple(str(row[f]) for f in fields) for row in chosen)])
        printed = True
    return 0


def _changed(changed: object) -> str:
    """The fields an audited change set, as ``field=value`` pairs."""
    pairs = changed.items() if isinstance(changed, dict) else ()
    return " ".join(f"{field}={json.dumps(value)}" for field, value in pairs) or "-"


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(cells[i]) for cells in rows) for i in range(len(rows[0]))]
    for cells in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip())


def _rights(key: Key) -> tuple[str, str]:
    """A key's PUBLISH and SUBSCRIBE columns, as ``radio keys list`` shows them."""
    publish = "(admin: any topic)" if key.admin else ",".join(sorted(key.publish)) or "-"
    publish = "(every network)" if key.publish_all else publish
    subscribe = "(admin: any topic)" if key.admin else ",".join(sorted(key.subscribe)) or "-"
    subscribe = "(every network)" if key.read_all else subscribe
    return publish, subscribe


def _keys_edit(args: argparse.Namespace) -> int:
    terms = _terms_changes(args)
    if args.publish is None and args.subscribe is None and args.admin is None and not terms:
        options = ("--publish", "--subscribe", "--admin", "--no-admin", *(f"--{term}" for term in TERMS))
        print(f"radio: keys edit: {nothing_to_change(options)}", file=sys.stderr)
        return EXIT_REFUSED
    changes = _changes(args)
    key = changes.edit(
        args.name,
        publish=None if args.publish is None else split_names(args.publish),
        subscribe=None if args.subscribe is None else split_names(args.subscribe),
        admin=args.admin,
        terms=terms,
    )
    publish, subscribe = _rights(key)
    print(
        f"Key {key.name!r} (id {key.id}) now publishes to {publish} and reads {subscribe}; limits: "
        f"{_limits(key)}; expires: {_expiry(key)}. Its secret is unchanged.",
        file=sys.stderr,
    )
    _await_servers(changes)
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    changes = _changes(args)
    changes.revoke(args.name)
    print(
        f"Key {args.name!r} revoked: brokers and bridges refuse it and close its connections.",
        file=sys.stderr,
    )
    _await_servers(changes)
    return 0


def _keys_rotate(args: argparse.Namespace) -> int:
    changes = _changes(args)
    secret, _ = changes.rotate(args.name)
    print(secret, flush=True)
    print(
        f"Key {args.name!r} has a new secret (above), shown only this once. The old one stops working, "
        "and connections made with it are closed.",
        file=sys.stderr,
    )
    _await_servers(changes)
    return 0


def _await_servers(changes: KeyChanges) -> None:
    """Return once the running brokers and bridges have the change in force (bounded)."""
    print(changes.wait(CONFIRM_TIMEOUT).summary(), file=sys.stderr)


def _keys_audit(args: argparse.Namespace) -> int:
    from radio import audit  # noqa: PLC0415

    path = audit.audit_path(_settings(args).state_dir)
    lines = [line for line in audit.read(path) if args.name in (None, line.get("key"))]
    if args.json:
        for line in lines:
            print(json.dumps(line))
        return 0
    if not lines:
        print(f"No key changes recorded in {path}.", file=sys.stderr)
        return 0
    table: list[tuple[str, ...]] = [("TIME", "WHO", "VIA", "FROM", "ACTION", "KEY", "CHANGED")]
    table.extend(
        (
            str(line.get("time")),
            str(line.get("who")),
            str(line.get("via")),
            str(line.get("from")),
            str(line.get("action")),
            str(line.get("key")),
            _changed(line.get("changed")),
        )
        for line in lines
    )
    _print_table(table)
    return 0
