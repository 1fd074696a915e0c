"""The ``radio`` command: each part of the platform, and the key registry.

Every subcommand takes ``--config`` and ``--keys``. Anything Radio refuses (a bad configuration,
an unknown key, a port in use) is one line on stderr and exit status 2, never a traceback.
Commands that hand out a secret print it alone on stdout and talk to the human on stderr, so
``SECRET=$(radio keys add gen --publish a)`` works.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from radio import __version__
from radio.config import Address, Settings, load_settings
from radio.errors import RadioError
from radio.keys import KeyStore, read_keys

EXIT_REFUSED = 2
ENGINES = ("embedded", "mosquitto")
ENGINE_HELP = "embedded (amqtt, in this process; the default) or mosquitto (installed separately)"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``radio`` console script."""
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
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="configuration file (default: $RADIO_CONFIG, else ./radio.toml)",
    )
    common.add_argument(
        "--keys",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="key registry (default: $RADIO_KEYS, else keys.toml beside the configuration)",
    )
    parser = argparse.ArgumentParser(
        prog="radio", description="Radio: a broadcast platform for live data.", parents=[common]
    )
    parser.add_argument("--version", action="version", version=f"radio {__version__}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    broker = commands.add_parser(
        "broker", parents=[common], help="run the MQTT broker (TCP and WebSocket): embedded, or Mosquitto"
    )
    broker.add_argument("--mqtt", metavar="HOST:PORT", type=_address, help="MQTT over TCP (port 0: any free)")
    broker.add_argument("--ws", metavar="HOST:PORT", type=_address, help="MQTT over WebSocket, path /mqtt")
    broker.add_argument("--engine", choices=ENGINES, default="embedded", help=ENGINE_HELP)
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
    export.set_defaults(handler=_mosquitto_export)

    bridge = commands.add_parser("bridge", parents=[common], help="run the HTTP bridge (POST /publish)")
    bridge.add_argument(
        "--listen", metavar="HOST:PORT", type=_address, help="where to serve HTTP (port 0: any)"
    )
    bridge.add_argument(
        "--broker",
        metavar="mqtt://HOST:PORT",
        type=_broker_url,
        help="the broker (default: the config's MQTT)",
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
        help="requests per worker handled at once (1 to 256, default 16)",
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

    _add_platform_commands(commands, common)

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
    return parser


def _add_platform_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """``radio up``, ``radio listen`` and ``radio device ...``."""
    up = commands.add_parser(
        "up", parents=[common], help="run the whole platform: broker, bridge and the demo traffic simulator"
    )
    up.add_argument("--mqtt", metavar="HOST:PORT", type=_address, help="MQTT over TCP (port 0: any free)")
    up.add_argument("--ws", metavar="HOST:PORT", type=_address, help="MQTT over WebSocket")
    up.add_argument("--http", metavar="HOST:PORT", type=_address, help="the HTTP bridge")
    up.add_argument("--engine", choices=ENGINES, default="embedded", help=ENGINE_HELP)
    up.set_defaults(handler=_up)

    listen = commands.add_parser(
        "listen", parents=[common], help="print the samples of networks, one JSON line each"
    )
    listen.add_argument("networks", nargs="+", metavar="NETWORK")
    listen.add_argument(
        "--url", help="ws://HOST:PORT/mqtt (default: the configuration's) or mqtt://HOST:PORT"
    )
    listen.add_argument(
        "--key", metavar="SECRET", help="a key that may read the networks (default: anonymous)"
    )
    listen.set_defaults(handler=_listen)

    device = commands.add_parser("device", parents=[common], help="run a data generator")
    devices = device.add_subparsers(title="generators", required=True, metavar="GENERATOR")
    traffic = devices.add_parser("traffic", parents=[common], help="the traffic simulator")
    traffic.add_argument("--network", required=True)
    traffic.add_argument(
        "--key", metavar="SECRET", required=True, help="a key that may publish to the network"
    )
    traffic.add_argument("--period", type=float, default=1.0, help="seconds between samples (default 1)")
    traffic.add_argument(
        "--via", choices=["mqtt", "http"], default="mqtt", help="publish over MQTT or the bridge"
    )
    traffic.add_argument(
        "--url", help="broker (mqtt://, ws://) or bridge (http://) URL; default: the config's"
    )
    traffic.add_argument("--speed", type=int, default=10, help="simulated seconds per sample (default 10)")
    traffic.add_argument("--size", type=_size, default=(3, 3), metavar="ROWSxCOLUMNS", help="the town's grid")
    traffic.add_argument("--seed", type=int, help="for a reproducible run")
    traffic.set_defaults(handler=_traffic)
    sensors = devices.add_parser("sensors", parents=[common], help="many simulated sensors with last wills")
    sensors.add_argument("--network", required=True)
    sensors.add_argument(
        "--key", metavar="SECRET", required=True, help="a key that may publish to the network"
    )
    sensors.add_argument("--count", type=int, default=100)
    sensors.add_argument("--rate", type=float, default=1.0, help="readings per second per sensor")
    sensors.add_argument("--url", help="broker URL (default: the configuration's MQTT)")
    sensors.add_argument("--seed", type=int)
    sensors.set_defaults(handler=_sensors)


def _address(text: str) -> Address:
    try:
        return Address.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _size(text: str) -> tuple[int, int]:
    rows, _, columns = text.lower().partition("x")
    if not (rows.isdigit() and columns.isdigit()) or int(rows) * int(columns) < 2:
        msg = f"{text!r} is not ROWSxCOLUMNS (say 3x3)"
        raise argparse.ArgumentTypeError(msg)
    return int(rows), int(columns)


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(getattr(args, "config", None), getattr(args, "keys", None))


def _broker_url(text: str) -> Address:
    try:
        return Address.parse_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _names(values: list[str]) -> list[str]:
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def _store(args: argparse.Namespace) -> KeyStore:
    settings = load_settings(getattr(args, "config", None), getattr(args, "keys", None))
    return KeyStore(settings.keys_path, settings.networks)


def _broker(args: argparse.Namespace) -> int:
    from radio import logs  # noqa: PLC0415
    from radio.broker.run import serve, serve_mosquitto  # noqa: PLC0415 - the broker loads only for this command
    from radio.registry import LiveRegistry  # noqa: PLC0415

    logs.setup(verbose=args.verbose)
    registry = LiveRegistry(getattr(args, "config", None), getattr(args, "keys", None))
    if args.engine == "mosquitto":
        serve_mosquitto(registry, mqtt=args.mqtt, websocket=args.ws)
    else:
        asyncio.run(serve(registry, mqtt=args.mqtt, websocket=args.ws))
    return 0


def _mosquitto_export(args: argparse.Namespace) -> int:
    from radio.broker.mosquitto import export  # noqa: PLC0415
    from radio.registry import Registry  # noqa: PLC0415

    settings = load_settings(getattr(args, "config", None), getattr(args, "keys", None))
    conf = export(settings, Registry.from_settings(settings), args.dir, mqtt=args.mqtt, websocket=args.ws)
    print(f"Wrote {conf}, {conf.parent / 'passwd'} and {conf.parent / 'acl'}.", file=sys.stderr)
    print(f"Run: mosquitto -c {conf}", file=sys.stderr)
    print(
        f"After a key change: radio mosquitto export --dir {args.dir}, then kill -HUP <mosquitto pid>.",
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


def _up(args: argparse.Namespace) -> int:
    from radio.cli.up import up  # noqa: PLC0415

    return up(
        getattr(args, "config", None),
        getattr(args, "keys", None),
        mqtt=args.mqtt,
        ws=args.ws,
        http=args.http,
        engine=args.engine,
    )


def _listen(args: argparse.Namespace) -> int:
    from radio.subscribers.cli import listen  # noqa: PLC0415 - a client: loads paho only for this command

    url = args.url or f"ws://{_settings(args).broker.websocket.local()}/mqtt"
    return listen(args.networks, url, args.key)


def _device_logging() -> threading.Event:
    from radio import logs  # noqa: PLC0415
    from radio.devices.run import stop_on_signals  # noqa: PLC0415

    logs.setup()
    return stop_on_signals()


def _traffic(args: argparse.Namespace) -> int:
    from radio.devices.run import traffic  # noqa: PLC0415

    settings = _settings(args)
    default = (
        f"http://{settings.bridge.listen.local()}"
        if args.via == "http"
        else f"mqtt://{settings.broker.mqtt.local()}"
    )
    traffic(
        network=args.network,
        secret=args.key,
        url=args.url or default,
        via=args.via,
        period=args.period,
        speed=args.speed,
        size=args.size,
        seed=args.seed,
        stop=_device_logging(),
    )
    return 0


def _sensors(args: argparse.Namespace) -> int:
    from radio.devices.run import sensor_agents  # noqa: PLC0415

    url = args.url or f"mqtt://{_settings(args).broker.mqtt.local()}"
    sensor_agents(
        network=args.network,
        secret=args.key,
        url=url,
        count=args.count,
        rate=args.rate,
        seed=args.seed,
        stop=_device_logging(),
    )
    return 0


def _keys_add(args: argparse.Namespace) -> int:
    store = _store(args)
    secret = store.add(
        args.name, publish=_names(args.publish), subscribe=_names(args.subscribe), admin=args.admin
    )
    print(secret)
    print(
        f"Key {args.name!r} created. Its secret (above) is shown only this once: store it now.\n"
        f"  MQTT: username {args.name!r}, password = the secret\n"
        "  HTTP: header 'API-KEY: <secret>' (or 'Authorization: Bearer <secret>')",
        file=sys.stderr,
    )
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    settings = load_settings(getattr(args, "config", None), getattr(args, "keys", None))
    keys = read_keys(settings.keys_path)
    if args.json:
        for key in sorted(keys.values(), key=lambda k: k.name):
            row: dict[str, object] = {
                "name": key.name,
                "admin": key.admin,
                "publish": sorted(key.publish),
                "subscribe": sorted(key.subscribe),
                "created": key.created,
            }
            print(json.dumps(row))
        return 0
    if not keys:
        print(
            f"No keys in {settings.keys_path}. Make one with: radio keys add NAME --publish NET",
            file=sys.stderr,
        )
        return 0
    rows: list[tuple[str, ...]] = [("NAME", "PUBLISH", "SUBSCRIBE", "CREATED")]
    for key in sorted(keys.values(), key=lambda k: k.name):
        publish = "(admin: any topic)" if key.admin else ",".join(sorted(key.publish)) or "-"
        publish = "(every network)" if key.publish_all else publish
        subscribe = "(admin: any topic)" if key.admin else ",".join(sorted(key.subscribe)) or "-"
        rows.append((key.name, publish, subscribe, key.created))
    widths = [max(len(cells[i]) for cells in rows) for i in range(len(rows[0]))]
    for cells in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip())
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    _store(args).revoke(args.name)
    print(
        f"Key {args.name!r} revoked: running brokers and bridges refuse it within 2 seconds "
        "and close its connections.",
        file=sys.stderr,
    )
    return 0


def _keys_rotate(args: argparse.Namespace) -> int:
    secret = _store(args).rotate(args.name)
    print(secret)
    print(
        f"Key {args.name!r} has a new secret (above), shown only this once. The old one stops working "
        "within 2 seconds, and connections made with it are closed.",
        file=sys.stderr,
    )
    return 0
