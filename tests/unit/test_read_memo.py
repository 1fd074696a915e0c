"""The fan-out's read memo: a session's read verdict is asked once per network and registry snapshot."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from radio.broker.message import Message
from radio.broker.sessions import Session
from radio.config import NetworkSettings
from radio.topics import MEMO_TOPIC_MOST, MEMO_TOPICS

from .build import KEYED, Sink, registry, router


@pytest.mark.sources_only  # a Sink stands for the session's connection
def test_a_read_verdict_is_asked_once_per_network_and_snapshot_however_many_topics_it_has():
    snapshots = [registry({"A": NetworkSettings(), "B": NetworkSettings()})]
    fanout = router()
    fanout.registry = lambda: snapshots[-1]
    fanout.reads_by_network = True
    asked: list[str] = []

    def reader(topic: str) -> Callable[[object], bool]:
        asked.append(topic)
        return lambda _session: True

    fanout.reader = reader
    session = Session("listener", True, KEYED)  # noqa: FBT003
    sink = session.connection = Sink()
    fanout.hold(session)
    assert fanout.subscribe(session, [("networks/#", 0)]) == [0]

    topics = [f"networks/A/{i}" for i in range(MEMO_TOPICS + 10)]
    for topic in topics:
        fanout.publish(Message(topic, b"{}", 0))
        assert len(fanout._read_topics) <= MEMO_TOPICS  # ever new topics cost no memory past a bound
    assert asked == ["networks/A/0"]  # one network, one snapshot: asked once
    fanout.publish(Message("networks/B", b"{}", 0))
    assert asked == ["networks/A/0", "networks/B"]
    snapshots.append(registry({"A": NetworkSettings(), "B": NetworkSettings()}))  # a reload
    fanout.publish(Message("networks/A/1", b"{}", 0))
    assert asked == ["networks/A/0", "networks/B", "networks/A/1"]
    assert len(sink.written) == len(topics) + 2  # and every sample was delivered
    kept = dict(fanout._read_topics)
    fanout.publish(Message("networks/A/" + "x" * MEMO_TOPIC_MOST, b"{}", 0))  # too long to keep
    assert fanout._read_topics == kept
    assert asked == ["networks/A/0", "networks/B", "networks/A/1"]  # its network's memo still holds
    assert len(sink.written) == len(topics) + 3
