"""MQTT on the wire: what the broker and the tools share."""
