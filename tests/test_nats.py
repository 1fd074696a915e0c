"""`radio nats export` and the commands that run Radio on NATS: files, modes, routes, rights.

The export tests need no nats-server: they read the files as an operator would. The command
tests run the real commands, with the real nats-server of the ``nats`` extra.
"""

from __future__ import annotations

import json
import re
import signal
import stat
import time
import tomllib
from datetime import UTC, datetime

import psutil
import pytest
import tomli_w
from commands import BROKER_ON_ANY_PORTS, listen_lines, started_in, stop
from conftest import CONFIG
from mqtt_client import Client
from test_nats_cluster import require_nats
from test_platform import left_behind, loud, post_hello, start_up

from radio.broker.nats import NatsCluster
from radio.broker.nats_conf import NatsError, plan, user_rights
from radio.broker.nats_kick import lost
from radio.config import Address, load_settings
from radio.registry import LiveRegistry

FIXED = '\n[broker]\nmqtt = "0.0.0.0:1883"\nwebsocket = "0.0.0.0:8080"\n'


def exported(home, *options):
    folder = home.path / "exported"
    result = home.radio_main("nats", "export", "--dir", str(folder), *options, check=False)
    return folder, result


def test_export_writes_one_file_per_node_and_users_all_private(home):
    folder, result = exported(home, "--nodes", "3")
    assert result.returncode == 0
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    assert names == ["cluster.secret", "radio-1.conf", "radio-2.conf", "radio-3.conf", "users.conf"]
    for name in names:
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600, name
    assert "nats-server -c" in result.stderr


def test_export_holds_no_secret_in_clear(home):
    folder, _ = exported(home, "--nodes", "3")
    text = "".join(p.read_text() for p in folder.iterdir() if p.is_file())
    for name, secret in home.secrets.items():
        assert secret not in text, name
    keys = LiveRegistry(home.config).current.keys
    assert (folder / "users.conf").read_text().count("$2b$") == 2 * len(keys)  # name and alias of each


def test_every_node_routes_to_every_node_with_the_cluster_password(home):
    home.config.write_text(CONFIG + FIXED)
    folder, result = exported(
        home, "--nodes", "3", "--host", "n1.example", "--host", "n2.example", "--host", "n3.example"
    )
    assert result.returncode == 0, result.stderr
    secret = (folder / "cluster.secret").read_text().strip()
    for i in (1, 2, 3):
        conf = (folder / f"radio-{i}.conf").read_text()
        routes = re.findall(r'"nats://radio-route:([0-9a-f]+)@(n\d\.example):6222"', conf)
        assert routes == [(secret, f"n{n}.example") for n in (1, 2, 3)]
        assert f'server_name: "radio-{i}"' in conf
        assert 'listen: "0.0.0.0:1883"' in conf  # the same ports on every machine
        assert "stream_replicas: 3" in conf
        assert 'include "users.conf"' in conf
    # A second export (after a key change) keeps the password: the running nodes still agree.
    exported(home, "--nodes", "3", "--host", "n1.example", "--host", "n2.example", "--host", "n3.example")
    assert (folder / "cluster.secret").read_text().strip() == secret


NOTHING = {"deny": [">"]}
"""A permission that allows no subject, as users.conf says it (NATS reads ``[]`` as every subject)."""


def users(folder):
    """users.conf as {username: (publish, subscribe, connection types)}; "may do nothing" is ``NOTHING``."""
    found = {}
    permission = r'(\[[^]]*\]|\{deny: \[">"\]\})'
    pattern = (
        r'\{user: "([^"]+)", password: "[^"]+", allowed_connection_types: (\[[^]]*\]),\s+'
        rf"permissions: \{{publish: {permission}, subscribe: {permission}\}}\}}"
    )
    for name, types, publish, subscribe in re.findall(pattern, (folder / "users.conf").read_text()):
        found[name] = (_permission(publish), _permission(subscribe), json.loads(types))
    return found


def _permission(text):
    return json.loads(text.replace("{deny:", '{"deny":'))


