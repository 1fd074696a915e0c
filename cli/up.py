"""``radio up``: the whole platform on one machine, one command, no external service.

It starts ``radio broker``, ``radio recorder``, ``radio bridge`` and ``radio device traffic`` as
child processes (so this module needs no MQTT or HTTP code of its own), wires their ports
together, makes a demo publisher key on first run, and prints how to use it all.

It finds its configuration as every ``radio`` command does (``--config``, ``RADIO_CONFIG``,
``./radio.toml``) and writes ``./radio.toml`` when there is none, so ``radio keys`` run in the
same folder manage the running platform's keys.

Nothing outlives it. Each child runs in a process group of its own, so a terminal's signals
(Ctrl-C, SIGHUP when the window closes) reach ``radio up`` alone, which stops the children in
order: SIGTERM to each, then SIGKILL to whatever is left in its group (a Mosquitto or a gunicorn
worker whose parent died first). A ``kill -9`` of ``radio up`` itself is covered by the kernel:
each child asked for SIGTERM when its parent dies (``radio.cli.parent``). The demo key reaches
the traffic simulator in its environment, never in its arguments, which every user can read.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Final

from radio import ports, service_keys, statelock
from radio.bridge.identity import bridge_credentials
from radio.cli.devices import bridge_url
from radio.cli.options import EXIT_REFUSED, SECRET_ENVIRONMENT
from radio.cli.parent import PARENT_ENVIRONMENT
from radio.config import Address, Settings, load_settings, resolve_paths
from radio.errors import RadioError
from radio.keys import read_keys
from radio.recorder.identity import recorder_credentials
from radio.stopping import Stop

DEMO_KEY: Final = "demo"
ENGINE_STORE: Final = {"embedded": "broker.db", "mosquitto": "mosquitto/", "nats": "nats/"}
"""Where each engine keeps its retained samples and sessions, in the state folder."""
PARTS: Final = ("broker", "recorder", "bridge")
"""The servers it starts, each holding its lock on the state folder (``radio.statelock``)."""
STOP_TIMEOUT: Final = 15.0
"""Seconds the children have to stop cleanly before whatever is left of them is killed."""
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


def config_path(
    config: str | None, keys: str | None = None, listeners: dict[str, Address | None] | None = None
) -> tuple[str, bool]:
    """The configuration by the one rule, and whether it was made now (the default, absent).

    A file made now holds the listener addresses given on the command line (by their default):
    every other command run in the folder reads them there, so it finds this platform rather
    than whatever holds the default ports. A port 0 is no address to find: the default stays.
    """
    path, _, named = resolve_paths(config, keys)
    if named or path.exists():
        return str(path), False
    text = DEFAULT_CONFIG
    for default, given in (listeners or {}).items():
        if _written(given):
            text = text.replace(f'"{default}"', f'"{given}"', 1)
    path.write_text(text, encoding="utf-8")
    return str(path), True


def _written(*given: Address | None) -> bool:
    """Whether ``config_path`` writes any of these addresses into a configuration it makes."""
    return any(address is not None and address.port != 0 for address in given)


def demo_key(settings: Settings, network: str) -> str:
    """The demo publisher's secret, made on first run and kept (mode 0600) in the state folder.

    A file that no longer matches the key (rotated, or the key revoked) is replaced: the demo
    is Radio's own, and gets a working key back without asking.
    """
    key = read_keys(settings.keys_path).get(DEMO_KEY)
    secret = service_keys.saved_secret(settings, DEMO_KEY)
    if secret is not None and key is not None and key.matches(secret):
        return secret
    return service_keys.make_and_keep(settings, DEMO_KEY, rotate=key is not None, publish=[network])


def service_keys_first(settings: Settings) -> None:
    """Make the bridge's and the recorder's keys before the broker starts.

    An engine that reads its rights from exported files (Mosquitto, NATS) then knows them from its
    first export: the recorder and the bridge are never refused ("not authorized") while it
    catches up with a key made a moment after it started.
    """
    bridge_credentials(settings)
    recorder_credentials(settings)


class Child:
    """One part of the platform in its own process group; its banner is read for the ports it bound."""

    def __init__(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        self.mqtt_ports: list[str] = []
        """Every plain MQTT port the banner names, in order: a cluster's nodes, one line each."""
        environment = {**os.environ, **(env or {}), PARENT_ENVIRONMENT: str(os.getpid())}
        self.process = subprocess.Popen(  # noqa: S603 - our own command
            [sys.executable, "-m", "radio", *args],
            stdout=subprocess.PIPE,
            text=True,
            env=environment,
            start_new_session=True,  # the terminal's signals reach radio up, which stops us in order
        )

    def banner(self) -> dict[str, str]:
        """The broker's URLs by scheme (mqtt, ws, mqtts, wss), read from its banner."""
        stdout: IO[str] | None = self.process.stdout
        assert stdout is not None  # noqa: S101 - always piped
        urls: dict[str, str] = {}
        for line in stdout:
            # The first URL of each scheme: the lines that follow a cluster's name its other nodes.
            if (match := re.search(r"\b((mqtts?|wss?)://\S+)", line)) and match[2] not in urls:
                urls[match[2]] = match[1]
            if match := re.match(r"  metrics: +(https?://\S+)/metrics$", line.rstrip()):
                urls["metrics"] = match[1]
            for port in re.findall(r"\bmqtt://\S+:(\d+)\b", line):
                if port not in self.mqtt_ports:
                    self.mqtt_ports.append(port)
            if "Ctrl-C" in line:
                return urls
        raise self.not_started()

    def said(self, last: str) -> str:
        """What it prints up to the first line holding ``last``, once it prints that line."""
        stdout: IO[str] | None = self.process.stdout
        assert stdout is not None  # noqa: S101 - always piped
        lines = []
        for line in stdout:
            lines.append(line)
            if last in line:
                return "".join(lines)
        raise self.not_started()

    def wait_for(self, pattern: str) -> str:
        """The first match of a pattern in what it prints, once it prints it."""
        stdout: IO[str] | None = self.process.stdout
        assert stdout is not None  # noqa: S101 - always piped
        for line in stdout:
            if match := re.search(pattern, line):
                return match[1]
        raise self.not_started()

    def not_started(self) -> BaseException:
        """Exit status 2 is a refusal the child said in one line already; anything else is told here."""
        status = self.process.wait()
        if status == EXIT_REFUSED:
            return SystemExit(EXIT_REFUSED)
        return RadioError(f"the {self.name} did not start (exit status {status})")

    def drain(self) -> None:
        """Keep reading what it prints, so it never blocks on a full pipe."""
        stdout = self.process.stdout
        if stdout is not None:
            threading.Thread(target=lambda: [None for _ in stdout], daemon=True).start()

    def terminate(self) -> None:
        """Ask it to stop cleanly."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def finish(self, deadline: float) -> None:
        """Wait for it until the deadline, then kill it and anything left in its group."""
        try:
            self.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._kill_group(deadline)

    def _kill_group(self, deadline: float) -> None:
        """Its group outlives it only if a grandchild does (Mosquitto, a gunicorn worker): stop those too."""
        group = self.process.pid
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                return
            until = min(deadline, time.monotonic() + 2.0) if sig == signal.SIGTERM else time.monotonic() + 5
            while time.monotonic() < until:
                try:
                    os.killpg(group, 0)
                except ProcessLookupError:
                    return
                time.sleep(0.05)


def args_or(given: Address | None, configured: bool) -> bool:
    """Whether a plain listener is served: named on the command line, or on in the configuration."""
    return given is not None or configured


def _dev_ca(settings: Settings) -> Path | None:
    """The development CA beside the certificate (``radio certs dev`` writes both), for the examples."""
    if settings.tls is None:
        return None
    ca = settings.tls.cert.parent / "ca.pem"
    return ca if ca.exists() and ca != settings.tls.cert else None


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
    mqtts: Address | None = None,
    wss: Address | None = None,
) -> int:
    """Run the platform until Ctrl-C, SIGTERM or SIGHUP; exit 1 if a part of it dies on its own."""
    stop, started = Stop(), threading.Event()  # a Stop: set from a signal handler (radio.stopping)

    def on_signal(*_: object) -> None:
        stop.set()
        if not started.is_set():  # unblock a wait for a child's banner
            raise _Interrupted

    state_dir = resolve_paths(config, keys)[0].parent
    _claim(state_dir)  # before radio.toml, keys.toml or demo.key is written
    path, made, settings = _prepared(config, keys, mqtt=mqtt, ws=ws, http=http)
    # What a configuration made now holds, for the banner: an address given (not port 0) is in it.
    made_of = "the defaults" + (", with the addresses given" if _written(mqtt, ws, http) else "")
    listeners, plain = _checked(
        settings, engine, made, nodes=nodes, mqtt=mqtt, ws=ws, http=http, mqtts=mqtts, wss=wss
    )
    network = "sample_net" if "sample_net" in settings.networks else min(settings.networks)
    common = ["--config", path, *(["--keys", keys] if keys else [])]
    elsewhere = _not_in_config(settings, mqtt=mqtt, ws=ws, http=http)
    http = http or settings.bridge.listen
    secret = demo_key(settings, network)
    service_keys_first(settings)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    children: list[Child] = []
    try:
        cluster = ["--nodes", str(nodes)] if engine == "nats" else []
        broker = Child("broker", ["broker", *common, *listeners, "--engine", engine, *cluster])
        children.append(broker)
        urls = broker.banner()
        # The bridge and the simulator link over loopback: plain MQTT there, even when the
        # configuration serves only TLS to the network (a loopback port then, not advertised).
        mqtt_port = urls["mqtt"].rsplit(":", 1)[1]
        broker.drain()
        local = f"mqtt://127.0.0.1:{mqtt_port}"
        # The recorder, the bridge and the simulator fail over between every node of a cluster.
        nodes_urls = ",".join(f"mqtt://127.0.0.1:{port}" for port in broker.mqtt_ports) or local
        recorder = Child("recorder", ["recorder", *common, "--broker", nodes_urls])
        children.append(recorder)
        recorder.wait_for(r"(Recording)")
        recorder.drain()
        page_ws = _page_websocket(urls, settings)
        bridge = Child(
            "bridge", ["bridge", *common, "--listen", str(http), "--broker", nodes_urls], env=page_ws
        )
        children.append(bridge)
        http_url, admin_url, metrics = _bridge_addresses(bridge)
        device = Child(
            "traffic simulator",
            ["device", "traffic", *common, "--network", network, "--url", nodes_urls],
            env={SECRET_ENVIRONMENT: secret},
        )
        children.append(device)
        device.drain()
        _print_banner(
            urls={name: reachable(url) for name, url in urls.items() if name != "mqtt" or plain["mqtt"]},
            ca=_dev_ca(settings),
            http_url=http_url,
            admin_url=admin_url,
            metrics=metrics,
            network=network,
            settings=settings,
            made=made_of if made else "",
            elsewhere=elsewhere,
            engine=engine,
        )
        started.set()
        return _supervise(children, stop)
    finally:
        started.set()
        _stop_all(children)


def _prepared(
    config: str | None, keys: str | None, *, mqtt: Address | None, ws: Address | None, http: Address | None
) -> tuple[str, bool, Settings]:
    """The configuration (made now if absent: ``made``) and its settings, with a network for the demo."""
    given = {"127.0.0.1:1883": mqtt, "127.0.0.1:8080": ws, "127.0.0.1:5000": http}
    path, made = config_path(config, keys, given)
    settings = load_settings(path, keys)
    if not settings.networks:
        msg = f"{settings.path}: radio up needs a network for the demo generator (say [networks.sample_net])"
        raise RadioError(msg)
    return path, made, settings


def _checked(
    settings: Settings,
    engine: str,
    made: bool,
    *,
    nodes: int,
    mqtt: Address | None,
    ws: Address | None,
    http: Address | None,
    mqtts: Address | None,
    wss: Address | None,
) -> tuple[list[str], dict[str, bool]]:
    """The broker's options, once every address of the platform is known free.

    A configuration this run made is removed if one is not: the next run, given other ports,
    writes them into its own, where every other command finds them.
    """
    try:
        listeners, plain = _broker_options(
            settings, engine, nodes=nodes, mqtt=mqtt, ws=ws, mqtts=mqtts, wss=wss
        )
        ports.check_free("bridge", [http or settings.bridge.listen, *filter(None, [settings.bridge.admin])])
    except RadioError:
        if made:
            settings.path.unlink(missing_ok=True)
        raise
    return listeners, plain


def _not_in_config(
    settings: Settings, *, mqtt: Address | None, ws: Address | None, http: Address | None
) -> bool:
    """Whether other radio commands would miss the platform at the configuration's addresses.

    They find it by the configuration: an address given on the command line that differs from it,
    or one the configuration leaves to the system (port 0), is not where they would look.
    """
    configured = (settings.broker.mqtt, settings.broker.websocket, settings.bridge.listen)
    broker = settings.broker
    in_use = [
        *([broker.mqtt] if broker.mqtt_enabled else []),
        *([broker.websocket] if broker.websocket_enabled else []),
        *(address for address in (broker.mqtts, broker.wss) if address is not None),
        settings.bridge.listen,
    ]
    return any(address.port == 0 for address in in_use) or any(
        given not in (None, found) for given, found in zip((mqtt, ws, http), configured, strict=True)
    )


def _broker_options(
    settings: Settings,
    engine: str,
    *,
    nodes: int,
    mqtt: Address | None,
    ws: Address | None,
    mqtts: Address | None,
    wss: Address | None,
) -> tuple[list[str], dict[str, bool]]:
    """The broker's listener options, once their addresses are known free; which plain ones are served."""
    plain = {  # before the defaults fill them in: an address given turns a plain listener on
        "mqtt": args_or(mqtt, settings.broker.mqtt_enabled),
        "ws": args_or(ws, settings.broker.websocket_enabled),
    }
    mqtt, ws = mqtt or settings.broker.mqtt, ws or settings.broker.websocket
    tls = {"mqtts": mqtts or settings.broker.mqtts, "wss": wss or settings.broker.wss}
    if engine == "nats":  # its local cluster serves plain listeners alone (docs/nats.md, TLS)
        tls = {"mqtts": None, "wss": None}
    given = {"mqtt": mqtt if plain["mqtt"] else None, "websocket": ws if plain["ws"] else None, **tls}
    ports.check_free("broker", broker_listeners(settings, engine, nodes=nodes, **given).values())
    listeners = ["--mqtt", str(mqtt if plain["mqtt"] else Address("127.0.0.1", 0))]
    listeners += ["--ws", str(ws)] if plain["ws"] else []
    listeners += [arg for name, address in tls.items() if address for arg in (f"--{name}", str(address))]
    return listeners, plain


