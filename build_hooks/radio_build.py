"""Radio's build backend: setuptools' own, asking for mypy (mypyc) when the build is compiled.

``RADIO_COMPILE=1`` makes ``setup.py`` compile the embedded broker's delivery path with mypyc,
which comes with mypy: only such a build needs it, so only such a build asks for it (a plain
install does not download a type checker). An editable install is never compiled: compiled
modules beside the sources would be imported instead of the sources being edited.
"""

from __future__ import annotations

import os

from setuptools import build_meta
from setuptools.build_meta import *  # noqa: F403 - every hook not redefined here is setuptools' own

COMPILE = "RADIO_COMPILE"
MYPYC = "mypy==2.4.1"
"""The mypyc the compiled build is tested with (its output needs nothing of it at run time)."""


def compiling() -> bool:
    """Whether this build compiles the delivery path (``RADIO_COMPILE=1``)."""
    return os.environ.get(COMPILE, "") == "1"


def get_requires_for_build_wheel(config_settings: dict[str, str] | None = None) -> list[str]:
    """The requirements of setuptools (none beyond pyproject's), and mypy when the wheel is compiled.

    setuptools runs ``setup.py`` to find its own, which a compiled build cannot do before mypy
    is there: setup.py declares no requirement of its own, so there is none to find.
    """
    if compiling():
        return [MYPYC]
    return build_meta.get_requires_for_build_wheel(config_settings)


def build_editable(
    wheel_directory: str,
    config_settings: dict[str, str] | None = None,
    metadata_directory: str | None = None,
) -> str:
    """An editable install, never compiled (see the module's docstring)."""
    os.environ.pop(COMPILE, None)
    return build_meta.build_editable(wheel_directory, config_settings, metadata_directory)
