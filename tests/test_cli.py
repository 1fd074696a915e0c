"""The ``radio`` command as an operator uses it: configuration errors, options, keys, ``radio broker``.

Most cases call the command's ``main`` in this process (the parser, the handlers and their
messages are the same code); a few run the installed command end to end, as a user would.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys

import pytest
from commands import ANY_PORTS, radio_main
from conftest import broker_process, running_broker
from mqtt_client import Client

from radio.broker.compiled import delivery_path
from radio.cli.options import read_secret
from radio.credentials import secret_username
from radio.keys import read_keys


def run_process(*args, cwd=None, env=None):
    return subprocess.run(
        [sys.executable, "-m", "radio", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        check=False,
    )


@pytest.fixture
def run(monkeypatch, tmp_path):
    """``radio ARGS`` in this process (``commands.radio_main``), in a folder, with no RADIO_* of the run's."""
    monkeypatch.delenv("RADIO_CONFIG", raising=False)
    monkeypatch.delenv("RADIO_KEYS", raising=False)
    monkeypatch.delenv("RADIO_KEY", raising=False)

    def _run(*args, cwd=None, env=None):
        with monkeypatch.context() as each:
            each.chdir(cwd or tmp_path)
            for name, value in (env or {}).items():
                each.setenv(name, value)
            return radio_main(*args)

    return _run


def test_main_in_this_process_answers_as_the_command_does(home):
    """What a test that runs ``main`` in its own process sees is what the command returns and prints."""
    cases = [
        ("keys", "list", "--json"),
        ("keys", "edit", "gen"),  # refused by the handler: nothing to change
        ("keys", "usage", "nobody"),  # refused by a RadioError
        ("keys", "add", "x", "--rate", "5/y"),  # refused by the parser: SystemExit
        ("keys", "revoke", "reader_a"),  # a change, done twice: the key is made again in between
    ]
    for args in cases:
        in_process = home.radio_main(*args, check=False)
        if args[1] == "revoke":
            home.store().add("reader_a", subscribe=["A"])
        process = home.radio(*args, check=False)
        assert (in_process.returncode, in_process.stdout, in_process.stderr) == (
            process.returncode,
            process.stdout,
            process.stderr,
        ), args


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[broker\n", "not valid TOML"),
        ("[broker]\nmqtt_port = 1883\n", "unknown setting [broker] mqtt_port"),
        ("[broker]\nmqtt = 'localhost'\n", "[broker] mqtt: 'localhost' is not HOST:PORT"),
        ("[broker]\nwebsocket = '127.0.0.1:70000'\n", "is not HOST:PORT"),
        ("[bridge]\nlisten = 5000\n", "[bridge] listen: 5000 is not HOST:PORT"),
        ('[networks."a/b"]\n', "invalid network name 'a/b'"),
        ("[networks.a]\npublic = 'yes'\n", "[networks.a] public must be true or false"),
        ("[networks.a]\nmax_payload = 0\n", "[networks.a] max_payload must be a whole number"),
        ("[networks.a]\nretian = true\n", "unknown setting [networks.a] retian"),
        ("colour = 'blue'\n", "unknown setting colour"),
        ("networks = 3\n", "[networks] must be a table"),
        ("[broker]\nconnect_timeout = 0\n", "[broker] connect_timeout must be a number from 0.1"),
        ("[broker]\nmax_connections = -1\n", "[broker] max_connections must be a whole number"),
        ("[broker]\nmax_packet_size = 'big'\n", "[broker] max_packet_size must be a whole number"),
        ("[broker]\npersistence = true\n", "[broker] persistence must be a file name or false"),
    ],
)
def test_a_bad_configuration_is_one_clear_line_and_exit_2(run, tmp_path, text, problem):
    config = tmp_path / "radio.toml"
    config.write_text(text)
    for command in (["keys", "list"], ["keys", "add", "x"], ["listen", "a"], ["up"]):
        result = run(*command, "--config", str(config))
        assert result.returncode == 2
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith(f"radio: {config}: ")
        assert problem in lines[0]


