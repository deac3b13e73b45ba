"""fuse-quantized: QDQ around a Conv / MatMul / Gemm ==> `mdoc.qconv` / `mdoc.qmatmul` (integer products).

A QDQ model (mdoc quantize, onnxruntime's quantize_static, other tools) says
"dequantize the int8 tensors, compute in float, quantize the result". These rules say
instead which products compute in integers, with everything around them fused:

    Conv(DQ(x), DQ(w), b?)              ==> mdoc.qconv(x, xs, xz, w, ws, wz, b)            (qconv)
    MatMul(DQ(a), DQ(w))                ==> mdoc.qmatmul(a, as, az, w, ws, wz)             (qmatmul)
    Gemm(DQ(a), DQ(w), c?)              ==> mdoc.qmatmul(a, ..., w or w^T, ..., c)         (qgemm)
    Add(q-product, bias vector)         ==> the product's bias                            (qmatmul-bias)
    Add(q-product, r)                   ==> the product's residual                        (q-residual)
    act(q-product)                      ==> the product's activation                      (q-activation)
    QuantizeLinear(q-product, ys, yz)   ==> the product requantized to ys / yz            (q-requantize)

and the integer ops of ONNX and onnxruntime import onto the same two ops:

    QLinearConv, QLinearMatMul                                        (qlinear-conv, qlinear-matmul)
    Mul(Cast(MatMulInteger(a, w, az, wz)), Mul(as, ws))               (matmul-integer: quantize_dynamic's
                                                                       form, and mdoc quantize --dynamic's)

What the integer kernels need is what the rules check: x (a) uint8 or int8 with one scale
and zero point, w an int8 constant with one scale or one per output channel, biases float32
constants (an int32 bias DequantizeLinear'd, as onnxruntime writes it, is dequantized here).
A float graph has no DequantizeLinear and none of these ops, so nothing here fires on it.
-O2 and -O3 run the pass before the first fold-constants (which would dequantize the
weights into float constants) and again before fuse-epilogue.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mdoc.activations import ACTIVATION_OPS
from mdoc.pass_manager import register_pass
from mdoc.quantized_ops import BIAS, QUANTIZED_PRODUCTS, RESIDUAL, Y_SCALE, applied_from_attrs
from mdoc.rewrite import RewritePass, Rule, rewrite_rule

from .fuse_epilogue import activation_attrs, residual_refusal, same_shape
from .fusion_util import shape_of

_CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")
_INT8 = (np.dtype(np.uint8), np.dtype(np.int8))


# -- operands ------------------------------------------------------------------------------
def _dtype(v):
    return None if v is None or v.type is None or not hasattr(v.type, "dtype") else v.type.dtype.numpy


def _scalar(v) -> bool:
    """A per-tensor scale or zero point: one element (constant or computed)."""
    shape = shape_of(v)
    return v is None or (shape is not None and int(np.prod(shape, dtype=np.int64)) == 1)


def _activation_check(m, dq: str) -> str | None:
    """Why DequantizeLinear `dq` does not give a quantized activation to an integer kernel."""
    node = m.node(dq)
    if _dtype(node.input(0)) not in _INT8:
        return f"{dq}'s input is not uint8 or int8"
    if not (_scalar(node.input(1)) and _scalar(node.input(2))):
        return f"{dq} is per axis; the integer kernels take one activation scale and zero point"
    return None


def _weight_check(m, dq: str, axis: int) -> str | None:
    """Why DequantizeLinear `dq` is not an int8 constant weight, per tensor or per channel along `axis`."""
    node = m.node(dq)
    w, scale, zero = node.input(0), node.input(1), node.input(2)
    if w.const_value is None or w.const_value.dtype != np.int8:
        return f"{dq}'s input is not an int8 constant"
    if scale.const_value is None or (zero is not None and zero.const_value is None):
        return f"{dq}'s scale or zero point is not a constant"
    if node.attrs.get("block_size", 0):
        return f"{dq} is blocked (block_size); the integer kernels take per-channel weights"
    size, channels = scale.const_value.size, w.const_value.shape[axis]
    if size != 1 and (size != channels or int(node.attrs.get("axis", 1)) % w.const_value.ndim != axis):
        return f"{dq}'s scale runs along another axis than the output channels (axis {axis})"
    return None


def _float_vector(v, n: int) -> np.ndarray | None:
    """A bias operand as a float32 [n] vector: a float constant, or DequantizeLinear of an int32 constant."""
    if v is None:
        return None
    if v.const_value is not None:
        array = np.asarray(v.const_value)
    else:
        p = v.producer()
        if p is None or p.op != "onnx.DequantizeLinear" or any(i is not None and i.const_value is None
                                                               for i in p.inputs):
            return None
        q, s = np.asarray(p.input(0).const_value, np.float64), np.asarray(p.input(1).const_value, np.float64)
        z = np.asarray(p.input(2).const_value, np.float64) if p.input(2) is not None else 0.0
        array = (q - z) * s
    if array.dtype.kind != "f" and v.const_value is not None:
        return None
    if array.size != n or any(d != 1 for d in array.shape[:-1]):
        return None
    return np.ascontiguousarray(array.reshape(n), np.float32)


def _operands(m, dqx: str, dqw: str) -> list:
    x, w = m.node(dqx), m.node(dqw)
    return [x.input(0), x.input(1), x.input(2), w.input(0), w.input(1), w.input(2)]


# -- the products --------------------------------------------------------------------------
def _dq(op, name: str, q, s, z):
    return op.DequantizeLinear(q, s, op.optional(z), _name=name, _keep=True)


@rewrite_rule("qconv")
class QConv(Rule):
    """Conv(DQ(x), DQ(w), b?) ==> mdoc.qconv(x, xs, xz, w, ws, wz, b)."""

    def pattern(self, op, xq, xs, xz, wq, ws, wz, b):
        return op.Conv(_dq(op, "dqx", xq, xs, xz), _dq(op, "dqw", wq, ws, wz), op.optional(b), _name="product")

    def check(self, m):
        reason = _activation_check(m, "dqx") or _weight_check(m, "dqw", 0)
        if reason is None and m["b"] is not None and _float_vector(m["b"], shape_of(m["wq"])[0]) is None:
            reason = "the bias is not a float32 constant (or a dequantized int32 constant) per output channel"
        return reason

    def rewrite(self, op, m):
        bias = _float_vector(m["b"], shape_of(m["wq"])[0])
        attrs = {k: v for k, v in m.attrs("product").items() if k in _CONV_ATTRS}
        return op.call("mdoc.qconv", *_operands(m, "dqx", "dqw"), None if bias is None else op.constant(bias),
                       **attrs)


@rewrite_rule("qmatmul")
class QMatMul(Rule):
    """MatMul(DQ(a), DQ(w)) ==> mdoc.qmatmul(a, as, az, w, ws, wz), w a 2-D int8 constant."""

    def pattern(self, op, xq, xs, xz, wq, ws, wz):
        return op.MatMul(_dq(op, "dqx", xq, xs, xz), _dq(op, "dqw", wq, ws, wz), _name="product")

    def check(self, m):
        if m.const("wq") is None or m.const("wq").ndim != 2 or len(shape_of(m["xq"]) or ()) < 2:
            return "the weight is not a 2-D constant (or the activation has under 2 dims)"
        return _activation_check(m, "dqx") or _weight_check(m, "dqw", 1)

    def rewrite(self, op, m):
        return op.call("mdoc.qmatmul", *_operands(m, "dqx", "dqw"))


@rewrite_rule("qgemm")
class QGemm(Rule):
    """Gemm(DQ(a), DQ(w), c?) {alpha = beta = 1, transA = 0} ==> mdoc.qmatmul(a, ..., w (transposed for
    transB), ..., c)."""

    def pattern(self, op, xq, xs, xz, wq, ws, wz, c):
        return op.Gemm(_dq(op, "dqx", xq, xs, xz), _dq(op, "dqw", wq, ws, wz), op.optional(c), _name="product")

    def check(self, m):
        if m.attr("product", "transA", 0) or m.attr("product", "alpha", 1.0) != 1.0 \
                or m.attr("product", "beta", 1.0) != 1.0:
            return "transA, alpha or beta is not the default"
        if m.const("wq") is None or m.const("wq").ndim != 2:
            return "the weight is not a 2-D constant"
        axis = 0 if m.attr("product", "transB", 0) else 1
        reason = _activation_check(m, "dqx") or _weight_check(m, "dqw", axis)
        if reason is None and m["c"] is not None and _float_vector(m["c"], m.const("wq").shape[axis]) is None:
            reason = "C is not a float32 constant vector over the output columns"
        return reason

    def rewrite(self, op, m):
        x, xs, xz, w, ws, wz = _operands(m, "dqx", "dqw")
        if m.attr("product", "transB", 0):
            w = op.constant(np.ascontiguousarray(m.const("wq").T))
        n = shape_of(m.node("product").outputs[0])[-1]
        bias = _float_vector(m["c"], n)
        return op.call("mdoc.qmatmul", x, xs, xz, w, ws, wz, None if bias is None else op.constant(bias))


# -- the tail --------------------------------------------------------------------------------
def _stage_check(product, stage: str) -> str | None:
    """Why `stage` cannot join the quantized product's tail (the order: bias, residual, activation,
    requantization; each once)."""
    inputs = list(product.inputs) + [None] * 10
    have = {"bias": inputs[BIAS] is not None or product.op == "mdoc.qconv",
            "residual": inputs[RESIDUAL] is not None,
            "activation": applied_from_attrs(product.attrs) is not None,
            "requantize": inputs[Y_SCALE] is not None}
    order = ("bias", "residual", "activation", "requantize")
    later = [s for s in order[order.index(stage):] if have[s]]
    return f"{product.op} '{product.name}' already has its {later[0]}" if later else None


def _with(op, product, **changes):
    """The quantized product rebuilt with operands (bias, residual, y_scale, y_zero_point) or attributes set."""
    inputs = list(product.inputs) + [None] * (10 - len(product.inputs))
    attrs = dict(product.attrs)
    slots = {"bias": BIAS, "residual": RESIDUAL, "y_scale": Y_SCALE, "y_zero_point": Y_SCALE + 1}
    for key, value in changes.items():
        if key in slots:
            inputs[slots[key]] = value
        else:
            attrs[key] = value
    while inputs and inputs[-1] is None:
        inputs.pop()
    return op.call(product.op, *inputs, **attrs)


def _product(op):
    return op.call(QUANTIZED_PRODUCTS, _allow_other_inputs=True, _name="product")


class _QStage(Rule):
    stage = ""

    def check(self, m):
        return _stage_check(m.node("product"), self.stage) or self.check_stage(m)

    def check_stage(self, m) -> str | None:
        return None


@rewrite_rule("qmatmul-bias")
class QMatMulBias(_QStage):
    """Add(mdoc.qmatmul(...), bias) ==> mdoc.qmatmul(..., bias), bias a float32 constant over the last axis."""

    stage = "bias"
    commute = True

    def pattern(self, op, bias):
        return op.Add(op.call("mdoc.qmatmul", _allow_other_inputs=True, _name="product"), bias, _name="add")

    def check_stage(self, m):
        out = shape_of(m.node("product").outputs[0])
        if m.const("bias") is None or out is None or _float_vector(m["bias"], out[-1]) is None:
            return "the other operand is not a float32 constant vector over the last axis"
        if not same_shape(m.node("add").outputs[0], m.node("product").outputs[0]):
            return "the Add broadcasts"
        return None

    def rewrite(self, op, m):
        n = shape_of(m.node("product").outputs[0])[-1]
        return _with(op, m.node("product"), bias=op.constant(_float_vector(m["bias"], n)))


@rewrite_rule("q-residual")
class QResidual(_QStage):
    """Add(q-product, r) ==> q-product(..., residual=r), r computed earlier, of the result's shape."""

    stage = "residual"
    commute = True

    def pattern(self, op, r):
        return op.Add(_product(op), r)

    def check_stage(self, m):
        return residual_refusal(m, constant="the other operand is a constant")

    def rewrite(self, op, m):
        return _with(op, m.node("product"), residual=m["r"])


