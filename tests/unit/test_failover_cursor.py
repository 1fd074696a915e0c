"""The one failover rule every client follows: round the list, and back off after a whole failed round."""

from __future__ import annotations

import pytest

from radio.failover import FailoverCursor
from radio.mqtt_clients import broker_cursor
from radio.urls import BrokerURL, parse_urls


def test_it_starts_at_the_first_and_goes_round_the_list():
    cursor = FailoverCursor(["a", "b", "c"])
    seen = [cursor.current]
    for _ in range(4):
        cursor.move_on()
        seen.append(cursor.current)
    assert seen == ["a", "b", "c", "a", "b"]


def test_a_whole_round_of_failures_calls_for_a_backoff_and_only_then():
    cursor = FailoverCursor(["a", "b", "c"])
    assert [cursor.move_on() for _ in range(7)] == [False, False, True, False, False, True, False]
    assert cursor.failed == 7


def test_a_connection_that_worked_starts_the_count_afresh():
    cursor = FailoverCursor(["a", "b"])
    assert cursor.move_on() is False
    assert cursor.move_on(worked=True) is False  # lost after working: try the next at once
    assert cursor.failed == 0
    assert cursor.move_on() is False
    assert cursor.move_on() is True  # a full round failed since the loss


def test_one_broker_backs_off_after_every_failure_but_not_after_a_loss():
    cursor = FailoverCursor(["only"])
    assert cursor.move_on() is True
    assert cursor.move_on() is True
    assert cursor.move_on(worked=True) is False
    assert cursor.current == "only"


def test_an_empty_list_is_refused():
    with pytest.raises(ValueError, match="no broker"):
        FailoverCursor([])


def test_a_client_cursor_takes_one_url_or_a_list_of_one_kind():
    assert broker_cursor(BrokerURL("tcp", "a", 1)).items == (BrokerURL("tcp", "a", 1),)
    assert len(broker_cursor(parse_urls("mqtt://a:1,mqtt://b:2"))) == 2
    with pytest.raises(ValueError, match="all of one transport"):
        broker_cursor([BrokerURL("tcp", "a", 1), BrokerURL("websockets", "b", 2)])
    with pytest.raises(ValueError, match="all of one transport"):
        broker_cursor([BrokerURL("tcp", "a", 1), BrokerURL("tcp", "b", 2, tls=True)])
