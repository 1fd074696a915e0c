"""Sessions: what a queue keeps, which packet ids go out, and when an offline session expires or comes back."""

from __future__ import annotations

import logging

import pytest

from radio.broker import attributes as attrs
from radio.broker.message import Message
from radio.broker.sessions import (
    MAX_PACKET_ID,
    PIDS_AHEAD,
    PIDS_RENEWED,
    Delivery,
    Session,
    SessionLimits,
    store_id,
)
from radio.broker.store import Contents, Store, StoredSession
from radio.config import NetworkSettings

from .build import ANONYMOUS, KEYED, Sink, key, registry, router


def delivery(size: int = 10) -> Delivery:
    """A QoS 1 delivery whose message costs ``size`` bytes (topic ``t`` plus payload)."""
    return Delivery(Message("t", b"x" * (size - 1), 1), 1)


def test_a_queue_within_its_limits_drops_nothing():
    session = Session("c", False, KEYED)  # noqa: FBT003
    for _ in range(KEYED.max_queued):
        assert session.enqueue(delivery()) == []
    assert len(session.queue) == KEYED.max_queued
    assert session.queued_bytes == 10 * KEYED.max_queued
    assert session.dropped == 0


def test_past_max_queued_the_oldest_go_first_and_are_counted():
    session = Session("c", False, KEYED)  # noqa: FBT003
    queued = [delivery() for _ in range(KEYED.max_queued + 3)]
    dropped = [d for item in queued for d in session.enqueue(item)]
    assert dropped == queued[:3]
    assert list(session.queue) == queued[3:]
    assert session.queued_bytes == 10 * KEYED.max_queued
    assert session.dropped == 3


def test_past_max_queued_bytes_the_oldest_go_until_the_rest_fits():
    limits = SessionLimits(max_queued=100, max_queued_bytes=25, expiry=1.0)
    session = Session("c", False, limits)  # noqa: FBT003
    first, second, third = delivery(10), delivery(10), delivery(10)
    assert session.enqueue(first) == []
    assert session.enqueue(second) == []
    assert session.enqueue(third) == [first]  # 30 bytes > 25: one goes, 20 stay
    assert session.queued_bytes == 20


def test_one_sample_larger_than_the_byte_limit_is_still_kept_alone():
    """The newest sample is never dropped for its own size: the queue keeps at least one."""
    session = Session("c", False, ANONYMOUS)  # noqa: FBT003
    small, big = delivery(10), delivery(ANONYMOUS.max_queued_bytes * 3)
    session.enqueue(small)
    assert session.enqueue(big) == [small]
    assert list(session.queue) == [big]


def test_a_slow_connected_client_is_held_to_the_limits_it_is_given():
    session = Session("c", False, ANONYMOUS)  # noqa: FBT003
    for _ in range(KEYED.max_queued):
        assert session.enqueue(delivery(), KEYED) == []
    assert len(session.trim(ANONYMOUS)) == KEYED.max_queued - ANONYMOUS.max_queued  # once it is away
    assert len(session.queue) == ANONYMOUS.max_queued


def test_a_full_queue_is_logged_once_per_episode(caplog):
    session = Session("c", False, ANONYMOUS)  # noqa: FBT003
    with caplog.at_level(logging.WARNING, "radio.broker"):
        for _ in range(10):
            session.enqueue(delivery())
        assert len(caplog.records) == 1
        while session.queue:  # drained: the next overflow is a new episode
            session.dequeue()
        assert session.queued_bytes == 0
        for _ in range(10):
            session.enqueue(delivery())
    assert len(caplog.records) == 2


def test_a_session_holds_no_queue_until_one_waits_and_lets_it_go_once_drained():
    """An idle listener carries no empty containers; one made on first use works as ever after."""
    session = Session("c", False, KEYED)  # noqa: FBT003
    assert (session.queue, session.incoming_qos2, session.missed, session.options) == (None, None, None, None)
    assert session.queued == 0
    assert session.trim(ANONYMOUS) == []
    with pytest.raises(IndexError):
        session.dequeue()
    for round_ in range(2):  # drained, then used again
        first, second = delivery(), delivery()
        session.enqueue(first)
        session.enqueue(second)
        assert (session.queued, session.queued_bytes) == (2, 20), round_
        assert [session.dequeue(), session.dequeue()] == [first, second]
        assert (session.queue, session.queued_bytes) == (None, 0)
    session.enqueue(delivery())
    session.clear_queue()
    assert (session.queued, session.queued_bytes) == (0, 0)


