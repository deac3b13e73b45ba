"""The import arrows of the house: the rooms import one way, and no modules import each other in a circle.

Why: ARCHITECTURE.md says the core (`compiler/`, package `mdoc`) never imports `passes/` or
`targets/` by name (it reaches them through the `mdoc.passes` / `mdoc.targets` entry-point
registries), passes import only the core, targets import the core and TVM but never the CLI,
and tooling (`tooling/`, `mdoc.tooling`: conformance, onnx Backend, emulation, benchmarks)
may import anything while nothing imports it.  Reading the imports is cheap, so the rule is a
test rather than a review comment.

What counts: every `import` / `from ... import` statement of the mdoc namespace, read with `ast`.

* Wrong-way arrows: all of them, module level, inside functions and under `if TYPE_CHECKING:`.
* Cycles: module-level and function-level imports (moving an import into a function hides a
  cycle from the interpreter, it does not remove the two modules' dependence on each other);
  not `if TYPE_CHECKING:` imports, which only name types for annotations and never run.

An edge goes to the module an import names: `from pkg import name` is an edge to `pkg.name`
when that is a module, else to `pkg`; importing `a.b.c` is not counted as importing `a` and
`a.b` (their `__init__` runs, but what an `__init__` re-exports is not a design dependency).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import networkx as nx
import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]

# room -> rooms it must not import
FORBIDDEN = {
    "compiler": {"passes", "targets", "tooling", "serving"},
    "passes": {"targets", "tooling", "cli", "serving"},
    "targets": {"tooling", "cli", "serving"},
    "models": {"passes", "targets", "tooling", "cli", "serving"},
}


def _package_dirs() -> dict[str, Path]:
    """Import name -> folder, from pyproject's package-dir (plus `mdoc.tooling` when present)."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    dirs = {name: ROOT / folder for name, folder in meta["tool"]["setuptools"]["package-dir"].items()}
    if (ROOT / "tooling").is_dir():
        dirs.setdefault("mdoc.tooling", ROOT / "tooling")
    return dirs


@lru_cache(maxsize=1)
def _modules() -> dict[str, Path]:
    """Every module of the mdoc namespace: dotted name -> file."""
    dirs = _package_dirs()
    mods: dict[str, Path] = {}
    for pkg, folder in dirs.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("").parts
            if rel[-1] == "__init__":
                rel = rel[:-1]
            name = ".".join((pkg, *rel))
            assert name not in mods, f"{path} and {mods[name]} are both module {name}"
            mods[name] = path
    return mods


def room(module: str) -> str:
    """compiler | passes | targets | models | tooling | serving (and cli: a part of the core no room below may import)."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in ("passes", "targets", "models", "tooling", "serving"):
        return parts[1]
    return "compiler"


def _in_room(module: str, name: str) -> bool:
    if name == "cli":
        return module == "mdoc.cli" or module.startswith("mdoc.cli.")
    return room(module) == name


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int
    where: str  # "module", "function" (inside a def or lambda) or "typing" (under `if TYPE_CHECKING:`)


def _resolve(source: str, is_package: bool, level: int, module: str | None) -> str:
    if level == 0:
        return module or ""
    base = source.split(".") if is_package else source.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


class _Collector(ast.NodeVisitor):
    def __init__(self, source: str, is_package: bool, known: set[str]):
        self.source, self.is_package, self.known = source, is_package, known
        self.found: list[Import] = []
        self._where = ["module"]

    def _add(self, target: str, node: ast.AST) -> None:
        if target == "mdoc" or target.startswith("mdoc."):
            while target not in self.known and "." in target:
                target = target.rsplit(".", 1)[0]
            if target != self.source:
                self.found.append(Import(self.source, target, node.lineno, self._where[-1]))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = _resolve(self.source, self.is_package, node.level, node.module)
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            self._add(sub if sub in self.known else base, node)

    def _inside(self, where: str, node: ast.AST) -> None:
        self._where.append("typing" if self._where[-1] == "typing" else where)
        self.generic_visit(node)
        self._where.pop()

    def visit_FunctionDef(self, node: ast.AST) -> None:
        self._inside("function", node)

    visit_AsyncFunctionDef = visit_Lambda = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        if ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            self._inside("typing", node)
        else:
            self.generic_visit(node)


def imports() -> list[Import]:
    mods = _modules()
    known = set(mods)
    found: list[Import] = []
    for name, path in mods.items():
        c = _Collector(name, path.name == "__init__.py", known)
        c.visit(ast.parse(path.read_text(), str(path)))
        found += c.found
    return found


def _where(imp: Import) -> str:
    path = _modules()[imp.source].relative_to(ROOT)
    where = {"module": "", "function": " (inside a function)", "typing": " (under TYPE_CHECKING)"}[imp.where]
    return f"{path}:{imp.line}: {imp.source} imports {imp.target}{where}"


def wrong_way(imp: Import) -> str | None:
    """Why `imp` points against the flow, or None."""
    src = room(imp.source)
    for forbidden in sorted(FORBIDDEN.get(src, ())):
        if _in_room(imp.target, forbidden) and not _in_room(imp.source, forbidden):
            return f"{src}/ must not import {forbidden}/"
    return None


def cycles(found: list[Import]) -> list[list[str]]:
    """Every simple cycle of the executed imports, each rotated to start at its smallest module."""
    g = nx.DiGraph((i.source, i.target) for i in found if i.where != "typing")
    loops = []
    for c in nx.simple_cycles(g):
        k = c.index(min(c))
        loops.append(c[k:] + c[:k])
    return sorted(loops)


def test_module_map_covers_the_rooms():
    mods = _modules()
    assert "mdoc.ir" in mods and "mdoc.passes" in mods and "mdoc.targets.relax.lower" in mods
    assert room("mdoc.targets.relax.lower") == "targets" and room("mdoc.cli.group") == "compiler"
    assert not any(m.startswith("mdoc.passes.passes") or m.startswith("mdoc.compiler") for m in mods)


def test_no_arrow_points_the_wrong_way():
    bad = list(dict.fromkeys(f"{_where(i)}: {why}" for i in imports() if (why := wrong_way(i))))
    assert not bad, "imports against the flow (see ARCHITECTURE.md, 'The rooms'):\n  " + "\n  ".join(bad)


def test_no_import_cycle():
    found = imports()
    loops = cycles(found)
    first = {}
    for i in found:
        if i.where != "typing":
            first.setdefault((i.source, i.target), i)
    lines = []
    for loop in loops:
        steps = zip(loop, loop[1:] + loop[:1])
        lines.append(" -> ".join(loop + loop[:1]) + "".join(f"\n    {_where(first[s])}" for s in steps))
    assert not loops, f"{len(loops)} import cycle(s) among modules:\n  " + "\n  ".join(lines)


def test_the_checker_sees_a_wrong_arrow_and_a_cycle():
    fake = [Import("mdoc.ir", "mdoc.targets.presets", 3, "function"),
            Import("mdoc.targets.b", "mdoc.targets.a", 1, "module"),
            Import("mdoc.targets.a", "mdoc.targets.b", 1, "function"),
            Import("mdoc.targets.c", "mdoc.cli.group", 1, "typing"),
            Import("mdoc.targets.c", "mdoc.targets.a", 1, "module"),
            Import("mdoc.targets.a", "mdoc.targets.c", 1, "typing")]
    assert [wrong_way(i) for i in fake] == ["compiler/ must not import targets/", None, None,
                                            "targets/ must not import cli/", None, None]
    assert cycles(fake) == [["mdoc.targets.a", "mdoc.targets.b"]]
