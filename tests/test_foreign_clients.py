"""The broker driven by mosquitto_pub and mosquitto_sub: clients nobody here wrote (TCP only)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.mosquitto_clients

if shutil.which("mosquitto_sub") is None:
    if os.environ.get("CI"):
        pytest.fail("mosquitto_sub is missing: .ci/run installs mosquitto-clients", pytrace=False)
    pytest.skip(
        "mosquitto-clients is not installed (apt-get install mosquitto-clients)", allow_module_level=True
    )


def options(tool, credentials):
    """The environment that hands ``tool`` its key in a 0600 options file, never on its command line."""
    if not credentials:
        return {**os.environ, "XDG_CONFIG_HOME": tempfile.mkdtemp()}  # no options file: anonymous
    folder = tempfile.mkdtemp()
    path = Path(folder, tool)
    path.touch(mode=0o600)
    path.write_text(f"-u {credentials[0]}\n-P {credentials[1]}\n")
    return {**os.environ, "XDG_CONFIG_HOME": folder}


def sub(broker, *args, credentials=None):
    """Start mosquitto_sub; -v prints 'topic payload' per line."""
    return subprocess.Popen(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.mqtt_port), "-v", "-W", "20", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=options("mosquitto_sub", credentials),
    )


def pub(broker, topic, message, credentials, *extra):
    return subprocess.run(
        [
            "mosquitto_pub",
            "-h",
            "127.0.0.1",
            "-p",
            str(broker.mqtt_port),
            "-t",
            topic,
            "-m",
            message,
            "-q",
            "1",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=options("mosquitto_pub", credentials),
    )


def creds(home, name):
    return (name, home.secrets[name])


def test_mosquitto_clients_publish_and_read_within_their_rights(broker, home):
    # Retained first, so the subscriber has something that proves it is subscribed before live data.
    assert pub(broker, "networks/A", '{"n": 0}', creds(home, "gen"), "-r").returncode == 0
    reader = sub(broker, "-t", "networks/A/#", "-C", "3", credentials=creds(home, "reader_a"))
    assert reader.stdout is not None
    assert reader.stdout.readline() == 'networks/A {"n": 0}\n'
    assert pub(broker, "networks/B", '{"leak": 1}', creds(home, "gen")).returncode == 0
    assert pub(broker, "networks/A", '{"n": 1}', creds(home, "gen")).returncode == 0
    assert pub(broker, "networks/A/s1", '{"n": 2}', creds(home, "gen")).returncode == 0
    out, _ = reader.communicate(timeout=30)
    assert out.splitlines() == ['networks/A {"n": 1}', 'networks/A/s1 {"n": 2}']
    assert reader.returncode == 0


def test_mosquitto_sub_anonymous_wildcard_sees_public_networks_only(broker, home):
    assert pub(broker, "networks/A", '{"private": 1}', creds(home, "admin"), "-r").returncode == 0
    assert pub(broker, "networks/pub", '{"public": 1}', creds(home, "admin"), "-r").returncode == 0
    anonymous = sub(broker, "-t", "#", "-C", "2")
    assert anonymous.stdout is not None
    assert anonymous.stdout.readline() == 'networks/pub {"public": 1}\n'
    assert pub(broker, "networks/A", '{"private": 2}', creds(home, "admin")).returncode == 0
    assert pub(broker, "networks/pub", '{"public": 2}', creds(home, "admin")).returncode == 0
    out, _ = anonymous.communicate(timeout=30)
    assert out.splitlines() == ['networks/pub {"public": 2}']


def test_mosquitto_sub_is_refused_a_private_network(broker):
    refused = sub(broker, "-t", "networks/A/#", "-C", "1")
    _, err = refused.communicate(timeout=30)
    assert "All subscription requests were denied" in err


@pytest.mark.parametrize(("user", "password"), [("gen", "wrong"), ("nobody", "x")])
def test_mosquitto_sub_with_a_bad_key_is_refused_with_code_5(broker, user, password):
    refused = sub(broker, "-t", "networks/pub", "-C", "1", credentials=(user, password))
    _, err = refused.communicate(timeout=30)
    assert refused.returncode == 5
    assert "Connection Refused: not authorised" in err
