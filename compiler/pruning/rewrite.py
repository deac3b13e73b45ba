"""The rewrite of structured pruning: slice every weight, parameter and shape that the removed
channels touch, and give the values their new channel counts.

It reads the layouts of `groups.ChannelAnalysis` and a boolean per atom (kept or not); a node
none of whose channels change is left as it is. New constants replace the old operands of the
node being edited only (a constant two nodes share is never sliced under the other), and the
old ones are left to dce.
"""

from __future__ import annotations

import numpy as np

from ..ir import Node, Value
from ..types import TensorType
from .groups import ELEMENTWISE, UNARY, ChannelAnalysis, Layout


def apply_pruning(analysis: ChannelAnalysis, kept: np.ndarray, opset: int = 17) -> int:
    """Slice the graph to the atoms `kept` says stay; how many nodes changed (`opset`: how Split takes sizes)."""
    changed = 0
    for node in analysis.graph.nodes():
        rule = _RULES.get(node.op)
        if node.op == "onnx.Split" and opset < 13:
            rule = _split_attribute
        if rule is not None and rule(analysis, kept, node):
            changed += 1
    for value, layout in analysis.layouts.items():
        t = value.type
        if isinstance(t, TensorType) and t.shape is not None:
            shape = list(t.shape)
            shape[layout.axis] = len(layout.features(kept))
            value.type = TensorType(t.dtype, tuple(shape))
    return changed


def _positions(analysis: ChannelAnalysis, kept: np.ndarray, value: Value | None, axis: int | None = None):
    """The surviving indices along `value`'s channel axis, or None when nothing of it goes."""
    lay: Layout | None = analysis.layout(value)
    if lay is None or (axis is not None and lay.axis != axis):
        return None
    pos = lay.features(kept)
    return None if len(pos) == len(lay.ids) * lay.repeat else pos


def _replace(node: Node, i: int, array: np.ndarray) -> None:
    old = node.input(i)
    node.set_input(i, node.graph.constant(np.ascontiguousarray(array), name=old.name, before=node))


def _conv(a, kept, node) -> bool:
    w = node.input(1).const_value if node.input(1) is not None else None
    if w is None:
        return False
    group = int(node.attrs.get("group", 1))
    pin = _positions(a, kept, node.input(0), 1)
    pout = _positions(a, kept, node.output, 1)
    bias = node.input(2).const_value if node.input(2) is not None else None
    if group > 1:
        if group != w.shape[0] or pin is None:  # a grouped conv: its channels are frozen
            return False
        _replace(node, 1, w[pin])
        if bias is not None:
            _replace(node, 2, bias[pin])
        node.attrs["group"] = len(pin)
        return True
    if pin is None and pout is None:
        return False
    if pin is not None:
        w = w[:, pin]
    if pout is not None:
        w = w[pout]
        if bias is not None:
            _replace(node, 2, bias[pout])
    _replace(node, 1, w)
    return True


def _dense(a, kept, node) -> bool:
    w = node.input(1).const_value if node.input(1) is not None else None
    if w is None or w.ndim != 2:
        return False
    trans = node.op == "onnx.Gemm" and node.attrs.get("transB", 0)
    rank = len(node.output.type.shape) if isinstance(node.output.type, TensorType) and node.output.type.shape else 2
    pin = _positions(a, kept, node.input(0), rank - 1)
    pout = _positions(a, kept, node.output, rank - 1)
    if pin is None and pout is None:
        return False
    if pin is not None:
        w = w[:, pin] if trans else w[pin]
    if pout is not None:
        w = w[pout] if trans else w[:, pout]
        c = node.input(2).const_value if node.op == "onnx.Gemm" and node.input(2) is not None else None
        if c is not None and c.ndim and c.shape[-1] > 1:
            _replace(node, 2, c[..., pout])
    _replace(node, 1, w)
    return True


def _batch_norm(a, kept, node) -> bool:
    pos = _positions(a, kept, node.input(0), 1)
    if pos is None:
        return False
    for i in range(1, 5):
        _replace(node, i, node.input(i).const_value[pos])
    return True


def _elementwise(a, kept, node) -> bool:
    lay = a.layout(node.outputs[0])
    pos = _positions(a, kept, node.outputs[0])
    if pos is None:
        return False
    rank, width = len(node.outputs[0].type.shape), len(lay.ids) * lay.repeat
    changed = False
    for i, v in enumerate(node.inputs):
        c = v.const_value if v is not None and a.layout(v) is None else None
        k = lay.axis - (rank - c.ndim) if c is not None else -1
        if c is not None and k >= 0 and c.shape[k] == width:
            _replace(node, i, np.take(c, pos, axis=k))
            changed = True
    return changed


def _reshape(a, kept, node) -> bool:
    pos = _positions(a, kept, node.output, 1)
    if pos is None or node.op != "onnx.Reshape" or node.input(1).const_value[1] == -1:
        return False
    target = node.input(1).const_value.copy()
    target[1] = len(pos)
    _replace(node, 1, target)
    return True


def _split(a, kept, node) -> bool:
    """Split from opset 13: the sizes as an input (opset 18's num_outputs gives way to it)."""
    if _positions(a, kept, node.input(0)) is None:
        return False
    sizes = np.array([len(a.layout(o).features(kept)) for o in node.outputs], dtype=np.int64)
    node.attrs.pop("num_outputs", None)
    node.set_input(1, node.graph.constant(sizes, name=f"{node.name}.split", before=node))
    return True


def _split_attribute(a, kept, node) -> bool:
    """Split before opset 13: the sizes as the `split` attribute."""
    if _positions(a, kept, node.input(0)) is None:
        return False
    node.attrs["split"] = tuple(len(a.layout(o).features(kept)) for o in node.outputs)
    return True


def _attention(a, kept, node) -> bool:
    pos = _positions(a, kept, node.input(0), 2)
    if pos is None:
        return False
    dim = len(a.layout(node.input(0)).ids) // int(node.attrs["num_heads"])
    node.attrs["num_heads"] = len(pos) // dim
    return True


_RULES = {
    "onnx.Conv": _conv, "onnx.Gemm": _dense, "onnx.MatMul": _dense, "onnx.BatchNormalization": _batch_norm,
    "onnx.Reshape": _reshape, "onnx.Split": _split, "mdoc.attention": _attention,
    **{op: _elementwise for op in ELEMENTWISE | UNARY},
}
