"""No module of the package reaches into another module's private (underscore) names.

A helper used by several modules is public in its home module (no underscore, a docstring);
``from ember.x import _helper`` and ``module_alias._helper`` across modules are what this
guards against.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Known private imports, each (file, name); remove an entry once its name is made public.
KNOWN: set[tuple[str, str]] = set()


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(source: str) -> list[tuple[int, str]]:
    """(line, name) for each private name the source takes from another ember module."""
    tree = ast.parse(source)
    modules: set[str] = set()  # local names bound to ember modules
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ember"):
            for alias in node.names:
                if _private(alias.name):
                    found.append((node.lineno, alias.name))
                modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("ember") and alias.asname:
                    modules.add(alias.asname)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and _private(node.attr)
                and isinstance(node.value, ast.Name) and node.value.id in modules):
            found.append((node.lineno, f"{node.value.id}.{node.attr}"))
    return found


def test_checker_sees_both_forms():
    src = ("from ember.ops.shape_values import _rule as r\n"
           "from ember.ops import reduce as fam\n"
           "fam._reduce\n"
           "from ember import __version__\n")
    assert private_uses(src) == [(1, "_rule"), (3, "fam._reduce")]


def test_no_private_names_imported_across_modules():
    bad = []
    for path in sorted((ROOT / "ember").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for line, name in private_uses(path.read_text()):
            if (rel, name) not in KNOWN:
                bad.append(f"{rel}:{line} uses {name}")
    assert not bad, ("private names used across modules; make them public in their home module: "
                     + "; ".join(bad))
