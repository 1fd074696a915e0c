"""`radio up`: the whole platform from one command, as a user runs it; and the HTTP generator."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
import requests
from conftest import ENGINES, require_mosquitto

from radio.cli.up import reachable


@pytest.mark.parametrize("engine", ENGINES)
def test_radio_up_runs_everything_and_ctrl_c_leaves_nothing_behind(tmp_path, engine):
    if engine == "mosquitto":
        require_mosquitto()
    env = {k: v for k, v in os.environ.items() if k not in ("RADIO_CONFIG", "RADIO_KEYS")}
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "radio",
            "up",
            "--mqtt",
            "127.0.0.1:0",
            "--ws",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--engine",
            engine,
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    listen = None
    try:
        banner = ""
        assert up.stdout is not None
        for line in up.stdout:
            banner += line
            if "Ctrl-C" in line:
                break
        ws_url = re.search(r"radio listen sample_net --url (\S+)", banner)[1]
        http_url = re.search(r"HTTP publish:\s+(\S+)", banner)[1]
        key = re.search(r"demo publisher key:\s+(\S+)", banner)[1]
        assert re.search(r"curl -X POST \S+ -H 'API-KEY: \S+' -d ", banner)
        assert re.search(r"mosquitto_sub -h 127\.0\.0\.1 -p \d+ -t 'networks/sample_net/#' -v", banner)
        assert (tmp_path / ".radio" / "demo.key").read_text().strip() == key
        children = psutil.Process(up.pid).children(recursive=True)
        assert len(children) >= 3  # broker, bridge (and its workers), traffic simulator

        listen = subprocess.Popen(
            [sys.executable, "-m", "radio", "listen", "sample_net", "--url", ws_url],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        samples: queue.Queue[dict] = queue.Queue()
        threading.Thread(
            target=lambda: [samples.put(json.loads(line)) for line in listen.stdout], daemon=True
        ).start()
        ticks = [samples.get(timeout=15)["data"]["tick"] for _ in range(3)]
        assert ticks == sorted(ticks)

        response = requests.post(
            http_url,
            headers={"API-KEY": key},
            data=json.dumps({"network": "sample_net", "data": {"hello": "radio"}}),
            timeout=10,
        )
        assert response.json() == {"message": "OK"}
        deadline = time.monotonic() + 15
        while samples.get(timeout=15)["data"] != {"hello": "radio"}:
            assert time.monotonic() < deadline
    finally:
        if listen is not None:
            listen.send_signal(signal.SIGINT)
            listen.communicate(timeout=20)
        up.send_signal(signal.SIGINT)
        _, err = up.communicate(timeout=60)
    assert up.returncode == 0, err
    assert "Traceback" not in err
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


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
            "--key",
            home.secrets["gen"],
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