@rewrite_rule("q-activation")
class QActivation(_QStage):
    """act(q-product) ==> q-product {activation = act} (act: `mdoc.activations`)."""

    stage = "activation"

    def pattern(self, op):
        return op.call(ACTIVATION_OPS, _product(op), _name="act", _allow_other_inputs=True)

    def check_stage(self, m):
        attrs = activation_attrs(m)
        return attrs if isinstance(attrs, str) else None

    def rewrite(self, op, m):
        return _with(op, m.node("product"), **activation_attrs(m))


@rewrite_rule("q-requantize")
class QRequantize(_QStage):
    """QuantizeLinear(q-product, ys, yz) ==> q-product(..., y_scale=ys, y_zero_point=yz), per tensor."""

    stage = "requantize"

    def pattern(self, op, ys, yz):
        return op.QuantizeLinear(_product(op), ys, yz, _name="q")

    def check_stage(self, m):
        if m.const("ys") is None or m.const("yz") is None or m.const("ys").size != 1 or m.const("yz").size != 1:
            return "the scale and zero point are not constant scalars"
        if m.const("yz").dtype not in _INT8:
            return "the result is not uint8 or int8"
        if m.attr("q", "saturate", 1) != 1 or m.attr("q", "block_size", 0):
            return "QuantizeLinear has saturate=0 or a block size"
        return None

    def rewrite(self, op, m):
        return _with(op, m.node("product"), y_scale=m["ys"], y_zero_point=m["yz"])


