"""Every exception class of the package is under ``RadioError``, where the tree in radio/errors.py says."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import radio
from radio import errors
from radio.errors import RadioError

BRANCH = re.compile(r"^    (?P<indent>(?:[│ ]   )*)(?:├── |└── )(?P<name>\w+)")
"""A line of the tree: four columns per level, then the class's name."""


def project_exceptions() -> list[type[Exception]]:
    """Every exception class defined in a module of the ``radio`` package (the parts included).

    Errors, that is: a ``KeyboardInterrupt`` of ``radio up``'s is a signal, which ``except
    Exception`` must not catch, so it stays outside the root.
    """
    found: dict[str, type[Exception]] = {}
    for module_info in pkgutil.walk_packages(radio.__path__, "radio."):
        if module_info.name == "radio.__main__":
            continue  # running it is the command line
        module = importlib.import_module(module_info.name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, Exception) and value.__module__ == module.__name__:
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return list(found.values())


def documented_tree() -> dict[str, str]:
    """Each class named in the docstring's tree, with the class it sits under."""
    parents: dict[str, str] = {}
    path = ["RadioError"]
    for line in (errors.__doc__ or "").splitlines():
        match = BRANCH.match(line)
        if match is None:
            continue
        depth = len(match["indent"]) // 4 + 1
        del path[depth:]
        parents[match["name"]] = path[-1]
        path.append(match["name"])
    return parents


def test_the_walk_finds_the_exceptions_of_every_part():
    modules = {exception.__module__ for exception in project_exceptions()}
    for part in ("broker", "bridge", "devices", "subscribers", "cli"):
        assert any(module.startswith(f"radio.{part}.") for module in modules), part


def test_every_exception_of_the_package_is_under_the_root():
    outside = [
        f"{e.__module__}.{e.__qualname__}" for e in project_exceptions() if not issubclass(e, RadioError)
    ]
    assert outside == []


def test_every_public_exception_is_in_the_docstring_tree_under_its_own_base():
    tree = documented_tree()
    public = [e for e in project_exceptions() if not e.__name__.startswith("_") and e is not RadioError]
    names = [e.__name__ for e in public]
    assert len(names) == len(set(names)), (
        "two exception classes share a name: the tree could not tell them apart"
    )
    for exception in public:
        base = next(b for b in exception.__mro__[1:] if issubclass(b, RadioError))
        assert tree.get(exception.__name__) == base.__name__, (
            f"{exception.__module__}.{exception.__name__} (under {base.__name__}) is not in radio/errors.py's tree there"
        )
    assert set(tree) == set(names), f"the tree names classes that do not exist: {set(tree) - set(names)}"


def test_builtin_bases_callers_rely_on_are_kept():
    from radio.samples import NotJSON  # noqa: PLC0415

    assert issubclass(errors.InvalidName, ValueError)
    assert issubclass(NotJSON, ValueError)
