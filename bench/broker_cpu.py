"""Broker CPU per delivery, each broker alone on core 0, C clients on the other cores, paced load.

    python bench/broker_cpu.py                   # 5 rounds; N = 1, 10, 100, 1000; QoS 0 and 1;
                                                 # 20,000 and 80,000 deliveries/s for 10 s; bursts
    python bench/broker_cpu.py --subscribers 100 --rates 20000 --rounds 7
    python bench/broker_cpu.py --smoke           # a few seconds: the script still works
    python bench/broker_cpu.py --client mosquitto_sub   # one mosquitto_sub per subscriber

Needs ``mosquitto``, ``mosquitto-clients`` and a C compiler (``cc``; ``apt-get install gcc``)
for the subscriber load, ``sink.c``.

What is measured, and why a skeptic can accept it:

- **The broker, not the client.** The broker under test runs alone on core 0: every thread of
  the broker process is pinned there (``sched_setaffinity``; for ``radio broker --engine
  mosquitto``, the Mosquitto process the runner starts, not the runner). This script and every
  client it starts run on the other cores. The subscribers are, by default, one C process
  (``sink.c``, beside this script, compiled at start with the system's ``cc -O2``: a C compiler
  is required, ``apt-get install gcc``): a minimal MQTT 3.1.1 client holding all N connections
  in one epoll loop, reading 64 KiB at a time, stamping the wall clock once per read, and, at
  QoS 1, writing the PUBACKs of one read in one write. It keeps every arrival in memory, in room
  allocated before the run, and writes each subscriber's file only when it stops: a file write
  or a growing buffer while samples arrive holds up the reads behind it, which would count as
  the broker's latency. ``--client mosquitto_sub`` uses Debian's ``mosquitto_sub`` instead, one
  process per subscriber (``--nodelay``), whose cost per message (about 10 us) saturates the
  load core at 100 subscribers and 80,000 deliveries/s. The publisher is one ``mosquitto_pub -l
  --nodelay`` fed line by line by this script. The load side's CPU (the subscribers, the
  publisher and this script, each also reported alone: ``subscriber_cores``,
  ``publisher_cores``, ``script_cores``, and the subscribers' CPU per delivery,
  ``subscriber_us_per_delivery``, which does not depend on how long a run lasted) is reported
  beside the broker's, as cores used: a load side near ``load_cores_available`` is saturated,
  and the row says so (``load_saturated``). ``broker_waited_s`` is how long the broker was
  runnable but waiting for its core (``/proc/PID/task/*/schedstat``): near zero on a quiet
  machine; the summary marks runs where it exceeds a tenth of the broker's CPU time.
- **Broker CPU per delivery** is the broker process's own CPU time (``utime + stime`` from
  ``/proc/PID/stat``, every thread) over the run, divided by the deliveries made. Its resolution
  is one clock tick (10 ms); ``broker_cpu_s`` in each row shows how many ticks a figure rests on,
  which is why a paced run lasts 10 s by default.
- **Open loop, latency from the schedule.** Sample ``k`` is due at ``start + k / rate``; its
  payload carries that due time (``{"t": ..., "seq": k, ...}``, about 200 bytes) and is written
  to the publisher when due, however late the previous ones were, so a stalled broker shows as
  latency instead of a slower schedule. Every arrival is stamped with the wall clock at receipt,
  to the nanosecond (the sink once per read; ``mosquitto_sub -F '%U %p'`` once per message, in
  the same format); latency is receipt minus due time, p50, p99 and max over every delivery.
  Per sample, the latency of its first delivery and its spread (last minus first delivery) tell
  the broker's time before its first write from the fan-out itself (``first_p50_ms``,
  ``spread_p50_ms``: medians over the samples).
- **Loss is a failure.** A run where any delivery is missing reports ``loss: N`` and no CPU
  figure. A sample ends the run (``{"end":1}``, after the last one): the run waits until every
  subscriber received it (the sink says how many did on its stdout, every 100 ms while
  something arrives; ``mosquitto_sub`` prints it), or until no subscriber received anything for
  ``--grace`` seconds (past the last due time), so a late delivery counts as latency, never as
  loss.
- **Rounds.** Each round runs every configuration on both brokers, one after the other, the order
  alternating round by round; each broker and its subscribers are started fresh for each run.
  Every run is printed as a JSON line; the summary gives medians and ranges over the rounds, and
  the ratio of the embedded broker's CPU per delivery to Mosquitto's is taken round by round.
- **Bursts** (``--burst D``: D deliveries written as fast as the publisher takes them) are a
  secondary table: they measure send buffers and batching more than steady cost.

``rate`` is in deliveries per second: N subscribers at ``rate`` receive ``rate / N`` samples/s
each. Both brokers run with Radio's configuration for one public network (``radio broker``, and
``radio broker --engine mosquitto`` with the exported configuration); the publisher uses a key,
read by ``mosquitto_pub`` from a 0600 options file, never from its command line.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
from fanout import Platform

from radio.files import write_private

TOPIC = "networks/bench"
END = b'{"end":1}'
PROBE = b'{"probe":1}\n'
PAD = "x" * 150
BROKER_CORE = 0
LINE_ROOM = 256
"""Bytes a sample takes in a subscriber's file (a stamp and its payload: about 220)."""
PROBES_ROOM = 64 * 1024
"""Bytes for the probes that show every subscription holds, before the run."""
CONTENDED = 0.1
"""A run where the broker waited for a CPU more than this share of its CPU time is marked."""


