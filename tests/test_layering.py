"""The import layering of DESIGN.md's layer table, checked on every import of the package.

Every ``import`` and ``from ... import`` statement counts, those inside functions included
(lazy imports are still dependencies); only the bodies of ``if TYPE_CHECKING:`` blocks are left
out, as they never run. ``lint-imports`` checks the same rule with the contracts in
pyproject.toml (``[tool.importlinter]``); ``test_importlinter_contracts_match_the_rule`` keeps
the two in step.
"""
from __future__ import annotations

import ast
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "ember"

#: The top-level package itself (``import ember``, ``from ember import build``), as a target.
TOP = "ember"

#: Leaf modules every package may import (the error types, the version string).
LEAVES = frozenset({"errors", "_version"})
#: Packages that may import nothing of Ember but these (their own modules aside).
ALLOWED_ONLY: dict[str, frozenset[str]] = {
    "ir": LEAVES,
    "ops": LEAVES | {"ir", "plan"},
    "plan": LEAVES | {"ir", "ops"},
}
#: Packages that may import anything of Ember but these.
FORBIDDEN: dict[str, frozenset[str]] = {
    "frontends": frozenset({"passes", "backends", "runtime", "builder", "tools", "serve", "zoo",
                            "cli", "integrations"}),
    # constant folding evaluates nodes with ember.backends.cpu: the one passes -> backends arrow
    "passes": frozenset({"runtime", "builder", "tools", "serve", "zoo", "cli", "frontends", "integrations"}),
    "backends": frozenset({"runtime", "builder", "passes", "frontends", "tools", "serve", "zoo",
                           "cli", "integrations"}),
    "runtime": frozenset({"builder", "passes", "frontends", "tools", "serve", "zoo", "cli", "integrations"}),
    "builder": frozenset({"tools", "serve", "cli", "integrations"}),
    "serve": frozenset({"tools", "cli", "integrations"}),
    "tools": frozenset({"cli", "integrations"}),
    # Ray Serve / Ray Data over serve's config, codec and signature code; only cli routes to it
    "integrations": frozenset({"tools", "cli"}),
}
#: Packages below tools, which never import the top-level ``ember`` package itself (its
#: ``build``/``load`` reach up into builder and runtime).
NO_TOP = ("ir", "ops", "plan", "frontends", "passes", "backends", "runtime", "builder")


def members() -> list[str]:
    """The top-level modules and packages of ``ember`` (``errors``, ``ir``, ``cli``, ...)."""
    names = [p.stem for p in PKG.glob("*.py") if p.stem != "__init__"]
    names += [p.name for p in PKG.iterdir() if (p / "__init__.py").is_file()]
    return sorted(names)


def forbidden_members(source: str) -> frozenset[str]:
    """The top-level members of ``ember`` that ``ember.<source>`` must not import."""
    if source in ALLOWED_ONLY:
        return frozenset(members()) - ALLOWED_ONLY[source] - {source}
    return FORBIDDEN.get(source, frozenset())


