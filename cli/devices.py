"""``radio listen`` and ``radio device traffic|sensors``: the clients, a listener and the generators.

Each reads its key from a file or the environment, never the command line (``cli.options``), and
checks first what a broker would not say (``cli.preflight``): a key that lacks the right, a network
that does not exist.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from radio.cli import options
from radio.cli.options import Parser
from radio.errors import RadioError
from radio.urls import DEFAULT_MQTT_VERSION, parse_urls

if TYPE_CHECKING:
    from radio.config import Settings
    from radio.stopping import Stop

# The preflight checks read the key registry: loaded when a client command runs, not to build its parser.


def add_listen(commands: argparse._SubParsersAction[Parser], common: Parser) -> None:
    """``radio listen``."""
    listen = commands.add_parser(
        "listen", parents=[common], help="print the samples of networks, one JSON line each"
    )
    listen.add_argument(
        "networks",
        nargs="+",
        metavar="NETWORK",
        type=options.network,
        help="a network to print the samples of",
    )
    listen.add_argument(
        "--url",
        type=options.broker_urls,
        help="ws://HOST:PORT/mqtt (default: the configuration's), mqtt://HOST:PORT, or wss:// and mqtts://; "
        "several, comma-separated, to fail over between",
    )
    listen.add_argument(
        "--since",
        metavar="SEQ",
        type=options.sequence_number,
        help="first replay the history after sample number SEQ (from the bridge), then go on live",
    )
    listen.add_argument(
        "--http",
        metavar="URL",
        type=options.http_url,
        help="the bridge, whose history gives each sample its seq and --since its replay "
        "(default: the configuration's [bridge] listen; https:// with [tls])",
    )
    options.add_key_options(listen, "a key that may read the networks (default: anonymous)")
    options.add_ca(listen)
    options.add_mqtt_version(listen)
    listen.set_defaults(handler=_listen)


def add_device(commands: argparse._SubParsersAction[Parser], common: Parser) -> None:
    """``radio device traffic|sensors``."""
    device = commands.add_parser("device", parents=[common], help="run a data generator")
    devices = device.add_subparsers(title="generators", required=True, metavar="GENERATOR")
    traffic = devices.add_parser("traffic", parents=[common], help="the traffic simulator")
    traffic.add_argument(
        "--network", required=True, type=options.network, help="the network it publishes to (required)"
    )
    options.add_key_options(traffic, "a key that may publish to the network")
    options.add_ca(traffic)
    options.add_mqtt_version(traffic)
    traffic.add_argument(
        "--period",
        type=options.period,
        default=1.0,
        help="seconds between samples (default 1; 0.001 to 86400)",
    )
    traffic.add_argument(
        "--via",
        choices=["mqtt", "http"],
        help="publish over MQTT or the bridge (default: http if --url is http://, else mqtt)",
    )
    traffic.add_argument(
        "--url",
        type=options.client_urls,
        help="broker (mqtt[s]://, ws[s]://; several, comma-separated, to fail over between) "
        "or bridge (http[s]://) URL; default: the config's",
    )
    traffic.add_argument(
        "--speed", type=options.speed, default=10, help="simulated seconds per sample (default 10)"
    )
    traffic.add_argument(
        "--size", type=options.size, default=(3, 3), metavar="ROWSxCOLUMNS", help="the town's grid"
    )
    traffic.add_argument("--seed", type=int, help="for a reproducible run")
    traffic.set_defaults(handler=_traffic)
    sensors = devices.add_parser("sensors", parents=[common], help="many simulated sensors with last wills")
    sensors.add_argument(
        "--network", required=True, type=options.network, help="the network they publish to (required)"
    )
    options.add_key_options(sensors, "a key that may publish to the network")
    options.add_ca(sensors)
    options.add_mqtt_version(sensors)
    sensors.add_argument("--count", type=options.positive_whole, default=100, help="sensors (default 100)")
    sensors.add_argument(
        "--rate", type=options.rate, default=1.0, help="readings per second per sensor (1/86400 to 1000)"
    )
    sensors.add_argument(
        "--url",
        type=options.broker_urls,
        help="broker URL, or several comma-separated to fail over between (default: the config's MQTT)",
    )
    sensors.add_argument("--seed", type=int, help="for a reproducible run")
    sensors.set_defaults(handler=_sensors)


def bridge_url(settings: Settings) -> str:
    """Where a client on this machine reaches the bridge: HTTPS when the configuration has [tls]."""
    return f"{'https' if settings.tls is not None else 'http'}://{settings.bridge.listen.local()}"


def _configured(url: str, settings: Settings) -> str:
    """A broker URL from the configuration, once a client can follow it.

    A listener configured on port 0 (any free port, as ``radio up --mqtt 127.0.0.1:0`` leaves
    ``radio.toml``) names no server: only that server's banner says where it is. Followed as the
    default port instead, it would reach whatever else listens there, with the key's secret.
    """
    try:
        parse_urls(url)
    except ValueError as exc:
        msg = f"{exc}: {settings.path} leaves the port to the system; give --url with the port it took"
        raise RadioError(msg) from None
    return url


def _listen(args: argparse.Namespace) -> int:
    from radio.cli import preflight  # noqa: PLC0415 - see the imports
    from radio.subscribers.run import listen  # noqa: PLC0415 - a client: loads paho only for this command

    settings = options.settings(args)
    trust = options.trust(args, settings)
    secret = options.read_secret(args.key_file, required=False)

    def check_rights() -> None:  # what Mosquitto would not say, asked again at every reconnect
        preflight.check_read(settings, args.networks, secret)

    check_rights()
    url = args.url or _configured(settings.broker.local_ws_url(), settings)
    http = args.http or bridge_url(settings)
    return listen(
        args.networks,
        url,
        secret,
        since=args.since,
        http=http,
        trust=trust,
        version=args.mqtt_version,
        check_rights=check_rights,
    )


def _publisher(args: argparse.Namespace) -> tuple[Settings, str]:
    """The configuration and the publishing key of a generator, checked as MQTT would not."""
    from radio.cli import preflight  # noqa: PLC0415 - see the imports

    settings = options.settings(args)
    secret = options.read_secret(args.key_file, required=True)
    assert secret is not None  # noqa: S101 - required=True
    preflight.check_publish(settings, args.network, secret)  # what MQTT would not say
    return settings, secret


def _device_logging() -> Stop:
    from radio import logs  # noqa: PLC0415
    from radio.devices.run import stop_on_signals  # noqa: PLC0415

    logs.setup()
    return stop_on_signals()


def _traffic(args: argparse.Namespace) -> int:
    from radio.devices.run import traffic  # noqa: PLC0415

    settings, secret = _publisher(args)
    trust = options.trust(args, settings)
    via = args.via or ("http" if args.url and options.is_http(args.url) else "mqtt")
    if args.url and (via == "http") != options.is_http(args.url):
        wanted = "the bridge's http://HOST:PORT" if via == "http" else "a broker's mqtt:// or ws:// URL"
        msg = f"--via {via} takes {wanted}, not {args.url}"
        raise RadioError(msg)
    if via == "http" and args.mqtt_version != DEFAULT_MQTT_VERSION:
        msg = (
            f"--mqtt-version {args.mqtt_version} is for MQTT: the bridge (--via http) is spoken to over HTTP"
        )
        raise RadioError(msg)
    url = args.url or (
        bridge_url(settings) if via == "http" else _configured(settings.broker.local_url(), settings)
    )
    traffic(
        network=args.network,
        secret=secret,
        url=url,
        via=via,
        period=args.period,
        speed=args.speed,
        size=args.size,
        seed=args.seed,
        stop=_device_logging(),
        trust=trust,
        version=args.mqtt_version,
    )
    return 0


def _sensors(args: argparse.Namespace) -> int:
    from radio.devices.run import sensor_agents  # noqa: PLC0415

    settings, secret = _publisher(args)
    trust = options.trust(args, settings)
    sensor_agents(
        network=args.network,
        secret=secret,
        url=args.url or _configured(settings.broker.local_url(), settings),
        count=args.count,
        rate=args.rate,
        seed=args.seed,
        stop=_device_logging(),
        trust=trust,
        version=args.mqtt_version,
    )
    return 0
