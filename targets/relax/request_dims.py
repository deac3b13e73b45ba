"""How a kernel request names the dims of its operands' Relax shapes (shared by every CPU strategy module)."""

from __future__ import annotations

import tvm_ffi

from .context import is_static


def request_dims(*shapes) -> list[tuple]:
    """Relax shapes as a kernel request states them: ints, and a name for each distinct
    symbolic dim, shared across the shapes (the kernel gets a run-time extent there; the call
    binds it from the argument's shape; equal dims keep one name, so the kernel knows them equal)."""
    names: list = []

    def name(d) -> str:
        for i, seen in enumerate(names):
            if tvm_ffi.structural_equal(seen, d):
                return f"d{i}"
        names.append(d)
        return f"d{len(names) - 1}"

    return [tuple(int(d) if is_static(d) else name(d) for d in shape) for shape in shapes]
