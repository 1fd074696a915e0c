"""Reading the key registry file: all of it or none of it.

A missing, emptied or mistyped file is refused as a whole (docs/registry.md), because reading it
as "fewer keys" or "more rights" would close or open doors by accident.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from radio import files
from radio.errors import KeyStoreError, MissingRegistry, UnreadableRegistry, reason
from radio.keys.model import Key
from radio.toml_values import shown, table


def parse_keys(text: str, path: Path) -> dict[str, Key]:
    """Every key in the text of a keys file; any problem refuses the whole file, naming it.

    An empty text is refused: a truncated file must not read as a registry without keys. A
    registry with no keys says so, with an empty ``[keys]`` table.
    """
    empty = (
        "the key registry is empty (a registry without keys is an empty [keys] table, "
        "as 'radio keys' writes it)"
    )
    data = table(text, path, UnreadableRegistry, empty)
    try:
        return _keys_from(data)
    except KeyStoreError as exc:
        msg = f"{path}: {exc}"
        raise UnreadableRegistry(msg) from None


def _keys_from(data: dict[str, Any]) -> dict[str, Key]:
    unknown = sorted(set(data) - {"keys"})
    if unknown:
        msg = f"unknown table or setting {unknown[0]!r} (a key registry holds only [keys.NAME] tables)"
        raise KeyStoreError(msg)
    if "keys" not in data:
        msg = "no [keys] table (a registry without keys is an empty [keys] table)"
        raise KeyStoreError(msg)
    tables = data["keys"]
    if not isinstance(tables, dict):
        msg = f"[keys] must be a table of keys, such as [keys.gen], not {shown(tables)}"
        raise KeyStoreError(msg)
    keys = {name: Key.from_toml(name, table) for name, table in tables.items()}
    for attribute, what in (("id", "id"), ("digest", "secret_sha256")):
        seen: dict[str, str] = {}
        for key in keys.values():
            value = getattr(key, attribute)
            if value in seen:
                msg = f"keys {seen[value]!r} and {key.name!r} have the same {what}: each key needs its own"
                raise KeyStoreError(msg)
            seen[value] = key.name
    return keys


def load_keys(path: Path) -> dict[str, Key]:
    """Every key in the registry file, which must exist: a missing file is an error, not "no keys"."""
    try:
        text = files.read_text(path)
    except FileNotFoundError:
        msg = f"{path}: no key registry (the file is missing; on a fresh machine 'radio keys add' makes it)"
        raise MissingRegistry(msg) from None
    except (OSError, UnicodeDecodeError) as exc:
        msg = f"{path}: cannot read the key registry: {reason(exc)}"
        raise UnreadableRegistry(msg) from None
    return parse_keys(text, path)


def read_keys(path: Path) -> dict[str, Key]:
    """Every key, as a command that is about to make the first one sees them: a missing file has none.

    Only for commands that make keys or list them; a server's registry uses ``load_keys``, for which
    a missing file is an error. An emptied or malformed file is refused here too.
    """
    try:
        return load_keys(path)
    except MissingRegistry:
        return {}
