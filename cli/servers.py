"""``radio broker``, ``radio bridge``, ``radio recorder`` and ``radio up``: the servers.

Each takes its state folder's lock before it touches a state file, so two of the same kind never
share one; each loads its part (and that part's dependencies) only when it is the command run.
"""

from __future__ import annotations

import argparse
from typing import Final

from radio import statelock
from radio.cli import options
from radio.cli.options import CONFIG_RULE, Parser
from radio.errors import RadioError

ENGINES: Final = ("embedded", "mosquitto", "nats")
ENGINE_HELP: Final = (
    "embedded (Radio's own broker, in this process; the default), mosquitto (installed separately) "
    "or nats (a local cluster: pip install 'radio-broadcast[nats]')"
)
DEFAULT_NODES: Final = 3
NODES_HELP: Final = f"with --engine nats: how many nodes in the local cluster (default {DEFAULT_NODES})"
BROKERS_HELP: Final = (
    "the broker, or several to fail over between, comma-separated (default: the config's MQTT)"
)


def add_broker(commands: argparse._SubParsersAction[Parser], common: Parser) -> None:
    """``radio broker``."""
    broker = commands.add_parser(
        "broker",
        parents=[common],
        help="run the MQTT broker (TCP and WebSocket): embedded, Mosquitto or a NATS cluster",
    )
    broker.add_argument(
        "--mqtt", metavar="HOST:PORT", type=options.address, help="MQTT over TCP (port 0: any free)"
    )
    broker.add_argument(
        "--ws", metavar="HOST:PORT", type=options.address, help="MQTT over WebSocket, path /mqtt"
    )
    options.add_tls_listeners(broker)
    broker.add_argument("--engine", choices=ENGINES, default="embedded", help=ENGINE_HELP)
    broker.add_argument("--nodes", type=options.nodes, help=NODES_HELP)
    broker.add_argument(
        "-v", "--verbose", action="store_true", help="also log each subscription granted or refused, and why"
    )
    broker.set_defaults(handler=_broker)


def add_bridge(commands: argparse._SubParsersAction[Parser], common: Parser) -> None:
    """``radio bridge``."""
    bridge = commands.add_parser("bridge", parents=[common], help="run the HTTP bridge (POST /publish)")
    bridge.add_argument(
        "--listen", metavar="HOST:PORT", type=options.address, help="where to serve HTTP (port 0: any)"
    )
    bridge.add_argument(
        "--broker", metavar="mqtt://HOST:PORT[,...]", type=options.broker_addresses, help=BROKERS_HELP
    )
    bridge.add_argument(
        "--workers",
        type=options.whole(1, 64),
        default=2,
        help="worker processes, one broker link each (1 to 64, default 2)",
    )
    bridge.add_argument(
        "--threads",
        type=options.whole(1, 256),
        default=16,
        help="threads per worker for every route but POST /publish, which runs on the event loop "
        "(1 to 256, default 16)",
    )
    bridge.add_argument(
        "--timeout",
        type=options.seconds(0.1, 3600),
        default=5.0,
        help="seconds to wait for the broker's PUBACK (0.1 to 3600, default 5)",
    )
    bridge.add_argument(
        "--body-timeout",
        type=options.seconds(0.1, 3600),
        help="seconds for a request's body to arrive, else 408 (default: [bridge] body_timeout, 10)",
    )
    bridge.set_defaults(handler=_bridge)


def add_recorder(commands: argparse._SubParsersAction[Parser], common: Parser) -> None:
    """``radio recorder``."""
    recorder = commands.add_parser(
        "recorder",
        parents=[common],
        help="number and keep every network's latest samples (history.db beside the configuration)",
    )
    recorder.add_argument(
        "--broker", metavar="mqtt://HOST:PORT[,...]", type=options.broker_addresses, help=BROKERS_HELP
    )
    recorder.set_defaults(handler=_recorder)


