"""The broker's repeated-line summary holds back the lines of every broker module's own logger."""

from __future__ import annotations

import logging

import radio.broker.connection  # noqa: F401 - its logger exists once it is imported
from radio.logsummary import Summary


def test_the_summary_covers_each_broker_module_and_lets_go_when_detached(caplog):
    caplog.set_level(logging.INFO, logger="radio.broker")
    module_log = logging.getLogger("radio.broker.connection")
    summary = Summary(2)
    summary.attach()
    try:
        for n in range(5):
            module_log.warning("refused %s", n)
    finally:
        summary.detach()
    module_log.warning("refused %s", 5)
    written = [r.getMessage() for r in caplog.records if r.name == "radio.broker.connection"]
    assert written == ["refused 0", "refused 1", "refused 5"]
    assert summary.suppressed == 3
