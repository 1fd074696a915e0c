"""Quota leases: block sizes, the last units one at a time, idle units given back, exact totals."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, date, datetime

import pytest

from radio import usage
from radio.errors import Busy

from .build import key


def used_in_file(path, key_id: str) -> dict[str, int]:
    """The quota rows of a key as every process sees them: period -> units taken from the file."""
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT period, used FROM quotas WHERE key_id = ?", (key_id,)).fetchall())


def on(meter: usage.Meter, day: date) -> None:
    """The meter's clock at noon (UTC) that day, for every sample and quota from now on."""
    noon = datetime(day.year, day.month, day.day, 12, tzinfo=UTC).timestamp()
    meter.clock = lambda: noon


@pytest.fixture
def meter(tmp_path):
    meter = usage.Meter(tmp_path / "usage.db")
    on(meter, date(2026, 12, 6))
    yield meter
    meter.close()


@pytest.mark.parametrize(
    ("quota", "block"),
    [(100_000, 100), (1_600, 100), (1_599, 99), (800, 50), (32, 2), (31, 1), (16, 1), (15, 1), (1, 1)],
)
def test_a_lease_is_a_sixteenth_of_what_is_left_at_most_100_at_least_1(meter, quota, block):
    metered = key("metered", quota=quota)
    assert isinstance(meter.take(metered), usage.Unit)
    assert used_in_file(meter.path, metered.id) == {"2026-12-06": block}


def test_the_next_lease_is_taken_when_one_is_spent_and_shrinks_with_what_is_left(meter):
    metered = key("metered", quota=1_000)
    for _ in range(62):  # 1,000 // 16
        assert isinstance(meter.take(metered), usage.Unit)
    assert used_in_file(meter.path, metered.id) == {"2026-12-06": 62}
    meter.take(metered)
    assert used_in_file(meter.path, metered.id) == {"2026-12-06": 62 + 58}  # 938 // 16


def test_near_the_end_every_unit_is_taken_from_the_file_on_its_own(meter):
    metered = key("metered", quota=40)
    seen = []
    for _ in range(40):
        assert isinstance(meter.take(metered), usage.Unit)
        seen.append(used_in_file(meter.path, metered.id)["2026-12-06"])
    assert seen[-20:] == list(range(21, 41))  # under 32 left: one unit per lease
    state = meter.take(metered)
    assert isinstance(state, usage.QuotaState)
    assert (state.used, state.limit, state.exceeded) == (40, 40, True)
    assert state.resets == datetime(2026, 12, 7, tzinfo=UTC)


@pytest.mark.parametrize("quota", [1, 2, 17, 31, 32, 33, 250])
def test_exactly_the_quota_is_taken_whatever_its_size(meter, quota):
    metered = key("metered", quota=quota)
    taken = 0
    while isinstance(meter.take(metered), usage.Unit):
        taken += 1
    assert taken == quota
    assert used_in_file(meter.path, metered.id) == {"2026-12-06": quota}


def test_units_not_spent_go_back_to_the_file_once_idle_and_at_close(tmp_path):
    metered = key("metered", quota=10_000)
    idle = usage.Meter(tmp_path / "usage.db", lease_idle=0)  # idle at once, rather than in 2 s
    meter = usage.Meter(tmp_path / "usage.db")
    day = "2026-12-06"
    on(idle, date(2026, 12, 6))
    on(meter, date(2026, 12, 6))
    try:
        for _ in range(3):
            idle.take(metered)
        meter.take(metered)
        assert used_in_file(tmp_path / "usage.db", metered.id) == {day: 200}  # two leases of 100
        idle.flush()  # what its writer does once a second
        assert used_in_file(tmp_path / "usage.db", metered.id) == {day: 103}
    finally:
        meter.close()
        idle.close()
    assert used_in_file(tmp_path / "usage.db", metered.id) == {day: 4}  # exactly what was spent


def test_a_unit_given_back_is_spent_again_before_the_file_is_asked(meter):
    metered = key("metered", quota=1)
    unit = meter.take(metered)
    assert isinstance(unit, usage.Unit)
    assert isinstance(meter.take(metered), usage.QuotaState)
    meter.give_back(unit)  # its sample failed
    assert meter.take(metered) == unit
    assert isinstance(meter.take(metered), usage.QuotaState)


def test_an_edited_quota_renews_the_lease(meter):
    small, large = key("edited", quota=100), key("edited", quota=200)
    assert isinstance(meter.take(small), usage.Unit)  # a lease of 6
    unit = meter.take(large)
    assert isinstance(unit, usage.Unit)
    assert unit.limit == 200
    assert used_in_file(meter.path, small.id) == {"2026-12-06": 1 + 12}  # 5 back, 199 // 16 taken


