"""The MQTT brokers: Radio's own embedded MQTT 3.1.1 broker, and Mosquitto and NATS run from the registry.

The embedded broker, by layer:

- ``server``: ``EmbeddedBroker``, configured from the registry, started and stopped in a running
  loop, applying registry changes to live connections; ``thread`` runs it on a thread of its own
  (tests, ``radio up``), ``run`` as ``radio broker``;
- ``core``: ``RadioBroker``, its listeners, plugins, store and timers; ``listeners``: the ways in,
  MQTT over TCP and over WebSocket;
- ``connection``: one client's connection (CONNECT, its packets, keep-alive); ``codec``: MQTT
  3.1.1 on the wire;
- ``router``: sessions, subscriptions and retained samples, and getting each sample to its
  readers, with ``sessions``, ``index``, ``retained`` and ``message``;
- ``store``: retained samples and persistent sessions in SQLite, across restarts and ``kill -9``;
- ``auth``, ``acl``, ``plugins`` and ``attributes``: the amqtt plugin API, asking the registry who
  may connect, publish, subscribe and receive; ``access``: the admission gate's MQTT door;
  ``per_source``: what one address may hold before any key pays for it;
- ``metrics``: what the broker counts (repeated log lines are summed up by ``radio/logsummary.py``).

The other engines: ``mosquitto`` (the registry exported as Mosquitto's files, Mosquitto run and
reloaded) and ``nats`` with ``nats_conf`` (a nats-server cluster with the registry's rights).
"""
