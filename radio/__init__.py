"""What every part of Radio shares: configuration, the key registry, topic names.

Nothing here speaks MQTT or HTTP, so the broker, the bridge and the clients can all depend on it
without depending on each other.
"""

__version__ = "0.1.0"
