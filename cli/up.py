"""``radio up``: the whole platform on one machine, one command, no external service.

It starts ``radio broker``, ``radio bridge`` and ``radio device traffic`` as child processes (so
this module needs no MQTT or HTTP code of its own), wires their ports together, makes a demo
publisher key on first run, prints how to use it all, and on Ctrl-C or SIGTERM stops every child
and waits for it, so no process is left behind.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Final

from radio.config import Address, Settings, load_settings
from radio.errors import RadioError
from radio.keys import KeyStore, read_keys

STATE_DIR: Final = Path(".radio")
DEMO_KEY: Final = "demo"
DEFAULT_CONFIG: Final = """\
# Radio's configuration, made by `radio up`. Every setting is optional; see README.md.

[broker]
mqtt = "127.0.0.1:1883"        # MQTT over TCP
websocket = "127.0.0.1:8080"   # MQTT over WebSocket, path /mqtt
allow_anonymous = true         # anonymous clients may read public networks

[bridge]
listen = "127.0.0.1:5000"      # POST /publish

[networks.sample_net]
public = true                  # the demo traffic simulator publishes here
retain = true
"""


def config_path(config: str | None) -> str:
    """The configuration ``radio up`` runs with: the one named, else its own in ``.radio/``."""
    if config or os.environ.get("RADIO_CONFIG"):
        return str(config or os.environ["RADIO_CONFIG"])
    STATE_DIR.mkdir(mode=0o700, exist_ok=True)
    path = STATE_DIR / "radio.toml"
    if not path.exists():
        path.write_text(DEFAULT_CONFIG, encoding="utf-8")
    return str(path)


def demo_key(settings: Settings, network: str) -> str:
    """The demo publisher's secret, made on first run and kept (mode 0600) in the state folder."""
    path = settings.state_dir / "demo.key"
    key = read_keys(settings.keys_path).get(DEMO_KEY)
    if path.exists() and key is not None and key.matches(path.read_text(encoding="utf-8").strip()):
        return path.read_text(encoding="utf-8").strip()
    store = KeyStore(settings.keys_path, settings.networks)
    secret = store.rotate(DEMO_KEY) if key is not None else store.add(DEMO_KEY, publish=[network])
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(secret + "\n")
    return secret


class Child:
    """One part of the platform in its own process; its banner is read for the ports it bound."""

    def __init__(self, name: str, args: list[str]) -> None:
        self.name = name
        self.process = subprocess.Popen(  # noqa: S603 - our own command
            [sys.executable, "-m", "radio", *args], stdout=subprocess.PIPE, text=True
        )

    def wait_for(self, pattern: str) -> str:
        """The first match of a pattern in what it prints, once it prints it."""
        stdout: IO[str] | None = self.process.stdout
        assert stdout is not None  # noqa: S101 - always piped
        for line in stdout:
            if match := re.search(pattern, line):
                return match[1]
        msg = f"the {self.name} did not start (exit status {self.process.wait()})"
        raise RadioError(msg)

    def drain(self) -> None:
        """Keep reading what it prints, so it never blocks on a full pipe."""
        stdout = self.process.stdout
        if stdout is not None:
            threading.Thread(target=lambda: [None for _ in stdout], daemon=True).start()

    def stop(self) -> None:
        """Ask it to stop as Ctrl-C would, then make sure it did."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def reachable(url: str) -> str:
    """A URL to paste on this machine: a wildcard bind (0.0.0.0, [::]) is reached on loopback."""
    return url.replace("://0.0.0.0:", "://127.0.0.1:").replace("://[::]:", "://[::1]:")


def up(
    config: str | None,
    keys: str | None,
    *,
    mqtt: Address | None,
    ws: Address | None,
    http: Address | None,
    engine: str = "embedded",
    nodes: int = 3,
) -> int:
    """Run the platform until Ctrl-C or SIGTERM; exit 1 if a part of it dies on its own."""
    path = config_path(config)
    settings = load_settings(path, keys)
    if not settings.networks:
        msg = f"{settings.path}: radio up needs a network for the demo generator (say [networks.sample_net])"
        raise RadioError(msg)
    network = "sample_net" if "sample_net" in settings.networks else min(settings.networks)
    secret = demo_key(settings, network)
    common = ["--config", path, *(["--keys", keys] if keys else [])]
    mqtt, ws, http = (
        mqtt or settings.broker.mqtt,
        ws or settings.broker.websocket,
        http or settings.bridge.listen,
    )

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    children: list[Child] = []
    try:
        cluster = ["--nodes", str(nodes)] if engine == "nats" else []
        broker = Child(
            "broker", ["broker", *common, "--mqtt", str(mqtt), "--ws", str(ws), "--engine", engine, *cluster]
        )
        children.append(broker)
        mqtt_port = broker.wait_for(r"mqtt://[^:]+:(\d+)")
        ws_url = reachable("ws://" + broker.wait_for(r"ws://(\S+)"))
        broker.drain()
        local = f"mqtt://127.0.0.1:{mqtt_port}"
        bridge = Child("bridge", ["bridge", *common, "--listen", str(http), "--broker", local])
        children.append(bridge)
        http_url = reachable(bridge.wait_for(r"POST (http://\S+)/publish"))
        bridge.drain()
        device = Child(
            "traffic simulator",
            ["device", "traffic", *common, "--network", network, f"--key={secret}", "--url", local],
        )
        children.append(device)
        device.drain()
        _print_banner(
            mqtt_port=mqtt_port,
            ws_url=ws_url,
            http_url=http_url,
            network=network,
            secret=secret,
            settings=settings,
        )
        while not stop.wait(0.5):
            for child in children:
                if child.process.poll() is not None:
                    print(
                        f"radio: the {child.name} stopped (exit status {child.process.returncode}); "
                        "stopping everything",
                        file=sys.stderr,
                    )
                    return 1
        print("Stopping...", file=sys.stderr, flush=True)
        return 0
    finally:
        for child in reversed(children):
            child.stop()


def _print_banner(
    *, mqtt_port: str, ws_url: str, http_url: str, network: str, secret: str, settings: Settings
) -> None:
    sample = shlex.quote('{"network": "' + network + '", "data": {"hello": "radio"}}')
    print(
        "Radio is up.\n"
        f"  MQTT over TCP:        mqtt://127.0.0.1:{mqtt_port}\n"
        f"  MQTT over WebSocket:  {ws_url}\n"
        f"  HTTP publish:         {http_url}/publish\n"
        f"  traffic simulator:    publishing to {network} every second\n"
        f"  demo publisher key:   {secret}\n"
        f"  state:                {settings.state_dir} (configuration, keys, demo.key)\n"
        "\n"
        "Try, in another terminal:\n"
        f"  radio listen {network} --url {ws_url}\n"
        f"  curl -X POST {http_url}/publish -H 'API-KEY: {secret}' -d {sample}\n"
        f"  mosquitto_sub -h 127.0.0.1 -p {mqtt_port} -t 'networks/{network}/#' -v\n"
        "\n"
        "Press Ctrl-C to stop everything.",
        flush=True,
    )
