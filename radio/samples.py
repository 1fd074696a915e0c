r"""What counts as a sample's JSON: one strict reading and one strict writing, for every door.

A sample must be JSON every reader can parse back: Python's ``json`` module accepts ``NaN``,
``Infinity`` and ``-Infinity`` (which no other JSON parser does) and turns ``1e999`` into an
infinite float that it then writes as ``Infinity``. Both doors read payloads here, so what the
HTTP door answers 400 the broker drops, and listeners never receive a sample they cannot parse.

Refused: those constants, numbers no float holds, integers over Python's 4,300 digits, nesting
deeper than the interpreter's recursion limit, text that is not UTF-8, and strings holding a lone
surrogate (``"\ud800"`` names no character and cannot be written as UTF-8).

``parse`` builds the values a schema or a reader needs; ``is_object`` only gives the verdict, and
is what the broker asks of a sample no schema looks into.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final, NoReturn

import orjson

from radio.errors import RadioError


class NotJSON(RadioError, ValueError):
    """The payload is not a sample's JSON; the message says why, for one log line."""


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


_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite)
"""Made once: ``json.loads`` with these hooks would build a decoder for every sample."""
_PLAIN: Final = json.JSONDecoder(parse_constant=_reject_constant)
"""The same reading for a payload in which no number can be too large for a float: its floats
are read by the parser itself, without a call to ``_finite`` for each."""
_MAY_OVERFLOW: Final = re.compile(rb"[eE][-+]?[0-9]|[0-9]{309}")
"""Where a number too large for a float can only be: one with an exponent, or one with 309
digits or more before its point (a float holds less than 10**309). A payload with neither (most
samples) cannot hold one; a payload with either, even inside a string, is read by ``_DECODER``,
which checks every float."""
_ENCODER: Final = json.JSONEncoder(allow_nan=False)
"""``json.dumps(data, allow_nan=False)``, without building an encoder for every sample."""


def parse(payload: bytes) -> Any:
    """The payload as JSON, read strictly; ``NotJSON`` otherwise."""
    try:
        decoder = _DECODER if _MAY_OVERFLOW.search(payload) else _PLAIN
        data = decoder.decode(payload.decode("utf-8"))
        if b"\\u" in payload:  # an escape may name a lone surrogate, which UTF-8 cannot carry
            json.dumps(data, ensure_ascii=False).encode("utf-8")
    except RecursionError:
        msg = "the payload is nested too deep"
        raise NotJSON(msg) from None
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise NotJSON(f"the payload is not JSON: {exc}") from None
    return data


SHALLOW: Final = 512
"""Brackets (``[`` and ``{``, in strings too) below which a payload cannot nest past what ``parse``
reads: the interpreter's recursion limit is 1,000 levels, and ``orjson``'s depth limit 1,024. A
payload of fewer bytes (most samples) holds fewer, and is not counted."""


def is_object(payload: bytes) -> bool:
    """Whether ``parse`` would read the payload as a JSON object; ``NotJSON`` where it would refuse it.

    Without building any value when it can: ``orjson`` checks a payload in one call, several times
    faster than ``parse``, which matters on the broker's event loop. It refuses all ``parse``
    refuses (the constants, numbers no float holds, text that is not UTF-8, lone surrogates), and
    more: integers too large for a float, which ``parse`` reads as Python's. So its refusal is not
    the verdict: ``parse`` is asked again, and says why. Nor is its acceptance when a payload may
    nest deeper than ``parse`` reads (``SHALLOW``).
    """
    if len(payload) < SHALLOW or payload.count(b"[") + payload.count(b"{") < SHALLOW:
        try:
            return type(orjson.loads(payload)) is dict
        except orjson.JSONDecodeError:
            pass
    return isinstance(parse(payload), dict)


def encode(data: Any) -> bytes:
    """``data`` as a sample's bytes, always strict JSON; ``NotJSON`` if it cannot be one."""
    try:
        payload = _ENCODER.encode(data).encode()
        if b"\\ud" in payload:  # only a \ud8..-\udf.. escape can hold a lone surrogate
            json.dumps(data, ensure_ascii=False).encode("utf-8")
    except RecursionError:
        msg = "the sample is nested too deep"
        raise NotJSON(msg) from None
    except ValueError as exc:  # UnicodeEncodeError is a ValueError
        raise NotJSON(f"the sample is not JSON: {exc}") from None
    return payload
