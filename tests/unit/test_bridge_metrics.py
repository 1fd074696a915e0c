"""The bridge's /metrics under several workers: summed from each worker's file, whatever their state."""

from __future__ import annotations

from radio.bridge import metrics


def test_a_worker_file_not_yet_sized_is_left_out_of_a_scrape(tmp_path, monkeypatch):
    """A worker creates its file empty and sizes it next: a scrape in between must still answer."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    (tmp_path / "counter_4242.db").write_bytes(b"")  # created, not yet sized
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain")
    assert isinstance(body, bytes)