def test_every_command_refuses_a_bad_configuration_end_to_end(tmp_path):
    config = tmp_path / "radio.toml"
    config.write_text("[broker]\nmqtt_port = 1883\n")
    for command in (["broker"], ["keys", "list"]):
        result = run_process(*command, "--config", str(config))
        assert result.returncode == 2
        [line] = result.stderr.splitlines()
        assert line.startswith(
            f"radio: {config}: unknown setting [broker] mqtt_port (known: allow_anonymous, "
        )
        assert "mqtt, mqtts, persistence" in line


def test_a_named_configuration_must_exist_but_the_default_may_not(run, tmp_path):
    missing = run("keys", "list", "--config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2
    assert "no such configuration file" in missing.stderr
    default = run("keys", "list", cwd=tmp_path)
    assert default.returncode == 0
    assert "No keys" in default.stderr


def test_a_configuration_keys_file_or_schema_that_is_not_a_regular_file_is_one_line(run, tmp_path):
    """A FIFO named by mistake held every command for ever, waiting for a writer."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    plain, schema = tmp_path / "plain.toml", tmp_path / "schema.toml"
    plain.write_text("[networks.A]\n")
    schema.write_text(f'[networks.A]\nschema = "{fifo}"\n')
    for args, says in (
        (["--config", str(fifo)], f"radio: {fifo}: cannot read: not a regular file"),
        (["--config", str(plain), "--keys", str(fifo)], f"radio: {fifo}: cannot read the key registry"),
        (["--config", str(schema)], f"cannot read the schema file {fifo}: not a regular file"),
    ):
        refused = run("keys", "list", *args)
        assert refused.returncode == 2, refused.stderr
        [line] = refused.stderr.splitlines()
        assert says in line


def test_the_configuration_can_be_named_by_environment(run, tmp_path):
    config = tmp_path / "elsewhere.toml"
    config.write_text("[networks.only]\n")
    result = run("keys", "add", "k", "--publish", "sample_net", env={"RADIO_CONFIG": str(config)})
    assert result.returncode == 2
    assert "unknown network 'sample_net' (networks in the configuration: only)" in result.stderr


def test_keys_add_prints_the_secret_alone_and_stores_only_hashes(tmp_path):
    result = run_process("keys", "add", "gen", "--publish", "sample_net", cwd=tmp_path)
    assert result.returncode == 0
    secret = result.stdout.strip()
    assert result.stdout == secret + "\n"
    assert re.fullmatch(r"[A-Za-z0-9_-]{40,}", secret)
    assert "shown only this once" in result.stderr

    keys_file = tmp_path / "keys.toml"
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    assert secret not in keys_file.read_text()
    key = read_keys(keys_file)["gen"]
    assert key.matches(secret)
    assert not key.matches(secret + "x")
    assert key.publish == {"sample_net"}
    assert key.mosquitto.startswith("$7$101$")


def test_keys_list_never_shows_secrets(run, tmp_path):
    secret = run(
        "keys", "add", "gen", "--publish", "sample_net", "--subscribe", "sample_net", cwd=tmp_path
    ).stdout
    run("keys", "add", "ops", "--admin", cwd=tmp_path)
    table = run("keys", "list", cwd=tmp_path)
    assert table.returncode == 0
    assert secret.strip() not in table.stdout
    assert re.search(r"^gen\s+sample_net\s+sample_net\s", table.stdout, re.MULTILINE)
    assert re.search(r"^ops\s+\(admin: any topic\)", table.stdout, re.MULTILINE)
    as_json = run("keys", "list", "--json", cwd=tmp_path).stdout
    assert '"name": "gen"' in as_json
    assert secret.strip() not in as_json


def test_key_changes_are_refused_clearly(run, tmp_path):
    assert run("keys", "add", "gen", cwd=tmp_path).returncode == 0
    cases = [
        (["keys", "add", "gen"], "a key named 'gen' exists already"),
        (["keys", "add", "bad name"], "invalid key name 'bad name'"),
        (["keys", "add", "x", "--publish", "nosuch"], "unknown network 'nosuch'"),
        (["keys", "add", "x", "--subscribe", "sample_net,bad/net"], "invalid network name 'bad/net'"),
        (["keys", "revoke", "ghost"], "no key named 'ghost'"),
        (["keys", "rotate", "ghost"], "no key named 'ghost'"),
    ]
    for args, message in cases:
        result = run(*args, cwd=tmp_path)
        assert result.returncode == 2, args
        assert result.stderr.strip() == f"radio: {message}" or message in result.stderr
        assert "Traceback" not in result.stderr


def test_revoke_and_rotate(run, tmp_path):
    first = run("keys", "add", "gen", cwd=tmp_path).stdout.strip()
    second = run("keys", "rotate", "gen", cwd=tmp_path).stdout.strip()
    key = read_keys(tmp_path / "keys.toml")["gen"]
    assert second != first
    assert key.matches(second)
    assert not key.matches(first)
    assert run("keys", "revoke", "gen", cwd=tmp_path).returncode == 0
    assert "gen" not in read_keys(tmp_path / "keys.toml")


def test_radio_broker_prints_its_ports_serves_and_stops_cleanly(home):
    """Its banner names its ports, and which build of the delivery path serves (compiled or Python)."""
    process = broker_process(home, stderr=subprocess.PIPE)
    try:
        ports = {}
        banner = []
        assert process.stdout is not None
        for line in process.stdout:
            banner.append(line)
            if match := re.search(r"(mqtt|ws)://127\.0\.0\.1:(\d+)", line):
                ports[match[1]] = int(match[2])
            if "Ctrl-C" in line:
                break
        assert set(ports) == {"mqtt", "ws"}
        assert f"  delivery path:        {delivery_path()}\n" in banner
        assert 0 not in ports.values()
        for transport, port in (("tcp", ports["mqtt"]), ("ws", ports["ws"])):
            client = Client(transport, port, "gen", home.secrets["gen"])
            assert client.connect() == 0
            client.publish("networks/A", b"{}", qos=1)
            client.close()
        refused = Client("tcp", ports["mqtt"], "gen", "wrong")
        assert refused.connect() != 0
        refused.close()
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0
    assert "Traceback" not in stderr
    accepted = [line for line in stderr.splitlines() if "accepted client" in line]
    refused_lines = [line for line in stderr.splitlines() if "refused client" in line]
    assert len(accepted) == 2
    assert "(tcp)" in accepted[0]
    assert "(ws)" in accepted[1]
    assert len(refused_lines) == 1
    assert "wrong secret for key 'gen'" in refused_lines[0]
    assert home.secrets["gen"] not in stderr
    assert "wrong" not in stderr.replace("wrong secret", "")


def test_radio_broker_on_a_busy_port_is_one_line_and_exit_2(home, broker):
    result = run_process(
        "broker",
        "--config",
        str(home.config),
        "--mqtt",
        f"127.0.0.1:{broker.mqtt_port}",
        "--ws",
        "127.0.0.1:0",
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert (
        lines[0] == f"radio: the broker cannot listen on 127.0.0.1:{broker.mqtt_port}: Address already in use"
    )


def test_more_sensors_than_open_files_allow_is_one_line_and_exit_2(home):
    """Each sensor is an MQTT client with its own sockets: past the limit of open files the
    command says so and how to fix it, rather than end on an OSError traceback."""
    command = [sys.executable, "-m", "radio", "device", "sensors", "--network", "A", "--count", "300"]
    command += ["--url", "mqtt://127.0.0.1:1", "--config", str(home.config)]
    result = subprocess.run(
        ["bash", "-c", 'ulimit -n 256 && exec "$@"', "radio", *command],
        env={**os.environ, "RADIO_KEY": home.secrets["gen"]},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("radio: cannot start sensor "), result.stderr
    assert "of 300: Too many open files" in last
    assert "ulimit -n" in last


def test_mosquitto_export_into_a_folder_it_cannot_make_is_one_line(home):
    """As for NATS: a --dir that cannot be made or written is one line and status 2, no traceback."""
    (home.path / "a-file").write_text("")
    for folder in (home.path / "a-file", home.path / "a-file" / "below"):
        result = home.radio("mosquitto", "export", "--dir", str(folder), check=False)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith(f"radio: cannot write the Mosquitto configuration into {folder}: ")


def test_mosquitto_export_writes_the_registry_as_mosquitto_files(home):
    folder = home.path / "exported"
    result = home.radio("mosquitto", "export", "--dir", str(folder), "--mqtt", "0.0.0.0:1884")
    assert "mosquitto -c" in result.stderr
    passwd = dict(line.split(":", 1) for line in (folder / "passwd").read_text().splitlines())
    store = {key.name: key for key in read_keys(home.keys).values()}
    assert set(passwd) == set(store) | {key.alias for key in store.values()}  # the bridge's key too
    for name, secret in home.secrets.items():
        assert passwd[name] == passwd[secret_username(secret)] == store[name].mosquitto
        assert store[name].mosquitto.startswith("$7$101$")
    assert stat.S_IMODE((folder / "passwd").stat().st_mode) == 0o600
    assert all(secret not in (folder / "passwd").read_text() for secret in home.secrets.values())

    acl = (folder / "acl").read_text().split("\n\nuser ")
    anonymous, blocks = acl[0], {b.splitlines()[0]: b.splitlines()[1:] for b in acl[1:]}
    assert anonymous.splitlines()[-4:] == [
        "topic read networks/fleeting",
        "topic read networks/fleeting/#",
        "topic read networks/pub",
        "topic read networks/pub/#",
    ]
    assert "topic write networks/A" in blocks["gen"]
    assert not any("networks/B" in rule for rule in blocks["gen"])
    assert blocks["reader_b"][:2] == ["topic read networks/B", "topic read networks/B/#"]
    assert blocks["admin"] == ["topic readwrite #", "topic readwrite $SYS/#"]
    assert blocks[secret_username(home.secrets["gen"])] == blocks["gen"]

    conf = (folder / "mosquitto.conf").read_text()
    assert "listener 1884 0.0.0.0\n" in conf
    assert f"password_file {folder / 'passwd'}\n" in conf
    assert "max_packet_size 131088\n" in conf
    # The largest queue any session has on the embedded broker (the recorder's); never 0, which
    # makes Mosquitto close a client after each PUBLISH it refuses.
    assert "max_queued_messages 1000000\n" in conf
    assert "max_queued_bytes 536870912\n" in conf  # and bytes: Mosquitto's default has no limit
    # Sessions that never come back go after session_expiry (7 days), as on the embedded broker.
    assert "persistent_client_expiration 168h\n" in conf
    assert conf.count("# ") > 40  # the template's comments are kept


def test_radio_broker_without_mosquitto_is_one_line_and_exit_2(home):
    result = run_process(
        "broker",
        "--engine",
        "mosquitto",
        "--mqtt",
        "127.0.0.1:0",  # not the default port, which another platform on this machine may hold
        "--ws",
        "127.0.0.1:0",
        "--config",
        str(home.config),
        env={"RADIO_MOSQUITTO": "/nonexistent"},
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "radio: RADIO_MOSQUITTO=/nonexistent is not an executable Mosquitto"
    ]


UNRESOLVABLE = "names a host no resolver can look up: each part of a name between dots must be 1 to 63"


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (
            ["listen", "sample_net", "--url", "http://127.0.0.1:8080"],
            "'http://127.0.0.1:8080' is not a broker URL",
        ),
        (["listen", "sample_net", "--url", "127.0.0.1:1883"], "'127.0.0.1:1883' is not a broker URL"),
        (["listen", "sample_net", "--url", "mqtt://127.0.0.1:99999"], "has an invalid port"),
        (["listen", "bad/net"], "invalid network name 'bad/net'"),
        (["device", "traffic", "--network", "n", "--period", "0"], "--period: '0' is not a number above 0"),
        (["device", "traffic", "--network", "n", "--period", "nan"], "'nan' is not a number above 0"),
        (["device", "traffic", "--network", "n", "--speed", "-1"], "'-1' is not a whole number of simulated"),
        (
            ["device", "traffic", "--network", "n", "--speed", "86401"],
            "'86401' is not a whole number of simulated seconds per sample (1 to 86400)",
        ),
        (["device", "traffic", "--network", "n", "--size", "0x3"], "'0x3' is not ROWSxCOLUMNS"),
        (["device", "traffic", "--network", "n", "--size", "1000x1000"], "'1000x1000' is not ROWSxCOLUMNS"),
        (["device", "traffic", "--network", "n", "--size", "1x10001"], "of 2 to 10000 intersections"),
        (["device", "traffic", "--network", "n", "--url", "ftp://x"], "'ftp://x' is not a URL"),
        (
            ["device", "sensors", "--network", "n", "--count", "-5"],
            "--count: '-5' is not a whole number from 1",
        ),
        (["device", "sensors", "--network", "n", "--count", "0"], "'0' is not a whole number from 1"),
        (["device", "sensors", "--network", "n", "--rate", "-1"], "'-1' is not a number above 0"),
        (
            ["device", "sensors", "--network", "n", "--rate", "1e308"],
            "'1e308' is not a number per second from",
        ),
        (
            ["device", "sensors", "--network", "n", "--rate", "1e-300"],
            "'1e-300' is not a number per second from",
        ),
        (
            ["device", "traffic", "--network", "n", "--period", "1e308"],
            "'1e308' is not a number of seconds from",
        ),
        (
            ["device", "traffic", "--network", "n", "--period", "1e-9"],
            "'1e-9' is not a number of seconds from",
        ),
        (["device", "sensors", "--network", "n", "--url", "http://x"], "'http://x' is not a broker URL"),
        (["device", "sensors"], "the following arguments are required: --network"),
        (["broker", "--engine", "rabbitmq"], "invalid choice: 'rabbitmq'"),
        # An option the engine would not honour is refused: it was ignored, and the platform ran without it.
        (["broker", "--nodes", "2", *ANY_PORTS[:4]], "--nodes is for --engine nats, not --engine embedded"),
        (["up", "--engine", "mosquitto", "--nodes", "2", *ANY_PORTS], "--nodes is for --engine nats"),
        (
            ["broker", "--engine", "nats", "--nodes", "1", "--mqtts", "127.0.0.1:0", *ANY_PORTS[:4]],
            "--mqtts: the local cluster of --engine nats serves plain listeners only",
        ),
        (["up", "--engine", "nats", "--wss", "127.0.0.1:0", *ANY_PORTS], "--wss: the local cluster"),
        (["keys", "add"], "the following arguments are required: NAME"),
        (["nosuch"], "invalid choice: 'nosuch'"),
        # A host with a part over 63 characters, or an empty one, has no form a resolver takes.
        (["listen", "sample_net", "--url", f"mqtt://{'a' * 64}:1883"], UNRESOLVABLE),
        (["listen", "sample_net", "--url", "ws://a..b:8080/mqtt"], UNRESOLVABLE),
        (["listen", "sample_net", "--http", f"http://{'a' * 64}:5000"], UNRESOLVABLE),
        (["device", "traffic", "--network", "n", "--url", f"http://{'a' * 64}:5000"], UNRESOLVABLE),
        (["device", "sensors", "--network", "n", "--url", "mqtt://.:1883"], UNRESOLVABLE),
        (["health", "--http", f"{'a' * 64}:5000"], UNRESOLVABLE),
        (["recorder", "--broker", f"mqtt://{'a' * 64}:1883"], UNRESOLVABLE),
        (["bridge", "--broker", "mqtt://x..y:1883"], UNRESOLVABLE),
    ],
)
def test_a_bad_option_is_one_line_and_exit_2(run, args, problem):
    result = run(*args)
    # radio health's every failure is 1: a container's HEALTHCHECK reserves 2.
    assert result.returncode == (1 if args[0] == "health" else 2)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert problem in lines[0]
    assert lines[0].startswith("radio")


@pytest.mark.parametrize(
    "command",
    [
        ["listen", "sample_net"],
        ["device", "traffic", "--network", "sample_net"],
        ["device", "sensors", "--network", "sample_net"],
    ],
)
def test_a_secret_on_the_command_line_is_refused_with_the_reason(run, command):
    for key in (["--key", "s3cret"], ["--key=s3cret"]):
        result = run(*command, *key)
        assert result.returncode == 2
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        assert "--key is refused: a secret on the command line is visible to every user" in lines[0]
        assert "--key-file PATH" in lines[0]
        assert "RADIO_KEY" in lines[0]
        assert "s3cret" not in result.stderr


def test_a_key_file_must_be_private_and_a_generator_needs_a_key(run, tmp_path):
    key_file = tmp_path / "gen.key"
    key_file.write_text("s3cret\n")
    key_file.chmod(0o644)
    shared = run("device", "traffic", "--network", "sample_net", "--key-file", str(key_file))
    assert shared.returncode == 2
    assert shared.stderr.splitlines() == [
        f"radio: the key file {key_file} is open to group or others (mode 0644): make it private with chmod 600 {key_file}"
    ]
    missing = run("device", "sensors", "--network", "sample_net", "--key-file", str(tmp_path / "none"))
    assert missing.returncode == 2
    assert missing.stderr.startswith(f"radio: cannot read the key file {tmp_path / 'none'}")
    assert len(missing.stderr.splitlines()) == 1
    none = run("device", "traffic", "--network", "sample_net")
    assert none.returncode == 2
    assert none.stderr.splitlines() == [
        "radio: this command needs a key: --key-file PATH, or the secret in $RADIO_KEY"
    ]


def test_read_secret_takes_a_private_file_then_the_environment(tmp_path, monkeypatch):
    key_file = tmp_path / "gen.key"
    key_file.write_text("from-file\n")
    key_file.chmod(0o600)
    monkeypatch.setenv("RADIO_KEY", "from-env")
    assert read_secret(key_file, required=True) == "from-file"
    assert read_secret(None, required=True) == "from-env"
    monkeypatch.delenv("RADIO_KEY")
    assert read_secret(None, required=False) is None


def test_the_traffic_simulator_says_which_url_goes_with_via(run):
    result = run(
        "device",
        "traffic",
        "--network",
        "sample_net",
        "--via",
        "mqtt",
        "--url",
        "http://127.0.0.1:5000",
        env={"RADIO_KEY": "x"},
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "radio: --via mqtt takes a broker's mqtt:// or ws:// URL, not http://127.0.0.1:5000"
    ]


def test_listen_names_a_network_the_configuration_lacks(run, tmp_path):
    (tmp_path / "radio.toml").write_text("[networks.sample_net]\npublic = true\n")
    result = run("listen", "nosuchnet", "--url", "ws://127.0.0.1:1/mqtt", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"radio: no network 'nosuchnet' in {tmp_path / 'radio.toml'} (its networks: sample_net)"
    ]
    assert "listening" not in result.stderr


@pytest.mark.parametrize(
    "command", [("keys", "list"), ("keys", "list", "--json"), ("keys", "usage", "--csv")]
)
def test_output_into_a_closed_pipe_ends_quietly(home, command):
    """`radio keys list | head -1`: the reader going away is a normal end, not a traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write gets EPIPE, as after `head` has its lines
    try:
        result = subprocess.run(
            [sys.executable, "-m", "radio", *command, "--config", str(home.config)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (0, "")


@pytest.mark.parametrize(
    ("args", "command", "status"),
    [
        (["health", "--url", "x"], "radio health", 1),  # a failed check: a HEALTHCHECK reserves 2
        (["keys", "list", "--csv"], "radio keys list", 2),
        (["up", "extra"], "radio up", 2),
    ],
)
def test_an_option_a_command_does_not_take_is_named_by_that_command(run, args, command, status):
    """The refusal names the command the argument was given to and points at that command's --help,
    where what it does take is listed."""
    result = run(*args)
    assert result.returncode == status
    extra = " ".join(args[len(command.split()) - 1 :])
    assert result.stderr.splitlines() == [
        f"{command}: unrecognized arguments: {extra} (see {command} --help)"
    ]


def test_help_states_the_one_configuration_rule(run):
    rule = "--config PATH, else $RADIO_CONFIG, else ./radio.toml"
    for command in ([], ["up"]):
        result = run(*command, "--help")
        assert result.returncode == 0
        assert rule in " ".join(result.stdout.split())


def test_every_argument_of_every_command_says_what_it_is():
    """--help is where a user learns what to type: an argument listed bare (`name`) tells them nothing."""
    import argparse  # noqa: PLC0415 - this test alone walks the parser

    from radio.cli.main import _parser  # noqa: PLC0415

    silent = []
    parsers = [_parser()]
    while parsers:
        parser = parsers.pop()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            elif not action.help or (not action.option_strings and action.metavar is None):
                silent.append(f"{parser.prog} {action.option_strings or action.dest}")
    assert silent == []


COMMANDS = (
    "broker",
    "mosquitto",
    "nats",
    "bridge",
    "recorder",
    "up",
    "listen",
    "device",
    "certs",
    "health",
    "keys",
)
ONE_COMMANDS_OWN = (
    "radio.config",  # read by a command, not to build its options
    "radio.keys",
    "radio.key_changes",
    "radio.registry",
    "radio.usage",
    "radio.broker",
    "radio.bridge",
    "radio.recorder",
    "radio.devices",
    "radio.subscribers",
    "http.client",  # radio health
    "ssl",
    "cryptography",
)
"""Modules only some commands run: building the parser, which every run does, loads none of them."""


def test_radio_help_lists_every_command_and_loads_none_of_them():
    code = (
        "import sys\n"
        "from radio.cli.main import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(*sys.modules, file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    for command in COMMANDS:
        assert re.search(rf"^    {command}\s", result.stdout, re.MULTILINE), command
    loaded = set(result.stderr.split())
    assert loaded.isdisjoint(ONE_COMMANDS_OWN), sorted(loaded.intersection(ONE_COMMANDS_OWN))
    assert "radio.cli.main" in loaded


def test_keys_add_reports_when_no_server_is_running(run, tmp_path):
    result = run("keys", "add", "gen", "--publish", "sample_net", cwd=tmp_path)
    assert result.returncode == 0
    assert "No server using this configuration is running" in result.stderr


@pytest.mark.parametrize("engine", ["embedded", pytest.param("mosquitto", marks=pytest.mark.mosquitto)])
def test_a_new_key_works_in_the_very_next_command(run, home, engine):
    """radio keys add returns once the running broker has the key in force: no retry loop needed."""
    with running_broker(engine, home) as server:
        for n in range(3):
            result = run("keys", "add", f"late{n}", "--publish", "A", "--config", str(home.config))
            assert "In force on 1 running server(s)." in result.stderr, result.stderr
            client = Client("tcp", server.mqtt_port, f"late{n}", result.stdout.strip())
            try:
                assert client.connect() == 0
            finally:
                client.close()
        revoked = run("keys", "revoke", "late0", "--config", str(home.config))
        assert "In force on 1 running server(s)." in revoked.stderr
        client = Client("tcp", server.mqtt_port, "late1", "wrong")
        assert client.connect() != 0
        client.close()
        # New rights, the same: in force when the command returns.
        reader = Client("tcp", server.mqtt_port, "reader_a", home.secrets["reader_a"])
        try:
            assert reader.connect() == 0
            edited = run("keys", "edit", "reader_a", "--subscribe", "A,B", "--config", str(home.config))
            assert "In force on 1 running server(s)." in edited.stderr, edited.stderr
            assert reader.subscribe("networks/B", qos=1) == 1
        finally:
            reader.close()


def test_keys_add_names_a_server_that_does_not_confirm(run, home, monkeypatch):
    """A stopped (SIGSTOP) broker cannot confirm: the wait ends at its bound and names it."""
    monkeypatch.setattr("radio.key_changes.CONFIRM_TIMEOUT", 0.5)  # read by each command that waits
    process = broker_process(home)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if "Ctrl-C" in line:
                break
        os.kill(process.pid, signal.SIGSTOP)
        result = run("keys", "add", "late", "--publish", "A", "--config", str(home.config))
        assert result.returncode == 0
        assert f"Not yet confirmed by radio broker (pid {process.pid})" in result.stderr
    finally:
        os.kill(process.pid, signal.SIGCONT)
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)
    assert not list((home.path / "running").glob(f"{process.pid}-*.json"))  # it cleans up after itself


def test_a_configured_address_whose_host_no_resolver_takes_is_one_line_and_exit_2(run, tmp_path):
    (tmp_path / "radio.toml").write_text(f'[broker]\nmqtt = "{"a" * 64}:1883"\n')
    result = run("keys", "list")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"radio: {tmp_path / 'radio.toml'}: [broker] mqtt: '{'a' * 64}:1883' {UNRESOLVABLE} characters"
    ]
