"""Every field of keys.toml and radio.toml is type-checked: a wrong type refuses the whole file.

One line names the file, the key (or table), the field and what was expected. At start that line
is the command's only output (exit status 2); on a live reload it is one log line, and the previous
registry stays in force.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from commands import radio_in

from radio.config import parse_settings
from radio.credentials import secret_digest
from radio.errors import ConfigError, KeyStoreError
from radio.keys import KeyStore, derived_key_id, mosquitto_hash, parse_keys
from radio.registry import LiveRegistry

PATH = Path("/srv/radio/keys.toml")
DIGEST = secret_digest("s3cret")
HASH = mosquitto_hash("s3cret", salt=b"0123456789ab")
GOOD = f"""\
[keys.gen]
id = "0123456789abcdef"
secret_sha256 = "{DIGEST}"
mosquitto_hash = "{HASH}"
publish = ["A"]
subscribe = ["B"]
admin = false
publish_all = false
created = "2026-01-01T00:00:00+00:00"
"""


def with_field(name: str, toml_value: str | None) -> str:
    """GOOD with one field of [keys.gen] replaced (None: removed)."""
    lines = [line for line in GOOD.splitlines() if not line.startswith(f"{name} =")]
    if toml_value is not None:
        lines.append(f"{name} = {toml_value}")
    return "\n".join(lines) + "\n"


def refusal(text: str) -> str:
    with pytest.raises(KeyStoreError) as caught:
        parse_keys(text, PATH)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{PATH}: ")
    return message


def test_a_well_formed_registry_is_read_exactly():
    key = parse_keys(GOOD, PATH)["gen"]
    assert (key.name, key.id, key.digest, key.mosquitto) == ("gen", "0123456789abcdef", DIGEST, HASH)
    assert (key.publish, key.subscribe, key.admin, key.publish_all) == ({"A"}, {"B"}, False, False)
    assert key.created == "2026-01-01T00:00:00+00:00"


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        # booleans: a quoted "false", which a loose reading would take as true, first
        (
            "admin",
            '"false"',
            "key 'gen': admin must be true or false (a TOML boolean), not the string 'false'",
        ),
        ("admin", "0", "key 'gen': admin must be true or false (a TOML boolean), not the integer 0"),
        ("admin", '["x"]', "key 'gen': admin must be true or false"),
        (
            "publish_all",
            '"true"',
            "key 'gen': publish_all must be true or false (a TOML boolean), not the string 'true'",
        ),
        ("publish_all", "1", "key 'gen': publish_all must be true or false"),
        # lists of network names
        ("publish", '"A"', "key 'gen': publish must be an array of network names, not the string 'A'"),
        ("publish", "[1]", "key 'gen': publish must be an array of network names: invalid network name 1"),
        (
            "publish",
            '["a/b"]',
            "key 'gen': publish must be an array of network names: invalid network name 'a/b'",
        ),
        ("subscribe", "true", "key 'gen': subscribe must be an array of network names, not the boolean true"),
        (
            "subscribe",
            '["#"]',
            "key 'gen': subscribe must be an array of network names: invalid network name '#'",
        ),
        (
            "subscribe",
            "{ A = true }",
            "key 'gen': subscribe must be an array of network names, not the table",
        ),
        # strings
        ("created", "2026-01-01", "key 'gen': created must be a string, not"),
        ("created", "7", "key 'gen': created must be a string, not the integer 7"),
        (
            "secret_sha256",
            "12",
            "key 'gen': secret_sha256 must be a string of 64 lowercase hex digits, not the integer 12",
        ),
        (
            "secret_sha256",
            '"abc"',
            "key 'gen': secret_sha256 must be a string of 64 lowercase hex digits, not the string 'abc'",
        ),
        (
            "secret_sha256",
            f'"{DIGEST.upper()}"',
            "key 'gen': secret_sha256 must be a string of 64 lowercase hex digits",
        ),
        (
            "mosquitto_hash",
            "false",
            "key 'gen': mosquitto_hash must be a string of a Mosquitto $7$ hash, not the boolean false",
        ),
        ("mosquitto_hash", '"plain"', "key 'gen': mosquitto_hash must be a string of a Mosquitto $7$ hash"),
        (
            "id",
            "81985529216486895",
            "key 'gen': id must be a string of 16 lowercase hex digits, not the integer",
        ),
        ("id", '"0123"', "key 'gen': id must be a string of 16 lowercase hex digits, not the string '0123'"),
        ("id", '"0123456789ABCDEF"', "key 'gen': id must be a string of 16 lowercase hex digits"),
        # required and unknown fields
        ("secret_sha256", None, "key 'gen': the field 'secret_sha256' is missing"),
        ("mosquitto_hash", None, "key 'gen': the field 'mosquitto_hash' is missing"),
        ("admni", "true", "key 'gen': unknown field 'admni'"),
        ("read", '["A"]', "key 'gen': unknown field 'read'"),
    ],
)
def test_a_field_of_the_wrong_type_refuses_the_file(field, value, expected):
    assert expected in refusal(with_field(field, value))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("keys = 3\n", "[keys] must be a table of keys, such as [keys.gen], not the integer 3"),
        ("keys = []\n", "[keys] must be a table of keys"),
        ("[[keys]]\nname = 'gen'\n", "[keys] must be a table of keys"),
        ("[keys]\ngen = 'secret'\n", "key 'gen' must be a table ([keys.gen]), not the string 'secret'"),
        ("[keys]\ngen = ['x']\n", "key 'gen' must be a table ([keys.gen])"),
        ('[keys."bad name"]\n', "[keys.bad name]: invalid key name 'bad name'"),
        ("[keys.key-0123456789abcdef]\n", "names of the form key-<16 hex digits> are reserved"),
        ("[keys]\n[users.gen]\n", "unknown table or setting 'users'"),
        ("[key.gen]\nadmin = true\n", "unknown table or setting 'key'"),
        ("version = 2\n[keys]\n", "unknown table or setting 'version'"),
        ("[users.gen]\n", "unknown table or setting 'users'"),
        ("# keys, one day\n", "no [keys] table"),
        ("", "the key registry is empty"),
        ("  \n\n", "the key registry is empty"),
        ("[keys\n", "not valid TOML"),
    ],
)
def test_a_wrong_table_shape_refuses_the_file(text, expected):
    assert expected in refusal(text)


def test_two_keys_with_one_id_or_one_secret_are_refused():
    copied = GOOD + GOOD.replace("[keys.gen]", "[keys.copy]")
    assert "keys 'gen' and 'copy' have the same id" in refusal(copied)
    other_id = GOOD.replace("[keys.gen]", "[keys.copy]").replace("0123456789abcdef", "fedcba9876543210")
    assert "keys 'gen' and 'copy' have the same secret_sha256" in refusal(GOOD + other_id)


def test_an_explicit_registry_without_keys_is_read_as_none():
    assert parse_keys("[keys]\n", PATH) == {}


def test_an_admin_key_with_a_publish_list_written_before_reads_as_the_admin_key_alone(tmp_path):
    """Refused since (no device should hold an admin secret), a file that holds one still loads:
    the list granted nothing an admin key may not do, and the next change writes the key without it."""
    old = with_field("admin", "true")
    key = parse_keys(old, PATH)["gen"]
    assert (key.admin, key.publish, key.subscribe) == (True, frozenset(), frozenset({"B"}))
    keys = tmp_path / "keys.toml"
    keys.write_text(old)
    KeyStore(keys, ["A", "B"]).add("other", subscribe=["A"])
    assert 'publish = ["A"]' not in keys.read_text()
    assert parse_keys(keys.read_text(), keys)["gen"] == key


def test_a_key_without_an_id_gets_one_derived_from_its_digest():
    key = parse_keys(with_field("id", None), PATH)["gen"]
    assert key.id == derived_key_id(DIGEST)
    assert len(key.id) == 16
    assert key.id != key.alias.removeprefix("key-")  # not the username a secret implies


# --- radio.toml --------------------------------------------------------------------------------

CONFIG_PATH = Path("/srv/radio/radio.toml")


def config_refusal(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_settings(text, CONFIG_PATH, PATH)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{CONFIG_PATH}: ")
    return message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # booleans
        (
            "[broker]\nallow_anonymous = 'false'\n",
            "[broker] allow_anonymous must be true or false (a boolean), not the string 'false'",
        ),
        (
            "[broker]\nallow_anonymous = 0\n",
            "[broker] allow_anonymous must be true or false (a boolean), not the integer 0",
        ),
        (
            "[networks.a]\npublic = 'yes'\n",
            "[networks.a] public must be true or false (a boolean), not the string 'yes'",
        ),
        (
            "[networks.a]\nretain = 1\n",
            "[networks.a] retain must be true or false (a boolean), not the integer 1",
        ),
        # addresses
        (
            "[broker]\nmqtt = 1883\n",
            "[broker] mqtt: 1883 is not HOST:PORT (it must be a string, not an integer)",
        ),
        ("[broker]\nmqtt = 'localhost'\n", "[broker] mqtt: 'localhost' is not HOST:PORT"),
        (
            "[broker]\nwebsocket = ['127.0.0.1', 8080]\n",
            "[broker] websocket: ['127.0.0.1', 8080] is not HOST:PORT (it must be a string, not an array)",
        ),
        (
            "[broker]\nwebsocket = '127.0.0.1:70000'\n",
            "[broker] websocket: '127.0.0.1:70000' is not HOST:PORT",
        ),
        (
            "[bridge]\nlisten = true\n",
            "[bridge] listen: True is not HOST:PORT (it must be a string, not a boolean)",
        ),
        # numbers
        (
            "[broker]\nconnect_timeout = '10'\n",
            "[broker] connect_timeout must be a number from 0.1 to 3600, not the string '10'",
        ),
        (
            "[broker]\nconnect_timeout = true\n",
            "[broker] connect_timeout must be a number from 0.1 to 3600, not the boolean true",
        ),
        ("[broker]\nconnect_timeout = nan\n", "[broker] connect_timeout must be a number from 0.1 to 3600"),
        (
            "[broker]\nmax_connections = 1.5\n",
            "[broker] max_connections must be a whole number from 0 to 1e+06, not the number 1.5",
        ),
        ("[broker]\nmax_connections = '100'\n", "[broker] max_connections must be a whole number"),
        ("[broker]\nmax_packet_size = false\n", "[broker] max_packet_size must be a whole number from 16"),
        (
            "[networks.a]\nmax_payload = '64k'\n",
            "[networks.a] max_payload must be a whole number of bytes from 1 to 268435455, not the string '64k'",
        ),
        ("[networks.a]\nmax_payload = 1024.0\n", "[networks.a] max_payload must be a whole number of bytes"),
        ("[networks.a]\nmax_payload = true\n", "[networks.a] max_payload must be a whole number of bytes"),
        (
            "[networks.a]\nmax_retained = -1\n",
            "[networks.a] max_retained must be a whole number of topics from 0 to 10000000, not the integer -1",
        ),
        (
            "[broker]\nanonymous_max_sessions = 1.5\n",
            "[broker] anonymous_max_sessions must be a whole number",
        ),
        ("[broker]\nmax_connecting_per_address = 0\n", "[broker] max_connecting_per_address must be a whole"),
        ("[broker]\nlog_repeats = 'often'\n", "[broker] log_repeats must be a whole number from 1"),
        # strings (or false)
        (
            "[broker]\npersistence = 3\n",
            "[broker] persistence must be a file name or false (a string or a boolean), not the integer 3",
        ),
        ("[broker]\npersistence = true\n", "[broker] persistence must be a file name or false"),
        ("[broker]\npersistence = ''\n", "[broker] persistence must be a file name or false"),
        # unknown settings
        ("colour = 'blue'\n", "unknown setting colour"),
        ("[broker]\nmqtt_port = 1883\n", "unknown setting [broker] mqtt_port"),
        ("[bridge]\nport = 5000\n", "unknown setting [bridge] port"),
        ("[networks.a]\nretian = true\n", "unknown setting [networks.a] retian"),
        ("[keys.gen]\nadmin = true\n", "unknown setting keys"),
        # table shapes
        ("broker = 'embedded'\n", "[broker] must be a table, not the string 'embedded'"),
        ("[[broker]]\nmqtt = '127.0.0.1:1883'\n", "[broker] must be a table, not the array"),
        ("bridge = 5000\n", "[bridge] must be a table, not the integer 5000"),
        (
            "networks = ['a']\n",
            "[networks] must be a table of networks, such as [networks.sample_net], not the array ['a']",
        ),
        ("[[networks]]\nname = 'a'\n", "[networks] must be a table of networks"),
        ("[networks]\na = true\n", "[networks.a] must be a table of settings, not the boolean true"),
        ('[networks."a/b"]\n', "[networks] invalid network name 'a/b'"),
        # emptied
        ("", "the configuration file is empty"),
        ("\n  \n", "the configuration file is empty"),
    ],
)
def test_a_setting_of_the_wrong_type_refuses_the_configuration(text, expected):
    assert expected in config_refusal(text)


def test_a_configuration_of_comments_only_means_every_default():
    settings = parse_settings("# nothing set yet\n", CONFIG_PATH, PATH)
    assert set(settings.networks) == {"sample_net"}


# --- At start and on a live reload ---------------------------------------------------------------


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "radio.toml").write_text("[networks.A]\n[networks.B]\n")
    (tmp_path / "keys.toml").write_text(GOOD)
    return tmp_path


def test_on_a_live_reload_a_mistyped_keys_file_is_one_log_line_and_changes_nothing(folder, caplog):
    live = LiveRegistry(folder / "radio.toml")
    before = live.current
    assert not before.access("gen").admin
    (folder / "keys.toml").write_text(with_field("admin", '"false"'))
    with caplog.at_level(logging.INFO, logger="radio.registry"):
        assert live.refresh() is False
        assert live.refresh() is False  # reported once, not on every look
    assert live.current is before
    assert not live.current.access("gen").admin
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert record.getMessage() == (
        f"registry not reloaded, previous rights stay in force: {folder / 'keys.toml'}: "
        "key 'gen': admin must be true or false (a TOML boolean), not the string 'false'"
    )


def test_on_a_live_reload_a_mistyped_configuration_changes_nothing(folder, caplog):
    live = LiveRegistry(folder / "radio.toml")
    before = live.current
    (folder / "radio.toml").write_text("[broker]\nallow_anonymous = 'false'\n[networks.A]\n[networks.B]\n")
    with caplog.at_level(logging.ERROR, logger="radio.registry"):
        assert live.refresh() is False
    assert live.current is before
    assert len(caplog.records) == 1
    assert "[broker] allow_anonymous must be true or false" in caplog.records[0].getMessage()


@pytest.mark.parametrize(
    "command",
    [
        ["broker", "--mqtt", "127.0.0.1:0", "--ws", "127.0.0.1:0"],
        ["keys", "list"],
        ["keys", "add", "other"],
        ["keys", "edit", "gen", "--publish", "A"],
        ["mosquitto", "export", "--dir", "out"],
    ],
)
def test_at_start_a_mistyped_keys_file_is_one_line_and_exit_2(folder, command):
    (folder / "keys.toml").write_text(with_field("admin", '"false"'))
    before = (folder / "keys.toml").read_bytes()
    result = radio_in(folder, *command)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        (
            f"radio: {folder / 'keys.toml'}: key 'gen': admin must be true or false (a TOML boolean), "
            "not the string 'false'"
        )
    ]
    assert (folder / "keys.toml").read_bytes() == before  # refused, never rewritten