def broker_listeners(
    settings: Settings, engine: str, *, nodes: int = 1, **given: Address | None
) -> dict[str, Address]:
    """Every address the broker will listen on, by its name in ``[broker]``: given ones, else configured.

    A local NATS cluster listens on more than those: every node on its own MQTT and WebSocket
    ports, and on NATS's client, route and monitoring ports (4222, 6222, 8222 on). A node that
    finds one taken exits at start, after ``radio up`` has begun; checked here, it is one line.
    """
    from radio.broker.mosquitto import listeners_of  # noqa: PLC0415 - the same rule on every engine

    found = listeners_of(settings, **given)
    if settings.broker.metrics is not None and engine == "embedded":  # only it serves [broker] metrics
        found["metrics"] = settings.broker.metrics
    mqtt = found.get("mqtt")
    if engine == "nats" and mqtt is not None and mqtt.port != 0:  # port 0: every node's ports free ones
        from radio.broker.nats_conf import NODE_PORTS, plan  # noqa: PLC0415

        cluster = plan(settings, nodes, mqtt=mqtt, websocket=given.get("websocket"))
        found |= {f"{node.name} {kind}": getattr(node, kind) for kind in NODE_PORTS for node in cluster}
    return found


def _claim(state_dir: Path) -> None:
    """This state folder for this platform alone: refused, naming it, while another part runs on it."""
    statelock.hold(state_dir, "up")
    for part in PARTS:
        if (who := statelock.holder(state_dir, part)) is not None:
            raise RadioError(statelock.refusal(state_dir, who))


