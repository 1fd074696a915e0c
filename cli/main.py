"""The ``radio`` command: each part of the platform, and the key registry.

Every subcommand finds its configuration by one rule (``CONFIG_RULE``) and takes ``--config`` and
``--keys``. Anything Radio refuses (a bad option, a bad configuration, an unknown key, a port in
use) is one line on stderr and exit status 2, never a traceback, and leaves no lock of a part
behind (``radio.statelock.give_back``). Commands that hand out a secret
print it alone on stdout and talk to the human on stderr, so ``SECRET=$(radio keys add gen
--publish a)`` works; commands that need one never take it as an argument (``cli.options``).

This module assembles the parser from the command families (``cli.servers``, ``cli.exports``,
``cli.devices``, ``cli.health``, ``cli.keys``) in the order ``radio --help`` lists them, and dispatches.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from radio import __version__, statelock
from radio.cli import devices, exports, health, keys, servers
from radio.cli.options import CONFIG_RULE, EXIT_REFUSED, Parser
from radio.errors import RadioError

COMMANDS: tuple[Callable[[argparse._SubParsersAction[Parser], Parser], None], ...] = (
    servers.add_broker,
    exports.add_mosquitto,
    exports.add_nats,
    servers.add_bridge,
    servers.add_recorder,
    servers.add_up,
    devices.add_listen,
    devices.add_device,
    exports.add_certs,
    health.add_command,
    keys.add_keys,
)
"""Each command's parser, in the order ``radio --help`` lists them."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``radio`` console script."""
    from radio.cli.parent import follow_parent  # noqa: PLC0415

    follow_parent()
    try:
        parser = _parser()
        args, extra = parser.parse_known_args(argv)
        if extra:  # named by the command they were given to, not by `radio`
            args.parser.error(f"unrecognized arguments: {' '.join(extra)}")
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except RadioError as exc:
        statelock.give_back()
        print(f"radio: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except SystemExit as exc:  # a refusal said already (radio up's part said it, in one line)
        if exc.code == EXIT_REFUSED:
            statelock.give_back()
        raise
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # The reader of stdout went away (`radio keys list | head -1`): a normal end, not a traceback.
        # Nothing more can be written; without this, the exit's final flush fails again (status 120).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
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
    for add in COMMANDS:
        add(commands, common)
    parser.set_defaults(parser=parser)
    parsers = [parser]
    while parsers:  # each command's own parser, to say what it does not take
        for action in parsers.pop()._actions:
            if isinstance(action, argparse._SubParsersAction):
                for command in action.choices.values():
                    command.set_defaults(parser=command)
                    parsers.append(command)
    return parser
