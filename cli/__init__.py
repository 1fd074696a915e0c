"""The ``radio`` command line: the one composition root, above every part of the platform.

The shared core (``radio.config``, ``radio.keys``, ``radio.registry``, ``radio.topics``) and the
parts (``radio.broker``, ``radio.bridge``, ``radio.devices``, ``radio.subscribers``) never import
it; it imports them, each only inside the command that needs it.
"""
