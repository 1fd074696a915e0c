"""The build's one optional step: the embedded broker's delivery path compiled with mypyc.

``RADIO_COMPILE=1 pip install .`` builds the modules every delivery runs through (``HOT_PATH``)
into C extensions installed beside their sources, which Python then imports instead: the same
code, with the types mypy checks, at about half the interpreter's cost per delivery
(docs/benchmarks.md). It needs a C compiler and Python's headers. Without it Radio is pure
Python, as it is in an editable install (build_hooks/radio_build.py). Everything else about the
package is in pyproject.toml.
"""

from __future__ import annotations

import os

from setuptools import Extension, setup

HOT_PATH = [
    "radio/broker/connection.py",
    "radio/broker/index.py",
    "radio/broker/message.py",
    "radio/broker/output.py",
    "radio/broker/router.py",
    "radio/broker/sessions.py",
    "radio/broker/handle_publish.py",
    "radio/broker/access.py",
    "radio/broker/attributes.py",
    "radio/admission.py",
    "radio/samples.py",
    "radio/wire/framing.py",
    "radio/wire/packets.py",
    "radio/wire/mqtt5.py",
]
"""Per delivery: a connection's reads and writes, the router's fan-out and acknowledgements, a
session's in-flight deliveries, the subscription index and a message's encoding. Per sample,
before its first delivery is written: its PUBLISH cut from the stream and decoded (MQTT 3.1.1 and
5), the admission gate (rights, strict JSON, rate, quota, metering) and the session attributes it
reads (the key's name). Between them, most of the
Python the broker runs for a sample. They are compiled together (one shared library beside them,
``radio.broker.delivery__mypyc``) so that their calls into each other are C calls. A module whose
classes another module subclasses comes with that module: a compiled class takes no interpreted
subclass (``framing.Violation`` has ``mqtt5.CodedViolation``)."""


def ext_modules() -> list[Extension]:
    """The compiled modules, or none for a pure-Python build."""
    if os.environ.get("RADIO_COMPILE", "") != "1":
        return []
    try:
        from mypyc.build import mypycify  # noqa: PLC0415 - only a compiled build has mypy
    except ImportError as missing:
        msg = "RADIO_COMPILE=1 needs mypy (mypyc) where it builds: pip brings it, unless --no-build-isolation"
        raise SystemExit(msg) from missing
    # The build's own environment has mypy but not Radio's dependencies: what the compiled modules
    # import from them (amqtt's Action, ...) is compiled as plain objects, and the modules they
    # import are compiled against, not checked again (CI's mypy checks everything, strict).
    mypy_flags = ["--ignore-missing-imports", "--follow-imports=silent"]
    return mypycify([*mypy_flags, *HOT_PATH], opt_level="3", group_name="radio.broker.delivery")


setup(ext_modules=ext_modules())
