"""Retained samples: set, clear and match, each network's count, and its ``max_retained`` arithmetic."""

from __future__ import annotations

import pytest

from radio.broker.message import Message
from radio.broker.retained import RetainedIndex
from radio.broker.sessions import Session
from radio.config import NetworkSettings

from .build import Sink, registry, router


def kept(topic: str, payload: bytes = b"{}") -> Message:
    return Message(topic, payload, 1, retain=True)


def test_putting_replaces_and_popping_clears_with_the_count_kept_per_network():
    index = RetainedIndex()
    first, second = kept("networks/A/x", b"1"), kept("networks/A/x", b"2")
    index.put("networks/A/x", first)
    index.put("networks/A/x", second)
    index.put("networks/A", kept("networks/A"))
    index.put("networks/B/y", kept("networks/B/y"))
    index.put("other/z", kept("other/z"))  # outside every network: held, counted for none
    assert (len(index), index.count("A"), index.count("B"), index.count("other")) == (4, 2, 1, 0)
    assert index.get("networks/A/x") is second
    assert index.pop("networks/A/x") is second
    assert index.pop("networks/A/x") is None  # twice: nothing left, the count is not taken again
    assert (len(index), index.count("A")) == (3, 1)
    assert "networks/A/x" not in index
    assert index.pop("networks/A") is not None
    assert index.count("A") == 0
    assert sorted(topic for topic, _ in index.items()) == ["networks/B/y", "other/z"]


@pytest.mark.parametrize(
    ("topic_filter", "expected"),
    [
        ("networks/A/#", ["networks/A", "networks/A/x", "networks/A/x/deep"]),
        ("networks/+", ["networks/A", "networks/B"]),
        ("networks/+/x", ["networks/A/x"]),
        ("#", ["networks/A", "networks/A/x", "networks/A/x/deep", "networks/B"]),
        ("+/+", ["networks/A", "networks/B"]),
        ("$SYS/#", ["$SYS/broker"]),
        ("$SYS/+", ["$SYS/broker"]),
        ("networks/A/x/deep/#", ["networks/A/x/deep"]),
        ("networks/C/#", []),
        ("networks", []),
    ],
)
def test_a_filter_matches_the_retained_topics_mqtt_says(topic_filter, expected):
    index = RetainedIndex()
    for topic in ["networks/A", "networks/A/x", "networks/A/x/deep", "networks/B", "$SYS/broker"]:
        index.put(topic, kept(topic))
    assert sorted(m.topic for m in index.match(topic_filter)) == expected


def limited(max_retained: int, *, retain: bool = True):
    return router(registry({"A": NetworkSettings(max_retained=max_retained, retain=retain)}))


def retain(fanout, topic: str, payload: bytes = b"{}") -> None:
    fanout.publish(Message(topic, payload, 0, retain=True))


def test_a_network_retains_up_to_max_retained_topics_and_refuses_only_a_new_one_past_it():
    fanout = limited(2)
    assert fanout.retained_full("networks/A/x") is None
    retain(fanout, "networks/A/x")
    assert fanout.retained_full("networks/A/y") is None  # 1 of 2
    retain(fanout, "networks/A/y")
    assert fanout.retained_full("networks/A/z") == 2  # 2 of 2: a third would pass the limit
    assert fanout.retained_full("networks/A/x") is None  # replacing one always works
    assert fanout.retained_full("networks/A") is None  # so does the network's own topic
    assert fanout.retained_full("networks/B/z") is None  # another network has its own count
    retain(fanout, "networks/A/x", b"")  # cleared: room for one again
    assert fanout.retained.count("A") == 1
    assert fanout.retained_full("networks/A/z") is None


def test_the_network_s_own_topic_counts_towards_its_limit_but_is_never_refused():
    fanout = limited(1)
    retain(fanout, "networks/A")
    assert fanout.retained.count("A") == 1
    assert fanout.retained_full("networks/A/x") == 1
    assert fanout.retained_full("networks/A") is None


def test_max_retained_zero_refuses_every_topic_but_the_network_s_own():
    fanout = limited(0)
    assert fanout.retained_full("networks/A/x") == 0
    assert fanout.retained_full("networks/A") is None


def test_a_network_that_retains_nothing_keeps_nothing_and_refuses_nothing():
    fanout = limited(0, retain=False)
    assert fanout.retained_full("networks/A/x") is None
    retain(fanout, "networks/A/x")
    assert len(fanout.retained) == 0


@pytest.mark.sources_only
def test_an_empty_retained_publish_clears_the_topic_and_reaches_no_subscriber():
    fanout = limited(5)
    listener = Session("c", True, fanout.limits.keyed)  # noqa: FBT003
    listener.connection = sink = Sink()
    fanout.hold(listener)
    fanout.subscribe(listener, [("networks/A/#", 0)])
    retain(fanout, "networks/A/x", b'{"n":1}')
    retain(fanout, "networks/A/x", b"")
    assert "networks/A/x" not in fanout.retained
    assert len(sink.written) == 1  # the sample, not the clearing
    assert fanout.stats.published == 1
