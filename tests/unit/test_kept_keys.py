"""Keys whose secret Radio keeps in a file of its own: the bridge's, the recorder's, the demo's.

They are made and kept by one pair of functions (``radio/service_keys.py``); the demo publisher
of ``radio up`` replaces a file that no longer matches, where a server refuses to start.
"""

from __future__ import annotations

import stat

import pytest

from radio.cli.up import DEMO_KEY, demo_key
from radio.config import load_settings
from radio.errors import RadioError
from radio.keys import KeyStore, read_keys
from radio.service_keys import key_file, service_credentials


@pytest.fixture
def settings(tmp_path):
    config = tmp_path / "radio.toml"
    config.write_text("[networks.city]\npublic = false\n")
    return load_settings(config)


def test_the_demo_key_is_made_once_kept_private_and_given_back(settings):
    secret = demo_key(settings, "city")
    path = key_file(settings, DEMO_KEY)
    assert path.read_text() == secret + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_keys(settings.keys_path)[DEMO_KEY].publish == frozenset({"city"})
    assert demo_key(settings, "city") == secret  # the same key on the next start


def test_a_demo_key_rotated_behind_its_back_gets_a_new_secret(settings):
    old = demo_key(settings, "city")
    KeyStore(settings.keys_path, settings.networks).rotate(DEMO_KEY)
    new = demo_key(settings, "city")
    assert new != old
    key = read_keys(settings.keys_path)[DEMO_KEY]
    assert key.matches(new)
    assert key_file(settings, DEMO_KEY).read_text().strip() == new


def test_a_server_whose_key_file_no_longer_matches_refuses_to_start(settings):
    name, secret = service_credentials(settings, "recorder", "RADIO_TEST_UNSET", "read_all")
    assert read_keys(settings.keys_path)[name].read_all
    assert service_credentials(settings, "recorder", "RADIO_TEST_UNSET", "read_all") == (name, secret)
    key_file(settings, "recorder").write_text("not-the-secret\n")
    with pytest.raises(RadioError, match="no longer matches the key 'recorder'"):
        service_credentials(settings, "recorder", "RADIO_TEST_UNSET", "read_all")
