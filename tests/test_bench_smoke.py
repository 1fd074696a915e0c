"""The benchmark scripts run in a small smoke mode, so they cannot rot between measurements."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil

import pytest
from benchmarks import BENCH, rounds, smoke
from conftest import require_mosquitto

pytestmark = pytest.mark.slow


def require_wrk() -> None:
    if shutil.which("wrk") is None:
        if os.environ.get("CI"):
            pytest.fail("wrk is missing: .ci/run installs it", pytrace=False)
        pytest.skip("wrk is not installed (apt-get install wrk)")


def test_the_http_door_benchmark_alternates_the_bridge_both_ways_and_both_flask_yardsticks():
    require_wrk()
    result = smoke("http_door.py")
    rows = rounds(result)
    order = [[r["target"] for r in rows if r["round"] == n] for n in (1, 2)]
    assert set(order[0]) == {"bridge", "bridge_no_retain", "bare", "flask_gthread"}
    assert order[1] == order[0][::-1]  # the order alternates round by round
    assert all(r["rps"] > 0 and r["non_2xx"] == 0 for r in rows)
    summary = json.loads(result.stdout[result.stdout.index('{\n  "summary"') :])["summary"]
    assert summary["bridge_no_retain_over_flask_gthread"]["median"] > 0
    assert summary["bridge_over_bare"]["median"] > 0


def test_the_http_view_benchmark_times_both_views_and_the_publisher():
    rows = rounds(smoke("http_view.py"))
    views = [r for r in rows if r["part"] == "view"]
    publisher = [r for r in rows if r["part"] == "publisher"]
    assert views
    assert all(r["bridge_us"] > 0 and r["bare_us"] > 0 for r in views)
    assert publisher
    assert all(r["samples_per_s"] > 0 for r in publisher)


def test_the_fanout_benchmark_runs_both_brokers_and_counts_every_delivery():
    rows = rounds(smoke("fanout.py"))
    assert {r["broker"] for r in rows} == {"radio", "stock"}
    assert {(r["qos"], r["subscribers"]) for r in rows} == {(q, n) for q in (0, 1) for n in (1, 10, 100)}
    assert all(r["deliveries_per_s"] > 0 and r["lost"] == 0 for r in rows)


@pytest.mark.mosquitto
@pytest.mark.mosquitto_clients
@pytest.mark.parametrize("client", ["sink", "mosquitto_sub"])
def test_the_broker_cpu_benchmark_pins_each_broker_and_counts_every_delivery(client: str):
    require_mosquitto()
    if shutil.which("mosquitto_sub") is None or shutil.which("mosquitto_pub") is None:
        if os.environ.get("CI"):
            pytest.fail("mosquitto_sub/pub are missing: .ci/run installs mosquitto-clients", pytrace=False)
        pytest.skip("mosquitto-clients is not installed (apt-get install mosquitto-clients)")
    if client == "sink" and shutil.which("cc") is None and shutil.which("gcc") is None:
        if os.environ.get("CI"):
            pytest.fail("no C compiler for bench/sink.c: .ci/run installs gcc", pytrace=False)
        pytest.skip("no C compiler for bench/sink.c (apt-get install gcc)")
    result = smoke("broker_cpu.py", "--client", client)
    rows = rounds(result)
    assert {r["broker"] for r in rows} == {"radio", "mosquitto"}
    assert {r["client"] for r in rows} == {client}
    assert {(r["qos"], r["rate"]) for r in rows} == {(q, rate) for q in (0, 1) for rate in (2000, "burst")}
    assert all(r["lost"] == 0 and r["broker_us_per_delivery"] is not None for r in rows)
    assert all(r["p50_ms"] > 0 and r["max_ms"] >= r["p99_ms"] >= r["p50_ms"] for r in rows)
    assert all(0 < r["first_p50_ms"] <= r["max_ms"] and 0 <= r["spread_p50_ms"] <= r["max_ms"] for r in rows)
    assert all(r["broker_cpu_s"] >= 0 and r["broker_waited_s"] >= 0 and r["load_cores"] > 0 for r in rows)
    if len(os.sched_getaffinity(0)) > 1:  # the broker alone on core 0, the clients elsewhere
        assert all(r["broker_affinity"] == [0] and r["load_cores_available"] >= 1 for r in rows)
    # The summary's p99 differences are the rows' own, paired round by round, for every paced setting.
    summary = json.loads(next(line for line in result.stdout.splitlines() if line.startswith('{"ratios"')))
    p99 = {(r["round"], r["qos"], r["rate"], r["broker"]): r["p99_ms"] for r in rows}
    expected = {
        qos: [
            round(p99[n, qos, 2000, "radio"] - p99[n, qos, 2000, "mosquitto"], 3)
            for n in sorted({r["round"] for r in rows})
        ]
        for qos in (0, 1)
    }
    paced = {d["qos"]: d["radio_minus_mosquitto"] for d in summary["p99_differences_ms"] if d["rate"] == 2000}
    assert paced == expected


def test_the_refusal_benchmark_runs_both_brokers():
    rows = rounds(smoke("refusals.py"))
    assert {r["broker"] for r in rows} == {"radio", "stock"}
    assert all(r["refusals_per_s"] > 0 for r in rows)  # each of them read its CONNACK 5


def test_the_latency_benchmark_delivers_every_sample_through_both_doors_of_both_brokers():
    require_mosquitto()
    rows = rounds(smoke("latency.py"))
    assert {(r["broker"], r["door"]) for r in rows} == {
        (b, d) for b in ("radio", "mosquitto") for d in ("mqtt", "http")
    }
    assert all(r["lost"] == 0 and r["p50_ms"] > 0 for r in rows)


def test_the_fanout_cost_benchmark_counts_every_delivery_at_both_qos():
    rows = rounds(smoke("fanout_cost.py"))
    assert sorted(r["qos"] for r in rows) == [0, 1]
    assert all(r["deliveries"] == 10 * 50 and r["us_per_delivery"] > 0 for r in rows)


def test_the_sample_check_benchmark_times_every_reader_on_both_payloads():
    rows = rounds(smoke("sample_check.py"))
    readers = {"json.loads", "samples.parse", "samples.is_object", "admit"}
    assert {(r["payload"], r["reader"]) for r in rows} == {
        (p, x) for p in ("broker_cpu.py's", "nested") for x in readers
    }
    assert all(r["us_per_call"] > 0 for r in rows)


def test_the_cli_start_benchmark_times_every_command_once():
    rows = rounds(smoke("cli_start.py"))
    assert {r["command"] for r in rows} == {
        "radio --help",
        "radio keys list",
        "radio keys edit",
        "radio health",
        "radio bridge's imports",
    }
    assert all(r["cpu_ms"] > 0 for r in rows)


def test_the_connections_benchmark_reaches_every_idle_listener():
    require_mosquitto()
    rows = rounds(smoke("connections.py"))
    assert {r["broker"] for r in rows} == {"radio", "mosquitto"}
    assert all(r["received"] == r["listeners"] == 200 and r["lost"] == 0 for r in rows)
    assert all(r["deliver_to_all_ms"] > 0 and r["processes"] == 4 for r in rows)


def test_the_growth_benchmark_measures_every_registry_size():
    rows = rounds(smoke("growth.py"))
    assert {r["registry"] for r in rows} == {"10 keys, 10 networks", "10,000 keys", "1,000 networks"}
    assert all(r["connects_per_s"] > 0 and r["refusals_per_s"] > 0 and r["publishes_per_s"] > 0 for r in rows)


def test_the_filter_hog_benchmark_measures_with_and_without_and_the_limit_holds():
    rows = rounds(smoke("filter_hog.py"))
    assert {r["hog_filters"] for r in rows} == {0, 200}
    assert all(r["deliveries_per_s"] > 0 for r in rows)
    assert [r["granted"] for r in rows if r["hog_filters"]] == [100]  # max_filters, by default


def test_the_durability_benchmark_measures_with_and_without_the_store():
    rows = rounds(smoke("durability.py"))
    assert {r["persistence"] for r in rows} == {"on", "off"}
    assert all(r["publishes_per_s"] > 0 for r in rows)


@pytest.mark.mosquitto
def test_the_mosquitto_autosave_benchmark_measures_both_ways_of_saving():
    require_mosquitto()
    rows = rounds(smoke("mosquitto_autosave.py"))
    assert {r["save"] for r in rows} == {"every change", "every 10 s"}
    assert all(r["publishes_per_s"] > 0 for r in rows)


def test_the_https_door_benchmark_measures_both_doors():
    require_wrk()
    rows = rounds(smoke("https_door.py"))
    assert {r["door"] for r in rows} == {"http", "https"}
    assert all(r["rps"] > 0 and r["non_2xx"] == 0 for r in rows)


def test_the_abuse_benchmark_runs_every_attack():
    rows = {r["attack"]: r for r in rounds(smoke("abuse.py"))}
    assert set(rows) == {"sessions", "retained", "sockets"}
    assert rows["sessions"]["accepted"] == 10  # the default cap per address
    assert rows["retained"]["resubscribes_per_s"] > 0
    assert rows["sockets"]["legitimate_ok"] == rows["sockets"]["legitimate_tries"]


def test_the_history_readers_benchmark_reads_capped_pages_while_publishing():
    require_wrk()
    rows = rounds(smoke("history_readers.py"))
    assert rows
    for row in rows:
        assert row["history_answers"] > 0
        assert row["publishes_with_readers"] > 0
        assert row["largest_answer_mb"] <= 4.01  # the default cap, 4 MiB, and its envelope


def test_the_first_write_trace_times_each_sample_read_to_its_threads_next_write():
    """``first_write.py``'s reading of ``perf script``: a PUBACK's read (4 bytes) starts nothing,
    another thread's write ends nothing, and only the first write after a sample's read counts."""
    spec = importlib.util.spec_from_file_location("first_write", BENCH / "first_write.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    trace = """\
          python 20898 [000] 16976.168324100:  raw_syscalls:sys_exit: NR 281 = 1
          python 20898 [000] 16976.168330530: raw_syscalls:sys_enter: NR 0 (16, 7fc39ff21150, 3e800, 0, 0, 0)
          python 20898 [000] 16976.168334065:  raw_syscalls:sys_exit: NR 0 = 214
          python 20899 [000] 16976.168340000: raw_syscalls:sys_enter: NR 1 (3, 7fc3a0939a50, 8, 0, 0, 0)
          python 20898 [000] 16976.168387655: raw_syscalls:sys_enter: NR 1 (17, 7fc3a0939a50, d6, 0, 0, 0)
          python 20898 [000] 16976.168421325:  raw_syscalls:sys_exit: NR 1 = 214
          python 20898 [000] 16976.168435706: raw_syscalls:sys_enter: NR 1 (18, 7fc3a0939a50, d6, 0, 0, 0)
          python 20898 [000] 16976.170000000:  raw_syscalls:sys_exit: NR 0 = 4
          python 20898 [000] 16976.170010000: raw_syscalls:sys_enter: NR 1 (18, 7fc3a0939a50, 4, 0, 0, 0)
"""
    found = module.first_writes(trace.splitlines())
    assert [round(us, 2) for us in found] == [53.59]
