"""HTTP door: POST /publish through the bridge beside bare Flask endpoints, same run, order alternated.

    python bench/http_door.py             # 5 rounds of 10 s per target, wrk -c50
    python bench/http_door.py --smoke     # two 1 s rounds per target: checks the script still works
    python bench/http_door.py --engine mosquitto  # the bridge in front of Mosquitto
    python bench/http_door.py --server sync       # bridge and bare under another server (http_servers.py)

Four targets, each round in turn, the order reversed every other round (so neither always runs
first, on a fresh or a warm machine):

- ``bridge``: ``radio bridge`` publishing to a network with ``retain = true``; the bridge
  publishes every sample at QoS 1 and answers once the broker acknowledged it (the embedded
  broker acknowledges a retained sample once it is on disk);
- ``bridge_no_retain``: the same bridge, a network with ``retain = false`` (no disk write before
  the acknowledgement; Mosquitto never writes one before its PUBACK);
- ``bare``: a bare Flask endpoint parsing the same JSON, served as the bridge is (2 workers of
  16 threads by default);
- ``flask_gthread``: the same bare endpoint under gunicorn's gthread workers, same numbers of
  workers and threads: what a Flask application's users would otherwise run.

Prints a JSON line per measurement and a summary: medians and spread per target, and each
bridge's ratio to each bare endpoint taken round by round. CPU seconds per process show which
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


def wrk(url: str, seconds: int, key: str, connections: int, network: str = "bench") -> dict[str, float]:
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
        env={**os.environ, "RADIO_BENCH_KEY": key, "RADIO_BENCH_NETWORK": network},
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


def wait_answering(url: str, key: str, network: str) -> None:
    """Until the target answers a POST /publish with a 2xx."""
    body = json.dumps({"network": network, "data": {}})
    deadline = time.monotonic() + 20
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
            body,
            url + "/publish",
        ],
        check=False,
    ).returncode:
        if time.monotonic() > deadline:
            raise RuntimeError(url + " never answered")
        time.sleep(0.1)


def summarize(results: dict[str, list[dict[str, float]]]) -> dict[str, object]:
    """Medians and spread per target; each bridge over each bare endpoint, round by round."""
    summary: dict[str, object] = {}
    for name, runs in results.items():
        rps = [r["rps"] for r in runs]
        summary[name] = {
            "rps_median": statistics.median(rps),
            "rps_spread": [min(rps), max(rps)],
            "p50_ms_median": statistics.median(r["p50_ms"] for r in runs),
            "p99_ms_median": statistics.median(r["p99_ms"] for r in runs),
            "non_2xx": sum(r["non_2xx"] for r in runs),
        }
    for bridge in ("bridge", "bridge_no_retain"):
        for yardstick in ("bare", "flask_gthread"):
            ratios = [b["rps"] / y["rps"] for b, y in zip(results[bridge], results[yardstick], strict=True)]
            summary[f"{bridge}_over_{yardstick}"] = {
                "median": round(statistics.median(ratios), 3),
                "spread": [round(min(ratios), 3), round(max(ratios), 3)],
            }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="two short rounds, to check the script works")
    parser.add_argument("--rounds", type=int, default=5)
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
    rounds, seconds = (2, 1) if args.smoke else (args.rounds, args.seconds)

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
    gthread = serve_bare("gthread", args.workers, args.threads)
    bridge, bare = served.process, yardstick.process
    targets = {  # name: (url, network)
        "bridge": (served.url, "bench"),
        "bridge_no_retain": (served.url, "bench_volatile"),
        "bare": (yardstick.url, "bench"),
        "flask_gthread": (gthread.url, "bench"),
    }
    processes = {"broker": broker, "bridge": bridge, "bare": bare, "flask_gthread": gthread.process}
    try:
        for url, network in targets.values():
            wait_answering(url, key, network)
        results: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        for n in range(rounds):
            order = list(targets) if n % 2 == 0 else list(reversed(targets))
            for name in order:  # interleaved, order alternated: noise and warm-up hit every target
                url, network = targets[name]
                before = {p: cpu_seconds(proc) for p, proc in processes.items()}
                result = wrk(url, seconds, key, args.connections, network)
                for p, proc in processes.items():
                    result[f"cpu_{p}_s"] = round(cpu_seconds(proc) - before[p], 2)
                results[name].append(result)
                print(json.dumps({"round": n + 1, "target": name, **result}), flush=True)
        print(json.dumps({"summary": summarize(results)}, indent=2))
    finally:
        for proc in processes.values():
            proc.send_signal(signal.SIGINT)
        for proc in processes.values():
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
