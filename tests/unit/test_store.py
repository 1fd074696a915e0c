"""The broker's store: what it writes to SQLite is what it reads back at the next start."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import stat

from radio.broker.sessions import store_id
from radio.broker.store import Store


def reopened(store: Store):
    """Write what the store recorded, close it, and read the file back as the next start would."""
    asyncio.run(store.close())
    again = Store(store.path)
    try:
        return again.load()
    finally:
        asyncio.run(again.close())


def test_a_new_store_is_empty_and_private(tmp_path):
    store = Store(tmp_path / "state" / "broker.db")
    contents = reopened(store)
    assert (contents.retained, contents.sessions, contents.last_seq) == ([], [], 0)
    assert stat.S_IMODE((tmp_path / "state" / "broker.db").stat().st_mode) == 0o600


def test_retained_samples_read_back_the_last_value_and_a_clear_removes_one(tmp_path):
    store = Store(tmp_path / "broker.db")
    store.retain("networks/A", b'{"n":1}', 1)
    store.retain("networks/A", b'{"n":2}', 0)
    store.retain("networks/B", b'{"n":3}', 2)
    store.retain("networks/C", b'{"n":4}', 1)
    store.retain("networks/C", b"", 0)
    assert sorted(reopened(store).retained) == [("networks/A", b'{"n":2}', 0), ("networks/B", b'{"n":3}', 2)]
    store = Store(tmp_path / "broker.db")
    store.retain("networks/B", b"", 0)  # cleared in a later run
    assert reopened(store).retained == [("networks/A", b'{"n":2}', 0)]


def test_a_session_reads_back_with_its_attributes_subscriptions_and_queue_in_order(tmp_path):
    store = Store(tmp_path / "broker.db")
    row = store_id("aa", "client")
    store.save_session(row, {"radio.key": "k", "offline_since": 12.5}, {"b/#": 1, "a/+": 2})
    store.queue(row, 9, "networks/A/x", b"nine", 2)
    store.queue(row, 4, "networks/A", b"four", 1)
    store.queue(row, 6, "networks/A", b"six", 1)
    store.unqueue(row, 6)  # acknowledged
    (session,) = reopened(store).sessions
    assert (session.client_id, session.row_id) == ("client", row)
    assert session.attributes == {"radio.key": "k", "offline_since": 12.5}
    assert session.subscriptions == [("a/+", 2), ("b/#", 1)]
    assert session.queued == [(4, "networks/A", b"four", 1), (9, "networks/A/x", b"nine", 2)]


def test_a_sample_queued_and_acknowledged_in_one_batch_is_never_written(tmp_path):
    store = Store(tmp_path / "broker.db")
    row = store_id(None, "c")
    store.save_session(row, {}, {})
    store.queue(row, 1, "t", b"x", 1)
    store.unqueue(row, 1)
    store.queue(row, 2, "t", b"y", 1)
    contents = reopened(store)
    assert store.written == 2  # the session and sample 2; sample 1 cost nothing
    assert contents.sessions[0].queued == [(2, "t", b"y", 1)]


def test_the_last_sequence_number_is_the_highest_ever_queued_even_for_a_gone_session(tmp_path):
    store = Store(tmp_path / "broker.db")
    store.save_session("kept", {}, {})
    store.queue("kept", 3, "t", b"x", 1)
    store.queue("orphan", 41, "t", b"x", 1)  # no session row: not restored, but its number is used
    contents = reopened(store)
    assert contents.last_seq == 41
    assert [s.queued for s in contents.sessions] == [[(3, "t", b"x", 1)]]


def test_dropping_a_session_drops_its_queue_and_renaming_keeps_both(tmp_path):
    store = Store(tmp_path / "broker.db")
    for row in ("gone", "old"):
        store.save_session(row, {"who": row}, {"t": 1})
        store.queue(row, 1 if row == "gone" else 2, "t", row.encode(), 1)
    asyncio.run(store.close())
    store = Store(tmp_path / "broker.db")
    store.drop_session("gone")
    store.rename_session("old", store_id("aa", "old"))
    (session,) = reopened(store).sessions
    assert (session.row_id, session.client_id, session.attributes) == ("aa\x00old", "old", {"who": "old"})
    assert session.queued == [(2, "t", b"old", 1)]


def test_a_row_written_before_sessions_had_a_key_reads_back_under_its_bare_client_id(tmp_path):
    store = Store(tmp_path / "broker.db")
    store.save_session("legacy", {}, {"t": 0})
    (session,) = reopened(store).sessions
    assert (session.client_id, session.row_id) == ("legacy", "legacy")


def test_a_callback_waits_until_every_change_recorded_before_it_is_on_disk(tmp_path):
    async def run() -> tuple[bool, int]:
        store = Store(tmp_path / "broker.db")
        store.start()
        answered: asyncio.Future[tuple[bool, int]] = asyncio.get_running_loop().create_future()
        try:
            store.retain("networks/A", b"{}", 0)
            since = store.pending
            store.queue("c", 1, "networks/A", b"{}", 1)
            store.after_commit(lambda ok: answered.set_result((ok, store.written)), since)
            return await answered
        finally:
            await store.close()

    assert asyncio.run(run()) == (True, 2)


def test_the_packet_id_a_sample_went_under_reads_back_with_it(tmp_path):
    """Sent as it was queued, the id joins its row (no change of its own); sent later, it is
    written to the row; a row acknowledged before its id was written writes neither."""
    store = Store(tmp_path / "broker.db")
    row = store_id("aa", "c")
    store.save_session(row, {}, {"t": 2})
    store.queue(row, 1, "t", b"at once", 2)
    store.sent(row, 1, 7)
    store.queue(row, 2, "t", b"later", 1, extra=(True, (7, 9)))  # MQTT 5: retain flag, subscription ids
    store.queue(row, 3, "t", b"never sent", 1)
    asyncio.run(store.close())
    assert store.written == 4
    store = Store(tmp_path / "broker.db")
    store.sent(row, 2, 65_535)
    store.sent(row, 3, 9)
    store.unqueue(row, 3)  # acknowledged within the batch: its id is not written
    (session,) = reopened(store).sessions
    assert store.written == 2  # the id of 2, and 3 gone
    assert [seq for seq, *_ in session.queued] == [1, 2]
    assert session.sent == {1: 7, 2: 65_535}
    assert session.delivered_as == {2: (True, (7, 9))}


def test_a_file_made_before_packet_ids_were_kept_keeps_its_samples(tmp_path):
    """An upgrade loses nothing: the column is added, and the samples it held come back unsent."""
    path = tmp_path / "broker.db"
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.executescript(
            "CREATE TABLE sessions (client_id TEXT PRIMARY KEY, attributes TEXT NOT NULL,"
            " subscriptions TEXT NOT NULL);"
            "CREATE TABLE queued (client_id TEXT NOT NULL, seq INTEGER NOT NULL, topic TEXT NOT NULL,"
            " data BLOB NOT NULL, qos INTEGER NOT NULL, fields BLOB, expires REAL,"
            " PRIMARY KEY (client_id, seq));"
            "INSERT INTO sessions VALUES ('c', '{}', '[]');"
            "INSERT INTO queued VALUES ('c', 5, 't', X'7B7D', 2, NULL, NULL);"
        )
    store = Store(path)
    store.sent("c", 5, 3)
    (session,) = reopened(store).sessions
    assert session.queued == [(5, "t", b"{}", 2)]
    assert session.sent == {5: 3}


def test_a_sample_queued_for_many_sessions_is_written_once_and_goes_with_its_last_row(tmp_path):
    store = Store(tmp_path / "broker.db")
    rows = [store_id("aa", f"c{n}") for n in range(3)]
    for row in rows:
        store.save_session(row, {}, {"t": 1})
        store.queue(row, 7, "t", b"seven", 1)
    asyncio.run(store.close())  # the sample in one batch, its rows in the next
    store = Store(tmp_path / "broker.db")
    for row in rows:
        store.queue(row, 8, "t", b"eight", 1)
    store.unqueue(rows[0], 7)  # acknowledged by one session: the others still need it
    for row in rows[1:]:
        store.unqueue(row, 8)
    contents = reopened(store)
    assert sorted(s.queued for s in contents.sessions) == [
        [(7, "t", b"seven", 1)],
        [(7, "t", b"seven", 1)],
        [(8, "t", b"eight", 1)],
    ]
    with contextlib.closing(sqlite3.connect(tmp_path / "broker.db")) as db:
        assert db.execute("SELECT seq, data FROM payloads ORDER BY seq").fetchall() == [
            (7, b"seven"),
            (8, b"eight"),
        ]
        assert db.execute("SELECT DISTINCT data FROM queued").fetchall() == [(b"",)]
    store = Store(tmp_path / "broker.db")
    for row in rows[1:]:
        store.unqueue(row, 7)
    store.unqueue(rows[0], 8)
    reopened(store)
    with contextlib.closing(sqlite3.connect(tmp_path / "broker.db")) as db:
        assert db.execute("SELECT count(*) FROM payloads").fetchone() == (0,)  # each went with its last row
