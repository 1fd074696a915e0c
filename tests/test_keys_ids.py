"""A key's id: made by `radio keys add`, kept by rotate and edit, new for a key added again."""

from __future__ import annotations

import json
import re

import tomli_w

from radio.keys import KEY_ID, derived_key_id, load_keys


def ids(home) -> dict[str, str]:
    return {name: key.id for name, key in load_keys(home.keys).items()}


def listed(home) -> dict[str, str]:
    rows = [json.loads(line) for line in home.radio_main("keys", "list", "--json").stdout.splitlines()]
    return {row["name"]: row["id"] for row in rows}


def test_the_life_of_a_key_id(home):
    home.radio_main("keys", "add", "hana", "--subscribe", "A")
    first = ids(home)["hana"]
    assert KEY_ID.fullmatch(first)
    assert f'id = "{first}"' in home.keys.read_text()
    assert listed(home)["hana"] == first
    table = home.radio_main("keys", "list").stdout
    assert re.search(rf"^hana\s+-\s+A\s+\S+\s+{first}$", table, re.MULTILINE)

    old_digest = load_keys(home.keys)["hana"].digest
    home.radio_main("keys", "rotate", "hana")
    assert load_keys(home.keys)["hana"].digest != old_digest
    assert ids(home)["hana"] == first

    home.radio_main("keys", "edit", "hana", "--subscribe", "B", "--publish", "A")
    home.radio_main("keys", "edit", "hana", "--publish", "", "--admin")
    assert ids(home)["hana"] == first
    home.radio_main("keys", "edit", "hana", "--no-admin")
    assert ids(home)["hana"] == first

    # Revoked, then a new key under the same name: a new key, a new id.
    home.radio_main("keys", "revoke", "hana")
    home.radio_main("keys", "add", "hana", "--subscribe", "B")
    assert ids(home)["hana"] != first
    assert KEY_ID.fullmatch(ids(home)["hana"])


def test_every_key_has_its_own_id(home):
    all_ids = list(ids(home).values())
    assert len(all_ids) == 5  # four keys and the bridge's
    assert len(set(all_ids)) == len(all_ids)


def test_an_older_file_without_ids_keeps_working_and_keeps_its_derived_ids(home):
    old = load_keys(home.keys)
    tables = {name: {k: v for k, v in key.to_toml().items() if k != "id"} for name, key in old.items()}
    home.keys.write_text(tomli_w.dumps({"keys": tables}))
    derived = ids(home)
    assert derived == {name: derived_key_id(key.digest) for name, key in old.items()}
    assert ids(home) == derived  # the same on every read

    # The first change writes every id down, so rotating (a new digest) keeps it.
    home.radio_main("keys", "rotate", "gen")
    assert ids(home) == derived
    assert f'id = "{derived["reader_a"]}"' in home.keys.read_text()
    home.radio_main("keys", "rotate", "gen")
    assert ids(home)["gen"] == derived["gen"]


def test_edit_keeps_the_secret_and_changes_only_what_it_is_given(home):
    before = load_keys(home.keys)["gen"]
    home.radio_main("keys", "edit", "gen", "--subscribe", "B")
    after = load_keys(home.keys)["gen"]
    assert (after.digest, after.mosquitto, after.id, after.created) == (
        before.digest,
        before.mosquitto,
        before.id,
        before.created,
    )
    assert (after.publish, after.subscribe, after.admin) == ({"A"}, {"B"}, False)
    assert after.matches(home.secrets["gen"])
    home.radio_main("keys", "edit", "gen", "--publish", "", "--publish", "B,pub")  # repeated, comma-separated
    assert load_keys(home.keys)["gen"].publish == {"B", "pub"}
    home.radio_main("keys", "edit", "gen", "--publish", "")
    assert load_keys(home.keys)["gen"].publish == frozenset()


def test_edit_refusals_are_one_line_and_exit_2(home):
    before = home.keys.read_bytes()
    cases = [
        (
            ["gen"],
            (
                "radio: keys edit: nothing to change (give --publish, --subscribe, --admin, --no-admin, "
                "--rate, --burst, --quota or --expires)"
            ),
        ),
        (["ghost", "--admin"], "radio: no key named 'ghost'"),
        (
            ["gen", "--publish", "nosuch"],
            "radio: unknown network 'nosuch' (networks in the configuration: A, B, fleeting, pub)",
        ),
        (["gen", "--subscribe", "a/b"], "radio: invalid network name 'a/b'"),
        (
            ["bridge", "--subscribe", "A"],
            "radio: key 'bridge' is a service key that publishes to every network: its rights are fixed",
        ),
    ]
    for args, message in cases:
        result = home.radio("keys", "edit", *args, check=False)
        assert result.returncode == 2, args
        assert result.stdout == ""
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert result.stderr.startswith(message), result.stderr
    both = home.radio("keys", "edit", "gen", "--admin", "--no-admin", check=False)
    assert both.returncode == 2
    assert "not allowed with argument" in both.stderr
    assert home.keys.read_bytes() == before
