"""``create_app``: the bridge as a Flask application, one broker link per process; ``create_asgi_app``."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Final

from flask import Flask

from radio.bridge import access, admin, admin_auth, errors, history, ops, pages, publish
from radio.bridge.asgi import BufferedWSGI
from radio.bridge.identity import bridge_credentials
from radio.bridge.publisher import Publisher
from radio.bridge.state import BridgeState, state_of
from radio.config import Address
from radio.registry import LiveRegistry

READY_WAIT: Final = 1.0
"""Seconds a worker waits at its start for its broker link before it takes connections: the
workers share one listening socket, and one that took requests before its link was up would
answer 503 (``/healthz`` too) while another already answers 200. A broker down at the start is
not waited for longer: the worker then answers 503 until its link comes up."""


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: registry, broker link (started now, in this process), blueprints, JSON errors.

    Settings (``test_config`` or the defaults): ``RADIO_CONFIG`` and ``RADIO_KEYS`` (paths, as for
    every ``radio`` command), ``BROKER`` (an ``Address``; default: the configuration's MQTT
    listener), ``PUBACK_TIMEOUT`` (seconds, default 5), ``REGISTRY_CHECK_INTERVAL`` (seconds),
    ``START_PUBLISHER`` (default true; false leaves ``publisher.start`` to the server),
    ``ADMIN_LISTEN`` (the admin listener's (host, port) as bound, when ``[bridge] admin`` gives
    it one: ``bridge/admin_auth.py``).
    """
    app = Flask(__name__)
    app.config.from_mapping(
        RADIO_CONFIG=None,
        RADIO_KEYS=None,
        BROKER=None,
        PUBACK_TIMEOUT=5.0,
        REGISTRY_CHECK_INTERVAL=0.25,
        START_PUBLISHER=True,
        ADMIN_LISTEN=None,
    )
    if test_config is not None:
        app.config.from_mapping(test_config)

    # The bridge puts a snapshot in force by reading it: the watcher may reload without waiting
    # for the request path, so `radio keys` commands return within a watch interval.
    registry = LiveRegistry(app.config["RADIO_CONFIG"], app.config["RADIO_KEYS"], idle_after=0.0)
    broker: Address = app.config["BROKER"] or registry.settings.broker.mqtt.local()
    username, password = bridge_credentials(registry.settings)
    publisher = Publisher(broker, username, password, timeout=app.config["PUBACK_TIMEOUT"])
    publisher.on_confirmed = publish.count_confirmed
    gate, meter, buckets = access.open_gate(registry)  # rates, quotas, schemas, usage (bridge/access.py)
    BridgeState(
        registry=registry,
        publisher=publisher,
        gate=gate,
        meter=meter,
        buckets=buckets,
        # Where /admin/ and /metrics are served, and to whom (bridge/admin_auth.py).
        admin_failures=admin_auth.failure_buckets(registry),
        admin_own_listener=registry.settings.bridge.admin is not None,
        admin_enabled=registry.settings.bridge.admin_enabled,
        check_interval=app.config["REGISTRY_CHECK_INTERVAL"],
    ).install(app)
    if app.config["START_PUBLISHER"]:
        publisher.start()

    errors.register(app)
    admin_auth.register(app)  # the admin surface's key, before any route or method is looked at
    app.register_blueprint(publish.bp)
    app.register_blueprint(ops.bp)
    app.register_blueprint(history.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(admin.bp)
    return app


def create_asgi_app(
    test_config: Mapping[str, Any] | None = None, *, body_timeout: float = 10.0, threads: int = 16
) -> BufferedWSGI:
    """The app as ``radio bridge`` serves it: each request read whole before Flask runs it.

    ``POST /publish`` runs on the server's event loop: its checks never wait, and its wait for the
    PUBACK is left to the loop. Every other route runs in a pool of ``threads`` threads (history
    reads a database, ``/metrics`` every worker's files). A body still incomplete
    ``body_timeout`` seconds after its headers is answered 408. The broker link runs on the
    server's event loop, from its start to its stop. History answers, the large ones, are built
    in a pool of their own, ``[bridge] history_threads`` wide.
    """
    app = create_app({**(test_config or {}), "START_PUBLISHER": False})
    state = state_of(app)
    publisher = state.publisher
    return BufferedWSGI(
        app,
        body_timeout=body_timeout,
        body_limit=state.body_limit,
        threads=threads,
        inline=("/publish",),
        on_startup=lambda: publisher.start(asyncio.get_running_loop()),
        ready=lambda: asyncio.get_running_loop().run_in_executor(None, publisher.wait_connected, READY_WAIT),
        on_shutdown=publisher.stop,
        on_stop=publisher.broker_connection.give_up_waiting,  # answered 503 now, not after their wait
        bulky=history.is_history_path,
        bulky_threads=state.registry.settings.bridge.history_threads,
    )