@dataclass(frozen=True)
class Setting:
    """One configuration: QoS, N subscribers, a paced rate (deliveries/s) or a burst."""

    qos: int
    subscribers: int
    rate: int | None  # None: a burst
    deliveries: int

    @property
    def samples(self) -> int:
        """Samples published: each of them reaches every subscriber."""
        return max(1, self.deliveries // self.subscribers)


@dataclass
class Result:
    """One run of one configuration on one broker."""

    broker: str
    client: str
    qos: int
    subscribers: int
    rate: int | str
    samples: int
    deliveries: int
    lost: int
    broker_cpu_s: float
    broker_us_per_delivery: float | None
    broker_cores: float
    broker_waited_s: float
    load_cores: float
    subscriber_cores: float
    publisher_cores: float
    script_cores: float
    subscriber_us_per_delivery: float
    load_cores_available: int
    load_saturated: bool
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    first_p50_ms: float | None
    """Per sample, the latency of its first delivery (what the broker takes before its first write,
    and one hop), median over the samples."""
    spread_p50_ms: float | None
    """Per sample, its last delivery's latency minus its first's (the fan-out), median over the samples."""
    broker_affinity: list[int]
    delivery_path: str | None
    """The embedded broker's build (``compiled`` or ``Python``, from its banner); None for Mosquitto."""


class Load:
    """The subscribers (one ``sink`` process, or one ``mosquitto_sub`` each) and one ``mosquitto_pub -l``.

    Every subscriber's stamped arrivals end in its own file, ``sub-I.txt``: ``mosquitto_sub``
    writes each line as it comes, the sink all of them when it stops (``stop``), and meanwhile
    says on its stdout how many arrived (``SinkStatus``).
    """

    def __init__(
        self,
        folder: Path,
        port: int,
        qos: int,
        subscribers: int,
        key: tuple[str, str],
        *,
        sink: Path | None,
        samples: int = 0,
    ) -> None:
        self.folder = folder
        self.files = [folder / f"sub-{i}.txt" for i in range(subscribers)]
        common = ["-h", "127.0.0.1", "-p", str(port), "-t", TOPIC, "-q", str(qos), "--nodelay"]
        self.subscribers: list[subprocess.Popen[bytes]] = []
        self.sink: subprocess.Popen[bytes] | None = None
        self.sink_errors = folder / "sink.err"
        self.status = SinkStatus()
        if sink is not None:
            room = str((samples + 1) * LINE_ROOM + PROBES_ROOM)  # a subscriber's arrivals, kept to the end
            with self.sink_errors.open("wb") as errors:
                self.sink = subprocess.Popen(
                    [sink, str(port), TOPIC, str(qos), str(subscribers), "bench-sub-", folder, END, room],
                    stdout=subprocess.PIPE,
                    stderr=errors,
                )
            self.subscribers.append(self.sink)
        else:
            for i, file in enumerate(self.files):
                with file.open("wb") as out:
                    self.subscribers.append(
                        subprocess.Popen(
                            ["mosquitto_sub", *common, "-i", f"bench-sub-{i}", "-F", "%U %p"],
                            stdout=out,
                            stderr=subprocess.DEVNULL,
                        )
                    )
        options = folder / "options"
        options.mkdir(exist_ok=True)
        secret = options / "mosquitto_pub"
        write_private(secret, f"-u {key[0]}\n-P {key[1]}\n")
        self.publisher = subprocess.Popen(
            ["mosquitto_pub", *common, "-i", "bench-pub", "-l", "-M", "64"],
            stdin=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "XDG_CONFIG_HOME": str(options)},
        )
        assert self.publisher.stdin is not None
        self.stdin = self.publisher.stdin
        self.fd = self.stdin.fileno()
        self.subscriber_processes = [psutil.Process(p.pid) for p in self.subscribers]
        self.publisher_process = psutil.Process(self.publisher.pid)

    def wait_ready(self, deadline: float) -> None:
        """Until the sink says every SUBACK is in (``ready``), or why it could not."""
        if self.sink is None:
            return
        while not self.status.ready and self.heard(max(0.0, deadline - time.monotonic())):
            pass
        if not self.status.ready:
            error = self.sink_errors.read_text(errors="replace").strip() or "no word before the timeout"
            msg = f"the sink did not subscribe: {error}"
            raise RuntimeError(msg)

    def heard(self, timeout: float) -> bool:
        """Whether the sink said something within ``timeout`` seconds (``self.status`` holds it)."""
        assert self.sink is not None
        assert self.sink.stdout is not None
        ready, _, _ = select.select([self.sink.stdout], [], [], timeout)
        if not ready:
            return False
        said = os.read(self.sink.stdout.fileno(), 65536)
        if not said:
            error = self.sink_errors.read_text(errors="replace").strip() or "it exited"
            msg = f"the sink stopped: {error}"
            raise RuntimeError(msg)
        self.status.hear(said)
        return True

    def wait_subscribed(self, timeout: float) -> None:
        """Publish probes until every subscriber has received one, then until no more arrive."""
        deadline = time.monotonic() + timeout
        self.wait_ready(deadline)
        if self.sink is not None:
            while self.status.any < len(self.files):
                if time.monotonic() > deadline or self.publisher.poll() is not None:
                    msg = "the subscribers never all received a probe (is the broker up?)"
                    raise RuntimeError(msg)
                os.write(self.fd, PROBE)
                self.heard(0.2)
            while self.heard(3 * SinkStatus.EVERY):
                pass
            return
        while not all(f.stat().st_size for f in self.files):
            if time.monotonic() > deadline or self.publisher.poll() is not None:
                msg = "the subscribers never all received a probe (is the broker up?)"
                raise RuntimeError(msg)
            os.write(self.fd, PROBE)
            time.sleep(0.02)
        sizes: list[int] = []
        while sizes != (sizes := [f.stat().st_size for f in self.files]):
            time.sleep(0.05)

    def cpu(self) -> tuple[float, float, float]:
        """CPU seconds of the subscribers, of the publisher and of this script (which writes the schedule)."""

        def seconds(processes: list[psutil.Process]) -> float:
            return sum(t.user + t.system for t in (p.cpu_times() for p in processes))

        return seconds(self.subscriber_processes), seconds([self.publisher_process]), time.process_time()

    def send(self, setting: Setting) -> float:
        """Write every sample when due (all at once for a burst); return the wall time of sample 0.

        The collector is off meanwhile: a collection here would send samples late, which counts as
        any broker's latency.
        """
        gc.disable()
        try:
            return self._send(setting)
        finally:
            gc.enable()

    def _send(self, setting: Setting) -> float:
        count, rate = setting.samples, setting.rate
        start = time.time() + 0.01
        if rate is None:  # every sample of a burst is due at start: none leaves before it
            time.sleep(max(0.0, start - time.time()))
        sent = 0
        while sent < count:
            now = time.time()
            due = (
                min(count, sent + 10_000)
                if rate is None
                else min(count, int((now - start) * (rate / setting.subscribers)) + 1)
            )
            if due > sent:
                lines = "".join(
                    f'{{"t":{start if rate is None else start + k * setting.subscribers / rate:.6f},'
                    f'"seq":{k},"pad":"{PAD}"}}\n'
                    for k in range(sent, due)
                )
                self.stdin.write(lines.encode())
                self.stdin.flush()
                sent = due
            elif rate is not None:  # until the next one is due: no wake-up on the load core between
                time.sleep(max(0.0, start + sent * setting.subscribers / rate - now))
        self.stdin.write(END + b"\n")
        self.stdin.flush()
        return start

    def wait_ended(self, last_due: float, grace: float) -> None:
        """Until every subscriber printed the end marker, or none received anything for ``grace`` s.

        A late delivery is latency, not loss: the wait goes on while deliveries keep coming.
        """
        if self.sink is not None:
            while self.status.ended < len(self.files):
                if not self.heard(max(0.0, max(time.time(), last_due) + grace - time.time())):
                    return
            return
        waiting = list(self.files)
        size, grown = -1, time.time()
        while waiting:
            waiting = [f for f in waiting if not _ends(f)]
            now = time.time()
            if size != (size := sum(f.stat().st_size for f in waiting)):
                grown = now
            elif now - max(grown, last_due) > grace:
                return
            time.sleep(0.02 if len(waiting) < 100 else 0.1)

    def stop(self) -> None:
        """Stop every client; each subscriber's file then holds all it received.

        ``mosquitto_sub`` flushes every line, so it is killed; the sink writes its buffers when
        told to stop (SIGTERM), and a sink that failed says why.
        """
        self.stdin.close()
        for p in [*self.subscribers, self.publisher]:
            if p is self.sink:
                p.terminate()
            else:
                p.kill()
        for p in [*self.subscribers, self.publisher]:
            p.wait(30)
        if self.sink is not None and self.sink.stdout is not None:
            self.sink.stdout.close()
        if self.sink is not None and self.sink.returncode != 0:
            error = self.sink_errors.read_text(errors="replace").strip()
            msg = f"the sink failed ({self.sink.returncode}): {error}"
            raise RuntimeError(msg)

    def latencies(self, samples: int) -> tuple[list[float], int, dict[int, tuple[float, float]]]:
        """Every delivery's latency in seconds, how many deliveries are missing, and more.

        Also, per sample, the latency of its first and of its last delivery.
        """
        every: list[float] = []
        missing = 0
        ends: dict[int, tuple[float, float]] = {}
        for file in self.files:
            seen: set[int] = set()
            for line in file.read_bytes().splitlines():
                stamp, _, payload = line.partition(b" ")
                if not payload.startswith(b'{"t":'):
                    continue
                due, _, rest = payload[5:].partition(b',"seq":')
                seq = int(rest[: rest.index(b",")])
                if seq not in seen:
                    seen.add(seq)
                    latency = float(stamp) - float(due)
                    every.append(latency)
                    first, last = ends.get(seq, (latency, latency))
                    ends[seq] = (min(first, latency), max(last, latency))
            missing += samples - len(seen)
        return every, missing, ends