def test_permissions_are_the_registry_s_rights_as_subjects(home):
    folder, _ = exported(home)
    found = users(folder)
    reads_public = ["networks.fleeting", "networks.fleeting.>", "networks.pub", "networks.pub.>"]
    assert found["gen"][:2] == (["networks.A", "networks.A.>"], reads_public)
    assert found["reader_a"][:2] == (NOTHING, ["networks.A", "networks.A.>", *reads_public])
    assert found["admin"][:2] == ([">"], [">"])
    assert found["_anonymous"][:2] == (NOTHING, reads_public)
    everything = [s for n in ("A", "B", "fleeting", "pub") for s in (f"networks.{n}", f"networks.{n}.>")]
    assert found["bridge"][:2] == (everything, reads_public)
    key = load_settings(home.config)
    alias = next(k.alias for k in LiveRegistry(key.path).current.keys.values() if k.name == "gen")
    assert found[alias] == found["gen"]
    # No key may speak the NATS protocol, where MQTT's internal subjects carry others' messages.
    assert {types for _, _, types in [(0, 0, tuple(v[2])) for v in found.values()]} == {("MQTT", "MQTT_WS")}


def test_the_users_that_lost_a_right_are_the_ones_whose_access_ends(home):
    """A right taken away, a rotation, a revocation, or an admin made an ordinary key is a loss; a
    right added, or an ordinary key made an admin, is not."""
    store = home.store()
    store.add("shrinks", subscribe=["A", "B"])
    store.add("grows", subscribe=["A"])
    store.add("rotates", subscribe=["A"])
    store.add("goes", subscribe=["A"])
    store.add("demoted", admin=True)
    store.add("promoted", subscribe=["B"])
    registry = LiveRegistry(home.config)
    before = user_rights(registry.current, "route", datetime.now(UTC))
    aliases = {k.name: k.alias for k in registry.current.keys.values()}  # a rotation gives a new one
    store.edit("shrinks", subscribe=["B"])
    store.edit("grows", subscribe=["A", "B"])
    store.rotate("rotates")
    store.revoke("goes")
    store.edit("demoted", admin=False, subscribe=["A"])
    store.edit("promoted", admin=True)
    assert registry.refresh()
    after = user_rights(registry.current, "route", datetime.now(UTC))
    gone = {"shrinks", "rotates", "goes", "demoted"}
    kept = {"grows", "promoted", "gen", "reader_a", "admin"}
    assert {*gone, *(aliases[n] for n in gone)} <= lost(before, after)
    assert not lost(before, after) & {*kept, *(aliases[n] for n in kept), "_anonymous"}


def test_without_anonymous_access_no_client_is_let_in_without_a_key(home):
    home.config.write_text(CONFIG + "\n[broker]\nallow_anonymous = false\n")
    folder, _ = exported(home)
    assert "\nno_auth_user" not in (folder / "radio-1.conf").read_text()
    assert users(folder)["_anonymous"][1] == NOTHING


def test_a_user_that_may_do_nothing_is_denied_every_subject(home):
    """NATS reads an empty list of subjects as no limit: a key with no right to publish, or with
    nothing to read (no public network), must get a deny of every subject, never ``[]``."""
    home.config.write_text(CONFIG.replace("public = true", "public = false"))
    home.add_key("writer", publish=["A"])
    folder, _ = exported(home)
    found = users(folder)
    assert found["_anonymous"][:2] == (NOTHING, NOTHING)
    assert found["writer"][:2] == (["networks.A", "networks.A.>"], NOTHING)
    assert found["reader_a"][:2] == (NOTHING, ["networks.A", "networks.A.>"])
    assert "[]" not in (folder / "users.conf").read_text().split("users = [", 1)[1]


def test_a_key_made_before_bcrypt_hashes_is_left_out_with_a_warning(home):
    data = tomllib.loads(home.keys.read_text())
    del data["keys"]["gen"]["bcrypt_hash"]
    home.keys.write_text(tomli_w.dumps(data))
    folder, result = exported(home)
    assert "gen" not in users(folder)
    assert "rotate it" in result.stderr
    assert "radio keys rotate gen" in (folder / "users.conf").read_text()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--nodes", "3", "--host", "a", "--host", "b"], "give one --host per node (3)"),
        (["--nodes", "0"], "is not a number of nodes"),
        (["--nodes", "65"], "'65' is not a number of nodes (1 to 64)"),  # each file routes to every node
        (["--nodes", "9" * 5000], "is not a number of nodes (1 to 64)"),
        (["--nodes", "1", "--host", 'a b"c'], "'a b\"c' is not a host name or IP address"),  # in every route
        (["--nodes", "2", "--host", "a", "--host", "b"], "needs fixed MQTT and WebSocket ports"),
    ],
)
def test_a_bad_export_option_is_one_line_and_status_2(home, options, message):
    home.config.write_text(CONFIG + '\n[broker]\nmqtt = "127.0.0.1:0"\n')
    _, result = exported(home, *options)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_consecutive_ports_past_65535_are_refused_in_one_line(home):
    home.config.write_text(CONFIG + '\n[broker]\nmqtt = "127.0.0.1:65530"\nwebsocket = "127.0.0.1:28080"\n')
    folder, result = exported(home, "--nodes", "8")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "radio: 8 nodes on one machine take consecutive ports, and these run past 65535: MQTT 65530+7"
    ]
    assert not folder.exists()


