# Radio in one container: `radio up` (embedded broker, HTTP bridge, demo traffic simulator).
#
#   docker build -t radio .
#   docker run --rm -p 1883:1883 -p 8080:8080 -p 5000:5000 -v radio-data:/data radio
#
# Two stages: the first installs Radio and its dependencies into a virtualenv (a plain, not
# editable, install of the wheel); the second is a slim image with that virtualenv and
# nothing to build with. It runs as an unprivileged user; its state (radio.toml,
# keys.toml, the bridge's key, the broker's SQLite file, the demo key) lives in /data.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv
WORKDIR /app
COPY . .
# A plain install: the wheel carries everything Radio reads (mosquitto.conf included).
RUN python3 -m pip install .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --user-group --home-dir /data --create-home radio
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
USER radio
WORKDIR /data
VOLUME ["/data"]
# MQTT over TCP, MQTT over WebSocket (path /mqtt), the HTTP bridge (POST /publish).
EXPOSE 1883 8080 5000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:5000/healthz', timeout=4).status != 200)"]
CMD ["radio", "up", "--mqtt", "0.0.0.0:1883", "--ws", "0.0.0.0:8080", "--http", "0.0.0.0:5000"]
