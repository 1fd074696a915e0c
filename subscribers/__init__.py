"""Listeners: a Python client library and ``radio listen``, later a web page.

Pure clients of the platform: they import nothing server-side. Not built yet; see README.md.
"""
