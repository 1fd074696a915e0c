"""How an error line names a wrong value from a TOML file: one wording for every file Radio reads.

``radio.toml`` and ``keys.toml`` are both read strictly, and both say what they found instead of
what they expected in the same words: ``not the integer 7``, ``not the boolean false`` (TOML's
spelling, as the file has it), and only the type (``not an array``) for a value too long for
one line. ``table`` reads a whole file's text the same way for both: empty or not TOML, refused.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Final

from radio.errors import RadioError

_NAMES: Final = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    dict: "table",
}
SHORT: Final = 40
"""The longest value an error line shows as it is."""


def table(text: str, path: Path, error: type[RadioError], empty: str) -> dict[str, Any]:
    """The text of a TOML file as its table, or an ``error`` naming the file.

    An empty text is refused (``empty`` says why): a truncated file must not read as one that sets
    nothing. A text that is not TOML is refused with the parser's words.
    """
    if not text.strip():
        msg = f"{path}: {empty}"
        raise error(msg)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = f"{path}: not valid TOML: {exc}"
        raise error(msg) from None


def kind(value: object) -> str:
    """A value's TOML type with its article: ``an integer``, ``a string``."""
    name = _name(value)
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def shown(value: object) -> str:
    """A wrong value as a line of text can show it: ``the integer 7``, or ``an array`` when long."""
    text = str(value).lower() if isinstance(value, bool) else repr(value)
    return f"the {_name(value)} {text}" if len(text) <= SHORT else kind(value)


def _name(value: object) -> str:
    if isinstance(value, dict):
        return "table"
    return _NAMES.get(type(value), type(value).__name__)
