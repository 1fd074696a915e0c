"""Listeners: the Python client library (``subscribers.listener``) and ``radio listen``.

Pure clients of the platform: they import nothing server-side, only ``radio``'s topic names and
broker URLs.
"""
