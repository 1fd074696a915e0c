"""A network's numbered history, fetched from the bridge's ``GET /networks/NAME/samples``.

A client module like the rest of ``subscribers``: plain HTTP with the secret in ``API-KEY``, no
server-side code. A refusal (no such network, a key that may not read it) is ``HistoryRefused``,
which retrying cannot fix; a bridge or recorder that is away is ``HistoryUnavailable``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

import requests

from radio.errors import RadioError
from radio.tls import SYSTEM_TRUST, Trust, certificate_refusal

PAGE: Final = 1000
"""The most samples one request asks for (the bridge's maximum); a page may hold fewer, cut at the
bridge's byte cap: its ``more`` says whether the history goes on."""
TIMEOUT: Final = 10.0


class HistoryRefused(RadioError):
    """The bridge refused: an unknown network, or a key that may not read it."""


class HistoryUnavailable(RadioError):
    """No history right now: the bridge is unreachable, or the recorder has not run."""


@dataclass(frozen=True)
class HistoryPage:
    """One answer: some samples, and which numbers the history holds."""

    samples: list[dict[str, Any]]
    first: int | None
    """The oldest number kept (None: nothing kept)."""
    last: int
    """The last number given (0: none yet)."""
    more: bool | None = None
    """The history holds samples after this page's last (None: a bridge that does not say)."""


def fetch(
    http: str,
    network: str,
    secret: str | None,
    *,
    after: int | None = None,
    limit: int = PAGE,
    trust: Trust = SYSTEM_TRUST,
) -> HistoryPage:
    """The samples after ``after`` (or the newest ``limit``), oldest first (HTTPS: verified by ``trust``)."""
    url = f"{http.rstrip('/')}/networks/{quote(network, safe='')}/samples"
    params = {"limit": str(limit)} | ({"after": str(after)} if after is not None else {})
    headers = {"API-KEY": secret} if secret is not None else {}
    try:
        with trust.session() as session:
            response = session.get(
                url, params=params, headers=headers, timeout=TIMEOUT, verify=trust.verify()
            )
    except requests.exceptions.SSLError as exc:
        if (refusal := certificate_refusal(exc, http)) is not None:
            raise HistoryRefused(refusal) from None
        msg = f"cannot reach {http} (the TLS handshake failed)"
        raise HistoryUnavailable(msg) from None
    except requests.RequestException as exc:
        msg = f"cannot reach {http} ({type(exc).__name__})"
        raise HistoryUnavailable(msg) from None
    try:
        body = response.json()
    except ValueError:
        body = {}
    error = body.get("error") if isinstance(body, dict) else None
    if response.status_code in (401, 403, 404):
        msg = f"{http} refused the history of {network!r}: {error or response.status_code}"
        raise HistoryRefused(msg)
    if response.status_code != 200 or not isinstance(body, dict) or not isinstance(body.get("samples"), list):
        msg = f"{http} has no history of {network!r}: {error or response.status_code}"
        raise HistoryUnavailable(msg)
    samples, first, last, more = body["samples"], body.get("first"), body.get("last", 0), body.get("more")
    well_formed = (
        all(
            isinstance(item, dict)
            and type(item.get("seq")) is int
            and isinstance(item.get("received_at"), str)
            and "data" in item
            for item in samples
        )
        and (first is None or type(first) is int)
        and type(last) is int
        and (more is None or type(more) is bool)
    )
    if not well_formed:
        msg = f"{http} answered something that is not a history of {network!r}"
        raise HistoryUnavailable(msg)
    return HistoryPage(samples, first, last, more)
