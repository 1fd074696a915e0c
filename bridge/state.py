"""``BridgeState``: what one bridge app holds, typed, in one place; the views take it from here.

``create_app`` builds one per app (one per worker process) and keeps it in
``app.extensions["radio"]``, as Flask extensions keep theirs. A view reaches it through
``current_state()``; code holding the app itself through ``state_of(app)``. So no blueprint
reaches into another blueprint's module for what the app holds, and a misspelt name is a type
error, not a ``KeyError`` at the first request.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Final

from flask import Flask, current_app

from radio import rates, usage
from radio.admission import Admission
from radio.bridge.publisher import Publisher
from radio.registry import LiveRegistry, Registry

EXTENSION: Final = "radio"
"""The state's name in ``app.extensions``."""
BODY_HEADROOM: Final = 64 * 1024
"""Room for the envelope and whitespace around the largest sample a network accepts."""


def body_limit(registry: Registry) -> int:
    """The largest request body read at all: twice the largest sample (escapes), plus the envelope."""
    return registry.largest_payload * 2 + BODY_HEADROOM


@dataclass(eq=False)
class BridgeState:
    """One bridge app's registry, broker link, admission gate and admin surface."""

    registry: LiveRegistry
    publisher: Publisher
    """This process's broker link (``bridge/publisher.py``)."""
    gate: Admission
    """The admission gate every sample passes (``bridge/access.py``)."""
    meter: usage.Meter | None
    """Where usage is metered and quotas read; None when ``usage.db`` could not be opened."""
    buckets: rates.SharedBuckets
    """The publish rate buckets the workers share."""
    admin_failures: rates.SharedBuckets
    """Failed admin authentications per source address, shared by the workers."""
    admin_own_listener: bool
    """Whether ``/admin/`` and ``/metrics`` have a listener of their own (``[bridge] admin``)."""
    admin_enabled: bool
    """Whether the admin API is served at all."""
    check_interval: float = 0.25
    """Seconds between two checks of the key and configuration files (``fresh_registry``)."""
    _checked: float = field(default=0.0, init=False)
    _refreshing: threading.Lock = field(default_factory=threading.Lock, init=False)

    def install(self, app: Flask) -> None:
        """Make this the state of ``app``."""
        app.extensions[EXTENSION] = self

    def fresh_registry(self) -> Registry:
        """The registry, re-checked at most every ``check_interval`` so a revoked key stops within 2 s.

        Requests run in many threads: one of them re-checks while the others go on with the
        snapshot in force, so two reloads never race to install their snapshots out of order.
        """
        now = time.monotonic()
        if now - self._checked >= self.check_interval and self._refreshing.acquire(blocking=False):
            try:
                self._checked = now
                self.registry.refresh()
            finally:
                self._refreshing.release()
        return self.registry.current

    def body_limit(self) -> int:
        """``body_limit`` of the registry in force."""
        return body_limit(self.fresh_registry())


def state_of(app: Flask) -> BridgeState:
    """The state ``create_app`` gave ``app``."""
    state = app.extensions[EXTENSION]
    if not isinstance(state, BridgeState):
        msg = f"app.extensions[{EXTENSION!r}] is not a BridgeState: was the app made by create_app?"
        raise TypeError(msg)
    return state


def current_state() -> BridgeState:
    """The state of the app answering this request."""
    return state_of(current_app._get_current_object())  # type: ignore[attr-defined]


def current_registry() -> Registry:
    """``fresh_registry`` of the app answering this request."""
    return current_state().fresh_registry()
