"""``create_app``: the bridge as a Flask application, one broker link per process."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask

from radio.bridge import errors, history, ops, pages, publish
from radio.bridge.identity import bridge_credentials
from radio.bridge.publisher import Publisher
from radio.config import Address
from radio.registry import LiveRegistry


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: registry, broker link (started now, in this process), blueprints, JSON errors.

    Settings (``test_config`` or the defaults): ``RADIO_CONFIG`` and ``RADIO_KEYS`` (paths, as for
    every ``radio`` command), ``BROKER`` (an ``Address``; default: the configuration's MQTT
    listener), ``PUBACK_TIMEOUT`` (seconds, default 5), ``REGISTRY_CHECK_INTERVAL`` (seconds).
    """
    app = Flask(__name__)
    app.config.from_mapping(
        RADIO_CONFIG=None,
        RADIO_KEYS=None,
        BROKER=None,
        PUBACK_TIMEOUT=5.0,
        REGISTRY_CHECK_INTERVAL=0.25,
    )
    if test_config is not None:
        app.config.from_mapping(test_config)

    registry = LiveRegistry(app.config["RADIO_CONFIG"], app.config["RADIO_KEYS"])
    broker: Address = app.config["BROKER"] or registry.settings.broker.mqtt.local()
    username, password = bridge_credentials(registry.settings)
    publisher = Publisher(broker, username, password, timeout=app.config["PUBACK_TIMEOUT"])
    publisher.start()
    app.extensions["radio.registry"] = registry
    app.extensions["radio.registry.checked"] = [0.0]
    app.extensions["radio.publisher"] = publisher

    errors.register(app)
    app.register_blueprint(publish.bp)
    app.register_blueprint(ops.bp)
    app.register_blueprint(history.bp)
    app.register_blueprint(pages.bp)
    return app