# -- ONNX's integer ops ------------------------------------------------------------------------
@rewrite_rule("qlinear-conv")
class QLinearConv(Rule):
    """QLinearConv(x, xs, xz, w, ws, wz, ys, yz, B?) ==> mdoc.qconv(x, xs, xz, w, ws, wz, B * xs * ws, none, ys, yz)."""

    def pattern(self, op, x, xs, xz, w, ws, wz, ys, yz, b):
        return op.QLinearConv(x, xs, xz, w, ws, wz, ys, yz, op.optional(b), _name="product")

    def check(self, m):
        if m.const("w") is None or m.const("w").dtype != np.int8:
            return "the weight is not an int8 constant"
        if m.const("xs") is None or m.const("ws") is None or not _scalar(m["xz"]) or not _scalar(m["ys"]):
            return "the scales are not constants, or the activation's are per axis"
        if m["b"] is not None and m.const("b") is None:
            return "the bias is not a constant"
        return None

    def rewrite(self, op, m):
        bias = None
        if m["b"] is not None:
            scale = float(np.asarray(m.const("xs")).reshape(())) * np.asarray(m.const("ws"), np.float64).reshape(-1)
            bias = op.constant((np.asarray(m.const("b"), np.float64).reshape(-1) * scale).astype(np.float32))
        attrs = {k: v for k, v in m.attrs("product").items() if k in _CONV_ATTRS}
        return op.call("mdoc.qconv", m["x"], m["xs"], m["xz"], m["w"], m["ws"], m["wz"], bias, None, m["ys"], m["yz"],
                       **attrs)


