"""HTTP door: POST /publish through the bridge vs a bare Flask endpoint, same server, same run.

    python bench/http_door.py             # 3 interleaved rounds of 10 s each, wrk -c50
    python bench/http_door.py --smoke     # one 1 s round: checks the script still works
    python bench/http_door.py --server waitress   # the same under waitress (pip install waitress)
    python bench/http_door.py --engine mosquitto  # the bridge in front of Mosquitto

Both are served by gunicorn with the same settings as `radio bridge` (2 sync workers); the bridge
publishes every sample at QoS 1 to the embedded broker and waits for its PUBACK. Prints a JSON
line per measurement and a summary (medians, spread, ratio); CPU seconds per process show which
one was saturated.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent


def bench_home(home: Path) -> tuple[dict[str, str], str]:
    """A platform folder with one public network, bench, and a key that may publish to it."""
    (home / "radio.toml").write_text("[networks.bench]\npublic = true\nretain = true\n")
    env = {**os.environ, "RADIO_CONFIG": str(home / "radio.toml")}
    key = subprocess.run(
        [sys.executable, "-m", "radio", "keys", "add", "bench", "--publish", "bench"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout.strip()
    return env, key


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(
    args: list[str], pattern: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert process.stdout is not None
    for line in process.stdout:
        if match := re.search(pattern, line):
            return process, match[1]
    msg = f"{args[:3]} did not start"
    raise RuntimeError(msg)


def wrk(url: str, seconds: int, key: str) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t2", "-c50", f"-d{seconds}s", "--latency", "-s", str(HERE / "post.lua"), url + "/publish"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "RADIO_BENCH_KEY": key},
    ).stdout

    def latency_ms(label: str) -> float:
        value, unit = re.search(rf"{label}\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),  # type: ignore[index]
        "p50_ms": latency_ms("50%"),
        "p99_ms": latency_ms("99%"),
        "non_2xx": float(errors[1]) if errors else 0.0,
    }


def cpu_seconds(process: subprocess.Popen[str]) -> float:
    parent = psutil.Process(process.pid)
    total = 0.0
    for p in [parent, *parent.children(recursive=True)]:
        times = p.cpu_times()
        total += times.user + times.system
    return total


Target = tuple[subprocess.Popen[str], str, subprocess.Popen[str], str]


def targets(args: argparse.Namespace, home: Path, env: dict[str, str], radio: list[str], mqtt: str) -> Target:
    """Start the bridge and the bare yardstick under the chosen server."""
    if args.server == "gunicorn":
        bridge, bridge_url = start(
            [
                *radio,
                "bridge",
                "--listen",
                "127.0.0.1:0",
                "--broker",
                f"mqtt://127.0.0.1:{mqtt}",
                "--workers",
                str(args.workers),
            ],
            r"POST (http://\S+)/publish",
            env,
        )
        port = free_port()
        bare = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--workers",
                str(args.workers),
                "--worker-class",
                "sync",
                "--bind",
                f"127.0.0.1:{port}",
                "--chdir",
                str(HERE),
                "--log-level",
                "warning",
                "bare_flask:create_app()",
            ],
            stderr=subprocess.DEVNULL,
        )
    else:
        # waitress: one process, 4 threads sharing one broker link (its paho network thread).
        (home / "radio.toml").write_text(
            f'[broker]\nmqtt = "127.0.0.1:{mqtt}"\n[networks.bench]\npublic = true\nretain = true\n'
        )
        bridge_port, port = free_port(), free_port()
        bridge = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "waitress",
                "--threads",
                "4",
                f"--listen=127.0.0.1:{bridge_port}",
                "--call",
                "radio.bridge.app:create_app",
            ],
            stderr=subprocess.DEVNULL,
            env=env,
        )
        bridge_url = f"http://127.0.0.1:{bridge_port}"
        bare = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "waitress",
                "--threads",
                "4",
                f"--listen=127.0.0.1:{port}",
                "--call",
                "bare_flask:create_app",
            ],
            stderr=subprocess.DEVNULL,
            cwd=HERE,
        )
    bare_url = f"http://127.0.0.1:{port}"
    return bridge, bridge_url, bare, bare_url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="one short round, to check the script works")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers, for both targets")
    parser.add_argument(
        "--server",
        choices=["gunicorn", "waitress"],
        default="gunicorn",
        help="serve both targets with gunicorn (as radio bridge does) or waitress (pip install waitress)",
    )
    parser.add_argument(
        "--engine",
        choices=["embedded", "mosquitto"],
        default="embedded",
        help="the broker behind the bridge (radio broker --engine)",
    )
    args = parser.parse_args()
    rounds, seconds = (1, 1) if args.smoke else (args.rounds, args.seconds)

    home = Path(tempfile.mkdtemp(prefix="radio-bench-"))
    env, key = bench_home(home)
    radio = [sys.executable, "-m", "radio"]
    broker, mqtt = start(
        [*radio, "broker", "--mqtt", "127.0.0.1:0", "--ws", "127.0.0.1:0", "--engine", args.engine],
        r"mqtt://127\.0\.0\.1:(\d+)",
        env,
    )
    bridge, bridge_url, bare, bare_url = targets(args, home, env, radio, mqtt)
    try:
        deadline = time.monotonic() + 20
        for url in (bridge_url, bare_url):
            while subprocess.run(
                [
                    "curl",
                    "-sf",
                    "-o",
                    "/dev/null",
                    "-X",
                    "POST",
                    "-H",
                    f"API-KEY: {key}",
                    "-d",
                    '{"network": "bench", "data": {}}',
                    url + "/publish",
                ],
                check=False,
            ).returncode:
                if time.monotonic() > deadline:
                    raise RuntimeError(url + " never answered")
                time.sleep(0.1)
        results: dict[str, list[dict[str, float]]] = {"bridge": [], "bare": []}
        for n in range(rounds):
            for name, url in (("bridge", bridge_url), ("bare", bare_url)):  # interleaved: noise hits both
                before = {
                    p: cpu_seconds(proc)
                    for p, proc in (("broker", broker), ("bridge", bridge), ("bare", bare))
                }
                result = wrk(url, seconds, key)
                for p, proc in (("broker", broker), ("bridge", bridge), ("bare", bare)):
                    result[f"cpu_{p}_s"] = round(cpu_seconds(proc) - before[p], 2)  # type: ignore[arg-type]
                results[name].append(result)
                print(json.dumps({"round": n + 1, "target": name, **result}), flush=True)
        summary = {}
        for name, runs in results.items():
            rps = [r["rps"] for r in runs]
            summary[name] = {
                "rps_median": statistics.median(rps),
                "rps_spread": [min(rps), max(rps)],
                "p50_ms_median": statistics.median(r["p50_ms"] for r in runs),
                "p99_ms_median": statistics.median(r["p99_ms"] for r in runs),
                "non_2xx": sum(r["non_2xx"] for r in runs),
            }
        ratios = [b["rps"] / y["rps"] for b, y in zip(results["bridge"], results["bare"], strict=True)]
        summary["bridge_over_bare"] = {
            "median": round(statistics.median(ratios), 3),
            "spread": [round(min(ratios), 3), round(max(ratios), 3)],
        }
        print(json.dumps({"summary": summary}, indent=2))
    finally:
        for proc in (bridge, broker, bare):
            proc.send_signal(signal.SIGINT)
        for proc in (bridge, broker, bare):
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
