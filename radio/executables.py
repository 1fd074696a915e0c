"""Finding a server Radio runs but does not ship (Mosquitto, nats-server): one rule for each.

An environment variable naming the executable wins, and one that names no executable is an
error rather than a silent fallback (the operator meant that one). Otherwise the first of the
usual places that holds an executable is used; none is an error saying how to install it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from radio.errors import RadioError


def find_executable(
    variable: str, what: str, places: Iterable[str | Path | None], error: type[RadioError], install: str
) -> str:
    """``$variable`` if set, else the first of ``places`` that is executable (None: not found there).

    Either failure is an ``error``; ``install`` says how to get ``what`` when it is nowhere.
    """
    named = os.environ.get(variable)
    if named:
        if os.access(named, os.X_OK):
            return named
        msg = f"{variable}={named} is not an executable {what}"
        raise error(msg)
    found = next((str(place) for place in places if place and os.access(place, os.X_OK)), None)
    if found is None:
        msg = f"{what} is not installed ({install})"
        raise error(msg)
    return found