class SinkStatus:
    """What the sink said on its stdout: ``ready``, then ``arrived TOTAL ANY ENDED`` (sink.c)."""

    EVERY = 0.1
    """Seconds between two of its reports at most, while something arrives."""

    def __init__(self) -> None:
        self.ready = False
        self.arrived = self.any = self.ended = 0
        self._rest = b""

    def hear(self, said: bytes) -> None:
        """Take what the sink wrote; a line cut by the read is kept for the next."""
        *lines, self._rest = (self._rest + said).split(b"\n")
        for line in lines:
            if line == b"ready":
                self.ready = True
            elif line.startswith(b"arrived "):
                self.arrived, self.any, self.ended = map(int, line.split()[1:])
            else:
                msg = f"the sink said something unexpected: {line!r}"
                raise RuntimeError(msg)


def _ends(file: Path) -> bool:
    with file.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - 64))
        return f.read().rstrip().endswith(END)


def waited(process: psutil.Process) -> float:
    """Seconds the process's threads spent runnable but waiting for a CPU (``/proc/.../schedstat``).

    On a quiet machine a pinned broker barely waits; a broker that waited for a good part of a
    run shared its core with something else, and that run's latency is not the broker's alone.
    """
    total = 0
    for thread in process.threads():
        try:
            total += int(Path(f"/proc/{process.pid}/task/{thread.id}/schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total / 1e9


def pin(process: psutil.Process, cores: set[int]) -> None:
    """Pin every thread of the broker process; threads it starts later inherit their creator's cores.

    Only the broker itself is pinned: Radio's Mosquitto runner, which starts Mosquitto and
    follows the registry, stays with the load, so core 0 runs nothing but the broker under test.
    """
    for thread in process.threads():
        os.sched_setaffinity(thread.id, cores)


def measure(
    kind: str, setting: Setting, folder: Path, load_cores: set[int], grace: float, *, sink: Path | None
) -> Result:
    """One run on a fresh broker pinned to BROKER_CORE, with fresh clients."""
    platform = Platform(kind, folder)
    if load_cores:
        pin(platform.ps, {BROKER_CORE})
    runs = folder / "run"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir()
    try:
        user, secret = platform.key
        assert user is not None
        assert secret is not None
        port, key = platform.ports["tcp"], (user, secret)
        load = Load(runs, port, setting.qos, setting.subscribers, key, sink=sink, samples=setting.samples)
        try:
            load.wait_subscribed(timeout=120)
            broker0, load0, wait0, wall0 = platform.cpu(), load.cpu(), waited(platform.ps), time.time()
            start = load.send(setting)
            last_due = start + (
                0 if setting.rate is None else setting.samples * setting.subscribers / setting.rate
            )
            load.wait_ended(last_due, grace)
            load1, broker_s, wall = load.cpu(), platform.cpu() - broker0, time.time() - wall0
            parts = [(b - a) / wall for a, b in zip(load0, load1, strict=True)]
            wait_s = waited(platform.ps) - wait0
            affinity = sorted(set().union(*(os.sched_getaffinity(t.id) for t in platform.ps.threads())))
        finally:
            load.stop()
        every, lost, ends = load.latencies(setting.samples)
    finally:
        platform.stop()
    every.sort()
    firsts = sorted(first for first, _ in ends.values())
    spreads = sorted(last - first for first, last in ends.values())
    deliveries = setting.samples * setting.subscribers
    available = len(load_cores) or os.cpu_count() or 1
    used = sum(parts)

    def ms(q: float) -> float | None:
        return round(every[min(len(every) - 1, int(len(every) * q))] * 1000, 2) if every else None

    return Result(
        broker=kind,
        client="mosquitto_sub" if sink is None else "sink",
        qos=setting.qos,
        subscribers=setting.subscribers,
        rate="burst" if setting.rate is None else setting.rate,
        samples=setting.samples,
        deliveries=deliveries,
        lost=lost,
        broker_cpu_s=round(broker_s, 3),
        broker_us_per_delivery=None if lost else round(broker_s / deliveries * 1e6, 2),
        broker_cores=round(broker_s / wall, 3),
        broker_waited_s=round(wait_s, 3),
        load_cores=round(used, 3),
        subscriber_cores=round(parts[0], 3),
        publisher_cores=round(parts[1], 3),
        script_cores=round(parts[2], 3),
        subscriber_us_per_delivery=round(parts[0] * wall / deliveries * 1e6, 2),
        load_cores_available=available,
        load_saturated=used >= 0.9 * available,
        p50_ms=ms(0.5),
        p99_ms=ms(0.99),
        max_ms=round(every[-1] * 1000, 2) if every else None,
        first_p50_ms=round(firsts[len(firsts) // 2] * 1000, 3) if firsts else None,
        spread_p50_ms=round(spreads[len(spreads) // 2] * 1000, 3) if spreads else None,
        broker_affinity=affinity,
        delivery_path=platform.delivery_path,
    )


def ratios(
    results: list[tuple[int, Result]], a: str, b: str
) -> dict[tuple[int, int, int | str], list[float]]:
    """Round by round: a's CPU per delivery over b's, same configuration, both without loss."""
    cpu: dict[tuple[int, int, int, int | str, str], float] = {}
    for round_, r in results:
        if r.broker_us_per_delivery is not None:
            cpu[round_, r.qos, r.subscribers, r.rate, r.broker] = r.broker_us_per_delivery
    found: dict[tuple[int, int, int | str], list[float]] = {}
    for (round_, qos, n, rate, broker), value in cpu.items():
        other = cpu.get((round_, qos, n, rate, b))
        if broker == a and other:
            found.setdefault((qos, n, rate), []).append(round(value / other, 3))
    return found


def p99_differences(
    results: list[tuple[int, Result]], a: str, b: str
) -> dict[tuple[int, int, int | str], list[float]]:
    """Round by round: a's p99 minus b's, same configuration, both without loss (ms)."""
    p99: dict[tuple[int, int, int, int | str, str], float] = {}
    for round_, r in results:
        if r.broker_us_per_delivery is not None and r.p99_ms is not None:
            p99[round_, r.qos, r.subscribers, r.rate, r.broker] = r.p99_ms
    found: dict[tuple[int, int, int | str], list[float]] = {}
    for (round_, qos, n, rate, broker), value in p99.items():
        other = p99.get((round_, qos, n, rate, b))
        if broker == a and other is not None:
            found.setdefault((qos, n, rate), []).append(round(value - other, 3))
    return found


def median_interval(values: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """A distribution-free interval for the median of ``values`` (the sign test's order statistics).

    The rounds' differences are neither normal nor independent of the machine's moods, so no
    mean and standard error: the true median lies between the k-th smallest and k-th largest
    value with probability at least ``level``, k the largest for which fewer than k of n fair
    coin flips come up heads with probability at most (1 - level) / 2. None below 6 rounds,
    where no such k exists.
    """
    n = len(values)
    tail = (1 - level) / 2
    k, below = 0, 0.0  # below: P(fewer than k+1 heads)
    while True:
        below += math.comb(n, k) / 2**n
        if below > tail:
            break
        k += 1
    if k == 0:
        return None
    ordered = sorted(values)
    return ordered[k - 1], ordered[n - k]


def _span(values: list[float], digits: int = 2) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def summarize(results: list[tuple[int, Result]], brokers: list[str]) -> None:
    """Per configuration and broker: medians and ranges over the rounds; then the round-by-round ratios."""
    groups: dict[tuple[int, int, int | str], dict[str, list[Result]]] = {}
    for _, r in results:
        groups.setdefault((r.qos, r.subscribers, r.rate), {}).setdefault(r.broker, []).append(r)
    for title, paced in (("Paced load", True), ("Bursts (secondary)", False)):
        rows = [(key, by) for key, by in groups.items() if (key[2] != "burst") == paced]
        if not rows:
            continue
        print(f"\n{title}\n")
        print(
            "| QoS | N | deliveries/s | broker | broker us/delivery | p50 ms | p99 ms | max ms "
            "| broker cores | load cores | runs |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for (qos, n, rate), by in rows:
            for broker, rs in by.items():
                lost = sum(r.lost for r in rs)
                clean = [r for r in rs if r.broker_us_per_delivery is not None]
                cpu = (
                    _span([r.broker_us_per_delivery for r in clean if r.broker_us_per_delivery is not None])
                    if clean
                    else ""
                )
                latency = [
                    _span([v for r in clean if (v := getattr(r, f)) is not None]) if clean else ""
                    for f in ("p50_ms", "p99_ms", "max_ms")
                ]
                saturated = sum(r.load_saturated for r in rs)
                contended = sum(r.broker_waited_s > CONTENDED * r.broker_cpu_s for r in rs)
                note = f"; loss: {lost} in {len(rs) - len(clean)} runs" if lost else ""
                note += f"; load saturated in {saturated}" if saturated else ""
                note += f"; broker waited for its core in {contended}" if contended else ""
                print(
                    f"| {qos} | {n:,} | {rate if rate == 'burst' else f'{rate:,}'} | {broker} | {cpu} "
                    f"| {' | '.join(latency)} | {_span([r.broker_cores for r in rs])} "
                    f"| {_span([r.load_cores for r in rs])} of {rs[0].load_cores_available} "
                    f"| {len(rs)}{note} |"
                )
    if len(brokers) == 2:
        a, b = brokers
        found = ratios(results, a, b)
        print(f"\n{a} / {b}, broker CPU per delivery, round by round (median, range; runs without loss)\n")
        print("| QoS | N | deliveries/s | ratio | rounds |")
        print("|---|---|---|---|---|")
        for (qos, n, rate), values in found.items():
            print(f"| {qos} | {n:,} | {rate} | {_span(values)} | {len(values)} |")
        differences = p99_differences(results, a, b)
        print(
            f"\n{a} p99 minus {b} p99, ms, round by round (median, range; the median's 95% interval "
            "by the sign test; rounds where it is lower; runs without loss)\n"
        )
        print("| QoS | N | deliveries/s | difference | 95% interval | lower | rounds |")
        print("|---|---|---|---|---|---|---|")
        for (qos, n, rate), values in differences.items():
            interval = median_interval(values)
            shown = f"{interval[0]:+.2f} to {interval[1]:+.2f}" if interval else "(under 6 rounds)"
            lower = sum(v < 0 for v in values)
            print(
                f"| {qos} | {n:,} | {rate} | {statistics.median(values):+.3f} "
                f"({min(values):+.2f} to {max(values):+.2f}) | {shown} | {lower} | {len(values)} |"
            )
        print(
            json.dumps(
                {
                    "ratios": [
                        {"qos": k[0], "subscribers": k[1], "rate": k[2], f"{a}_over_{b}": v}
                        for k, v in found.items()
                    ],
                    "p99_differences_ms": [
                        {"qos": k[0], "subscribers": k[1], "rate": k[2], f"{a}_minus_{b}": v}
                        for k, v in differences.items()
                    ],
                }
            )
        )


def build_sink(folder: Path) -> Path:
    """Compile ``sink.c`` (beside this script) with the system's C compiler into ``folder``."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        sys.exit("a C compiler is needed for the sink (apt-get install gcc), or use --client mosquitto_sub")
    binary = folder / "sink"
    source = Path(__file__).with_name("sink.c")
    built = subprocess.run(
        [compiler, "-O2", "-Wall", "-Wextra", "-o", binary, source],
        capture_output=True,
        text=True,
        check=False,
    )
    if built.returncode != 0:
        sys.exit(f"{compiler} could not build {source}:\n{built.stderr}")
    return binary


def run_all(
    settings: list[Setting],
    brokers: list[str],
    rounds: int,
    load_cores: set[int],
    grace: float,
    *,
    client: str,
) -> tuple[list[tuple[int, Result]], int]:
    """Every round: every setting on every broker, the first broker alternating; prints each run.

    A run that fails is printed with its error and the rest go on: no figure comes from it.
    """
    results: list[tuple[int, Result]] = []
    failed = 0
    with tempfile.TemporaryDirectory() as folder:
        sink = build_sink(Path(folder)) if client == "sink" else None
        for round_ in range(1, rounds + 1):
            for setting in settings:
                for kind in brokers[:: 1 if round_ % 2 else -1]:
                    try:
                        result = measure(kind, setting, Path(folder), load_cores, grace, sink=sink)
                    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
                        failed += 1
                        row = {"broker": kind, "qos": setting.qos, "subscribers": setting.subscribers}
                        print(json.dumps({"failed_round": round_, **row, "error": str(error)}), flush=True)
                        continue
                    results.append((round_, result))
                    print(json.dumps({"round": round_, **asdict(result)}), flush=True)
    return results, failed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--subscribers", default="1,10,100,1000")
    parser.add_argument("--qos", default="0,1")
    parser.add_argument("--rates", default="20000,80000", help="paced deliveries/s (empty: bursts only)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each paced run")
    parser.add_argument("--burst", type=int, default=300_000, help="deliveries per burst (0: no bursts)")
    parser.add_argument(
        "--grace",
        type=float,
        default=5.0,
        help="seconds without any delivery, past the last due time, that end a run",
    )
    parser.add_argument("--brokers", default="radio,mosquitto")
    parser.add_argument(
        "--client",
        choices=("sink", "mosquitto_sub"),
        default="sink",
        help="the subscribers: one C process for all of them (sink.c), or one mosquitto_sub each",
    )
    parser.add_argument("--smoke", action="store_true", help="a few seconds: the script still works")
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.subscribers, args.rates, args.seconds, args.burst = 1, "10", "2000", 0.3, 2000
    for tool in ("mosquitto_pub", *(["mosquitto_sub"] if args.client == "mosquitto_sub" else [])):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing (apt-get install mosquitto-clients)")
    cores = os.sched_getaffinity(0)
    load_cores = cores - {BROKER_CORE}
    if BROKER_CORE not in cores or not load_cores:
        print("fewer than 2 cores: the broker is not pinned apart from the load", file=sys.stderr)
        load_cores = set()
    else:
        os.sched_setaffinity(0, load_cores)  # the clients this script starts inherit it
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    brokers = args.brokers.split(",")
    if unknown := set(brokers) - {"radio", "mosquitto"}:
        parser.error(f"unknown brokers {sorted(unknown)}: radio, mosquitto")
    settings = [
        Setting(qos, n, rate, deliveries)
        for qos in (int(q) for q in args.qos.split(","))
        for n in (int(n) for n in args.subscribers.split(","))
        for rate, deliveries in [
            *((int(r), int(int(r) * args.seconds)) for r in args.rates.split(",") if r),
            *([(None, args.burst)] if args.burst else []),
        ]
    ]
    results, failed = run_all(settings, brokers, args.rounds, load_cores, args.grace, client=args.client)
    summarize(results, brokers)
    if failed:
        sys.exit(f"{failed} runs failed (their lines say why)")
    if args.smoke and any(r.lost for _, r in results):
        sys.exit("deliveries were lost in the smoke run")


if __name__ == "__main__":
    main()
