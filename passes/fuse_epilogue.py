"""fuse-epilogue: the elementwise tail of a Conv or MatMul ==> `mdoc.conv` / `mdoc.matmul` carrying it.

A hand-scheduled kernel applies its tail on the register tile before the store, one
pass over the output fewer per tail op. Each rule absorbs one stage into the product,
in the order the kernels apply them, each stage at most once:

    Conv    -> + residual -> activation                       (conv-residual, conv-activation)
    MatMul  -> * scale -> + bias -> + residual -> activation  (matmul-scale, matmul-divide, matmul-bias,
                                                               matmul-residual, matmul-activation)

    scale       Mul / Div by a constant float32 scalar (attention's 1 / sqrt(d))
    bias        Add of a constant broadcast along the last axis only ([N], [1, N], ...)
    residual    Add of a computed tensor of exactly the result's shape, computed before the
                product (the fused kernel reads it when the product would have run)
    activation  one of `mdoc.activations` (Relu, Clip with constant bounds, mdoc.gelu, ...)

A stage that comes too late (a bias after the residual) or twice stops the chain, and so
does a value read twice or returned by the graph (the driver keeps such nodes). Only
float32 products fuse: the kernels compute in float32. Run it last (after fuse-conv-bn,
fuse-conv-affine and the transformer fusions, whose patterns read onnx.Conv, onnx.MatMul and
the Adds); -O2 and -O3 do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mdoc.activations import ACTIVATION_OPS, activation_of, applied_from_attrs
from mdoc.pass_manager import register_pass
from mdoc.rewrite import RewritePass, Rule, rewrite_rule
from mdoc.types import DType, TensorType

from .fusion_util import shape_of

CONVS = ("onnx.Conv", "mdoc.conv")
MATMULS = ("onnx.MatMul", "mdoc.matmul")
_STAGES = ("scale", "bias", "residual", "activation")
_CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


# -- what the product already carries ------------------------------------------------------
def _stages(node) -> set[str]:
    """The stages an mdoc.conv / mdoc.matmul already fused (none for the ONNX op)."""
    if not node.op.startswith("mdoc."):
        return set()
    have = {"scale"} if "scale" in node.attrs else set()
    if node.op == "mdoc.matmul" and node.input(2) is not None:
        have.add("bias")
    if node.input(3) is not None:
        have.add("residual")
    if applied_from_attrs(node.attrs) is not None:
        have.add("activation")
    return have


def _too_late(node, stage: str) -> str | None:
    """Why `stage` cannot join `node`'s tail: it already has that stage or a later one."""
    later = [s for s in _STAGES[_STAGES.index(stage):] if s in _stages(node)]
    return f"{node.op} '{node.name}' already fused its {later[0]}" if later else None


def _f32_result(node) -> str | None:
    t = node.outputs[0].type
    if not isinstance(t, TensorType) or t.shape is None:
        return f"the result of {node.op} '{node.name}' has no known shape (run infer-shapes first)"
    if t.dtype is not DType.F32:
        return f"{node.op} '{node.name}' computes {t.dtype.text}; the fused kernels are float32"
    return None


def same_shape(value, like) -> bool:
    t = value.type if value is not None else None
    return (isinstance(t, TensorType) and t.dtype is DType.F32 and t.shape is not None
            and shape_of(value) == shape_of(like))


def _scalar_f32(array) -> float | None:
    if array is None or np.asarray(array).size != 1 or np.asarray(array).dtype != np.float32:
        return None
    return float(np.asarray(array).reshape(()))


def computed_after(graph, value, product) -> bool:
    """Whether `value` is computed after `product` in the graph's order."""
    producer = value.producer()
    if producer is None or producer.graph is not graph:
        return False
    for node in graph:
        if node is product:
            return True
        if node is producer:
            return False
    return False


def _fused(op, m, product, **changes):
    """The product rebuilt as its mdoc op with `changes` (operands by name, attributes) applied."""
    family = "mdoc.conv" if product.op in CONVS else "mdoc.matmul"
    inputs = list(product.inputs) + [None] * (4 - len(product.inputs))
    if family == "mdoc.conv":
        attrs = {k: v for k, v in product.attrs.items() if k in _CONV_ATTRS or k.startswith("activation")}
    else:
        attrs = dict(product.attrs)
    for key, value in changes.items():
        if key == "bias":
            inputs[2] = value
        elif key == "residual":
            inputs[3] = value
        else:
            attrs[key] = value
    while inputs and inputs[-1] is None:
        inputs.pop()
    return op.call(family, *inputs, **attrs)


def activation_attrs(m) -> dict | str:
    act = activation_of(m.node("act"))
    if isinstance(act, str):
        return act
    return {"activation": act.name, **({"activation_params": act.params} if act.params else {})}


class _Stage(Rule):
    """One stage joining a product's tail; subclasses give the pattern and what the stage adds."""

    stage = ""

    def check_stage(self, m) -> str | None:
        return None

    def check(self, m):
        product = m.node("product")
        return _f32_result(product) or _too_late(product, self.stage) or self.check_stage(m)


# -- conv ----------------------------------------------------------------------------------
@rewrite_rule("conv-residual")
class ConvResidual(_Stage):
    """Add(Conv(x, w, b?), r) ==> mdoc.conv(x, w, b?, r)."""

    stage = "residual"
    commute = True

    def pattern(self, op, x, w, b, r):
        return op.Add(op.call(CONVS, x, w, op.optional(b), _name="product", _allow_other_inputs=True), r)

    def check_stage(self, m):
        return residual_refusal(m)

    def rewrite(self, op, m):
        return _fused(op, m, m.node("product"), residual=m["r"])


