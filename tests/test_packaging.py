"""What the code imports at run time is what a plain `pip install .` installs.

The test extras install more (requests was one, and `radio up` on a fresh machine failed on it),
so the suite itself cannot notice a missing run-time dependency by failing to import it.
"""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
import tarfile
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from conftest import copy_checkout
from packaging.requirements import Requirement
from syntax import trees

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("radio", "broker", "bridge", "devices", "subscribers", "cli", "recorder")
PARTS = ("broker", "bridge", "devices", "subscribers", "cli", "recorder")


@functools.cache
def _trees() -> dict[Path, ast.Module]:
    """The syntax tree of every source file of the run-time packages, parsed once."""
    return trees(path for package in PACKAGES for path in sources(package))


def imports_of(path: Path) -> set[str]:
    """Every module a source file imports, by its full dotted name."""
    names: set[str] = set()
    for node in ast.walk(_trees()[path]):
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


def bridge_modules_imported(path: Path) -> set[str]:
    """The modules of ``radio.bridge`` a source file imports, by their short name (``publish``)."""
    names: set[str] = set()
    for node in ast.walk(_trees()[path]):
        if isinstance(node, ast.ImportFrom) and node.module == "radio.bridge":
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("radio.bridge."):
            names.add(node.module.removeprefix("radio.bridge.").split(".")[0])  # type: ignore[union-attr]
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[2] for a in node.names if a.name.startswith("radio.bridge."))
    return names


def test_no_bridge_blueprint_imports_another_and_none_reads_app_extensions_by_string():
    """Each view takes what the app holds from ``BridgeState`` (bridge/state.py), never another view."""
    blueprints = {p.stem for p in sources("bridge") if "Blueprint(" in p.read_text(encoding="utf-8")}
    assert {"publish", "ops", "history", "pages", "admin"} <= blueprints
    for path in sources("bridge"):
        text = path.read_text(encoding="utf-8")
        if path.stem in blueprints:
            crossed = bridge_modules_imported(path) & (blueprints - {path.stem})
            assert crossed == set(), f"bridge/{path.name} imports the blueprint modules {crossed}"
        if path.name != "state.py":
            assert "extensions[" not in text, f"bridge/{path.name} reads app.extensions: use bridge/state.py"


def test_the_sdist_ships_the_package_and_no_tests(tmp_path):
    """The tests need the checkout (conftest.py, its helpers, bench/, docs/): an sdist of some of
    them could not run them, so it ships none (MANIFEST.in), and everything the wheel needs."""
    source = tmp_path / "source"
    copy_checkout(source)
    build = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    built = subprocess.run(
        [sys.executable, "-c", build, str(tmp_path)],
        cwd=source,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    with tarfile.open(tmp_path / built.stdout.strip().splitlines()[-1]) as sdist:
        members = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert not {m for m in members if m == "tests" or m.startswith("tests/")}
    for needed in (
        "pyproject.toml",
        "LICENSE",
        "radio/__init__.py",
        "radio/bridge/app.py",
        "radio/bridge/templates/live.html",
    ):
        assert needed in members, needed


def test_the_tests_readme_describes_every_declared_marker_and_every_helper_module():
    """A newcomer finds each tier and helper in tests/README.md: a new marker or helper is added there."""
    readme = (ROOT / "tests" / "README.md").read_text(encoding="utf-8")
    options = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["pytest"]
    declared = [line.split(":", 1)[0].split("(", 1)[0] for line in options["ini_options"]["markers"]]
    assert "slow" in declared
    for marker in declared:
        assert f"| `{marker}" in readme, f"tests/README.md does not describe the marker {marker!r}"
    for helper in sorted((ROOT / "tests").glob("*.py")):
        if not helper.name.startswith("test_") and helper.name != "conftest.py":
            assert f"`{helper.name}`" in readme, f"tests/README.md does not name {helper.name}"
