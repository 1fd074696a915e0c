"""Syntax trees of source files, parsed in an interpreter of their own.

CPython 3.11's AST constructor can fail with ``SystemError: AST constructor recursion depth
mismatch`` in a process whose thread state earlier tests have put through deep recursion and
many threads; the tree of a file is the same wherever it is parsed, so the tests that read code
parse it in a fresh interpreter, all files in one go, and unpickle the trees.
"""

from __future__ import annotations

import ast
import pickle
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

_PARSE = (
    "import ast, pickle, sys\n"
    "trees = {p: ast.parse(open(p, encoding='utf-8').read(), p) for p in sys.argv[1:]}\n"
    "sys.stdout.buffer.write(pickle.dumps(trees))\n"
)


def trees(paths: Iterable[Path]) -> dict[Path, ast.Module]:
    """Each file's syntax tree, by its path."""
    wanted = [str(p) for p in paths]
    done = subprocess.run(
        [sys.executable, "-c", _PARSE, *wanted], capture_output=True, check=True, timeout=60
    )
    parsed: dict[str, ast.Module] = pickle.loads(done.stdout)  # noqa: S301 - our own interpreter's output
    return {Path(p): tree for p, tree in parsed.items()}
