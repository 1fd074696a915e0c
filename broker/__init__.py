"""The embedded MQTT broker: amqtt, with Radio's keys and rights, and the fixes it needs.

- ``server``: ``EmbeddedBroker``, which builds amqtt's configuration from the registry, binds the
  TCP and WebSocket listeners, and applies registry changes to live connections;
- ``auth`` and ``acl``: the amqtt plugins that ask ``radio.registry`` who may connect, publish,
  subscribe and receive;
- ``fixes``: amqtt 0.12.1's defects, each fixed in a module of its own;
- ``thread``: the broker on a background thread, for tests and for ``radio up``.
"""
