"""LayerNorm as exporters decompose it, found in the mdoc graph so one kernel can compute it.

Why: PyTorch exports LayerNorm (before opset 17, and often after) as nine primitive ops.
TVM fuses them into two reductions and an elementwise pass over the row; the
`cpu_kernels.layer_norm` kernel does it in one task per row, about 3x less time on
BERT's [128, 256] rows.

`match_layer_norm(ctx, node)` starts at the first ReduceMean and accepts

    mean = ReduceMean(x, axes=[-1], keepdims=1)
    d    = Sub(x, mean)
    v    = ReduceMean(Pow(d, 2), axes=[-1], keepdims=1)
    y    = Add(Mul(Div(d, Sqrt(Add(v, eps))), gamma), beta)

with eps a scalar constant and gamma, beta constant vectors over the last axis. Every
intermediate value must be used only inside the pattern and not be a graph output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mdoc.ir import Node, Value

if TYPE_CHECKING:  # pragma: no cover
    from .context import LowerCtx


@dataclass
class LayerNormMatch:
    x: Value
    gamma: np.ndarray  # [L]
    beta: np.ndarray  # [L]
    epsilon: float
    nodes: list[Node]  # every node of the pattern, the first ReduceMean included
    result: Value


def match_layer_norm(ctx: "LowerCtx", node: Node) -> LayerNormMatch | None:
    if not _is_last_axis_mean(ctx, node):
        return None
    x, mean = node.inputs[0], node.output
    sub = _only_user(ctx, mean, "onnx.Sub")
    if sub is None or sub.inputs[0] is not x or sub.inputs[1] is not mean:
        return None
    d = sub.output
    users = [n for n, _ in d.uses()]
    pow_ = next((n for n in users if n.op == "onnx.Pow" and n.inputs[0] is d and _scalar(n.inputs[1]) == 2.0), None)
    div = next((n for n in users if n.op == "onnx.Div" and n.inputs[0] is d), None)
    if len(users) != 2 or pow_ is None or div is None or _is_output(ctx, d):
        return None
    var = _only_user(ctx, pow_.output, "onnx.ReduceMean")
    if var is None or not _is_last_axis_mean(ctx, var):
        return None
    add_eps = _only_user(ctx, var.output, "onnx.Add")
    eps = _scalar(_other(add_eps, var.output)) if add_eps is not None else None
    sqrt = _only_user(ctx, add_eps.output, "onnx.Sqrt") if eps is not None else None
    if sqrt is None or _only_user(ctx, sqrt.output, "onnx.Div") is not div or div.inputs[1] is not sqrt.output:
        return None
    length = x.type.shape[-1]
    mul = _only_user(ctx, div.output, "onnx.Mul")
    gamma = _vector(_other(mul, div.output), length) if mul is not None else None
    add = _only_user(ctx, mul.output, "onnx.Add") if gamma is not None else None
    beta = _vector(_other(add, mul.output), length) if add is not None else None
    if beta is None:
        return None
    return LayerNormMatch(x, gamma, beta, eps, [node, sub, pow_, var, add_eps, sqrt, div, mul, add], add.output)


def _is_last_axis_mean(ctx, node: Node) -> bool:
    if node.op != "onnx.ReduceMean" or not int(node.attrs.get("keepdims", 1)):
        return False
    x = node.inputs[0]
    shape = getattr(x.type, "shape", None)
    if shape is None or not shape or not isinstance(shape[-1], int):
        return False
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        axes = node.inputs[1].const_value
    return axes is not None and [int(a) % len(shape) for a in np.asarray(axes).reshape(-1)] == [len(shape) - 1]


def _only_user(ctx, value: Value, op: str) -> Node | None:
    uses = value.uses()
    if len(uses) != 1 or _is_output(ctx, value) or uses[0][0].op != op:
        return None
    return uses[0][0]


def _is_output(ctx, value: Value) -> bool:
    return any(o is value for o in ctx.model.graph.outputs)


def _other(node: Node, value: Value) -> Value | None:
    a, b = (node.inputs + (None, None))[:2]
    return b if a is value else a if b is value else None


def _scalar(value: Value | None) -> float | None:
    array = value.const_value if value is not None else None
    if array is None or np.asarray(array).size != 1 or np.asarray(array).dtype != np.float32:
        return None
    return float(np.asarray(array).reshape(()))


def _vector(value: Value | None, length: int) -> np.ndarray | None:
    array = value.const_value if value is not None else None
    if array is None or np.asarray(array).dtype != np.float32:
        return None
    array = np.asarray(array)
    if array.shape[-1:] != (length,) or any(d != 1 for d in array.shape[:-1]):
        return None
    return np.ascontiguousarray(array.reshape(length))
