r"""Strict JSON: what every reader of a sample can parse, whatever its language.

Python's ``json`` reads and writes ``NaN``, ``Infinity`` and ``-Infinity``, turns ``1e999`` into
an infinite float, and keeps a lone surrogate escape (``"\ud800"``) that names no character:
none of that is JSON to a strict parser (a browser's ``JSON.parse`` refuses ``NaN``). A text is
strict here when it parses without those constants, every number fits a float, no integer is
over Python's 4,300 digits, it is not nested past the recursion limit, and every string is
Unicode. The HTTP door refuses anything else; the recorder numbers nothing else; the history API
never writes anything else.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final, NoReturn


def _reject_constant(name: str) -> NoReturn:
    msg = f"{name} is not JSON"
    raise ValueError(msg)


def _finite(text: str) -> float:
    """A JSON number as a float; one too large for a float (``1e999``) is refused, not made infinite."""
    value = float(text)
    if math.isinf(value):
        msg = f"{text} does not fit a float"
        raise ValueError(msg)
    return value


DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite)
"""Made once: ``json.loads`` with these hooks would build a decoder for every call."""
ENCODER: Final = json.JSONEncoder(allow_nan=False)
"""``json.dumps(value, allow_nan=False)``, without building an encoder for every call."""
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F]")


def loads(text: str) -> Any:
    """The value of a strict JSON text; ValueError (or RecursionError) for anything else."""
    value = DECODER.decode(text)
    if _SURROGATE_ESCAPE.search(text):  # only such an escape can hold a lone surrogate
        json.dumps(value, ensure_ascii=False).encode("utf-8")  # UnicodeEncodeError is a ValueError
    return value


def is_strict(text: str) -> bool:
    """Whether ``text`` is strict JSON (see the module's docstring)."""
    try:
        loads(text)
    except (ValueError, RecursionError):
        return False
    return True
