"""``radio device traffic`` and ``radio device sensors``: generators as long-running commands."""

from __future__ import annotations

import json
import logging
import time
import uuid

from radio.devices import sensors
from radio.devices.link import HttpLink, LinkRefused, MqttLink, sleep_until
from radio.devices.traffic import Town, TownSettings
from radio.stopping import Stop, on_signals
from radio.tls import SYSTEM_TRUST, Trust
from radio.topics import network_topic
from radio.urls import DEFAULT_MQTT_VERSION, MqttVersion, parse_urls

log = logging.getLogger("radio.device")


def stop_on_signals() -> Stop:
    """Set by SIGINT or SIGTERM, so loops end cleanly between samples."""
    return on_signals()


def traffic(
    *,
    network: str,
    secret: str,
    url: str,
    via: str,
    period: float,
    speed: int,
    size: tuple[int, int],
    seed: int | None,
    stop: Stop,
    trust: Trust = SYSTEM_TRUST,
    version: MqttVersion = DEFAULT_MQTT_VERSION,
) -> None:
    """Simulate, and publish the town's state every period, like the article's ``radio_publish()``."""
    town = Town(TownSettings(rows=size[0], columns=size[1]), seed=seed)
    topic = network_topic(network)
    mqtt_link = http_link = None
    if via == "http":
        http_link = HttpLink(url, secret, trust=trust)
    else:
        # Its own client id: two simulators on one network would otherwise take turns evicting each other.
        client_id = f"radio-traffic-{network}-{uuid.uuid4().hex[:8]}"
        mqtt_link = MqttLink(parse_urls(url), secret, client_id, trust=trust, version=version)
        mqtt_link.start()
    log.info(
        "traffic simulator on network %r: %dx%d town, a sample every %gs via %s", network, *size, period, via
    )
    deadline = time.monotonic()
    try:
        while not stop.is_set():
            for _ in range(speed):  # a large town at a high speed steps for minutes: a stop ends it
                if stop.is_set():
                    return
                town.step()
            state = town.dump_state()
            if http_link is not None:
                http_link.publish(network, state)
            elif mqtt_link is not None:
                if mqtt_link.refused is not None:
                    raise LinkRefused(mqtt_link.refused)
                mqtt_link.publish(topic, json.dumps(state).encode(), retain=True)
            deadline += period
            if sleep_until(deadline, stop):
                break
    finally:
        if mqtt_link is not None:
            mqtt_link.stop()


def sensor_agents(
    *,
    network: str,
    secret: str,
    url: str,
    count: int,
    rate: float,
    seed: int | None,
    stop: Stop,
    trust: Trust = SYSTEM_TRUST,
    version: MqttVersion = DEFAULT_MQTT_VERSION,
) -> None:
    """Run ``count`` sensors until stopped."""
    log.info(
        "%d sensor%s on network %r, %g reading%s per second each",
        count,
        "s" * (count != 1),
        network,
        rate,
        "s" * (rate != 1),
    )
    sensors.run(
        url=parse_urls(url),
        secret=secret,
        network=network,
        count=count,
        rate=rate,
        stop=stop,
        seed=seed,
        trust=trust,
        version=version,
    )
