"""The MQTT broker: amqtt embedded with Radio's keys, rights and fixes; or Mosquitto in production.

- ``server``: ``EmbeddedBroker``, which builds amqtt's configuration from the registry, binds the
  TCP and WebSocket listeners, and applies registry changes to live connections;
- ``auth`` and ``acl``: the amqtt plugins that ask ``radio.registry`` who may connect, publish,
  subscribe and receive;
- ``fixes``: amqtt 0.12.1's defects, each fixed in a module of its own;
- ``persistence``: retained samples and persistent sessions in SQLite, across restarts;
- ``thread``: the broker on a background thread, for tests and for ``radio up``;
- ``mosquitto``: the registry exported as Mosquitto's files, and Mosquitto run and reloaded;
- ``run``: ``radio broker``, with either engine.
"""