@rewrite_rule("qlinear-matmul")
class QLinearMatMul(Rule):
    """QLinearMatMul(a, as, az, b, bs, bz, ys, yz) ==> mdoc.qmatmul(a, as, az, b, bs, bz, none, none, ys, yz),
    b a 2-D int8 constant."""

    def pattern(self, op, a, a_s, az, b, bs, bz, ys, yz):
        return op.QLinearMatMul(a, a_s, az, b, bs, bz, ys, yz, _name="product")

    def check(self, m):
        b = m.const("b")
        if b is None or b.dtype != np.int8 or b.ndim != 2:
            return "b is not a 2-D int8 constant"
        if not all(_scalar(m[k]) for k in ("a_s", "az", "ys", "yz")):
            return "a's or the result's scale is per axis"
        if m.const("bs") is None or m.const("bs").size not in (1, b.shape[1]):
            return "b's scale is not a constant per tensor or per column"
        return None

    def rewrite(self, op, m):
        return op.call("mdoc.qmatmul", m["a"], m["a_s"], m["az"], m["b"], m["bs"], m["bz"], None, None, m["ys"],
                       m["yz"])


@rewrite_rule("matmul-integer")
class MatMulInteger(Rule):
    """Mul(Cast(MatMulInteger(a, w, az, wz?)), Mul(as, ws)) ==> mdoc.qmatmul(a, as, az, w, ws, wz): onnxruntime's
    quantize_dynamic writes each MatMul so, with a, as, az from DynamicQuantizeLinear."""

    commute = True

    def pattern(self, op, a, w, az, wz, a_s, ws):
        acc = op.MatMulInteger(a, w, az, op.optional(wz), _name="product")
        return op.Mul(op.Cast(acc, _name="cast"), op.Mul(a_s, ws, _name="scales"))

    def check(self, m):
        w, ws = m.const("w"), m.const("ws")
        if w is None or w.dtype != np.int8 or w.ndim != 2:
            return "w is not a 2-D int8 constant"
        if ws is None or ws.size not in (1, w.shape[1]) or not _scalar(m["a_s"]) or not _scalar(m["az"]):
            return "the weight's scale is not a constant per tensor or per column, or a's is per axis"
        if m.attr("cast", "to") != 1:
            return "the Cast is not to float32"
        return None

    def rewrite(self, op, m):
        return op.call("mdoc.qmatmul", m["a"], m["a_s"], m["az"], m["w"], m["ws"], m["wz"])


@register_pass("fuse-quantized")
@dataclass(frozen=True)
class FuseQuantized(RewritePass):
    """QDQ Conv / MatMul / Gemm and ONNX's integer ops ==> mdoc.qconv / mdoc.qmatmul with their tail fused."""

    rule_names = (QConv, QMatMul, QGemm, QLinearConv, QLinearMatMul, MatMulInteger, QMatMulBias, QResidual,
                  QActivation, QRequantize)
