"""``radio mosquitto export``, ``radio nats export`` and ``radio certs dev``: files written to a folder.

Each writes, from the registry and the configuration, what a server needs to run: Mosquitto's or
a NATS cluster's configuration with its users, or a development CA and server certificate. Each
says on stderr what it wrote and how to use it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from radio.cli import options
from radio.cli.options import Parser


def _add_dir(parser: Parser) -> None:
    parser.add_argument("--dir", required=True, type=Path, help="the folder to write them to")


def add_mosquitto(commands: argparse._SubParsersAction[Parser], common: Parser) -> None:
    """``radio mosquitto export``: Mosquitto's files, for a Mosquitto Radio does not start."""
    mosquitto = commands.add_parser("mosquitto", parents=[common], help="Mosquitto as the production broker")
    mosquitto_commands = mosquitto.add_subparsers(title="actions", required=True, metavar="ACTION")
    export = mosquitto_commands.add_parser(
        "export", parents=[common], help="write mosquitto.conf, passwd and acl from the registry"
    )
    _add_dir(export)
    export.add_argument(
        "--mqtt", metavar="HOST:PORT", type=options.address, help="MQTT over TCP (default: config's)"
    )
    export.add_argument(
        "--ws", metavar="HOST:PORT", type=options.address, help="MQTT over WebSocket (default: config's)"
    )
    options.add_tls_listeners(export)
    export.set_defaults(handler=_mosquitto_export)


def add_nats(commands: argparse._SubParsersAction[Parser], common: Parser) -> None:
    """``radio nats export``: a NATS cluster's files, for nodes Radio does not start."""
    nats = commands.add_parser("nats", parents=[common], help="NATS as the distributed engine")
    actions = nats.add_subparsers(title="actions", required=True, metavar="ACTION")
    export = actions.add_parser(
        "export", parents=[common], help="write one configuration per node and users.conf from the registry"
    )
    _add_dir(export)
    export.add_argument("--nodes", type=options.nodes, default=3, help="how many nodes (default 3)")
    export.add_argument(
        "--host",
        action="append",
        default=[],
        type=options.host,
        metavar="NAME",
        help="where each node runs, once per node in order (default: all on this machine)",
    )
    export.set_defaults(handler=_nats_export)


def add_certs(commands: argparse._SubParsersAction[Parser], common: Parser) -> None:
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
    _add_dir(dev)
    dev.add_argument(
        "--host",
        action="append",
        type=options.host,
        metavar="NAME",
        help="a DNS name or IP address the certificate is for; repeat for more "
        "(default: localhost and 127.0.0.1)",
    )
    dev.set_defaults(handler=_certs_dev)


def _mosquitto_export(args: argparse.Namespace) -> int:
    from radio.broker.mosquitto import export  # noqa: PLC0415
    from radio.registry import Registry  # noqa: PLC0415

    settings = options.settings(args)
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

    settings = options.settings(args)
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
