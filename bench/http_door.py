"""HTTP door: POST /publish through the bridge vs a bare Flask endpoint, same server, same run.

    python bench/http_door.py             # 3 interleaved rounds of 10 s each, wrk -c50
    python bench/http_door.py --smoke     # one 1 s round: checks the script still works
    python bench/http_door.py --engine mosquitto  # the bridge in front of Mosquitto
    python bench/http_door.py --server sync       # both under another server (bench/http_servers.py)

Both are served with the same settings as `radio bridge` (2 workers of 16 threads); the bridge
publishes every sample at QoS 1 to the broker and waits for its PUBACK. Prints a JSON
line per measurement and a summary (medians, spread, ratio); CPU seconds per process show which
one was saturated.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from http_servers import SERVERS, bench_home, serve_bare, serve_bridge, start

HERE = Path(__file__).resolve().parent


def wrk(url: str, seconds: int, key: str, connections: int) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(HERE / "post.lua"),
            url + "/publish",
        ],
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="one short round, to check the script works")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2, help="worker processes, for both targets")
    parser.add_argument("--threads", type=int, default=16, help="threads per worker, for both targets")
    parser.add_argument(
        "--connections", type=int, default=50, help="wrk's connections (kept alive, as wrk does)"
    )
    parser.add_argument(
        "--server",
        choices=SERVERS,
        default="radio",
        help="serve both targets as radio bridge does, or with another server (bench/http_servers.py)",
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
    served = serve_bridge(args.server, home, env, mqtt, workers=args.workers, threads=args.threads)
    yardstick = serve_bare(args.server, args.workers, args.threads)
    bridge, bridge_url, bare, bare_url = served.process, served.url, yardstick.process, yardstick.url
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
                result = wrk(url, seconds, key, args.connections)
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
