"""``radio keys add|list|revoke|rotate|edit|usage|audit``: the key registry from the command line.

A command that hands out a secret prints it alone on stdout and talks to the human on stderr, so
``SECRET=$(radio keys add gen --publish a)`` works. A change returns once the running brokers and
bridges have it in force, or names those that have not confirmed it in time.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import TYPE_CHECKING, Final

from radio.cli import options
from radio.cli.options import EXIT_REFUSED, Parser
from radio.errors import MissingRegistry

if TYPE_CHECKING:
    from radio.key_changes import KeyChanges

# The registry (radio.keys, radio.key_changes) loads in the handlers: every command builds these
# parsers, and a server or client that never runs one need not load what they change.

_UNSET = object()
"""An option of ``keys edit`` that was not given: the key keeps that term."""

CSV_COLUMNS: Final = ("kind", "day", "key", "door", "network", "reason", "samples", "bytes", "count")
"""The columns of ``radio keys usage --csv``: every kind of row in one table, blank where not set."""


def add_keys(commands: argparse._SubParsersAction[Parser], common: Parser) -> None:
    """``radio keys add|list|revoke|rotate|edit|usage|audit``."""
    keys = commands.add_parser("keys", parents=[common], help="manage API keys")
    key_commands = keys.add_subparsers(title="key commands", required=True, metavar="ACTION")
    add = key_commands.add_parser("add", parents=[common], help="make a key; prints its secret once")
    add.add_argument(
        "name",
        metavar="NAME",
        help="the key's name, its MQTT username: 1 to 64 letters, digits, '_', '.' or '-'",
    )
    add.add_argument(
        "--publish", action="append", default=[], metavar="NET,...", help="networks it may publish to"
    )
    add.add_argument(
        "--subscribe", action="append", default=[], metavar="NET,...", help="networks it may read"
    )
    add.add_argument(
        "--admin", action="store_true", help="operator key: any topic, $SYS included; no --publish list"
    )
    _add_terms_options(add, clearing=False)
    add.set_defaults(handler=_keys_add)
    listing = key_commands.add_parser("list", parents=[common], help="list keys (never secrets)")
    listing.add_argument("--json", action="store_true", help="one JSON object per key")
    listing.set_defaults(handler=_keys_list)
    revoke = key_commands.add_parser(
        "revoke", parents=[common], help="delete a key; it stops working at once"
    )
    revoke.add_argument("name", metavar="NAME", help="the key to delete")
    revoke.set_defaults(handler=_keys_revoke)
    rotate = key_commands.add_parser("rotate", parents=[common], help="give a key a new secret")
    rotate.add_argument("name", metavar="NAME", help="the key to give a new secret")
    rotate.set_defaults(handler=_keys_rotate)
    edit = key_commands.add_parser(
        "edit", parents=[common], help="change a key's rights; its secret and id stay"
    )
    edit.add_argument("name", metavar="NAME", help="the key to change")
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
    _add_records(key_commands, common)


def _add_records(key_commands: argparse._SubParsersAction[Parser], common: Parser) -> None:
    """``radio keys usage`` and ``radio keys audit``: what the keys did, and what was done to them."""
    usage = key_commands.add_parser(
        "usage", parents=[common], help="samples and bytes published and received per key, network and day"
    )
    usage.add_argument("name", nargs="?", metavar="NAME", help="one key (default: every key)")
    usage.add_argument("--since", type=options.day, metavar="DATE", help="from this day on (YYYY-MM-DD, UTC)")
    shape = usage.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true", help="one JSON list of rows")
    shape.add_argument("--csv", action="store_true", help="one CSV table of every row")
    usage.set_defaults(handler=_keys_usage)
    audit = key_commands.add_parser(
        "audit", parents=[common], help="every change to the keys: who, what, when, from where"
    )
    audit.add_argument("name", nargs="?", metavar="NAME", help="one key's changes (default: every key's)")
    audit.add_argument("--json", action="store_true", help="the log's JSON lines as written")
    audit.set_defaults(handler=_keys_audit)


def _add_terms_options(parser: Parser, *, clearing: bool) -> None:
    """``--rate``, ``--burst``, ``--quota`` and ``--expires`` (docs/access.md)."""
    off = " ('off' removes it)" if clearing else ""
    never = ", or 'now' to end it at once" + (" ('never' removes it)" if clearing else "")
    default = _UNSET if clearing else None
    terms = (
        ("rate", "N/s", f"samples it may publish per second (or /min, /h), such as 5/s{off}"),
        ("burst", "N", "samples it may publish at once after a pause (default: one second's worth)"),
        ("quota", "N/day", f"samples it may publish per day or month (UTC), such as 10000/day{off}"),
        ("expires", "TIME", f"refused from this instant, such as 2026-12-31T00:00:00Z{never}"),
    )
    for name, metavar, help_text in terms:
        parser.add_argument(
            f"--{name}", type=options.term(name), default=default, metavar=metavar, help=help_text
        )


def _terms_changes(args: argparse.Namespace) -> dict[str, object]:
    """The terms ``keys add|edit`` was given, parsed (None: remove that term)."""
    from radio.key_changes import TERMS  # noqa: PLC0415 - see the imports

    return {name: value for name in TERMS if (value := getattr(args, name)) is not _UNSET}


def _changes(args: argparse.Namespace) -> KeyChanges:
    """The registry, changed as the OS user running this command (audited so)."""
    from radio.key_changes import KeyChanges, cli_actor  # noqa: PLC0415 - see the imports

    return KeyChanges(options.settings(args), cli_actor())


def _done(changes: KeyChanges, message: str, secret: str | None = None) -> int:
    """Say what changed (a new secret alone on stdout), then return once it is in force (bounded)."""
    from radio.key_changes import CONFIRM_TIMEOUT  # noqa: PLC0415 - see the imports

    if secret is not None:
        print(secret, flush=True)
    print(message, file=sys.stderr)
    print(changes.wait(CONFIRM_TIMEOUT).summary(), file=sys.stderr)
    return 0


def _keys_add(args: argparse.Namespace) -> int:
    from radio.cli.tables import expiry  # noqa: PLC0415 - see the imports
    from radio.key_changes import split_names  # noqa: PLC0415

    changes = _changes(args)
    secret, key = changes.add(
        args.name,
        publish=split_names(args.publish),
        subscribe=split_names(args.subscribe),
        admin=args.admin,
        terms=_terms_changes(args),
    )
    message = (
        f"Key {args.name!r} created (id {key.id}). "
        "Its secret (above) is shown only this once: store it now.\n"
        f"  MQTT: username {args.name!r}, password = the secret\n"
        "  HTTP: header 'API-KEY: <secret>' (or 'Authorization: Bearer <secret>')"
    )
    if key.expired():
        # Made as asked, and refused on every door from the start: a secret handed to a buyer
        # that never works must not look like any other new key's.
        message += (
            f"\n  It has already expired ({expiry(key)}): every door refuses it until "
            f"'radio keys edit {args.name} --expires <a later time>' (or 'never')."
        )
    return _done(changes, message, secret)


def _keys_list(args: argparse.Namespace) -> int:
    from radio.cli.tables import expiry, limits, print_table, rights  # noqa: PLC0415 - see the imports
    from radio.confirmations import holding_keys  # noqa: PLC0415
    from radio.key_changes import key_row  # noqa: PLC0415
    from radio.keys import load_keys  # noqa: PLC0415

    settings = options.settings(args)
    try:
        keys = load_keys(settings.keys_path)
    except MissingRegistry:
        if (server := holding_keys(settings.path, settings.keys_path)) is not None:
            print(
                f"No keys: {settings.keys_path} is missing, and {server} still holds the keys it had: "
                "restore the file from a backup",
                file=sys.stderr,
            )
            return 0
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
        (k.name, *rights(k), *((limits(k),) * limited), *((expiry(k),) * expiring), k.created, k.id)
        for k in ordered
    )
    print_table(rows)
    return 0


def _keys_usage(args: argparse.Namespace) -> int:
    from radio import usage  # noqa: PLC0415
    from radio.cli.tables import print_table  # noqa: PLC0415 - see the imports
    from radio.key_changes import usage_rows  # noqa: PLC0415

    settings = options.settings(args)
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
        whose = f" for key {args.name!r}" if args.name else ""
        since = f" since {args.since}" if args.since else ""
        print(f"No usage recorded{whose}{since} in {path}.", file=sys.stderr)
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
        print_table([header, *(tuple(str(row[f]) for f in fields) for row in chosen)])
        printed = True
    return 0


def _keys_edit(args: argparse.Namespace) -> int:
    from radio.cli.tables import expiry, limits, rights  # noqa: PLC0415 - see the imports
    from radio.key_changes import TERMS, nothing_to_change, split_names  # noqa: PLC0415

    terms = _terms_changes(args)
    if args.publish is None and args.subscribe is None and args.admin is None and not terms:
        given = ("--publish", "--subscribe", "--admin", "--no-admin", *(f"--{term}" for term in TERMS))
        print(f"radio: keys edit: {nothing_to_change(given)}", file=sys.stderr)
        return EXIT_REFUSED
    changes = _changes(args)
    key = changes.edit(
        args.name,
        publish=None if args.publish is None else split_names(args.publish),
        subscribe=None if args.subscribe is None else split_names(args.subscribe),
        admin=args.admin,
        terms=terms,
    )
    publish, subscribe = rights(key)
    return _done(
        changes,
        f"Key {key.name!r} (id {key.id}) now publishes to {publish} and reads {subscribe}; limits: "
        f"{limits(key)}; expires: {expiry(key)}. Its secret is unchanged.",
    )


def _keys_revoke(args: argparse.Namespace) -> int:
    changes = _changes(args)
    changes.revoke(args.name)
    return _done(
        changes, f"Key {args.name!r} revoked: brokers and bridges refuse it and close its connections."
    )


def _keys_rotate(args: argparse.Namespace) -> int:
    changes = _changes(args)
    secret, _ = changes.rotate(args.name)
    return _done(
        changes,
        f"Key {args.name!r} has a new secret (above), shown only this once. The old one stops working, "
        "and connections made with it are closed.",
        secret,
    )


def _keys_audit(args: argparse.Namespace) -> int:
    from radio import audit  # noqa: PLC0415
    from radio.cli.tables import changed, print_table  # noqa: PLC0415 - see the imports

    path = audit.audit_path(options.settings(args).state_dir)
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
            changed(line.get("changed")),
        )
        for line in lines
    )
    print_table(table)
    return 0
