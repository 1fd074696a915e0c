"""The HTTP door: ``POST /publish`` (the article's contract), forwarded to the broker over MQTT.

Not built yet; see the roadmap in README.md.
"""
