"""What checking one sample costs the gate: its JSON, then the whole verdict, per reader, same run.

    python bench/sample_check.py                 # 7 rounds of 200,000 calls each
    python bench/sample_check.py --rounds 11 --calls 500000
    python bench/sample_check.py --smoke

For each payload (the 194-byte sample ``broker_cpu.py`` publishes, and an 868-byte one with 60
numbers in 20 nested objects), it times, interleaved round by round:

- ``json.loads``: the standard library's reader, which is not strict (it takes ``NaN``);
- ``samples.parse``: the strict reading that builds the values (a schema or the bridge needs them);
- ``samples.is_object``: the verdict alone, what the broker asks of a sample no schema looks into;
- ``admit``: the whole gate on the MQTT door for a key without rate or quota: rights, size,
  JSON, metering (``Admission.admit``).

Each figure is the mean per call in one round, in microseconds; every round is printed (a JSON
line), then the medians and the ratio to ``samples.parse`` taken round by round. These are warm timings: the
same call over and over, with every cache hot, as on a busy broker. Between paced samples the
broker is idle and each sample starts from cold caches, which makes each of them slower by a
factor the machine decides: ``broker_cpu.py`` measures that, end to end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from radio import samples
from radio.admission import Admission, Admitted
from radio.config import load_settings
from radio.keys import Key
from radio.registry import Registry
from radio.usage import Meter

SMALL = b'{"t":1765000000.123456,"seq":12345,"pad":"' + b"x" * 150 + b'"}'
LARGE = json.dumps(
    {"vehicle": "bus-17", "readings": [{"at": 1.5 * i, "speed": 12.25 + i, "ok": True} for i in range(20)]}
).encode()


def gate(folder: Path) -> Callable[[bytes], object]:
    """``Admission.admit`` on the MQTT door for a key that may publish to network ``bench``."""
    config = folder / "radio.toml"
    config.write_text("[networks.bench]\npublic = true\n")
    key = Key("publisher", "ab" * 32, "", publish=frozenset({"bench"}))
    registry = Registry(networks=load_settings(config).networks, keys={key.name: key})
    admission = Admission("mqtt", Meter(folder / "usage.db"), lambda _key: (0.0, 0.0))

    def admit(payload: bytes) -> object:
        verdict = admission.admit(registry, key, "networks/bench", payload, quota_wait=0)
        if not isinstance(verdict, Admitted):
            raise SystemExit(f"the gate did not admit the sample: {verdict}")
        return verdict

    return admit


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument(
        "--smoke", action="store_true", help="one round of 1,000 calls: the script still works"
    )
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.calls = 1, 1_000
    with tempfile.TemporaryDirectory() as folder:
        readers: dict[str, Callable[[bytes], object]] = {
            "json.loads": json.loads,
            "samples.parse": samples.parse,
            "samples.is_object": samples.is_object,
            "admit": gate(Path(folder)),
        }
        for name, payload in (("broker_cpu.py's", SMALL), ("nested", LARGE)):
            rounds: dict[str, list[float]] = {reader: [] for reader in readers}
            for r in range(args.rounds):
                order = list(readers)[r % len(readers) :] + list(readers)[: r % len(readers)]
                for reader in order:
                    call = readers[reader]
                    start = time.perf_counter()
                    for _ in range(args.calls):
                        call(payload)
                    rounds[reader].append((time.perf_counter() - start) / args.calls * 1e6)
                    row = {"round": r + 1, "payload": name, "bytes": len(payload), "reader": reader}
                    print(json.dumps(row | {"us_per_call": round(rounds[reader][-1], 3)}), flush=True)
            print(f"payload {name} ({len(payload)} bytes), us per call, {args.rounds} rounds:")
            for reader, values in rounds.items():
                ratios = [v / p for v, p in zip(values, rounds["samples.parse"], strict=True)]
                each = " ".join(f"{v:.2f}" for v in values)
                print(
                    f"  {reader:18s} median {statistics.median(values):6.2f}"
                    f"  x parse {statistics.median(ratios):4.2f}  rounds {each}"
                )


if __name__ == "__main__":
    main()
