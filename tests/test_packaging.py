"""What the code imports at run time is what a plain `pip install .` installs.

The test extras install more (requests was one, and `radio up` on a fresh machine failed on it),
so the suite itself cannot notice a missing run-time dependency by failing to import it.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("radio", "broker", "bridge", "devices", "subscribers")


def imported_modules() -> set[str]:
    """Top-level names imported anywhere in the run-time packages."""
    names: set[str] = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return names


def test_every_third_party_import_is_a_declared_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {Requirement(r).name.lower().replace("_", "-") for r in project["dependencies"]}
    distributions = packages_distributions()
    missing = {}
    for module in sorted(imported_modules()):
        if module in sys.stdlib_module_names or module in PACKAGES or module == "__future__":
            continue
        owners = {d.lower().replace("_", "-") for d in distributions.get(module, [])}
        if not owners:
            pytest.fail(f"{module} is imported but no installed distribution provides it")
        if not owners & declared:
            missing[module] = sorted(owners)
    assert missing == {}, f"imported at run time but not in [project] dependencies: {missing}"