def test_a_local_cluster_takes_consecutive_ports_from_fixed_ones(home):
    home.config.write_text(CONFIG + '\n[broker]\nmqtt = "127.0.0.1:21883"\nwebsocket = "127.0.0.1:28080"\n')
    nodes = plan(load_settings(home.config), 3)
    assert [n.mqtt for n in nodes] == [Address("127.0.0.1", 21883 + i) for i in range(3)]
    assert [n.websocket.port for n in nodes] == [28080, 28081, 28082]
    assert [n.cluster.port for n in nodes] == [6222, 6223, 6224]
    assert {n.route for n in nodes} == {f"nats://127.0.0.1:{p}" for p in (6222, 6223, 6224)}


def test_a_missing_nats_server_is_one_clear_error(home, monkeypatch):
    monkeypatch.setenv("RADIO_NATS", str(home.path / "nowhere"))
    with pytest.raises(NatsError, match=r"RADIO_NATS=.* is not an executable nats-server"):
        NatsCluster(LiveRegistry(home.config), home.path / "nats").start()


@pytest.mark.nats
@pytest.mark.slow
def test_radio_broker_runs_a_local_cluster_and_prints_every_node(home):
    require_nats()
    nats = ("--engine", "nats", "--nodes", "3", "--config", str(home.config))
    process = started_in(None, *BROKER_ON_ANY_PORTS, *nats)
    try:
        lines = []
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if "Ctrl-C" in line:
                break
        nodes = [
            re.search(r"mqtt://127\.0\.0\.1:(\d+)  ws://127\.0\.0\.1:(\d+)/mqtt", line) for line in lines
        ]
        ports = [(int(m[1]), int(m[2])) for m in nodes if m]
        assert len(ports) == 3, lines
        nodes_seen = psutil.Process(process.pid).children(recursive=True)
        assert len(nodes_seen) == 3
        for mqtt_port, ws_port in ports:
            for transport, port in (("tcp", mqtt_port), ("ws", ws_port)):
                client = Client(transport, port, "gen", home.secrets["gen"])
                try:
                    assert client.connect() == 0
                finally:
                    client.close()
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "Traceback" not in err
    assert not [c for c in nodes_seen if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.nats
@pytest.mark.slow
def test_radio_up_runs_the_platform_on_nats(tmp_path):
    require_nats()
    up = start_up(tmp_path, "nats")
    listen = None
    try:
        ws_url = up.value(r"radio listen sample_net --url (\S+)")
        http_url = up.value(r"HTTP publish:\s+(\S+)")
        key = (tmp_path / "demo.key").read_text().strip()
        assert key not in up.banner
        assert "recorder.key, nats/, history.db, usage.db)" in up.banner  # the cluster's store
        assert len([c for c in up.children if "nats-server" in c.name()]) == 3
        # The banner's MQTT and WebSocket URLs are one node's: node 1's.
        node_1 = (tmp_path / "nats" / "radio-1.conf").read_text()
        mqtt_port = up.value(r"MQTT over TCP:\s+mqtt://127\.0\.0\.1:(\d+)")
        assert re.search(r'mqtt \{\n    listen: "127\.0\.0\.1:' + mqtt_port + '"', node_1)
        assert re.search(
            r'websocket \{\n    listen: "127\.0\.0\.1:' + ws_url.rsplit(":", 1)[1].split("/")[0] + '"', node_1
        )
        listen, samples = listen_lines(tmp_path, "sample_net", "--url", ws_url)
        assert "tick" in samples.get(timeout=20)["data"]  # the traffic simulator, through the cluster
        post_hello(http_url, key)
        deadline = time.monotonic() + 15
        while samples.get(timeout=15)["data"] != {"hello": "radio"}:
            assert time.monotonic() < deadline
    finally:
        if listen is not None:
            stop(listen)
        up.process.send_signal(signal.SIGINT)
        _, err = up.process.communicate(timeout=60)
    assert up.process.returncode == 0, err
    assert "Traceback" not in err
    assert not loud(err), err  # a clean start and a clean stop: nothing to warn about
    assert not left_behind(up.children)