@dataclass(frozen=True)
class Import:
    path: str  # relative to the repository, posix
    line: int
    importer: str  # module name, e.g. ember.ir.graph
    imported: str  # module name, or "ember" for the top-level package itself

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.importer} -> {self.imported}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(dotted: str) -> bool:
    base = ROOT.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _is_type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _walk_runtime(node: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Import statements anywhere under ``node`` except in ``if TYPE_CHECKING:`` bodies."""
    found: list[ast.Import | ast.ImportFrom] = []
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, (ast.Import, ast.ImportFrom)):
            found.append(n)
        if isinstance(n, ast.If) and _is_type_checking(n.test):
            stack.extend(n.orelse)
            continue
        stack.extend(ast.iter_child_nodes(n))
    return found


def imports_of(source: str, importer: str, path: str, is_package: bool) -> list[Import]:
    """The Ember modules ``source`` imports at run time, one entry per imported module."""
    out: list[Import] = []
    stmts = sorted(_walk_runtime(ast.parse(source)), key=lambda s: (s.lineno, s.col_offset))
    for stmt in stmts:
        if isinstance(stmt, ast.Import):
            targets = [a.name for a in stmt.names]
        else:
            base = stmt.module or ""
            if stmt.level:
                anchor = importer.split(".")
                anchor = anchor[: len(anchor) - stmt.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            # `from ember.ops import registry` imports a module; `from ember import build`
            # imports the package ember itself
            targets = [f"{base}.{a.name}" if _is_module(f"{base}.{a.name}") else base
                       for a in stmt.names]
        for t in dict.fromkeys(targets):
            if t == TOP or t.startswith(TOP + "."):
                out.append(Import(path, stmt.lineno, importer, t))
    return out


def all_imports() -> list[Import]:
    found: list[Import] = []
    for p in sorted(PKG.rglob("*.py")):
        found += imports_of(p.read_text(), module_name(p), p.relative_to(ROOT).as_posix(),
                            p.name == "__init__.py")
    return found


def _member(module: str) -> str | None:
    """``ember.ir.graph`` -> ``ir``; ``ember`` -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def violations(imports: list[Import]) -> list[Import]:
    bad = []
    for imp in imports:
        src, dst = _member(imp.importer), _member(imp.imported)
        if src is None or src == dst:
            continue
        if dst is None:
            if src in NO_TOP:
                bad.append(imp)
        elif dst in forbidden_members(src):
            bad.append(imp)
    return bad


# ---- the checker itself ----------------------------------------------------------------------

def test_checker_resolves_imports():
    src = ("import ember\n"
           "from ember import build, errors\n"
           "from ..ops import registry\n"
           "from . import printer\n"
           "def f():\n"
           "    from ember.backends.cpu import CpuBackend\n"
           "if TYPE_CHECKING:\n"
           "    from ember.runtime.engine import Engine\n"
           "else:\n"
           "    import ember.plan.config\n")
    got = [(i.line, i.imported) for i in imports_of(src, "ember.ir.verifier", "x.py", False)]
    assert got == [(1, "ember"), (2, "ember"), (2, "ember.errors"), (3, "ember.ops.registry"),
                   (4, "ember.ir.printer"), (6, "ember.backends.cpu"), (10, "ember.plan.config")]


def test_checker_applies_the_rule():
    def imp(a: str, b: str) -> Import:
        return Import("x.py", 1, a, b)

    ok = [imp("ember.ir.graph", "ember.errors"), imp("ember.ops.conv", "ember.plan.config"),
          imp("ember.passes.fold", "ember.backends.cpu"), imp("ember.tools.bench", "ember"),
          imp("ember.backends.cuda.exec.program", "ember.backends.base"), imp("ember", "ember.builder")]
    bad = [imp("ember.ir.verifier", "ember.ops.registry"), imp("ember.plan.plan", "ember.runtime"),
           imp("ember.ops.conv", "ember.backends.cpu"), imp("ember.runtime.engine", "ember"),
           imp("ember.backends.cpu", "ember.passes.fold"), imp("ember.tools.demo", "ember.cli")]
    assert violations(ok + bad) == bad


def test_rule_names_every_member():
    """A new top-level package needs a row in the rule (and in the import-linter contracts)."""
    # onnx_backend: ONNX's backend interface over the public API (``import ember``), a sibling of cli
    known = set(ALLOWED_ONLY) | set(FORBIDDEN) | LEAVES | {"zoo", "cli", "__main__", "onnx_backend"}
    assert set(members()) <= known, f"not in the layering rule: {sorted(set(members()) - known)}"
    for names in [*ALLOWED_ONLY.values(), *FORBIDDEN.values()]:
        assert names <= set(members()), sorted(names - set(members()))


def test_importlinter_contracts_match_the_rule():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert config["root_packages"] == ["ember"]
    assert config["exclude_type_checking_imports"] is True
    contracts = {c["id"]: c for c in config["contracts"]}
    for src in [*ALLOWED_ONLY, *FORBIDDEN]:
        c = contracts.pop(f"layer-{src}")
        assert c["type"] == "forbidden" and c["source_modules"] == [f"ember.{src}"]
        assert set(c["forbidden_modules"]) == {f"ember.{m}" for m in forbidden_members(src)}, src
        assert not c.get("ignore_imports"), f"layer-{src} ignores imports; fix them instead"
    c = contracts.pop("passes-cpu-backend-only")  # constant folding's arrow is to the CPU backend alone
    assert c["source_modules"] == ["ember.passes"] and c["forbidden_modules"] == ["ember.backends.cuda"]
    c = contracts.pop("no-top-package")
    assert c["as_packages"] is False and c["forbidden_modules"] == [TOP]
    assert c["allow_indirect_imports"] is True
    assert set(c["source_modules"]) == {e for m in NO_TOP for e in (f"ember.{m}", f"ember.{m}.**")}
    assert not contracts, f"contracts the rule does not have: {sorted(contracts)}"


# ---- the rule on the package -----------------------------------------------------------------

def test_imports_follow_the_layering():
    bad = violations(all_imports())
    assert not bad, (f"{len(bad)} imports break the layering of DESIGN.md "
                     "(lower row -> higher row):\n" + "\n".join(map(str, bad)))
