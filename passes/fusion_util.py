"""What the transformer fusions (fuse-layer-norm, fuse-gelu, fuse-attention, ...) check alike.

Exporters write their constants in float32 (sqrt(2) is 1.4142135381698608),
so constants are compared with a relative tolerance, never for equality.
"""

from __future__ import annotations

import numpy as np

from mdoc.rewrite import Match
from mdoc.types import TensorType


def scalar(m: Match, name: str) -> float | None:
    """The value of a one-element floating point constant bound to `name`, else None."""
    array = m.const(name)
    if array is None or np.asarray(array).size != 1 or not np.issubdtype(np.asarray(array).dtype, np.floating):
        return None
    return float(np.asarray(array).reshape(()))


def near(value: float | None, want: float, rel: float = 1e-4) -> bool:
    return value is not None and abs(value - want) <= rel * abs(want)


def shape_of(value) -> tuple | None:
    t = value.type if value is not None else None
    return tuple(t.shape) if isinstance(t, TensorType) and t.shape is not None else None


def float_tensor(value) -> str | None:
    """None when `value` is a floating point tensor of known rank, else why not."""
    t = value.type if value is not None else None
    if not isinstance(t, TensorType) or t.shape is None:
        return "its rank is unknown (run infer-shapes first)"
    if not t.dtype.is_float:
        return f"it is {t.dtype.text}, not a float"
    return None


def reduced_axes(m: Match, name: str, rank: int) -> list[int] | str:
    """The axes (non-negative, sorted) that the ReduceMean named `name` reduces with keepdims=1, or why
    it is not such a reduction (axes unknown, or keepdims=0)."""
    node = m.node(name)
    if not int(node.attrs.get("keepdims", 1)):
        return f"{node.op} '{node.name}' drops the reduced axes (keepdims=0)"
    axes = node.attrs.get("axes")
    if axes is None and node.input(1) is not None:
        axes = node.input(1).const_value
        if axes is None:
            return f"the axes of {node.op} '{node.name}' are computed at run time"
    if axes is None:
        return f"{node.op} '{node.name}' reduces every axis"
    return sorted(int(a) % rank for a in np.asarray(axes).reshape(-1))


def last_axis_vector(array: np.ndarray | None, length) -> np.ndarray | None:
    """`array` as a vector over the last axis of size `length` ([L], [1, L], ... or a scalar broadcast to L),
    else None."""
    if array is None or not isinstance(length, int):
        return None
    array = np.asarray(array)
    if array.size == 1:
        return np.full(length, array.reshape(()), array.dtype)
    if array.shape[-1:] != (length,) or any(d != 1 for d in array.shape[:-1]):
        return None
    return array.reshape(length)


def shape_operand(value) -> list | None:
    """The dims a Reshape's shape operand holds: ints for constant entries (0 and -1 keep their Reshape
    meaning), and for entries read from a tensor's shape at run time (Concat of
    Unsqueeze(Gather(Shape(t), i)), as exporters write with dynamic axes) that tensor's dim i from its
    type, a symbol where it is one. None when an entry is neither."""
    if value is None:
        return None
    array = value.const_value
    if array is not None:
        return [int(a) for a in np.asarray(array).reshape(-1)]
    node = value.producer()
    if node is None or node.op != "onnx.Concat":
        return None
    dims: list = []
    for piece in node.inputs:
        part = shape_operand(piece) if piece is not None and piece.const_value is not None else _shape_entry(piece)
        if part is None:
            return None
        dims += part
    return dims


def _shape_entry(value) -> list | None:
    """[t.shape[i]] for Unsqueeze(Gather(Shape(t), i)) (or a Gather of one index given as [i]), else None."""
    node = value.producer() if value is not None else None
    if node is not None and node.op == "onnx.Unsqueeze":
        node = node.inputs[0].producer()
    if node is None or node.op != "onnx.Gather" or int(node.attrs.get("axis", 0)) != 0:
        return None
    index = node.input(1).const_value if node.input(1) is not None else None
    shape_node = node.inputs[0].producer()
    if index is None or np.asarray(index).size != 1 or shape_node is None or shape_node.op != "onnx.Shape":
        return None
    if shape_node.attrs.get("start", 0) or "end" in shape_node.attrs:
        return None
    dims = shape_of(shape_node.inputs[0])
    i = int(np.asarray(index).reshape(()))
    if dims is None or not -len(dims) <= i < len(dims):
        return None
    return [dims[i]]
