"""Refused CONNECTs: broker memory and time per refusal, Radio's broker against stock amqtt.

    python bench/refusals.py                 # 5,000 refused CONNECTs per broker, 3 rounds
    python bench/refusals.py --smoke         # 300, one round

Both brokers run Radio's auth and rights plugins (stock: ``bench/stock_broker.py --radio-plugins``),
so only the fixes differ. Each CONNECT names a real key with a wrong secret, 50 at a time, in two
batches. Reported: resident memory before, after the first batch and after the second (growth
in the second batch is what a leak looks like; the first also warms the allocator), and the
refusal rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from mqtt_load import connect_packet

RADIO = [sys.executable, "-m", "radio"]
"""The radio command of this interpreter: works without an activated virtualenv."""

HERE = Path(__file__).resolve().parent


def start(kind: str, config: Path) -> tuple[subprocess.Popen[str], int]:
    if kind == "radio":
        args = [*RADIO, "broker", "--config", str(config), "--mqtt", "127.0.0.1:0", "--ws", "127.0.0.1:0"]
    else:
        args = [sys.executable, str(HERE / "stock_broker.py"), "--radio-plugins", str(config)]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert process.stdout is not None
    for line in process.stdout:
        if match := re.search(r"mqtt://[^:]+:(\d+)", line):
            return process, int(match[1])
    msg = f"{kind} broker did not start"
    raise RuntimeError(msg)


async def refuse(port: int, count: int) -> float:
    """Send ``count`` CONNECTs with a wrong secret; return the seconds it took."""
    limit = asyncio.Semaphore(50)

    async def one(n: int) -> None:
        async with limit:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(connect_packet(f"intruder-{n}", "publisher", "wrong-secret"))
            answer = await reader.readexactly(4)
            assert answer == b"\x20\x02\x00\x05", answer
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(count)))
    return time.perf_counter() - started


def mib(process: psutil.Process) -> float:
    return round(process.memory_info().rss / 2**20, 1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    rounds, count = (1, 300) if args.smoke else (args.rounds, args.count)
    rows: dict[str, list[dict[str, float]]] = {"radio": [], "stock": []}
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "radio.toml"
        config.write_text("[broker]\npersistence = false\n[networks.bench]\npublic = true\n")
        subprocess.run(
            [*RADIO, "keys", "add", "publisher", "--publish", "bench", "--config", str(config)],
            capture_output=True,
            check=True,
        )
        for round_ in range(rounds):
            for kind in ("radio", "stock")[:: 1 if round_ % 2 == 0 else -1]:
                process, port = start(kind, config)
                try:
                    ps = psutil.Process(process.pid)
                    before = mib(ps)
                    seconds = asyncio.run(refuse(port, count))
                    after = mib(ps)
                    asyncio.run(refuse(port, count))
                    row = {
                        "before_mib": before,
                        "after_mib": after,
                        "after_twice_mib": mib(ps),
                        "refusals_per_s": round(count / seconds),
                    }
                finally:
                    process.terminate()
                    process.wait(30)
                rows[kind].append(row)
                print(json.dumps({"round": round_ + 1, "broker": kind, "refusals": count, **row}), flush=True)
    print(f"\n| broker | RSS before | after {count:,} refusals | after {2 * count:,} | refusals/s |")
    print("|---|---|---|---|---|")
    for kind, results in rows.items():
        before, after, twice, rate = (
            statistics.median(r[k] for r in results)
            for k in ("before_mib", "after_mib", "after_twice_mib", "refusals_per_s")
        )
        print(f"| {kind} | {before:.1f} MiB | {after:.1f} MiB | {twice:.1f} MiB | {rate:,.0f} |")


if __name__ == "__main__":
    main()
