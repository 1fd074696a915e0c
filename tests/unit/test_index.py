"""The subscription index (and the router's fan-out over it) reaches exactly the filters MQTT says match.

Checked against a plain matcher that follows MQTT 3.1.1 level by level, for random filters with
``+`` and ``#`` and random topics, ``$`` topics included.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from topic_matching import matches

from radio.broker.index import REACHED_MOST, SubscriptionIndex
from radio.broker.message import Message
from radio.broker.sessions import Session
from radio.topics import MEMO_TOPIC_MOST

from .build import Sink, router

LEVELS = ["a", "b", "", "$SYS", "$x", "networks", "n1"]
topics = st.lists(st.sampled_from(LEVELS), min_size=1, max_size=4).map("/".join).filter(bool)
filters = (
    st.tuples(st.lists(st.sampled_from([*LEVELS, "+"]), max_size=4), st.booleans())
    .map(lambda parts: "/".join([*parts[0], "#"] if parts[1] or not parts[0] else parts[0]))
    .filter(bool)
)
subscribers = st.sampled_from(["s1", "s2", "s3"])


def test_the_reference_matcher_follows_the_spec():
    """The examples of MQTT 3.1.1 section 4.7, so that the property below compares with the spec."""
    assert matches("sport/tennis/player1/#", "sport/tennis/player1")
    assert matches("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon")
    assert matches("sport/#", "sport")
    assert matches("sport/+", "sport/")
    assert not matches("sport/+", "sport")
    assert matches("+/+", "/finance")
    assert matches("/+", "/finance")
    assert not matches("+", "/finance")
    assert not matches("#", "$SYS/x")
    assert not matches("+/monitor/Clients", "$SYS/monitor/Clients")
    assert matches("$SYS/#", "$SYS/monitor/Clients")
    assert matches("$SYS/monitor/+", "$SYS/monitor/Clients")


@settings(max_examples=100, deadline=None)
@given(
    changes=st.lists(
        st.tuples(st.booleans(), filters, subscribers, st.integers(0, 2)), min_size=1, max_size=25
    ),
    asked=st.lists(topics, min_size=1, max_size=8),
)
def test_the_index_matches_what_each_filter_matches(changes, asked):
    index: SubscriptionIndex[str] = SubscriptionIndex()
    held: dict[tuple[str, str], int] = {}
    for add, topic_filter, subscriber, qos in changes:
        if add:
            index.add(topic_filter, subscriber, qos)
            held[topic_filter, subscriber] = qos
        else:
            index.remove(topic_filter, subscriber)
            held.pop((topic_filter, subscriber), None)
    assert len(index) == len(held)
    for topic in asked:
        tables = index.match(topic)
        found = Counter(s for table in tables for s in table)
        expected = Counter(s for (f, s) in held if matches(f, topic))
        assert found == expected, topic
        best: dict[str, int] = {}
        for table in tables:
            for subscriber, qos in table.items():
                best[subscriber] = max(best.get(subscriber, 0), qos)
        want: dict[str, int] = {}
        for (f, s), qos in held.items():
            if matches(f, topic):
                want[s] = max(want.get(s, 0), qos)
        assert best == want, topic


# Few levels, so that asks, exact filters and wildcards meet on the same topics often.
few_topics = st.lists(st.sampled_from(["a", "b"]), min_size=1, max_size=2).map("/".join)
few_filters = st.one_of(few_topics, st.sampled_from(["#", "a/#", "+", "+/b", "a/+"]))


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("add"), few_filters, subscribers, st.integers(0, 2)),
            st.tuples(st.just("remove"), few_filters, subscribers, st.just(0)),
            st.tuples(st.just("ask"), few_topics, st.just(""), st.just(0)),
        ),
        min_size=1,
        max_size=40,
    )
)
@example(steps=[("add", "a", "s1", 1), ("ask", "a", "", 0), ("remove", "a", "s1", 0), ("ask", "a", "", 0)])
@example(steps=[("ask", "a", "", 0), ("add", "a", "s1", 1), ("ask", "a", "", 0)])
@example(steps=[("ask", "a/b", "", 0), ("add", "a/+", "s1", 1), ("ask", "a/b", "", 0)])
def test_what_a_topic_reaches_is_asked_again_after_every_change_that_can_alter_it(steps):
    """``targets`` keeps its answers between samples: never one a subscription change made stale."""
    index: SubscriptionIndex[str] = SubscriptionIndex()
    held: dict[tuple[str, str], int] = {}
    for step, text, subscriber, qos in steps:
        if step == "add":
            index.add(text, subscriber, qos)
            held[text, subscriber] = qos
        elif step == "remove":
            index.remove(text, subscriber)
            held.pop((text, subscriber), None)
        else:
            want: dict[str, int] = {}
            for (f, s), granted in held.items():
                if matches(f, text):
                    want[s] = max(want.get(s, 0), granted)
            reached = index.targets(text)
            assert len(reached) == len(want), text  # once per subscriber
            assert dict(reached) == want, text
            assert index.targets(text) is reached  # and kept for the next sample


def test_what_topics_reach_is_kept_within_its_bounds():
    index: SubscriptionIndex[str] = SubscriptionIndex()
    for n in range(300):
        index.add("a/#", f"s{n}", 0)
    for n in range(REACHED_MOST // 300 + 50):
        assert len(index.targets(f"a/{n}")) == 300  # a publisher inventing topics under a wildcard
        assert index._kept <= REACHED_MOST
    long = "a/" + "x" * MEMO_TOPIC_MOST
    assert len(index.targets(long)) == 300
    assert long not in index._reached  # never kept


@settings(max_examples=100, deadline=None)
@given(held=st.lists(st.tuples(filters, subscribers, st.integers(0, 2)), max_size=25), data=st.data())
def test_subscribing_then_unsubscribing_everything_leaves_the_index_empty(held, data):
    index: SubscriptionIndex[str] = SubscriptionIndex()
    for topic_filter, subscriber, qos in held:
        index.add(topic_filter, subscriber, qos)
    pairs = list({(f, s) for f, s, _ in held})
    for topic_filter, subscriber in data.draw(st.permutations(pairs)):
        index.remove(topic_filter, subscriber)
        index.remove(topic_filter, subscriber)  # twice: the second is ignored, counts stay right
    assert len(index) == 0
    for topic in ["a", "a/b", "$SYS/a", "/", "networks/n1/a", "b//a"]:
        assert index.match(topic) == [], topic


def test_regranting_a_filter_changes_its_qos_and_counts_it_once():
    index: SubscriptionIndex[str] = SubscriptionIndex()
    for qos in (0, 2, 1):
        index.add("a/+", "s1", qos)
        index.add("a/b", "s1", qos)
    assert len(index) == 2
    assert index.match("a/b") == [{"s1": 1}, {"s1": 1}]
    index.remove("a/+", "s1")
    assert index.match("a/b") == [{"s1": 1}]
    assert index.match("a/c") == []


def test_removing_a_filter_nobody_holds_changes_nothing():
    index: SubscriptionIndex[str] = SubscriptionIndex()
    index.add("a/#", "s1", 1)
    for topic_filter, subscriber in [
        ("a/#", "s2"),
        ("a/+", "s1"),
        ("x/y", "s1"),
        ("a/b/#", "s1"),
        ("#", "s1"),
    ]:
        index.remove(topic_filter, subscriber)
    assert len(index) == 1
    assert index.match("a/b/c") == [{"s1": 1}]


@settings(max_examples=60, deadline=None)
@given(
    held=st.lists(st.tuples(filters, st.integers(0, 2), st.integers(0, 2)), min_size=1, max_size=12),
    topic=topics.filter(lambda t: not t.startswith("$")),
    top=st.integers(0, 1),
)
@pytest.mark.sources_only
def test_the_router_delivers_once_per_client_at_its_best_granted_qos(held, topic, top):
    """A client whose filters overlap gets one copy of a sample, at the highest QoS they grant it."""
    fanout = router()
    sessions = []
    for n in range(3):
        session = Session(f"c{n}", True, fanout.limits.keyed)  # noqa: FBT003
        session.connection = Sink()
        fanout.hold(session)
        sessions.append(session)
    for topic_filter, owner, qos in held:
        assert fanout.subscribe(sessions[owner], [(topic_filter, qos)]) == [qos]
    fanout.publish(Message(topic, b"{}", top))
    for session in sessions:
        granted = [qos for f, qos in session.subscriptions.items() if matches(f, topic)]
        written = session.connection.written
        if not granted:
            assert written == []
            continue
        assert len(written) == 1
        assert (written[0][0] >> 1) & 3 == min(top, max(granted))
