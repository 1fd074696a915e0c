"""`radio up`: the whole platform from one command, as a user runs it; and the HTTP generator."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests
from commands import ANY_PORTS, BROKER_ON_ANY_PORTS, listen_lines, radio_in, read_banner, started_in, stop
from conftest import ENGINES, require_mosquitto
from polling import until

from radio.cli.up import DEFAULT_CONFIG, _not_in_config, config_path, reachable
from radio.config import Address, load_settings


@dataclass
class Up:
    """A running `radio up`, its banner read."""

    process: subprocess.Popen[str]
    banner: str
    children: list[psutil.Process]

    def value(self, pattern: str) -> str:
        match = re.search(pattern, self.banner)
        assert match is not None, self.banner
        return match[1]

    @property
    def ports(self) -> list[int]:
        return [
            int(self.value(r"mqtt://127\.0\.0\.1:(\d+)")),
            int(self.value(r"ws://127\.0\.0\.1:(\d+)/mqtt")),
            int(self.value(r"HTTP publish:\s+http://127\.0\.0\.1:(\d+)")),
        ]


def post_hello(http_url: str, key: str) -> None:
    """The quick start's sample to sample_net, as its curl line posts it: the bridge says OK."""
    response = requests.post(
        http_url,
        headers={"API-KEY": key},
        data=json.dumps({"network": "sample_net", "data": {"hello": "radio"}}),
        timeout=10,
    )
    assert response.json() == {"message": "OK"}


