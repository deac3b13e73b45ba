"""The rooms stay acyclic: the compiler (compiler/, passes/, targets/) never imports mdoc.tooling.

Tooling (conformance runner, onnx Backend, emulation) imports the compiler; an import the
other way would make the compiler depend on its own test harness.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPILER_ROOMS = ("compiler", "passes", "targets")


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def test_compiler_never_imports_tooling():
    offenders = [f"{path.relative_to(ROOT)}:{line}: imports {module}"
                 for room in COMPILER_ROOMS for path in sorted((ROOT / room).rglob("*.py"))
                 for line, module in _imported_modules(path)
                 if module == "mdoc.tooling" or module.startswith("mdoc.tooling.")]
    assert not offenders, "\n".join(offenders)