def test_qos2_ids_awaiting_their_pubrel_are_kept_until_released():
    session = Session("c", True, KEYED)  # noqa: FBT003
    assert not session.awaits_pubrel(7)
    session.await_pubrel(7)
    session.await_pubrel(9)
    assert (session.awaits_pubrel(7), session.awaits_pubrel(8), session.awaiting_pubrel) == (True, False, 2)
    session.released(7)
    session.released(7)  # a PUBREL sent again changes nothing
    assert (session.awaits_pubrel(7), session.awaits_pubrel(9), session.awaiting_pubrel) == (False, True, 1)
    session.released(9)
    assert (session.incoming_qos2, session.awaiting_pubrel) == (None, 0)
    session.await_pubrel(9)
    assert session.awaits_pubrel(9)


def test_subscription_options_are_kept_per_filter_and_dropped_with_the_last():
    session = Session("c", True, KEYED)  # noqa: FBT003
    session.set_options("networks/A", None)
    assert session.options is None
    session.set_options("networks/A", (0x05, 3))
    session.set_options("networks/B", (0x09, 0))
    session.set_options("networks/A", (0x04, 4))
    assert session.options == {"networks/A": (0x04, 4), "networks/B": (0x09, 0)}
    session.set_options("networks/A", None)
    assert session.options == {"networks/B": (0x09, 0)}
    session.set_options("networks/B", None)
    assert session.options is None


def test_packet_ids_skip_those_in_flight_and_wrap_past_65535():
    session = Session("c", True, KEYED)  # noqa: FBT003
    session.inflight = {1: delivery(), 2: delivery()}
    assert session.allocate_pid() == 3
    session.inflight[3] = delivery()
    session.next_pid = MAX_PACKET_ID
    assert session.allocate_pid() == MAX_PACKET_ID
    assert session.allocate_pid() == 4  # past 65535 comes 1, and 1 to 3 are in flight
    assert session.next_pid == 5


def test_sessions_of_two_keys_with_one_client_id_are_kept_apart():
    one, two = Session("same", False, KEYED), Session("same", False, KEYED)  # noqa: FBT003
    one.attributes[attrs.KEY_ID] = "aa"
    two.attributes[attrs.KEY_ID] = "bb"
    assert one.ident != two.ident
    assert one.store_id != two.store_id
    assert store_id(None, "c") == "\x00c"
    assert store_id("aa", "c").partition("\x00") == ("aa", "\x00", "c")


def offline(fanout, client_id: str, since: float, limits: SessionLimits = KEYED) -> Session:
    session = Session(client_id, False, limits)  # noqa: FBT003
    session.offline_since = since
    fanout.hold(session)
    fanout.subscribe(session, [("networks/A/#", 1)])
    return session


def test_an_offline_session_is_kept_for_exactly_its_expiry():
    fanout = router()
    session = offline(fanout, "c", since=1_000.0)
    assert fanout.expire(now=1_000.0 + KEYED.expiry) == 0  # at the bound: still kept
    assert fanout.sessions == {session.ident: session}
    assert fanout.expire(now=1_000.0 + KEYED.expiry + 0.001) == 1
    assert fanout.sessions == {}
    assert fanout.index.match("networks/A/x") == []  # its subscriptions went with it


@pytest.mark.sources_only
def test_a_connected_session_never_expires_and_each_kind_has_its_own_expiry():
    fanout = router()
    connected = offline(fanout, "on", since=0.0)
    connected.connection = Sink()
    anonymous = offline(fanout, "anon", since=0.0, limits=ANONYMOUS)
    keyed = offline(fanout, "keyed", since=0.0)
    assert fanout.expire(now=ANONYMOUS.expiry + 1) == 1
    assert anonymous.ident not in fanout.sessions
    assert fanout.expire(now=KEYED.expiry + 1) == 1
    assert keyed.ident not in fanout.sessions
    assert fanout.expire(now=1e12) == 0
    assert list(fanout.sessions.values()) == [connected]