def start_up(folder: Path, engine: str = "embedded") -> Up:
    """`radio up` on free ports, in its own session (as a terminal would start it)."""
    if engine == "mosquitto":
        require_mosquitto()
    env = {k: v for k, v in os.environ.items() if k not in ("RADIO_CONFIG", "RADIO_KEYS", "RADIO_KEY")}
    process = subprocess.Popen(
        [sys.executable, "-m", "radio", "up", "--engine", engine, *ANY_PORTS],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        banner = read_banner(process)
        assert "Radio is up." in banner, banner + (process.stderr.read() if process.stderr else "")
        up = Up(process, banner, [])
        health = up.value(r"HTTP publish:\s+(\S+)/publish") + "/healthz"
        # The bridge's workers are up.
        assert until(lambda: requests.get(health, timeout=10).status_code == 200, within=30, every=0.05)
        up.children = psutil.Process(process.pid).children(recursive=True)
        assert len(up.children) >= 5  # broker, bridge and its 2 workers, traffic simulator
    except BaseException:
        process.terminate()  # radio up stops what it started
        process.communicate(timeout=60)
        raise
    return up


def admin_named(up: Up) -> tuple[str, str, str]:
    """The admin API's base URL as the banner names it (answering 401 without a key), /metrics's, and its note."""
    admin = up.value(
        r"admin API:\s+(http://127\.0\.0\.1:\d+)/admin/ \(admin keys: radio keys add NAME --admin\)\n"
    )
    assert requests.get(f"{admin}/admin/keys", timeout=10).status_code == 401
    metrics = re.search(r"metrics:\s+(\S+)/metrics(.*)\n", up.banner)
    assert metrics is not None, up.banner
    return admin, metrics[1], metrics[2]


LOUD = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|: (Warning|Error): ")
"""A line at WARNING or above: Radio's logs, and Mosquitto's own on standard error."""


def loud(stderr: str) -> list[str]:
    """What a run said at WARNING or above, but Mosquitto's warning that it runs as root, which
    only a machine running the tests as root sees (a service runs it as its own user)."""
    as_root = os.geteuid() == 0
    return [
        line
        for line in stderr.splitlines()
        if LOUD.search(line) and not (as_root and "should not be run as root" in line)
    ]


def left_behind(children: list[psutil.Process], timeout: float = 30) -> list[psutil.Process]:
    """The children still running once they had time to stop (zombies awaiting a reaper are gone)."""
    deadline = time.monotonic() + timeout

    def running(child: psutil.Process) -> bool:
        try:
            return child.is_running() and child.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    while (alive := [c for c in children if running(c)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def port_is_free(port: int, timeout: float = 10) -> bool:
    """Whether a server could bind the port again, once the closing connections had time to go.

    A killed server's sockets are closed by the kernel, but a connection still being torn down
    (FIN_WAIT) blocks a bind for a moment; a listener left behind blocks it for good.
    """
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as any server binds
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                if time.monotonic() > deadline:
                    return False
            else:
                return True
        time.sleep(0.1)


def in_no_command_line(secret: str) -> None:
    """The secret is in no process's command line, where every user of the machine could read it."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            assert secret.encode() not in cmdline.read_bytes(), cmdline


@pytest.mark.parametrize(
    "table",
    [
        '[broker]\nmqtt = "127.0.0.1:0"\n',
        '[broker]\nwebsocket = "127.0.0.1:0"\n',
        '[bridge]\nlisten = "127.0.0.1:0"\n',
    ],
)
def test_a_radio_toml_leaving_a_port_to_the_system_has_other_commands_told_to_be_given_urls(tmp_path, table):
    """Port 0 in radio.toml is no port a command can reach: the banner must not say that radio
    commands run in the folder find the platform, as it does when every address is in the file."""
    (tmp_path / "radio.toml").write_text(table)
    assert _not_in_config(load_settings(tmp_path / "radio.toml"), mqtt=None, ws=None, http=None)
    (tmp_path / "radio.toml").write_text('[broker]\nmqtt = "127.0.0.1:1884"\n')
    assert not _not_in_config(load_settings(tmp_path / "radio.toml"), mqtt=None, ws=None, http=None)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_radio_up_runs_everything_and_ctrl_c_leaves_nothing_behind(tmp_path, engine):
    up = start_up(tmp_path, engine)
    listen, listened = None, ""
    try:
        pasted_listen = shlex.split(up.value(r"\n  (radio listen .+)\n"))  # the banner's, as pasted
        http_url = up.value(r"HTTP publish:\s+(\S+)")
        key = (tmp_path / "demo.key").read_text().strip()
        assert (
            f"demo publisher key:   'demo', its secret in {tmp_path / 'demo.key'} (yours alone)" in up.banner
        )
        assert f'"$(cat {tmp_path / "demo.key"})" | curl -sS -H @- http' in up.banner
        assert key not in up.banner  # the banner is often a log (docker logs, a service's journal)
        assert re.search(r"mosquitto_sub -h 127\.0\.0\.1 -p \d+ -t 'networks/sample_net/#' -v", up.banner)
        assert f"configuration:        {tmp_path / 'radio.toml'} (made now, the defaults)" in up.banner
        store = {"embedded": "broker.db", "mosquitto": "mosquitto/"}[engine]  # named, and there
        assert f"recorder.key, {store}, history.db, usage.db)" in up.banner
        assert (tmp_path / store.rstrip("/")).exists()
        # Ports the system picked are in no radio.toml: other commands are told to be given --url.
        assert (
            "other radio commands: this run's addresses are not radio.toml's: give other radio commands "
            "--url, radio listen --http" in up.banner
        )
        # The admin API and /metrics are where the bridge bound them: on the HTTP port by default.
        assert admin_named(up) == (http_url.removesuffix("/publish"),) * 2 + (" (admin key)",)

        in_no_command_line(key)

        # One configuration rule: radio commands run in the same folder see the running platform.
        keys = subprocess.run(
            [sys.executable, "-m", "radio", "keys", "list"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
        )
        assert re.search(r"^demo\s+sample_net\s", keys.stdout, re.MULTILINE), keys.stderr

        listen = subprocess.Popen(
            [sys.executable, "-m", "radio", *pasted_listen[1:]],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        samples: queue.Queue[dict] = queue.Queue()
        reader = threading.Thread(
            target=lambda: [samples.put(json.loads(line)) for line in listen.stdout], daemon=True
        )
        reader.start()
        ticks = [samples.get(timeout=15)["data"]["tick"] for _ in range(3)]
        assert ticks == sorted(ticks)

        post_hello(http_url, key)
        if shutil.which("curl"):  # the banner's own command, as pasted
            pasted = up.value(r"\n  (printf .+)\n")
            posted = subprocess.run(
                ["bash", "-c", pasted], capture_output=True, text=True, timeout=30, check=True
            )
            assert json.loads(posted.stdout) == {"message": "OK"}
        deadline = time.monotonic() + 15
        while samples.get(timeout=15)["data"] != {"hello": "radio"}:
            assert time.monotonic() < deadline
    finally:
        if listen is not None:
            listen.send_signal(signal.SIGINT)
            listen.wait(timeout=20)
            reader.join(timeout=20)  # it reads stdout to its end: closing it under the thread would race
            listen.stdout.close()
            with listen.stderr:
                listened = listen.stderr.read()
        up.process.send_signal(signal.SIGINT)
        _, err = up.process.communicate(timeout=60)
    # The pasted command finds this run's bridge too, for the history's numbering.
    assert "no history" not in listened, listened
    assert up.process.returncode == 0, err
    assert "Traceback" not in err
    assert not loud(err), err  # a clean start and a clean stop: nothing to warn about
    assert not left_behind(up.children)
    assert all(port_is_free(port) for port in up.ports)


@pytest.mark.slow
def test_an_admin_listener_on_a_port_the_system_picks_is_named_in_the_banner(tmp_path):
    config = DEFAULT_CONFIG.replace("[bridge]\n", '[bridge]\nadmin = "127.0.0.1:0"\n', 1)
    assert config != DEFAULT_CONFIG
    (tmp_path / "radio.toml").write_text(config)
    up = start_up(tmp_path)
    try:
        admin, metrics, note = admin_named(up)
        http = up.value(r"HTTP publish:\s+(\S+)/publish")
        assert admin == metrics != http
        assert not note  # on its own listener, which the operator keeps private: no key asked
        assert requests.get(f"{admin}/metrics", timeout=10).status_code == 200
        assert requests.get(f"{http}/admin/keys", timeout=10).status_code == 404
    finally:
        up.process.send_signal(signal.SIGINT)
        _, err = up.process.communicate(timeout=60)
    assert up.process.returncode == 0, err


# SIGINT (Ctrl-C) is the first test's way to stop radio up: it checks the same.
STOPS = {
    "SIGHUP to the group (the terminal closes)": lambda p: os.killpg(p.pid, signal.SIGHUP),
    "SIGTERM": lambda p: p.send_signal(signal.SIGTERM),
    "SIGKILL of radio up alone": lambda p: p.kill(),
}


@pytest.mark.parametrize(
    ("engine", "how"),
    [
        *(("embedded", how) for how in STOPS),
        pytest.param("mosquitto", "SIGHUP to the group (the terminal closes)", marks=pytest.mark.mosquitto),
        pytest.param("mosquitto", "SIGKILL of radio up alone", marks=pytest.mark.mosquitto),
    ],
)
def test_nothing_outlives_radio_up_whatever_stops_it(tmp_path, engine, how):
    up = start_up(tmp_path, engine)
    STOPS[how](up.process)
    up.process.communicate(timeout=60)
    assert not left_behind(up.children), [c.cmdline() for c in left_behind(up.children, 0)]
    assert all(port_is_free(port) for port in up.ports), up.ports


PARTS = {
    "broker": "radio broker",
    "bridge": "radio bridge",
    "recorder": "radio recorder",
    "traffic simulator": "radio device",
}
"""Each part radio up starts, by the name it gives it, and how its command line starts."""


@pytest.mark.parametrize(
    "part", ["broker", *(pytest.param(part, marks=pytest.mark.slow) for part in list(PARTS)[1:])]
)
@pytest.mark.slow  # seconds of waiting: the fast tier stays under two minutes
def test_a_part_killed_stops_the_platform_with_one_line_and_the_folder_starts_again_at_once(tmp_path, part):
    """``kill -9`` of one part: radio up says which, and how it ended, in one line, stops the
    others and exits 1; no process or port is left, and the same folder serves again at once."""
    up = start_up(tmp_path)
    victim = next(c for c in up.children if " ".join(c.cmdline()[2:4]).startswith(PARTS[part]))
    victim.kill()
    _, stderr = up.process.communicate(timeout=60)
    assert up.process.returncode == 1
    said = [line for line in stderr.splitlines() if line.startswith("radio: ")]
    assert said == [f"radio: the {part} was killed (SIGKILL); stopping everything"], stderr
    assert not left_behind(up.children), [c.cmdline() for c in left_behind(up.children, 0)]
    assert all(port_is_free(port) for port in up.ports), up.ports
    again = start_up(tmp_path)
    try:
        post_hello(again.value(r"HTTP publish:\s+(\S+)"), (tmp_path / "demo.key").read_text().strip())
    finally:
        again.process.send_signal(signal.SIGTERM)
        again.process.communicate(timeout=60)
    assert again.process.returncode == 0


def test_the_traffic_simulator_publishes_through_the_bridge_like_the_article(home, bridge, everything):
    device = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "radio",
            "device",
            "traffic",
            "--config",
            str(home.config),
            "--network",
            "A",
            "--via",
            "http",
            "--url",
            bridge.url,
            "--period",
            "0.2",
            "--size",
            "2x3",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RADIO_KEY": home.secrets["gen"]},
    )
    try:
        states = [json.loads(m.payload) for m in everything.expect(3, timeout=20)]
    finally:
        device.send_signal(signal.SIGTERM)
        _, err = device.communicate(timeout=20)
        sys.stderr.write(err)  # pytest shows it if the test fails
    assert device.returncode == 0, err
    assert [s["tick"] for s in states] == [10, 20, 30]
    assert len(states[0]["density"]) == 14  # 2x3 grid: 7 links, both ways


def test_the_banner_shows_wildcard_binds_as_addresses_to_paste():
    """In the container, radio up binds 0.0.0.0; the printed commands must still work when pasted."""
    assert reachable("ws://0.0.0.0:8080/mqtt") == "ws://127.0.0.1:8080/mqtt"
    assert reachable("http://[::]:5000") == "http://[::1]:5000"
    assert reachable("http://10.1.2.3:5000") == "http://10.1.2.3:5000"


def state_of(folder: Path) -> dict[str, tuple[int, int]]:
    """The files of a state folder Radio itself does not write while running, by inode and mtime."""
    quiet = ("radio.toml", "keys.toml", "demo.key", "bridge.key", "recorder.key")
    return {name: ((p := folder / name).stat().st_ino, p.stat().st_mtime_ns) for name in quiet}


@pytest.mark.slow
def test_one_platform_per_state_folder_a_second_start_refuses_naming_the_first(tmp_path):
    up = start_up(tmp_path)
    try:
        before = state_of(tmp_path)
        files = sorted(p.name for p in tmp_path.iterdir())
        pids = {c.name(): c.pid for c in up.children}
        assert pids
        for args, holder in (
            (["up", *ANY_PORTS], up.process.pid),
            (["broker", "--mqtt", "127.0.0.1:0", "--ws", "127.0.0.1:0"], None),
            (["bridge", "--listen", "127.0.0.1:0"], None),
            (["recorder"], None),
        ):
            second = radio_in(tmp_path, *args)
            assert second.returncode == 2, second.stderr
            assert second.stdout == ""
            lines = second.stderr.splitlines()
            assert len(lines) == 1, second.stderr
            part = "up" if args[0] == "up" else args[0]
            match = re.fullmatch(
                rf"radio: radio {part} \(pid (\d+)\) already runs on the state folder .+", lines[0]
            )
            assert match is not None, lines[0]
            pid = int(match[1])
            if holder is not None:
                assert pid == holder
            else:  # the part radio up started, still running
                assert psutil.Process(pid).parent().pid == up.process.pid
        assert state_of(tmp_path) == before
        assert sorted(p.name for p in tmp_path.iterdir()) == files
        assert up.process.poll() is None  # the first platform runs on, undisturbed
    finally:
        up.process.send_signal(signal.SIGINT)
        up.process.communicate(timeout=60)


def test_a_state_folder_is_free_again_once_its_platform_is_killed(tmp_path):
    """The lock is the kernel's: a `kill -9` leaves no stale lock behind to refuse the next start."""
    (tmp_path / "radio.toml").write_text("[networks.sample_net]\npublic = true\n")
    for _ in range(2):
        broker = started_in(tmp_path, *BROKER_ON_ANY_PORTS)
        banner = read_banner(broker)
        assert "Radio broker running" in banner, broker.stderr.read() if broker.stderr else ""
        broker.kill()
        broker.communicate(timeout=30)


@pytest.mark.parametrize("command", ["up", "broker", "bridge"])
def test_a_busy_port_is_one_line_naming_the_address_and_exit_2(tmp_path, command):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        args = {
            "up": ["up", "--mqtt", "127.0.0.1:0", "--ws", "127.0.0.1:0", "--http", busy],
            "broker": ["broker", "--mqtt", "127.0.0.1:0", "--ws", busy],
            "bridge": ["bridge", "--listen", busy],
        }[command]
        result = radio_in(tmp_path, *args)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert (
        lines[0]
        == f"radio: the {'broker' if command == 'broker' else 'bridge'} cannot listen on {busy}: Address already in use"
    )
    assert not (tmp_path / "broker.db").exists()  # refused before anything started
    assert not (tmp_path / "running").exists()  # nor a lock naming a part that never ran


def test_a_start_refused_beside_a_running_part_leaves_only_that_part_s_lock(tmp_path):
    """radio up takes its own lock before it finds the broker's held: it gives its own back, and
    leaves the broker's, which still refuses the next start."""
    (tmp_path / "radio.toml").write_text("[networks.sample_net]\npublic = true\n")
    broker = started_in(tmp_path, *BROKER_ON_ANY_PORTS)
    try:
        assert "Ctrl-C" in read_banner(broker)
        for _ in range(2):
            result = radio_in(tmp_path, "up", *ANY_PORTS)
            assert result.returncode == 2, result.stderr
            assert f"radio broker (pid {broker.pid}) already runs" in result.stderr
            assert not (tmp_path / "running" / "up.lock").exists()
            assert (tmp_path / "running" / "broker.lock").exists()
    finally:
        stop(broker)


def test_the_configuration_radio_up_makes_holds_the_addresses_it_was_given(tmp_path, monkeypatch):
    """Other commands in the folder read radio.toml: it must name this platform, not the defaults."""
    monkeypatch.chdir(tmp_path)
    given = {"127.0.0.1:1883": "127.0.0.1:1884", "127.0.0.1:8080": "127.0.0.1:8081", "127.0.0.1:5000": None}
    path, made = config_path(None, None, {k: Address.parse(v) if v else None for k, v in given.items()})
    assert made
    settings = load_settings(path)
    assert str(settings.broker.mqtt) == "127.0.0.1:1884"
    assert str(settings.broker.websocket) == "127.0.0.1:8081"
    assert str(settings.bridge.listen) == "127.0.0.1:5000"  # not given: the default
    assert [str(n) for n in settings.networks] == ["sample_net"]  # and the rest is the defaults


def test_the_banner_says_a_configuration_made_now_holds_the_address_it_was_given(tmp_path):
    """Not "the defaults" alone: the file names the HTTP port given, which the defaults do not."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        http = f"127.0.0.1:{probe.getsockname()[1]}"
    up = started_in(tmp_path, "up", "--mqtt", "127.0.0.1:0", "--ws", "127.0.0.1:0", "--http", http)
    try:
        banner = read_banner(up)
    finally:
        stop(up)
    made = (
        f"configuration:        {tmp_path / 'radio.toml'} (made now, the defaults, with the addresses given)"
    )
    assert made in banner, banner
    assert f'listen = "{http}"' in (tmp_path / "radio.toml").read_text()


def test_a_run_stopped_by_a_busy_port_leaves_no_configuration_behind(tmp_path):
    """Else the next run, given other ports, would find it and keep those ports to itself: every
    other command in the folder would go on looking at the busy ones."""
    with contextlib.ExitStack() as stack:
        held = []
        for _ in range(3):
            taken = stack.enter_context(socket.socket())
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            held.append(f"127.0.0.1:{taken.getsockname()[1]}")
        mqtt, ws, http = held
        result = radio_in(tmp_path, "up", "--mqtt", mqtt, "--ws", ws, "--http", http)
    assert result.returncode == 2, result.stderr
    assert "Address already in use" in result.stderr
    assert not (tmp_path / "radio.toml").exists()

    (tmp_path / "radio.toml").write_text("[networks.sample_net]\npublic = true\n")  # one made by hand stays
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = radio_in(tmp_path, "up", "--mqtt", f"127.0.0.1:{taken.getsockname()[1]}")
    assert result.returncode == 2, result.stderr
    assert (tmp_path / "radio.toml").read_text() == "[networks.sample_net]\npublic = true\n"


def _held_above_a_free_port(stack: contextlib.ExitStack) -> int:
    """A port held by a listener here, whose port below it is free: node 2's when node 1 has that."""
    while True:
        taken = stack.enter_context(socket.socket())
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with socket.socket() as below:
            try:
                below.bind(("127.0.0.1", port - 1))
            except OSError:
                continue
        return port


def test_a_busy_port_of_a_local_nats_clusters_second_node_stops_radio_up_before_anything_starts(tmp_path):
    """Every node of a local cluster listens on ports of its own: one taken is the same one line as
    a busy broker port, before radio.toml or any part is made, not a node dying once the rest ran."""
    with contextlib.ExitStack() as stack:
        busy = _held_above_a_free_port(stack)
        result = radio_in(
            tmp_path, "up", "--engine", "nats", "--nodes", "2", "--mqtt", f"127.0.0.1:{busy - 1}",
            "--ws", "127.0.0.1:0", "--http", "127.0.0.1:0",
        )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"radio: the broker cannot listen on 127.0.0.1:{busy}: Address already in use"
    ]
    assert not (tmp_path / "radio.toml").exists()
    assert not (tmp_path / "nats").exists()


def test_a_run_given_an_address_this_machine_does_not_have_stops_before_anything_starts(tmp_path):
    """192.0.2.1 (TEST-NET-1) is on no machine: one line, and no radio.toml naming it for the next run."""
    result = radio_in(
        tmp_path, "up", "--mqtt", "127.0.0.1:0", "--ws", "127.0.0.1:0", "--http", "192.0.2.1:5000"
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "radio: the bridge cannot listen on 192.0.2.1:5000: Cannot assign requested address"
    ]
    assert not (tmp_path / "radio.toml").exists()


def test_the_broker_metrics_address_busy_is_named(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        (tmp_path / "radio.toml").write_text(f'[broker]\nmetrics = "{busy}"\n')
        result = radio_in(tmp_path, "broker", "--mqtt", "127.0.0.1:0", "--ws", "127.0.0.1:0")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"radio: the broker cannot listen on {busy}: Address already in use"
    ]


def test_the_mosquitto_broker_banner_ends_with_its_ctrl_c_line(tmp_path):
    """Every line of what runs where comes before "Press Ctrl-C": a reader (or a script reading
    up to that line) never misses where Mosquitto's files are."""
    require_mosquitto()
    (tmp_path / "radio.toml").write_text("[networks.sample_net]\npublic = true\n")
    broker = started_in(tmp_path, *BROKER_ON_ANY_PORTS, "--engine", "mosquitto")
    try:
        banner = read_banner(broker)
    finally:
        stop(broker)
    assert banner.endswith(f"  Mosquitto files:      {tmp_path / 'mosquitto'}\nPress Ctrl-C to stop.\n"), (
        banner
    )


def test_the_broker_banner_names_where_its_metrics_are(tmp_path):
    """With [broker] metrics on a port the system picks, the banner is the one place that says which."""
    (tmp_path / "radio.toml").write_text('[broker]\nmetrics = "127.0.0.1:0"\n')
    broker = started_in(tmp_path, *BROKER_ON_ANY_PORTS)
    try:
        banner = read_banner(broker)
        url = re.search(r"^  metrics: +(http://127\.0\.0\.1:\d+/metrics)$", banner, re.MULTILINE)
        assert url is not None, banner
        assert "radio_broker_" in requests.get(url[1], timeout=10).text
    finally:
        stop(broker)


STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
"""How the platform writes an instant, in history lines and live lines alike."""


@pytest.mark.slow
def test_live_lines_carry_their_seq_and_a_listener_resumes_from_the_last_it_printed(tmp_path):
    up = start_up(tmp_path)
    listeners: list[subprocess.Popen[str]] = []
    try:
        _, ws, http = up.ports
        config = tmp_path / "radio.toml"  # commands run in the folder find the bridge where it runs
        config.write_text(config.read_text().replace("127.0.0.1:5000", f"127.0.0.1:{http}"))
        live, lines = listen_lines(tmp_path, "sample_net", "--url", f"ws://127.0.0.1:{ws}/mqtt")
        listeners.append(live)
        printed = [lines.get(timeout=30) for _ in range(4)]  # the retained sample, then live ones
        assert all(re.fullmatch(STAMP, line["received_at"]) for line in printed), printed
        seqs = [line["seq"] for line in printed]
        assert seqs == list(range(seqs[0], seqs[0] + 4)), seqs  # the simulator's samples, one by one
        stop(live)

        resumed, again = listen_lines(
            tmp_path, "sample_net", "--url", f"ws://127.0.0.1:{ws}/mqtt", "--since", str(seqs[-1])
        )
        listeners.append(resumed)
        following = [again.get(timeout=30) for _ in range(3)]
        assert [line["seq"] for line in following] == [seqs[-1] + 1, seqs[-1] + 2, seqs[-1] + 3]
        assert all(re.fullmatch(STAMP, line["received_at"]) for line in following)
        assert {tuple(line) for line in printed + following} == {tuple(printed[0])}  # one format
    finally:
        for process in listeners:
            if process.poll() is None:
                stop(process)
        up.process.send_signal(signal.SIGINT)
        up.process.communicate(timeout=60)
