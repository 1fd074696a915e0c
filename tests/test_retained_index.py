"""The retained index finds, for any filter, exactly the retained topics MQTT says the filter matches."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from topic_matching import matches

from radio.broker.message import Message
from radio.broker.retained import RetainedIndex
from radio.topics import network_of_topic

LEVELS = ["a", "b", "", "$SYS", "networks", "n1", "n2"]
topics = st.lists(st.sampled_from(LEVELS), min_size=1, max_size=4).map("/".join)
filters = st.tuples(st.lists(st.sampled_from([*LEVELS, "+"]), min_size=0, max_size=4), st.booleans()).map(
    lambda parts: "/".join([*parts[0], "#"] if parts[1] or not parts[0] else parts[0])
)


@settings(max_examples=200, deadline=None)
@given(
    changes=st.lists(st.tuples(topics, st.booleans()), max_size=30),
    asked=st.lists(filters, min_size=1, max_size=8),
)
def test_the_index_matches_what_a_filter_matches(changes, asked):
    index = RetainedIndex()
    held: dict[str, Message] = {}
    for topic, keep in changes:
        if keep:
            held[topic] = Message(topic, b"{}", 1, retain=True)
            index.put(topic, held[topic])
        else:
            assert index.pop(topic) is held.pop(topic, None)
    assert len(index) == len(held)
    for topic_filter in asked:
        found = [m.topic for m in index.match(topic_filter)]
        assert sorted(found) == sorted(t for t in held if matches(topic_filter, t)), topic_filter
    for network in ("n1", "n2", "a"):
        assert index.count(network) == sum(network_of_topic(t) == network for t in held)


def test_the_tree_keeps_no_empty_branch():
    """Clearing what was retained leaves nothing to walk: the index does not grow with churn."""
    index = RetainedIndex()
    for n in range(100):
        topic = f"networks/n{n % 7}/sensor/{n}"
        index.put(topic, Message(topic, b"{}", 0))
    for n in range(100):
        index.pop(f"networks/n{n % 7}/sensor/{n}")
    assert len(index) == 0
    assert index.match("#") == []
    assert not index._root.children
