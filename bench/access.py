"""What selling access costs per sample: schema validation, rate buckets, usage metering.

    python bench/access.py               # 5 rounds of 200,000 calls each, interleaved
    python bench/access.py --smoke       # 1 round of 2,000

Schema validation is measured with both maintained libraries on the same sample and schema, in
the same rounds: ``fastjsonschema`` (what Radio uses) and ``jsonschema`` (if installed). The
other figures are the per-sample costs on the hot paths: the broker's in-process bucket, the
bridge's shared bucket (a mapped file under ``flock``), and ``Meter.record`` / ``Meter.quota``
(memory only, far from a quota's end). One JSON line per measurement, medians at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import fastjsonschema

from radio.keys import Key, Terms
from radio.rates import Buckets, SharedBuckets
from radio.usage import Meter

SCHEMA = {
    "type": "object",
    "properties": {
        "tick": {"type": "integer", "minimum": 0},
        "time": {"type": "string"},
        "vehicles": {"type": "integer", "minimum": 0},
        "entered": {"type": "integer", "minimum": 0},
        "left": {"type": "integer", "minimum": 0},
        "density": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0}},
    },
    "required": ["tick", "time", "vehicles"],
}
SAMPLE = {
    "tick": 80,
    "time": "2026-11-30T04:00:00Z",
    "vehicles": 215,
    "entered": 284,
    "left": 69,
    "density": {f"r{r}c{c}-r{r}c{c + 1}": 0.0365 for r in range(3) for c in range(2)},
}


def per_call(fn: Callable[[], object], calls: int) -> float:
    """Microseconds per call."""
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls * 1e6


def targets(folder: Path) -> dict[str, Callable[[], object]]:
    found: dict[str, Callable[[], object]] = {}
    fast = fastjsonschema.compile(SCHEMA, use_default=False)
    found["schema_fastjsonschema"] = lambda: fast(SAMPLE)
    try:
        import jsonschema  # noqa: PLC0415 - optional: only to compare
    except ImportError:
        print('{"note": "jsonschema is not installed: pip install jsonschema to compare"}')
    else:
        validator = jsonschema.Draft202012Validator(SCHEMA)
        found["schema_jsonschema"] = lambda: validator.is_valid(SAMPLE)
    key = Key(
        name="bench",
        digest="0" * 64,
        mosquitto="$7$101$AAAA$AAAA",
        terms=Terms(rate=1e6, burst=1_000_000, quota=1 << 40),
    )
    buckets = Buckets()
    found["bucket_broker"] = lambda: buckets.take(key.id, 1e6, 1_000_000)
    shared = SharedBuckets(folder / "rates.bin")
    found["bucket_bridge_shared"] = lambda: shared.take(key.id, 1e6, 1_000_000)
    meter = Meter(folder / "usage.db")
    found["meter_record"] = lambda: meter.record(key, "mqtt", "sample_net", 300)
    found["meter_take"] = lambda: meter.take(key)  # a unit of quota: a lease of 100 per transaction
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    rounds, calls = (1, 2_000) if args.smoke else (args.rounds, args.calls)
    with tempfile.TemporaryDirectory(prefix="radio-bench-access-") as folder:
        found = targets(Path(folder))
        results: dict[str, list[float]] = {name: [] for name in found}
        for number in range(rounds):
            for name, fn in found.items():
                micros = per_call(fn, calls)
                results[name].append(micros)
                print(json.dumps({"round": number, "target": name, "us_per_call": round(micros, 3)}))
        medians = {name: round(statistics.median(values), 3) for name, values in results.items()}
        print(json.dumps({"medians_us": medians}))
        if "schema_jsonschema" in medians:
            ratio = medians["schema_jsonschema"] / medians["schema_fastjsonschema"]
            print(json.dumps({"jsonschema_over_fastjsonschema": round(ratio, 1)}))


if __name__ == "__main__":
    main()
