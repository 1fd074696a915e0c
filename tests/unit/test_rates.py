"""Token buckets: burst, refill and waits, with the clock given to them; edges of the rate."""

from __future__ import annotations

import fcntl
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radio import rates
from radio.errors import Busy
from radio.keys import MAX_RATE, MIN_RATE, Terms, parse_rate

rates_ = st.floats(min_value=MIN_RATE, max_value=MAX_RATE)
clocks = st.one_of(st.floats(0, 10), st.floats(0, 1e7), st.floats(1.7e9, 1.9e9))  # monotonic, time()


def test_a_full_bucket_gives_a_token_at_once_and_keeps_the_rest():
    assert rates.take(5.0, 0.0, 0.0, 2.0, 5) == (4.0, 0.0)


def test_an_empty_bucket_says_how_long_until_one_token():
    assert rates.take(0.0, 10.0, 10.0, 4.0, 5) == (0.0, 0.25)
    assert rates.take(0.5, 10.0, 10.0, 4.0, 5) == (0.5, 0.125)


def test_the_bucket_refills_at_the_rate_and_never_past_its_size():
    assert rates.take(0.0, 10.0, 10.5, 4.0, 5) == (1.0, 0.0)  # 2 tokens refilled, 1 taken
    assert rates.take(0.0, 0.0, 1_000.0, 4.0, 5) == (4.0, 0.0)  # capped at 5, 1 taken


def test_a_clock_stepped_back_refills_nothing():
    assert rates.take(0.0, 100.0, 50.0, 4.0, 5) == (0.0, 0.25)


@pytest.mark.parametrize(
    ("rate", "wait"),
    [(0.5, 2.0), (MIN_RATE, 86_400.0), (1 / 3, 3.0), (MAX_RATE, 1e-6)],
    ids=["fractional", "one-a-day", "a-third", "highest"],
)
def test_the_wait_for_a_token_is_one_over_the_rate(rate, wait):
    tokens, seconds = rates.take(0.0, 0.0, 0.0, rate, 1)
    assert tokens == 0.0
    assert seconds == pytest.approx(wait, rel=1e-12)


@settings(max_examples=150, deadline=None)
@given(rate=rates_, tokens=st.floats(-1.0, 0.999), now=clocks, size=st.integers(1, 100))
def test_waiting_exactly_the_wait_given_always_gets_the_token(rate, tokens, now, size):
    """``now + wait`` rounds: a client that waited as told must not be told to wait again."""
    left, wait = rates.take(tokens, now, now, rate, size)
    if wait:
        assert rates.take(left, now, now + wait, rate, size)[1] == 0.0


@settings(max_examples=80, deadline=None)
@given(
    rate=st.floats(0.1, 1_000.0),
    size=st.integers(1, 20),
    start=st.floats(0, 1e6),
    steps=st.lists(st.floats(0, 2.0), min_size=1, max_size=60),
)
def test_no_more_than_the_burst_plus_the_rate_goes_through(rate, size, start, steps):
    bucket = rates.Buckets()
    now, taken = start, 0
    for step in steps:
        now += step
        taken += bucket.take("k", rate, size, now=now) == 0.0
    assert taken <= size + rate * (now - start) + 1e-6


def test_a_client_that_waits_as_told_gets_exactly_the_rate_after_its_burst():
    bucket = rates.Buckets()
    now, stamps = 1_000.0, []
    for _ in range(100):  # 34 tokens and 30 waits, if each wait is enough
        if len(stamps) == 4 + 30:
            break
        wait = bucket.take("k", 3.0, 4, now=now)
        if wait:
            now += wait
        else:
            stamps.append(now)
    assert stamps[:4] == [1_000.0] * 4  # the burst at once
    assert stamps[4:] == pytest.approx([1_000.0 + n / 3 for n in range(1, 31)], abs=1e-9)  # then 3/s


