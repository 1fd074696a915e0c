"""Run the Eclipse Paho MQTT interoperability suite against the embedded broker; count what passes.

The suite (``interoperability/`` of eclipse/paho.mqtt.testing: ``client_test5.py`` for MQTT 5,
``client_test.py`` for 3.1.1) is not part of Radio: give its folder. It is run unmodified, each
test in its own process with a deadline (some hang on a broker that lacks a feature). Its clients
send no credentials and its topics (``TopicA``, ``/TopicA``, ``#``...) lie outside ``networks/``,
so each test's clients connect with an admin key, given to them by the environment (never the
command line); ``--anonymous`` runs it as an anonymous client instead (where only a refusal can
pass). Its socket timeout, also its CONNACK deadline, is raised from 0.5 s to 3 s, since the
broker checks a key's secret against its hash.

    python bench/interop.py --suite ~/paho.mqtt.testing/interoperability            # MQTT 5
    python bench/interop.py --suite ~/paho.mqtt.testing/interoperability --version 3
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from radio.broker.thread import BrokerThread
from radio.config import Address, load_settings
from radio.keys import KeyStore
from radio.registry import LiveRegistry

CHILD = """
import os, socket, sys, unittest
sys.path.insert(0, os.getcwd())
module = __import__(sys.argv[1])
client = module.mqtt_client.Client
connect = client.connect
def with_key(self, *args, **kwargs):
    secret = os.environ.get("INTEROP_SECRET")
    if secret and not kwargs.get("username"):
        kwargs["username"], kwargs["password"] = "admin", secret.encode()
    return connect(self, *args, **kwargs)
client.connect = with_key
settimeout = socket.socket.settimeout
socket.socket.settimeout = lambda self, value: settimeout(self, 3.0 if value == 0.5 else value)
module.host, module.port, module.topic_prefix = "127.0.0.1", int(sys.argv[2]), ""
if not hasattr(module, "setData"):  # the 3.1.1 suite sets its topics in its __main__ only
    module.topics = ("TopicA", "TopicA/B", "Topic/C", "TopicA/C", "/TopicA")
    module.wildtopics = ("TopicA/+", "+/C", "#", "/#", "/+", "+/+", "TopicA/#")
    module.nosubscribe_topics = ("test/nosubscribe",)
suite = unittest.defaultTestLoader.loadTestsFromName("Test." + sys.argv[3], module)
result = unittest.TextTestRunner(verbosity=0).run(suite)
sys.exit(0 if result.wasSuccessful() else 1)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite", type=Path, required=True, help="the suite's interoperability/ folder")
    parser.add_argument("--version", choices=["3", "5"], default="5")
    parser.add_argument("--deadline", type=float, default=60.0, help="seconds per test")
    parser.add_argument("--anonymous", action="store_true", help="connect without a key")
    parser.add_argument("tests", nargs="*", help="only these tests (default: all)")
    args = parser.parse_args()
    module = "client_test5" if args.version == "5" else "client_test"
    source = (args.suite / f"{module}.py").read_text()
    names = args.tests or re.findall(r"^    def (test\w*|\w+_test)\(", source, re.MULTILINE)
    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder)
        (home / "radio.toml").write_text("[networks.demo]\npublic = true\n")
        settings = load_settings(home / "radio.toml")
        secret = KeyStore(settings.keys_path, settings.networks).add("admin", admin=True)
        env = {**os.environ, "INTEROP_SECRET": "" if args.anonymous else secret}
        with BrokerThread(
            LiveRegistry(home / "radio.toml"), mqtt=Address("127.0.0.1", 0), websocket=Address("127.0.0.1", 0)
        ) as broker:
            passed = []
            for name in names:
                try:
                    done = subprocess.run(
                        [sys.executable, "-c", CHILD, module, str(broker.mqtt_port), name],
                        cwd=args.suite,
                        env=env,
                        capture_output=True,
                        text=True,
                        timeout=args.deadline,
                        check=False,
                    )
                    outcome = "pass" if done.returncode == 0 else "FAIL"
                except subprocess.TimeoutExpired:
                    outcome = "FAIL (deadline)"
                if outcome == "pass":
                    passed.append(name)
                print(f"{outcome:16} {name}", flush=True)
    print(f"{len(passed)} of {len(names)} passed (MQTT {'5' if args.version == '5' else '3.1.1'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