def test_concurrent_takers_in_several_processes_take_exactly_the_quota(tmp_path):
    """Three meters (as three processes would) with two threads each, all on one file."""
    metered = key("shared", quota=700)
    meters = [usage.Meter(tmp_path / "usage.db") for _ in range(3)]
    for meter in meters:
        on(meter, date(2026, 12, 6))
    counts: list[int] = []
    start = threading.Barrier(6)

    def spend(meter: usage.Meter) -> None:
        taken = 0
        start.wait()
        while True:
            try:
                got = meter.take(metered)
            except Busy:  # another meter held the file past the wait: ask again
                continue
            if not isinstance(got, usage.Unit):
                break
            taken += 1
        counts.append(taken)

    threads = [threading.Thread(target=spend, args=(m,)) for m in meters for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for meter in meters:
        meter.close()
    assert sum(counts) == 700
    assert used_in_file(tmp_path / "usage.db", metered.id) == {"2026-12-06": 700}


def test_a_month_s_quota_has_its_own_row_and_counts_the_month_s_usage(tmp_path):
    daily, monthly = key("k", quota=50), key("k", quota=50, quota_period="month")
    meter = usage.Meter(tmp_path / "usage.db")
    on(meter, date(2026, 12, 1))
    for _ in range(4):
        meter.record(daily, "mqtt", "A", 10)
    meter.flush()  # 4 samples published on the 1st, in the usage rows
    on(meter, date(2026, 12, 3))
    assert isinstance(meter.take(daily), usage.Unit)
    unit = meter.take(monthly)
    assert isinstance(unit, usage.Unit)
    assert unit.slot == (monthly.id, "2026-12")
    meter.close()
    # The day's row starts from nothing (no usage on the 3rd); the month's from the 1st's 4 samples.
    assert used_in_file(tmp_path / "usage.db", daily.id) == {"2026-12-03": 1, "2026-12": 5}


def test_a_month_s_quota_resets_on_the_first_of_the_next_month(tmp_path):
    monthly = key("k", quota=1, quota_period="month")
    meter = usage.Meter(tmp_path / "usage.db")
    on(meter, date(2026, 12, 31))
    try:
        assert isinstance(meter.take(monthly), usage.Unit)
        state = meter.take(monthly)
        assert isinstance(state, usage.QuotaState)
        assert state.resets == datetime(2027, 1, 1, tzinfo=UTC)
        on(meter, date(2027, 1, 1))
        assert isinstance(meter.take(monthly), usage.Unit)
    finally:
        meter.close()


def test_usage_and_refusals_are_written_per_day_door_and_network(meter):
    publisher = key("pub")
    meter.record(publisher, "http", "A", 10)
    meter.record(publisher, "http", "A", 30)
    meter.record(publisher, "mqtt", "A", 5)
    meter.unrecord(publisher, "mqtt", "A", 5)  # that one did not go through
    meter.refuse(publisher, "http", "rate")
    meter.received(publisher.id, "pub", "A", 3, 90)
    meter.flush()
    rows, refusals = usage.report(meter.path)
    assert [(r.day, r.key, r.door, r.network, r.samples, r.bytes) for r in rows] == [
        ("2026-12-06", "pub", "http", "A", 2, 40)
    ]
    assert [(r.door, r.reason, r.count) for r in refusals] == [("http", "rate", 1)]
    assert [(r.network, r.samples, r.bytes) for r in usage.received_report(meter.path)] == [("A", 3, 90)]
    assert meter.take(publisher) is None  # no quota: nothing to take


def test_a_sample_is_counted_on_the_day_it_was_recorded_whenever_its_count_is_added_up(meter):
    publisher = key("pub")
    meter.record(publisher, "mqtt", "A", 10)  # just before midnight, counted after it
    on(meter, date(2026, 12, 7))
    meter.record(publisher, "mqtt", "A", 20)
    meter.flush()
    rows, _ = usage.report(meter.path)
    assert [(r.day, r.samples, r.bytes) for r in rows] == [("2026-12-06", 1, 10), ("2026-12-07", 1, 20)]


def test_samples_recorded_with_nobody_reading_wait_in_a_bounded_queue(meter):
    publisher = key("pub")
    for _ in range(3 * usage.ABSORB_AT):
        meter.record(publisher, "mqtt", "A", 1)
        assert len(meter._accepted) < usage.ABSORB_AT
    assert meter.totals[("pub", "mqtt", "A")] == [3 * usage.ABSORB_AT, 3 * usage.ABSORB_AT]


def test_samples_recorded_by_many_threads_while_others_read_are_each_counted_once(meter):
    """Recording takes no lock; reading the totals or writing the file adds up what was recorded."""
    publisher, per_thread, threads = key("pub"), 20_000, 4
    done = threading.Event()
    seen: list[int] = []

    def record() -> None:
        for _ in range(per_thread):
            meter.record(publisher, "http", "A", 2)

    def read() -> None:
        while not done.is_set():
            meter.flush()
            seen.append(meter.totals[("pub", "http", "A")][0])

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=record) for _ in range(threads)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    done.set()
    reader.join()
    assert seen == sorted(seen)  # counts only grow, and never past what was recorded
    assert seen[-1] <= per_thread * threads
    meter.flush()
    assert meter.totals[("pub", "http", "A")] == [per_thread * threads, 2 * per_thread * threads]
    rows, _ = usage.report(meter.path)
    assert [(r.samples, r.bytes) for r in rows] == [(per_thread * threads, 2 * per_thread * threads)]
