"""What the code imports at run time is what a plain `pip install .` installs.

The test extras install more (requests was one, and `radio up` on a fresh machine failed on it),
so the suite itself cannot notice a missing run-time dependency by failing to import it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("radio", "broker", "bridge", "devices", "subscribers", "cli", "recorder")
PARTS = ("broker", "bridge", "devices", "subscribers", "cli", "recorder")


def imports_of(path: Path) -> set[str]:
    """Every module a source file imports, by its full dotted name."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def sources(folder: str) -> list[Path]:
    """The Python files of one folder of the repository (radio/ without its links to the parts)."""
    return [
        p
        for p in (ROOT / folder).rglob("*.py")
        if folder != "radio" or p.relative_to(ROOT / "radio").parts[0] not in PARTS
    ]


def imported_modules() -> set[str]:
    """Top-level names imported anywhere in the run-time packages."""
    return {
        name.split(".")[0] for package in PACKAGES for path in sources(package) for name in imports_of(path)
    }


def test_the_distribution_has_one_import_package():
    """The parts are radio.broker, radio.bridge, ...: nothing named broker or bridge in site-packages."""
    for part in PARTS:
        for path in sources(part):
            bare = {name for name in imports_of(path) if name.split(".")[0] in PARTS}
            assert bare == set(), f"{path.relative_to(ROOT)} imports {bare}: use radio.{part}"
        assert (ROOT / "radio" / part).resolve() == ROOT / part


def test_the_import_contracts_hold():
    """pyproject.toml's [tool.importlinter]: the parts independent, the command line above them, the
    core importing none, the clients only the client-safe core. A broken one names its import chain."""
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


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
