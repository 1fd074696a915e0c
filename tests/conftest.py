"""Fixtures every test shares: a platform folder with keys, and the real broker on port 0."""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
import requests
from amqtt.broker import Broker
from amqtt.plugins.manager import plugins_manager as amqtt_plugin_managers
from commands import radio_main
from mqtt_client import Client
from polling import until

from radio.bridge.identity import bridge_credentials
from radio.broker.compiled import delivery_path
from radio.broker.mosquitto import MosquittoBroker
from radio.broker.mosquitto import version as mosquitto_version
from radio.broker.server import RadioBroker
from radio.broker.thread import BrokerThread
from radio.config import Address, load_settings
from radio.keys import KeyStore
from radio.registry import LiveRegistry

CONFIG = """\
[networks.A]
public = false

[networks.B]
public = false

[networks.pub]
public = true

[networks.fleeting]
public = true
retain = false
"""


@dataclass
class Home:
    """A platform's folder: configuration, keys, and the secrets of the keys made for the test."""

    path: Path
    secrets: dict[str, str] = field(default_factory=dict)

    @property
    def config(self) -> Path:
        return self.path / "radio.toml"

    @property
    def keys(self) -> Path:
        return self.path / "keys.toml"

    def store(self) -> KeyStore:
        settings = load_settings(self.config)
        return KeyStore(settings.keys_path, settings.networks)

    def add_key(self, name: str, **rights: object) -> str:
        self.secrets[name] = self.store().add(name, **rights)  # type: ignore[arg-type]
        return self.secrets[name]

    def radio(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The real command line, as an operator types it: for tests whose subject is the command."""
        return subprocess.run(
            [sys.executable, "-m", "radio", *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            check=check,
            timeout=60,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def radio_main(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``radio ARGS --config`` this folder's configuration, by the command's ``main`` in this process.

        For tests whose subject is what the command changes or shows (``commands.radio_main``).
        """
        return radio_main(*args, "--config", str(self.config), check=check)


def copy_checkout(destination: Path) -> Path:
    """The working tree's files as git sees them (tracked or new, not ignored), as a fresh clone has them.

    Symlinks (``radio/broker`` and the like) stay symlinks.
    """
    root = Path(__file__).resolve().parent.parent
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = root / name
        if source.is_symlink() or source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name, follow_symlinks=False)
    return destination


# Where the environment asks for no bytecode files, every `python -m radio` the tests start would
# compile Radio from source again, and every xdist worker rewrite every test module again: about a
# tenth of the suite's CPU. The caches go to __pycache__ folders, which git ignores.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False


def in_slow_cell(item: pytest.Item) -> bool:
    """Whether the item's parameters are one of its module's ``SLOW_CELLS``.

    A module whose parameters multiply (engine by transport by protocol) names there, as
    ``{"fixture": value, ...}``, the combinations that only repeat a path its other combinations
    take: they run in the slow tier, the others in the fast one.
    """
    cells = getattr(getattr(item, "module", None), "SLOW_CELLS", ())
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return False
    return any(all(callspec.params.get(name) == value for name, value in cell.items()) for cell in cells)


@pytest.hookimpl(tryfirst=True)  # before `-m` chooses the tier
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow tests first: the workers share them out early instead of waiting on them at the end."""
    for item in items:
        if in_slow_cell(item):
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


COMPILED = delivery_path() == "compiled"
"""Whether the broker's delivery path is the compiled build's (setup.py, ``.ci/compiled-check``)."""


def pytest_runtest_setup(item: pytest.Item) -> None:
    """On the compiled build, skip what stands a fake in for a compiled class (``sources_only``).

    A compiled class checks the types of what it is given, as mypy does: an attribute typed
    ``Connection`` takes a connection, not a stand-in that only writes like one.
    """
    if COMPILED and item.get_closest_marker("sources_only") is not None:
        pytest.skip("a stand-in for a compiled class: runs on the sources only")


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """Three workers per core for ``-n auto``: most tests wait on sockets and child processes.

    Measured on 2 cores: 2 workers 238 s, 4 workers 144 s, 6 workers 113 s, every test passing.
    """
    del config
    return 3 * (os.cpu_count() or 1)


@pytest.fixture(scope="session")
def home_template(tmp_path_factory: pytest.TempPathFactory) -> Home:
    """``home``'s folder, made once per test process: each test gets a copy of it.

    Making the keys (hashes, locked and durable writes) costs about 20 ms of CPU and 0.2 s of
    fsyncs; copying the folder a tenth of that, in each of a thousand tests.
    """
    home = Home(tmp_path_factory.mktemp("home-template"))
    home.config.write_text(CONFIG)
    home.add_key("gen", publish=["A"])
    home.add_key("reader_a", subscribe=["A"])
    home.add_key("reader_b", subscribe=["B"])
    home.add_key("admin", admin=True)
    # The bridge's service key, as `radio bridge` makes it on first start (tested on its own).
    bridge_credentials(load_settings(home.config))
    return home


@pytest.fixture
def home(tmp_path: Path, home_template: Home) -> Home:
    """Networks A and B (private), pub (public), fleeting (public, not retained); four keys."""
    shutil.copytree(home_template.path, tmp_path, symlinks=True, dirs_exist_ok=True)
    return Home(tmp_path, dict(home_template.secrets))


def broker_process(home: Home, stderr: int = subprocess.DEVNULL) -> subprocess.Popen[str]:
    """`radio broker` as an operator starts it, on free ports; its banner on the pipe."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "radio",
            "broker",
            "--config",
            str(home.config),
            "--mqtt",
            "127.0.0.1:0",
            "--ws",
            "127.0.0.1:0",
        ],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )


@pytest.fixture
def broker(home: Home) -> Iterator[BrokerThread]:
    """Radio's embedded broker, in this process, on free ports."""
    with BrokerThread(
        LiveRegistry(home.config), mqtt=Address("127.0.0.1", 0), websocket=Address("127.0.0.1", 0)
    ) as running:
        yield running


ENGINES = ["embedded", pytest.param("mosquitto", marks=pytest.mark.mosquitto)]
"""For a module whose tests must hold on both brokers: ``@pytest.fixture(params=ENGINES)``."""


@functools.cache
def _mosquitto_installed() -> bool:
    """Asked once per test process: each ``mosquitto -h`` is a process of its own."""
    return mosquitto_version() is not None


def require_mosquitto() -> None:
    """Skip without Mosquitto on a developer's machine; fail in CI, which installs it."""
    if not _mosquitto_installed():
        if os.environ.get("CI"):
            pytest.fail("Mosquitto is missing: .ci/run installs it", pytrace=False)
        pytest.skip("Mosquitto is not installed (apt-get install mosquitto)")


@contextlib.contextmanager
def running_broker(engine: str, home: Home) -> Iterator[BrokerThread | MosquittoBroker]:
    """The embedded broker, or a real Mosquitto started from the repository's mosquitto.conf.

    Both on free ports, with ``home``'s keys; Mosquitto's log goes to ``home/mosquitto.log``.
    """
    if engine == "embedded":
        with BrokerThread(
            LiveRegistry(home.config), mqtt=Address("127.0.0.1", 0), websocket=Address("127.0.0.1", 0)
        ) as running:
            yield running
        return
    require_mosquitto()
    with (home.path / "mosquitto.log").open("wb") as log:
        mosquitto = MosquittoBroker(
            LiveRegistry(home.config),
            home.path / "mosquitto",
            mqtt=Address("127.0.0.1", 0),
            websocket=Address("127.0.0.1", 0),
        )
        mosquitto.start(stderr=log.fileno())
        try:
            yield mosquitto
        finally:
            mosquitto.stop()


@pytest.fixture(params=[Broker, RadioBroker], ids=["stock", "radio"])
def any_broker(request: pytest.FixtureRequest, home: Home) -> Iterator[tuple[BrokerThread, bool]]:
    """Stock amqtt and Radio's broker, both with Radio's auth and ACL plugins: only the fixes differ.

    Yields the running broker and whether it is Radio's. A test marked ``broker_config("...")``
    gets those lines added to the ``[broker]`` table of the configuration first.
    """
    marker = request.node.get_closest_marker("broker_config")
    if marker is not None:
        home.config.write_text(home.config.read_text() + "[broker]\n" + "\n".join(marker.args) + "\n")
    with BrokerThread(
        LiveRegistry(home.config),
        mqtt=Address("127.0.0.1", 0),
        websocket=Address("127.0.0.1", 0),
        broker_class=request.param,
    ) as running:
        yield running, request.param is RadioBroker


@pytest.fixture(scope="module")
def collect_stock_leftovers() -> Iterator[None]:
    """Stock amqtt leaves sockets for the garbage collector: collect them before the module ends.

    A module using it ignores PytestUnraisableExceptionWarning (each test asserts the behaviour
    itself), so that no other module inherits stock's leftovers.
    """
    yield
    amqtt_plugin_managers.clear()  # amqtt keeps the last broker reachable from a module global
    gc.collect()