def add_up(commands: argparse._SubParsersAction[Parser], common: Parser) -> None:
    """``radio up``."""
    up = commands.add_parser(
        "up",
        parents=[common],
        help="run the whole platform: broker, bridge and the demo traffic simulator",
        description="Run the whole platform until Ctrl-C, SIGTERM or SIGHUP; nothing outlives it. "
        "Without a configuration file it writes ./radio.toml (the defaults) and keeps its state "
        "beside it, where every other radio command run in this folder finds it.",
        epilog=CONFIG_RULE,
    )
    up.add_argument(
        "--mqtt", metavar="HOST:PORT", type=options.address, help="MQTT over TCP (port 0: any free)"
    )
    up.add_argument("--ws", metavar="HOST:PORT", type=options.address, help="MQTT over WebSocket")
    options.add_tls_listeners(up)
    up.add_argument("--http", metavar="HOST:PORT", type=options.address, help="the HTTP bridge")
    up.add_argument("--engine", choices=ENGINES, default="embedded", help=ENGINE_HELP)
    up.add_argument("--nodes", type=options.nodes, help=NODES_HELP)
    up.set_defaults(handler=_up)


def _engine_options(args: argparse.Namespace) -> int:
    """The number of nodes; an option the chosen engine would not honour is refused, not ignored."""
    if args.engine != "nats":
        if args.nodes is not None:
            raise RadioError(f"--nodes is for --engine nats, not --engine {args.engine}")
        return DEFAULT_NODES
    if given := [f"--{name}" for name in ("mqtts", "wss") if getattr(args, name) is not None]:
        raise RadioError(
            f"{' and '.join(given)}: the local cluster of --engine nats serves plain listeners only; "
            "TLS is for the nodes 'radio nats export' writes"
        )
    return DEFAULT_NODES if args.nodes is None else int(args.nodes)


def _broker(args: argparse.Namespace) -> int:
    from radio import logs, openfiles, ports  # noqa: PLC0415
    from radio.broker.run import Listeners, run, serve_mosquitto  # noqa: PLC0415 - the broker loads only for this command
    from radio.cli.up import broker_listeners  # noqa: PLC0415
    from radio.registry import LiveRegistry  # noqa: PLC0415

    nodes = _engine_options(args)
    settings = options.settings(args)
    statelock.hold(settings.state_dir, "broker")  # before broker.db or mosquitto/ is touched
    listeners: Listeners = {"mqtt": args.mqtt, "websocket": args.ws, "mqtts": args.mqtts, "wss": args.wss}
    ports.check_free("broker", broker_listeners(settings, args.engine, nodes=nodes, **listeners).values())
    logs.setup(verbose=args.verbose)
    openfiles.check(settings.broker.max_connections)  # before any engine starts: Mosquitto inherits it
    registry = LiveRegistry(getattr(args, "config", None), getattr(args, "keys", None))
    if args.engine == "mosquitto":
        return serve_mosquitto(registry, **listeners)
    if args.engine == "nats":
        from radio.broker.nats import serve_nats  # noqa: PLC0415

        return serve_nats(registry, nodes, mqtt=args.mqtt, websocket=args.ws)
    run(registry, **listeners)
    return 0


def _bridge(args: argparse.Namespace) -> int:
    from radio import openfiles  # noqa: PLC0415
    from radio.bridge.run import run  # noqa: PLC0415 - the bridge's dependencies load only for this command

    settings = options.settings(args)
    statelock.hold(settings.state_dir, "bridge")  # before bridge.key or usage.db is touched
    openfiles.raise_soft_limit()  # each HTTP connection is an open file, as each MQTT one is the broker's
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

    statelock.hold(
        options.settings(args).state_dir, "recorder"
    )  # before history.db or recorder.key is touched
    logs.setup()
    run(getattr(args, "config", None), getattr(args, "keys", None), broker=args.broker)
    return 0


def _up(args: argparse.Namespace) -> int:
    from radio.cli.up import up  # noqa: PLC0415

    nodes = _engine_options(args)
    return up(
        getattr(args, "config", None),
        getattr(args, "keys", None),
        mqtt=args.mqtt,
        ws=args.ws,
        http=args.http,
        engine=args.engine,
        nodes=nodes,
        mqtts=args.mqtts,
        wss=args.wss,
    )
