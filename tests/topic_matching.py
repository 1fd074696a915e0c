"""MQTT 3.1.1's topic matching, the plain way: what the broker's indexes are checked against."""

from __future__ import annotations


def matches(topic_filter: str, topic: str) -> bool:
    """Whether a filter matches a topic, level by level (MQTT-4.7.1; MQTT-4.7.2-1 for ``$`` topics)."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    levels, parts = topic_filter.split("/"), topic.split("/")
    for i, level in enumerate(levels):
        if level == "#":
            return True  # "a/#" matches "a" too
        if i >= len(parts) or level not in ("+", parts[i]):
            return False
    return len(levels) == len(parts)