def test_buckets_are_per_key_start_full_and_can_be_forgotten():
    bucket = rates.Buckets()
    assert [bucket.take("a", 1.0, 2, now=0.0) for _ in range(3)] == [0.0, 0.0, 1.0]
    assert bucket.take("b", 1.0, 2, now=0.0) == 0.0  # another key has its own
    assert bucket.remaining("a", 1.0, 2, now=0.5) == 0.5
    assert bucket.remaining("c", 1.0, 2, now=0.5) == 2.0  # never seen: full, and nothing taken
    bucket.forget({"b"})
    assert bucket.remaining("a", 1.0, 2, now=0.5) == 2.0  # forgotten: starts full again
    assert bucket.remaining("b", 1.0, 2, now=0.5) == 1.5


def test_shared_buckets_are_one_bucket_for_every_process_that_maps_the_file(tmp_path):
    one, two = rates.SharedBuckets(tmp_path / "rates.bin"), rates.SharedBuckets(tmp_path / "rates.bin")
    try:
        assert one.take("00ff", 2.0, 2, now=100.0) == (0.0, 1.0)
        assert two.take("00ff", 2.0, 2, now=100.0) == (0.0, 0.0)
        assert one.take("00ff", 2.0, 2, now=100.0) == (0.5, 0.0)
        assert two.take("00ff", 2.0, 2, now=100.25) == (0.25, 0.5)
        assert two.take("0abc", 2.0, 2, now=100.25) == (0.0, 1.0)  # another key, another slot
    finally:
        one.close()
        two.close()


def test_a_shared_bucket_file_held_by_another_process_is_busy_and_nothing_is_taken(tmp_path):
    buckets = rates.SharedBuckets(tmp_path / "rates.bin")
    try:
        with (tmp_path / "rates.bin").open("rb") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            with pytest.raises(Busy):
                buckets.take("00ff", 1.0, 1, now=0.0, within=0)
            with pytest.raises(Busy):
                buckets.waiting("00ff", 1.0, 1, within=0)
        assert buckets.take("00ff", 1.0, 1, now=0.0) == (0.0, 0.0)  # the bucket was still full
    finally:
        buckets.close()


def test_threads_of_one_process_take_from_a_shared_bucket_one_at_a_time(tmp_path, monkeypatch):
    """A bridge worker runs the requests of keys with a rate in a pool of threads, all through one
    mapping of the file: ``flock`` does not keep apart threads that share its descriptor. Each
    thread here is switched out while it holds the bucket, as the interpreter may do at any time;
    still no more than the burst goes through."""
    buckets = rates.SharedBuckets(tmp_path / "rates.bin")
    refill = rates.take

    def switched_out(*args: float) -> tuple[float, float]:
        time.sleep(0.002)  # another thread runs meanwhile
        return refill(*args)

    monkeypatch.setattr(rates, "take", switched_out)
    start = threading.Barrier(8)

    def taken() -> int:
        start.wait()
        return sum(buckets.take("00ff", 1e-6, 5)[0] == 0.0 for _ in range(5))

    try:
        with ThreadPoolExecutor(8) as pool:
            assert sum(pool.map(lambda _: taken(), range(8))) == 5
    finally:
        buckets.close()


@pytest.mark.parametrize(
    ("text", "rate"),
    [("5/s", 5.0), ("300/min", 5.0), ("1/h", 1 / 3600), ("0.5", 0.5), ("1000000/s", MAX_RATE)],
)
def test_rates_are_read_as_samples_per_second(text, rate):
    assert parse_rate(text) == pytest.approx(rate)


@pytest.mark.parametrize("text", ["0/s", "-1/s", "1000001/s", "0.04/h", "5/day", "nan/s", "inf/s", "x/s"])
def test_a_rate_of_zero_or_past_the_bounds_is_refused(text):
    with pytest.raises(ValueError, match="invalid rate"):
        parse_rate(text)


@pytest.mark.parametrize(
    ("terms", "size"),
    [
        (Terms(rate=0.5), 1),
        (Terms(rate=2.5), 3),
        (Terms(rate=MAX_RATE), 1_000_000),
        (Terms(rate=5.0, burst=1), 1),
    ],
)
def test_a_bucket_holds_its_burst_or_one_second_s_worth_and_at_least_one(terms, size):
    assert terms.bucket == size
