"""Binding symbolic input dims to sizes before compilation.

Hand-scheduled kernels need static shapes, and most deployments run one batch
size, so `mdoc compile` fixes every symbolic input dim (to the size given with
`--dim NAME=SIZE`, 1 otherwise) and lets shape inference and constant folding
carry the sizes through the graph.
"""

from __future__ import annotations

from .errors import MdocError
from .ir import Model
from .types import TensorType


def bind_dims(model: Model, dims: dict[str, int] | None = None, default: int = 1) -> dict[str, int]:
    """Replace symbolic and unknown dims of the graph inputs; returns the binding used."""
    dims = dict(dims or {})
    seen = set()
    for v in model.graph.inputs:
        t = v.type
        if not isinstance(t, TensorType) or t.shape is None:
            raise MdocError(f"input '{v.name}' has unknown rank ({t}); mdoc cannot compile it")
        shape = []
        for d in t.shape:
            if isinstance(d, str):
                seen.add(d)
                d = dims.setdefault(d, default)
            elif d is None:
                d = default
            shape.append(d)
        v.type = TensorType(t.dtype, tuple(shape))
    unknown = set(dims) - seen
    if unknown:
        raise MdocError(f"--dim names {', '.join(sorted(unknown))}, which no input uses "
                        f"(symbolic dims: {', '.join(sorted(seen)) or 'none'})")
    return {k: v for k, v in dims.items() if k in seen}
