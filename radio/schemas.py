"""A network's JSON Schema: read with the configuration, compiled once, asked once per sample.

Compiled with ``fastjsonschema`` (generated Python code): about 4 µs per traffic sample against
some 74 µs for ``jsonschema``'s interpreter (``bench/RESULTS.md``), which matters on the broker's
event loop. Defaults in the schema are never filled in: a sample is delivered as it was sent. A
``$ref`` is resolved only inside the file: no schema makes a server fetch anything from the
network.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastjsonschema

from radio import files
from radio.errors import reason


def _no_remote(uri: str) -> Any:
    msg = f"the schema refers to {uri!r}: only references inside the file are followed"
    raise ValueError(msg)


@dataclass(frozen=True)
class Schema:
    """One network's schema file, compiled."""

    path: Path
    document: Mapping[str, Any] = field(compare=False, repr=False)
    _check: Callable[[Any], Any] = field(compare=False, repr=False)

    @classmethod
    def load(cls, path: Path) -> Schema:
        """Read and compile a schema file; every problem is one ValueError naming the file."""
        try:
            document = json.loads(files.read_text(path))
        except FileNotFoundError:
            msg = f"schema file {path} does not exist"
            raise ValueError(msg) from None
        except (OSError, UnicodeDecodeError) as exc:
            msg = f"cannot read the schema file {path}: {reason(exc)}"
            raise ValueError(msg) from None
        except ValueError as exc:
            msg = f"schema file {path} is not JSON: {exc}"
            raise ValueError(msg) from None
        if not isinstance(document, dict):
            msg = f"schema file {path} must hold a JSON object (a JSON Schema)"
            raise ValueError(msg)  # noqa: TRY004 - callers report every problem of the file alike
        try:
            handlers = dict.fromkeys(("http", "https", "file", "ftp"), _no_remote)
            check = fastjsonschema.compile(document, handlers=handlers, use_default=False)
        except (fastjsonschema.JsonSchemaDefinitionException, ValueError, TypeError) as exc:
            msg = f"schema file {path} is not a valid JSON Schema: {exc}"
            raise ValueError(msg) from None
        return cls(path, document, check)

    def problem(self, data: Any) -> str | None:
        """None if the sample matches; else the failing field's path and what is wrong with it."""
        try:
            self._check(data)
        except fastjsonschema.JsonSchemaValueException as exc:
            return describe(exc)
        return None


def describe(exc: fastjsonschema.JsonSchemaValueException) -> str:
    """``speed: -3 must be bigger than or equal to 0``: the field's path, its value, the rule."""
    path = [str(part) for part in (exc.path or [])[1:]]  # [0] is "data", the sample itself
    name = ".".join(path) or "the sample"
    prefix = "data." + ".".join(path) if path else "data"
    rule = exc.message.removeprefix(prefix).strip() if exc.message else "does not match"
    value = json.dumps(exc.value) if _short(exc.value) else "the value"
    return f"{name}: {value} {rule}"


def _short(value: object) -> bool:
    try:
        return len(json.dumps(value)) <= 40
    except (TypeError, ValueError):
        return False