def _page_websocket(urls: dict[str, str], settings: Settings) -> dict[str, str]:
    """Where the live pages send browsers: the broker's WebSocket port bound just now (TLS first).

    A wildcard bind is passed on as it is: the pages name it by the host each browser asked them
    for (``bridge.pages.as_reached``), not by a loopback address only this machine reaches.
    """
    ws_url = urls.get("wss") or urls.get("ws")
    if not ws_url or settings.bridge.public_websocket_url:
        return {}
    return {"RADIO_PUBLIC_WEBSOCKET_URL": ws_url}


def _supervise(children: list[Child], stop: Stop) -> int:
    """Wait for a signal (0), or for a part to die on its own (1)."""
    while not stop.wait(0.5):
        for child in children:
            if child.process.poll() is not None:
                print(
                    f"radio: the {child.name} {ended(child.process.returncode)}; stopping everything",
                    file=sys.stderr,
                )
                return 1
    return 0


def ended(status: int) -> str:
    """How a process ended, from its status as ``subprocess`` gives it (a signal's is negative)."""
    if status >= 0:
        return f"stopped (exit status {status})"
    try:
        return f"was killed ({signal.Signals(-status).name})"
    except ValueError:
        return f"was killed (signal {-status})"


def _stop_all(children: list[Child]) -> None:
    """The broker's clients first, all at once, then the broker: none of them sees it go away.

    Stopped together, the bridge and the recorder would lose the broker while stopping and say
    so as a warning, on every clean stop. Within each step the slowest sets the pace.
    """
    print("Stopping...", file=sys.stderr, flush=True)
    deadline = time.monotonic() + STOP_TIMEOUT
    for step in (children[1:], children[:1]):  # the broker is started first
        for child in reversed(step):
            child.terminate()
        for child in reversed(step):
            child.finish(deadline)