@rewrite_rule("conv-activation")
class ConvActivation(_Stage):
    """act(Conv(x, w, b?)) ==> mdoc.conv(x, w, b?) {activation = act} (act: `mdoc.activations`)."""

    stage = "activation"

    def pattern(self, op, x, w, b):
        conv = op.call(CONVS, x, w, op.optional(b), _name="product", _allow_other_inputs=True)
        return op.call(ACTIVATION_OPS, conv, _name="act", _allow_other_inputs=True)

    def check_stage(self, m):
        attrs = activation_attrs(m)
        return attrs if isinstance(attrs, str) else None

    def rewrite(self, op, m):
        return _fused(op, m, m.node("product"), **activation_attrs(m))


# -- matmul --------------------------------------------------------------------------------
@rewrite_rule("matmul-scale")
class MatMulScale(_Stage):
    """Mul(MatMul(a, b), c) ==> mdoc.matmul(a, b) {scale = c}, c a float32 scalar constant."""

    stage = "scale"
    commute = True

    def pattern(self, op, a, b, c):
        return op.Mul(op.MatMul(a, b, _name="product"), c, _name="mul")

    def check_stage(self, m):
        if _scalar_f32(m.const("c")) is None:
            return "the other factor is not a constant float32 scalar"
        return None if same_shape(m.node("mul").outputs[0], m.node("product").outputs[0]) else "the Mul broadcasts"

    def rewrite(self, op, m):
        return _fused(op, m, m.node("product"), scale=_scalar_f32(m.const("c")))


@rewrite_rule("matmul-divide")
class MatMulDivide(_Stage):
    """Div(MatMul(a, b), c) ==> mdoc.matmul(a, b) {scale = 1 / c}, c a nonzero float32 scalar constant."""

    stage = "scale"

    def pattern(self, op, a, b, c):
        return op.Div(op.MatMul(a, b, _name="product"), c, _name="div")

    def check_stage(self, m):
        c = _scalar_f32(m.const("c"))
        if c is None or c == 0.0:
            return "the divisor is not a nonzero constant float32 scalar"
        return None if same_shape(m.node("div").outputs[0], m.node("product").outputs[0]) else "the Div broadcasts"

    def rewrite(self, op, m):
        return _fused(op, m, m.node("product"), scale=1.0 / _scalar_f32(m.const("c")))


@rewrite_rule("matmul-bias")
class MatMulBias(_Stage):
    """Add(MatMul(a, b), bias) ==> mdoc.matmul(a, b, bias), bias a constant along the last axis only."""

    stage = "bias"
    commute = True

    def pattern(self, op, a, b, bias):
        return op.Add(op.call(MATMULS, a, b, _name="product", _allow_other_inputs=True), bias, _name="add")

    def check_stage(self, m):
        return None if isinstance(self._vector(m), np.ndarray) else self._vector(m)

    @staticmethod
    def _vector(m) -> np.ndarray | str:
        array, out = m.const("bias"), shape_of(m.node("product").outputs[0])
        if array is None or np.asarray(array).dtype != np.float32:
            return "the other operand is not a float32 constant"
        array, n = np.asarray(array), out[-1] if out else None
        if (not out or array.ndim > len(out) or array.shape[-1:] != (n,) or any(d != 1 for d in array.shape[:-1])):
            return f"the constant has shape {list(array.shape)}, not a vector over the last axis ({n})"
        if not same_shape(m.node("add").outputs[0], m.node("product").outputs[0]):
            return "the Add broadcasts"
        return np.ascontiguousarray(array.reshape(n))

    def rewrite(self, op, m):
        return _fused(op, m, m.node("product"), bias=op.constant(self._vector(m)))


@rewrite_rule("matmul-residual")
class MatMulResidual(_Stage):
    """Add(MatMul(a, b), r) ==> mdoc.matmul(a, b, None, r), r computed, of the result's shape."""

    stage = "residual"
    commute = True

    def pattern(self, op, a, b, r):
        return op.Add(op.call(MATMULS, a, b, _name="product", _allow_other_inputs=True), r)

    def check_stage(self, m):
        return residual_refusal(m)

    def rewrite(self, op, m):
        return _fused(op, m, m.node("product"), residual=m["r"])


@rewrite_rule("matmul-activation")
class MatMulActivation(_Stage):
    """act(MatMul(a, b)) ==> mdoc.matmul(a, b) {activation = act} (act: `mdoc.activations`)."""

    stage = "activation"

    def pattern(self, op, a, b):
        product = op.call(MATMULS, a, b, _name="product", _allow_other_inputs=True)
        return op.call(ACTIVATION_OPS, product, _name="act", _allow_other_inputs=True)

    def check_stage(self, m):
        attrs = activation_attrs(m)
        return attrs if isinstance(attrs, str) else None

    def rewrite(self, op, m):
        return _fused(op, m, m.node("product"), **activation_attrs(m))


def residual_refusal(m, constant: str = "the other operand is a constant (a bias, if anything)") -> str | None:
    """Why the Add matched as `r` + product cannot join the product's tail as its residual, or
    None (also for the quantized products of fuse-quantized, with their own `constant` reason)."""
    r, product = m["r"], m.node("product")
    if r.const_value is not None:
        return constant
    if not same_shape(r, product.outputs[0]):
        return "the other operand's shape differs from the product's (the Add broadcasts)"
    if computed_after(m.graph, r, product):
        return f"the other operand is computed after {product.op} '{product.name}'"
    return None


@register_pass("fuse-epilogue")
@dataclass(frozen=True)
class FuseEpilogue(RewritePass):
    """Conv / MatMul and their elementwise tail ==> mdoc.conv / mdoc.matmul (scale, bias, residual, activation)."""

    rule_names = (ConvResidual, ConvActivation, MatMulScale, MatMulDivide, MatMulBias, MatMulResidual,
                  MatMulActivation)