@pytest.fixture(params=["tcp", "ws"])
def transport(request: pytest.FixtureRequest) -> str:
    """Each client test runs over MQTT/TCP and over MQTT/WebSocket."""
    return str(request.param)


Connect = Callable[..., Client]


@pytest.fixture
def protocol() -> int:
    """The MQTT protocol level of the clients ``connect`` opens: 4 (3.1.1); a module may run 5 too."""
    return 4


@pytest.fixture
def connect(broker: BrokerThread, home: Home, transport: str, protocol: int) -> Iterator[Connect]:
    """Open a client as a key of ``home`` (or anonymously) and close it after the test."""
    clients: list[Client] = []

    def _connect(
        key: str | None = None, *, expect: int = 0, secret: str | None = None, **kwargs: object
    ) -> Client:
        port = broker.ws_port if transport == "ws" else broker.mqtt_port
        password = secret if secret is not None else home.secrets.get(key or "")
        kwargs.setdefault("protocol", protocol)
        client = Client(transport, port, key, password if key else None, **kwargs)  # type: ignore[arg-type]
        clients.append(client)
        assert client.connect() == expect
        return client

    yield _connect
    for client in clients:
        client.close()


@dataclass
class Bridge:
    """`radio bridge` in a subprocess: real gunicorn workers, real HTTP, on a free port."""

    process: subprocess.Popen[str]
    url: str
    admin_url: str | None = None
    """Where its banner says the admin API is (None: switched off)."""

    def post(self, body: bytes | str | None = None, headers: dict[str, str] | None = None, **kwargs: object):
        return requests.post(self.url + "/publish", data=body, headers=headers or {}, timeout=30, **kwargs)

    def stop(self, timeout: float = 30) -> str:
        """Stop it as Ctrl-C would; returns what it printed on stderr."""
        self.process.send_signal(signal.SIGINT)
        try:
            _, stderr = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for process in [*psutil.Process(self.process.pid).children(recursive=True), self.process]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()
            _, stderr = self.process.communicate()
            pytest.fail(f"radio bridge still ran {timeout:g} s after Ctrl-C; its stderr:\n{stderr[-3000:]}")
        assert self.process.returncode == 0, stderr
        return stderr


def radio_process(home: Home, command: str, *args: str) -> subprocess.Popen[str]:
    """``radio COMMAND --config ... ARGS`` as an operator starts it; its output on pipes, as text."""
    return subprocess.Popen(
        [sys.executable, "-m", "radio", command, "--config", str(home.config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def start_bridge(home: Home, broker_port: int, *options: str, healthy: bool = True) -> Bridge:
    process = radio_process(
        home, "bridge", "--listen", "127.0.0.1:0", "--broker", f"mqtt://127.0.0.1:{broker_port}", *options
    )
    assert process.stdout is not None
    url = admin_url = None
    for line in process.stdout:
        if match := re.search(r"POST (https?://127\.0\.0\.1:\d+)/publish", line):
            url = match[1]
        if match := re.search(r"admin API: (https?)://(?:127\.0\.0\.1|0\.0\.0\.0):(\d+)/admin/", line):
            admin_url = f"{match[1]}://127.0.0.1:{match[2]}"  # a listener on every address: loopback too
        if "Ctrl-C" in line:
            break
    assert url is not None, process.stderr.read() if process.stderr else ""
    bridge = Bridge(process, url, admin_url)
    # Readiness: a load balancer would poll /healthz the same way.
    if healthy:
        linked = until(lambda: requests.get(url + "/healthz", timeout=10).status_code == 200, 20, every=0.05)
        assert linked, "the bridge never reached the broker"
    return bridge


@pytest.fixture
def bridge(home: Home, broker: BrokerThread) -> Iterator[Bridge]:
    running = start_bridge(home, broker.mqtt_port)
    yield running
    stderr = running.stop()
    assert "Traceback" not in stderr, stderr


@pytest.fixture
def everything(broker: BrokerThread, home: Home) -> Iterator[Client]:
    """An admin listening to every topic over TCP: what any listener could possibly receive."""
    client = Client("tcp", broker.mqtt_port, "admin", home.secrets["admin"])
    assert client.connect() == 0
    assert client.subscribe("#", qos=1) == 1
    yield client
    client.close()


def running(process: psutil.Process) -> bool:
    """Whether the process runs (a zombie waiting for its new parent to reap it does not)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