class _Interrupted(KeyboardInterrupt):
    """A signal arrived while a child was still starting (the command line ends with status 0)."""


def _bridge_addresses(bridge: Child) -> tuple[str, str | None, tuple[str, bool] | None]:
    """Where the bridge's banner says it bound each door, the admin listener's too (maybe port 0).

    Its URL, the admin API's, and /metrics's with whether it asks for an admin key.
    """
    said = bridge.said("Ctrl-C")
    bridge.drain()
    publish = _found(r"POST (https?://\S+)/publish", said)
    if publish is None:  # a banner without its door: not the bridge this command started
        raise bridge.not_started()
    admin = _found(r"admin API: (https?://\S+)/admin/", said)
    metrics = re.search(r"GET  (https?://\S+)/metrics( +\(admin key\))?", said)
    return (
        reachable(publish),
        None if admin is None else reachable(admin),
        None if metrics is None else (reachable(metrics[1]), metrics[2] is not None),
    )


def _found(pattern: str, text: str) -> str | None:
    match = re.search(pattern, text)
    return None if match is None else match[1]


def _print_banner(
    *,
    urls: dict[str, str],
    ca: Path | None,
    http_url: str,
    admin_url: str | None,
    metrics: tuple[str, bool] | None,
    network: str,
    settings: Settings,
    made: str,
    elsewhere: bool,
    engine: str,
) -> None:
    """What runs where, and how to try it; never a secret: this output is often a log (``docker logs``).

    ``metrics``: where ``/metrics`` is, and whether it takes an admin key (not on an admin
    listener of its own, which the operator keeps off the public network). ``made``: what the
    configuration this run made holds ("" if it was there before).
    """
    sample = shlex.quote('{"network": "' + network + '", "data": {"hello": "radio"}}')
    demo_file = shlex.quote(str(service_keys.key_file(settings, DEMO_KEY)))
    here = settings.path == (Path.cwd() / "radio.toml").absolute()
    where = (
        "radio commands run in this folder use it"
        if here
        else f"elsewhere, first: export RADIO_CONFIG={shlex.quote(str(settings.path))}"
    )
    if elsewhere:  # they would find the addresses in radio.toml, not this run's
        where = (
            "this run's addresses are not radio.toml's: give other radio commands --url, radio listen --http"
        )
    # radio listen reads the history from the bridge the configuration names, unless told another.
    http_flag = f" --http {http_url}" if http_url != bridge_url(settings) else ""
    titles = {
        "mqtts": "MQTT over TLS:        ",
        "wss": "WebSocket over TLS:   ",
        "mqtt": "MQTT over TCP:        ",
        "ws": "MQTT over WebSocket:  ",
    }
    doors = "".join(f"  {title}{urls[name]}\n" for name, title in titles.items() if name in urls)
    # The examples use TLS where it is served: keys are then never in clear on the network.
    listen_url = urls.get("wss") or urls.get("ws") or urls.get("mqtts") or urls["mqtt"]
    trust = f" --ca {shlex.quote(str(ca))}" if ca is not None else ""
    tls_url = listen_url.startswith(("wss", "mqtts"))
    https = ca is not None and http_url.startswith("https")
    curl_trust = f" --cacert {shlex.quote(str(ca))}" if https else ""
    sub_url = urls.get("mqtts") or urls.get("mqtt") or ""
    sub_host, _, sub_port = sub_url.split("://", 1)[-1].rpartition(":")
    sub_tls = (
        (f" --cafile {shlex.quote(str(ca))}" if ca is not None else " --capath /etc/ssl/certs")
        if sub_url.startswith("mqtts")
        else ""
    )
    print(
        "Radio is up.\n"
        f"{doors}"
        f"  HTTP publish:         {http_url}/publish\n"
        f"  live pages:           {http_url}/\n"
        + (
            f"  admin API:            {admin_url}/admin/ (admin keys: radio keys add NAME --admin)\n"
            if admin_url
            else ""
        )
        + (f"  metrics:              {metrics[0]}/metrics{' (admin key)' * metrics[1]}\n" if metrics else "")
        + (f"  broker metrics:       {urls['metrics']}/metrics\n" if "metrics" in urls else "")
        + f"  traffic simulator:    publishing to {network} every second\n"
        f"  demo publisher key:   {DEMO_KEY!r}, its secret in {demo_file} (yours alone)\n"
        f"  configuration:        {settings.path}{f' (made now, {made})' if made else ''}\n"
        f"  state:                {settings.state_dir} "
        f"(keys.toml, demo.key, bridge.key, recorder.key, {ENGINE_STORE[engine]}, history.db, usage.db)\n"
        f"  other radio commands: {where}\n"
        "\n"
        "Try, in another terminal:\n"
        f"  radio listen {network} --url {listen_url}{trust if tls_url else ''}{http_flag}\n"
        f"  printf 'API-KEY: %s\\n' \"$(cat {demo_file})\" "
        f"| curl -sS{curl_trust} -H @- {http_url}/publish -d {sample}\n"
        + (
            f"  mosquitto_sub -h {sub_host} -p {sub_port}{sub_tls} -t 'networks/{network}/#' -v\n"
            if sub_url
            else ""
        )
        + "\n"
        "Press Ctrl-C to stop everything.",
        flush=True,
    )
