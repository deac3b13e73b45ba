"""Which elementwise tail follows a matmul in the mdoc graph, so a kernel can fuse it.

Why: a hand-scheduled kernel (`targets/cpu_kernels`) applies its epilogue on the register
tile before the store, which saves a pass over the output per tail op. TVM's `FuseOps`
cannot do that for a `call_tir` to a scheduled PrimFunc, so the strategy looks ahead in
the mdoc graph while it lowers the matmul, and the lowering then skips the nodes it
absorbed (`LowerCtx.absorb`).

`match_tail` walks forward from the matmul's result through single-use values, taking at
most one of each, in the order the kernels apply them:

    scale       Mul / Div by a scalar constant            (attention's 1 / sqrt(d))
    bias        Add of a constant broadcast along the last axis only ([N], [1, N], ...)
    residual    Add of an already-lowered tensor of exactly the output's shape
    activation  Relu, Tanh, Sigmoid, mdoc.silu, Gelu (or mdoc.gelu without a bias), Clip with constant bounds,
                or the exported GELU
                x * 0.5 * (1 + erf(x / sqrt(2))) written as
                Mul(Mul(x, Add(Erf(Div(x, 1.414..)), 1)), 0.5) (Div may be Mul by 0.707..)

A value the graph returns, or one used twice (except x inside the GELU pattern), stops the walk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import sqrt
from typing import TYPE_CHECKING

import numpy as np
from tvm import relax

from mdoc.ir import Node, Value
from mdoc.types import DType, TensorType

from ..cpu_kernels import Epilogue

if TYPE_CHECKING:  # pragma: no cover
    from .context import LowerCtx

_STAGES = ("scale", "bias", "residual", "activation")
_SIMPLE_ACTIVATIONS = {"onnx.Relu": "relu", "onnx.Tanh": "tanh", "onnx.Sigmoid": "sigmoid", "mdoc.silu": "silu"}


@dataclass
class Tail:
    """The absorbed nodes (in graph order) and what the fused kernel needs for them."""

    result: Value  # the value the fused kernel computes
    epilogue: Epilogue = Epilogue()
    nodes: list[Node] = field(default_factory=list)
    bias: np.ndarray | None = None  # [N]
    residual: Value | None = None


def match_tail(ctx: "LowerCtx", value: Value, out_shape: tuple[int, ...],
               stages: tuple[str, ...] = _STAGES) -> Tail:
    """The longest tail after `value` (a float32 result of static `out_shape`) a kernel can fuse."""
    tail = Tail(value)
    fields: dict = {}
    allowed = [s for s in _STAGES if s in stages]
    while allowed:
        found = None
        for stage in allowed:
            found = _MATCHERS[stage](ctx, tail.result, out_shape)
            if found is not None:
                break
        if found is None:
            break
        nodes, result, extra = found
        fields.update(extra.pop("epilogue", {}))
        tail.bias = extra.get("bias", tail.bias)
        tail.residual = extra.get("residual", tail.residual)
        tail.nodes.extend(nodes)
        tail.result = result
        allowed = allowed[allowed.index(stage) + 1:]
    tail.epilogue = Epilogue(**fields)
    return tail


# -- one matcher per stage: (absorbed nodes, new result, extras) or None ----------------------


def _sole_user(ctx: "LowerCtx", value: Value) -> Node | None:
    uses = value.uses()
    if len(uses) != 1 or _is_output(ctx, value):
        return None
    return uses[0][0]


def _is_output(ctx: "LowerCtx", value: Value) -> bool:
    return any(o is value for o in ctx.model.graph.outputs)


def _other(node: Node, value: Value) -> Value | None:
    """The operand of a binary node that is not `value` (None if both are, or it is not binary)."""
    if len(node.inputs) != 2:
        return None
    a, b = node.inputs
    if a is value and b is not value:
        return b
    if b is value and a is not value:
        return a
    return None


def _scalar(value: Value | None) -> float | None:
    array = value.const_value if value is not None else None
    if array is None or np.asarray(array).size != 1 or np.asarray(array).dtype != np.float32:
        return None
    return float(np.asarray(array).reshape(()))


def _f32(value: Value, shape: tuple[int, ...]) -> bool:
    t = value.type
    return isinstance(t, TensorType) and t.dtype == DType.F32 and t.shape is not None and tuple(t.shape) == shape


def _scale(ctx, value, out_shape):
    node = _sole_user(ctx, value)
    if node is None or node.op not in ("onnx.Mul", "onnx.Div") or not _f32(node.output, out_shape):
        return None
    c = _scalar(_other(node, value))
    if c is None or (node.op == "onnx.Div" and (node.inputs[0] is not value or c == 0.0)):
        return None
    return [node], node.output, {"epilogue": {"scale": c if node.op == "onnx.Mul" else 1.0 / c}}


def _bias(ctx, value, out_shape):
    node = _sole_user(ctx, value)
    if node is None or node.op != "onnx.Add" or not _f32(node.output, out_shape):
        return None
    other = _other(node, value)
    array = other.const_value if other is not None else None
    if array is None or np.asarray(array).dtype != np.float32:
        return None
    array = np.asarray(array)
    n = out_shape[-1]
    if array.ndim > len(out_shape) or array.shape[-1:] != (n,) or any(d != 1 for d in array.shape[:-1]):
        return None
    return [node], node.output, {"bias": np.ascontiguousarray(array.reshape(n)), "epilogue": {"bias": True}}


def _residual(ctx, value, out_shape):
    node = _sole_user(ctx, value)
    if node is None or node.op != "onnx.Add" or not _f32(node.output, out_shape):
        return None
    other = _other(node, value)
    if other is None or other.const_value is not None or not _f32(other, out_shape):
        return None
    if not isinstance(ctx.lookup(other), relax.Expr):
        return None  # a residual not lowered yet (it comes later in the graph) cannot be read
    return [node], node.output, {"residual": other, "epilogue": {"residual": True}}


def _activation(ctx, value, out_shape):
    node = _sole_user(ctx, value)
    if node is None:
        return _gelu(ctx, value, out_shape)
    if node.op in _SIMPLE_ACTIVATIONS and node.inputs[0] is value:
        return [node], node.output, {"epilogue": {"activation": _SIMPLE_ACTIVATIONS[node.op]}}
    if node.op in ("onnx.Gelu", "mdoc.gelu") and node.inputs[0] is value and node.input(1) is None:
        mode = node.attrs.get("approximate", "none")
        mode = mode.decode() if isinstance(mode, bytes) else str(mode)
        if mode in ("none", "tanh"):
            return [node], node.output, {"epilogue": {"activation": "gelu" if mode == "none" else "gelu_tanh"}}
    if node.op == "onnx.Clip" and node.inputs[0] is value and len(node.inputs) == 3:
        lo, hi = _scalar(node.inputs[1]), _scalar(node.inputs[2])
        if lo is not None and hi is not None:
            return [node], node.output, {"epilogue": {"activation": "clip", "alpha": lo, "beta": hi}}
    return None


def _gelu(ctx, value, out_shape):
    uses = [n for n, _ in value.uses()]
    if len(uses) != 2 or _is_output(ctx, value):
        return None
    scaled = next((n for n in uses if n.op in ("onnx.Div", "onnx.Mul")
                   and _scalar(_other(n, value)) is not None), None)
    outer = next((n for n in uses if n is not scaled and n.op == "onnx.Mul"), None)
    if scaled is None or outer is None:
        return None
    c = _scalar(_other(scaled, value))
    factor = 1.0 / c if scaled.op == "onnx.Div" and c else c
    if scaled.op == "onnx.Div" and scaled.inputs[0] is not value or abs(factor - 1.0 / sqrt(2.0)) > 1e-6:
        return None
    erf = _sole_user(ctx, scaled.output)
    plus = _sole_user(ctx, erf.output) if erf is not None and erf.op == "onnx.Erf" else None
    if plus is None or plus.op != "onnx.Add" or _scalar(_other(plus, erf.output)) != 1.0:
        return None
    if _other(outer, value) is not plus.output or _sole_user(ctx, plus.output) is not outer:
        return None
    half = _sole_user(ctx, outer.output)
    if half is None or half.op != "onnx.Mul" or _scalar(_other(half, outer.output)) != 0.5:
        return None
    if not _f32(half.output, out_shape):
        return None
    return [scaled, erf, plus, outer, half], half.output, {"epilogue": {"activation": "gelu"}}


_MATCHERS = {"scale": _scale, "bias": _bias, "residual": _residual, "activation": _activation}
