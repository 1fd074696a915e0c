"""Many simulated sensors in one process, each as its own MQTT client with a status and a last will.

Each sensor publishes its readings to ``networks/<net>/<sensor-id>`` (retained, so each keeps its
own last value) and ``{"status": "online"}`` to ``networks/<net>/<sensor-id>/status`` when it
connects; its last will sets that to ``{"status": "offline"}`` if the process dies.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from radio.devices.link import LinkRefused, MqttLink, Will, sleep_until
from radio.errors import RadioError
from radio.stopping import Stop
from radio.tls import SYSTEM_TRUST, Trust
from radio.topics import network_topic
from radio.urls import DEFAULT_MQTT_VERSION, BrokerURL, MqttVersion

KINDS = {"temperature": (21.0, "°C"), "humidity": (45.0, "%"), "pressure": (1013.0, "hPa")}


@dataclass
class Sensor:
    """A reading that drifts slowly and jitters a little, like a real one."""

    sensor_id: str
    kind: str
    value: float
    rng: random.Random

    def read(self) -> dict[str, object]:
        """The next reading."""
        base = KINDS[self.kind][0]
        self.value += self.rng.gauss(0, 0.05) + (base - self.value) * 0.01  # drift back towards base
        noisy = self.value + self.rng.gauss(0, 0.2)
        return {
            "sensor": self.sensor_id,
            "kind": self.kind,
            "value": round(noisy, 2),
            "unit": KINDS[self.kind][1],
            "time": time.time(),
        }


ONLINE = json.dumps({"status": "online"}).encode()
OFFLINE = json.dumps({"status": "offline"}).encode()


def run(
    *,
    url: BrokerURL | Sequence[BrokerURL],
    secret: str,
    network: str,
    count: int,
    rate: float,
    stop: Stop,
    seed: int | None = None,
    trust: Trust = SYSTEM_TRUST,
    version: MqttVersion = DEFAULT_MQTT_VERSION,
) -> None:
    """Connect every sensor, then publish ``rate`` readings per second each until ``stop`` is set."""
    rng = random.Random(seed)
    base = network_topic(network)
    sensors: list[tuple[Sensor, MqttLink]] = []
    run_id = uuid.uuid4().hex[:6]  # two agents on one network must not evict each other's clients
    for n in range(count):
        kind = list(KINDS)[n % len(KINDS)]
        sensor = Sensor(
            f"sensor-{n:04d}", kind, KINDS[kind][0] + rng.uniform(-2, 2), random.Random(rng.random())
        )
        status = f"{base}/{sensor.sensor_id}/status"

        def announce(link: MqttLink, topic: str = status) -> None:
            link.publish(topic, ONLINE, retain=True)

        try:
            link = MqttLink(
                url,
                secret,
                f"radio-{network}-{run_id}-{sensor.sensor_id}",
                will=Will(status, OFFLINE),
                on_connect=announce,
                trust=trust,
                version=version,
            )
            link.start()
        except OSError as exc:
            # The sensors started so far are left to end with the command: their sockets close with
            # it (their wills say "offline"), where stopping each one still connecting takes seconds.
            msg = (
                f"cannot start sensor {n + 1} of {count}: {exc.strerror or exc} (each sensor is an MQTT "
                "client of its own, with its own sockets and thread: lower --count, or raise the limit "
                "of open files, ulimit -n)"
            )
            raise RadioError(msg) from None
        sensors.append((sensor, link))
    period = 1.0 / rate
    deadline = time.monotonic()
    try:
        while not stop.is_set():
            for sensor, link in sensors:
                if link.refused is not None:
                    raise LinkRefused(link.refused)
                link.publish(f"{base}/{sensor.sensor_id}", json.dumps(sensor.read()).encode(), retain=True)
            deadline += period
            if sleep_until(deadline, stop):
                break
    finally:
        for sensor, link in sensors:
            link.publish(f"{base}/{sensor.sensor_id}/status", OFFLINE, retain=True)
            link.stop()