@pytest.mark.sources_only
def test_an_offline_client_keeps_only_its_own_share():
    """A persistent anonymous client that goes away is trimmed to the anonymous limits at once."""
    fanout = router()
    session = Session("c", False, ANONYMOUS)  # noqa: FBT003
    session.connection = Sink()
    fanout.hold(session)
    for _ in range(4):
        session.enqueue(delivery(), KEYED)
    fanout.went_offline(session)
    assert len(session.queue) == ANONYMOUS.max_queued
    assert fanout.stats.dropped_queue_full == 4 - ANONYMOUS.max_queued
    assert session.offline_since is not None


def test_restored_sessions_come_back_with_their_subscriptions_and_queue():
    reader = key("reader", subscribe=("A",))
    current = registry({"A": NetworkSettings()}, reader)
    fanout = router(current)
    stored = StoredSession(
        "c",
        {attrs.KEY_NAME: "reader", attrs.KEY_ID: reader.id, "offline_since": 5.0, "address": "127.0.0.1"},
        [("networks/A/#", 1)],
        [(7, "networks/A", b"{}", 1), (9, "networks/A/x", b'{"n":1}', 2)],
        row_id=store_id(reader.id, "c"),
    )
    fanout.restore(Contents([("networks/A", b"{}", 0)], [stored], last_seq=9), current)
    session = fanout.sessions[reader.id, "c"]
    assert (session.offline_since, session.remote_address, session.limits) == (5.0, "127.0.0.1", KEYED)
    assert "offline_since" not in session.attributes
    assert [(d.message.row, d.message.topic, d.qos) for d in session.queue] == [
        (7, "networks/A", 1),
        (9, "networks/A/x", 2),
    ]
    assert session.queued_bytes == sum(d.message.size for d in session.queue)
    assert [list(t) for t in fanout.index.match("networks/A/y")] == [[session]]
    assert fanout.retained.get("networks/A") is not None
    assert fanout.next_seq() == 10  # numbers go on from the store's last
    assert fanout.expire(now=5.0 + KEYED.expiry + 1) == 1


@pytest.mark.parametrize("anonymous", [True, False])
def test_a_stored_session_whose_key_is_gone_is_not_restored(anonymous):
    reader = key("reader", subscribe=("A",))
    current = registry({"A": NetworkSettings()}, anonymous=anonymous)  # the key was revoked while down
    fanout = router(current)
    gone = StoredSession("c", {attrs.KEY_NAME: "reader", attrs.KEY_ID: reader.id}, [("networks/A", 1)])
    stranger = StoredSession("anon", {attrs.KEY_NAME: None}, [("networks/A", 0)])
    fanout.restore(Contents([], [gone, stranger]), current)
    assert [s.client_id for s in fanout.sessions.values()] == (["anon"] if anonymous else [])


@pytest.mark.sources_only  # a Sink stands for the session's connection
def test_a_persistent_sessions_ids_stay_well_behind_the_mark_in_the_store(tmp_path, mocker):
    """Each packet id a persistent session uses lies at least ``PIDS_AHEAD - PIDS_RENEWED`` ids
    before the mark recorded in the store before it went, across the wrap past 65,535 too: after a
    restart the session goes on from a mark past every id it may have used, however far it went."""
    store = Store(tmp_path / "broker.db")
    saved = mocker.spy(store, "save_session")
    fanout = router(store=store)
    session = Session("c", False, KEYED)  # noqa: FBT003
    fanout.hold(session)
    session.connection = Sink()  # type: ignore[assignment]
    fanout.save(session)
    for _ in range(MAX_PACKET_ID + 2 * PIDS_AHEAD):
        mark = saved.call_args.args[1]["pid_mark"]
        fanout.deliver(session, Message("t", b"{}", 1), 1)
        (pid,) = session.inflight
        assert PIDS_AHEAD - PIDS_RENEWED <= (mark - pid) % MAX_PACKET_ID <= PIDS_AHEAD
        fanout.acknowledged(session, pid)
    assert saved.call_count > MAX_PACKET_ID // PIDS_RENEWED  # the mark moved on as the ids went


def test_rows_are_numbered_past_the_mark_a_restart_finds():
    """Row numbers go on from the mark in the store, not from the last row on disk: a row a lost
    batch numbered is never numbered again (its packet id may still be held by its client)."""
    fanout = router()
    fanout.restore(Contents(last_seq=9, marks={"seq": 100_009}), registry({}))
    assert fanout.next_seq() == 100_010
