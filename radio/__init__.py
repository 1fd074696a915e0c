"""What every part of Radio shares: configuration, the key registry, topic names.

Nothing here speaks HTTP or holds a connection, so the broker, the bridge and the clients can all
depend on it without depending on each other; ``radio.wire`` is MQTT's bytes alone, written once
for all of them.
"""

__version__ = "0.1.0"
