"""Data generators: the traffic simulator, sensor agents, the legacy HTTP generator.

- ``traffic``: the article's road traffic model (pure, no I/O);
- ``sensors``: many simulated sensors, each with its own connection, status and last will;
- ``link``: how a generator sends: over MQTT (reconnecting, buffering) or over HTTP (the
  article's ``publish()`` loop);
- ``run``: ``radio device traffic|sensors``.

Pure clients of the platform: they import nothing server-side, only ``radio``'s topic names and
broker URLs.
"""
