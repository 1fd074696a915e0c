"""What TLS costs the HTTP door: `POST /publish` over HTTPS against plain HTTP, same broker.

    python bench/https_door.py                 # 3 interleaved rounds of 5 s each
    python bench/https_door.py --smoke

Two `radio bridge` processes (2 workers each) publish to one embedded broker: one serves plain
HTTP, the other HTTPS with a certificate from `radio certs dev` (`[tls]` in its configuration).
wrk (50 connections, kept alive: the handshake is paid once per connection, as a generator with
a keep-alive client pays it) loads each in turn. Reported: requests per second, p99, the bridge's
CPU per request, and the ratio HTTPS / HTTP round by round.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from http_door import cpu_seconds, wrk
from http_servers import bench_home, start

RADIO = [sys.executable, "-m", "radio"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="one 1 s round")
    args = parser.parse_args()
    rounds, seconds = (1, 1) if args.smoke else (args.rounds, args.seconds)
    folder = Path(tempfile.mkdtemp(prefix="radio-bench-https-"))
    env, key = bench_home(folder)
    certs = folder / "certs"
    subprocess.run([*RADIO, "certs", "dev", "--dir", str(certs)], check=True, capture_output=True)
    secure = folder / "secure" / "radio.toml"  # one bridge per state folder: the second has its own
    secure.parent.mkdir(mode=0o700)
    secure.write_text(
        (folder / "radio.toml").read_text()
        + f'[tls]\ncert = "{certs / "server.pem"}"\nkey = "{certs / "server.key"}"\n'
    )
    running: list[subprocess.Popen[str]] = []  # stopped however the run ends, a failed start too
    try:
        broker, mqtt = start(
            [*RADIO, "broker", "--mqtt", "127.0.0.1:0", "--ws", "127.0.0.1:0"],
            r"mqtt://127\.0\.0\.1:(\d+)",
            env,
        )
        running.append(broker)
        bridge_args = ["bridge", "--listen", "127.0.0.1:0", "--broker", f"mqtt://127.0.0.1:{mqtt}"]
        plain, plain_url = start([*RADIO, *bridge_args], r"POST (http://\S+)/publish", env)
        running.append(plain)
        shutil.copy(folder / "bridge.key", secure.parent / "bridge.key")  # one bridge key, as in keys.toml
        tls, tls_url = start(
            [*RADIO, *bridge_args, "--config", str(secure), "--keys", str(folder / "keys.toml")],
            r"POST (https://\S+)/publish",
            env,
        )
        running.append(tls)
        deadline = time.monotonic() + 30
        for url in (plain_url, tls_url):  # each up and linked to the broker
            while subprocess.run(
                ["curl", "-ksf", "-o", "/dev/null", url + "/healthz"], check=False
            ).returncode:
                if time.monotonic() > deadline:
                    raise RuntimeError(url + " never became healthy")
                time.sleep(0.1)
        results: dict[str, list[dict[str, float]]] = {"http": [], "https": []}
        for n in range(rounds):
            for name, url, process in (("http", plain_url, plain), ("https", tls_url, tls)):
                before = cpu_seconds(process)
                result = wrk(url, seconds, key, 50)
                result["bridge_us_per_request"] = round(
                    (cpu_seconds(process) - before) / max(result["rps"] * seconds, 1) * 1e6, 1
                )
                results[name].append(result)
                print(json.dumps({"round": n + 1, "door": name, **result}), flush=True)
        ratios = [s["rps"] / p["rps"] for s, p in zip(results["https"], results["http"], strict=True)]
        print("\n| door | requests/s (median, range) | p99 ms | bridge CPU us per request |")
        print("|---|---|---|---|")
        for name, runs in results.items():
            rps = [r["rps"] for r in runs]
            cpu = statistics.median(r["bridge_us_per_request"] for r in runs)
            p99 = statistics.median(r["p99_ms"] for r in runs)
            spread = f"{min(rps):,.0f}-{max(rps):,.0f}"
            print(f"| {name} | {statistics.median(rps):,.0f} ({spread}) | {p99} | {cpu} |")
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
        print(f"\nhttps / http: median {statistics.median(ratios):.2f} ({spread})")
    finally:
        for process in running:
            process.terminate()
        for process in running:
            process.wait(30)


if __name__ == "__main__":
    main()
