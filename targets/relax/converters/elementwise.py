"""Elementwise ops: arithmetic, comparison, logic, unary math, activations, Clip, Where (Cast: cast.py).

Binary ops follow numpy broadcasting (ONNX opset >= 7); the legacy form of
opsets 1-6 (`broadcast=1` with `axis`) is handled by aligning the second
operand at `axis`. When every operand is a compile-time SymTensor (a shape
subgraph), the op is evaluated during lowering instead of emitted.
"""

from __future__ import annotations

import numpy as np
from tvm import relax, tirx

from mdoc.ir import Node

from ..context import LowerCtx, broadcast_dims, is_float, pdtype, prim
from ..registry import converter
from ._common import attr_str, cast_if_needed, float_const, sym_eval

R = relax.op

# -- binary -----------------------------------------------------------------


def _legacy_align(ctx: LowerCtx, a: relax.Expr, b: relax.Expr) -> relax.Expr:
    """Opsets < 7: with broadcast=1 and axis=k, B's dims line up with A's from axis k."""
    if not ctx.attr("broadcast", 0):
        return b
    ra, rb = len(ctx.shape_of(a)), len(ctx.shape_of(b))
    axis = ctx.attr("axis")
    if axis is None or rb == 0:
        return b
    axis = axis + ra if axis < 0 else axis
    trailing = ra - axis - rb
    if trailing > 0:
        b = ctx.emit(R.reshape(b, list(ctx.shape_of(b)) + [1] * trailing))
    return b


def _binary(relax_fn, np_fn, tir_fn=None, bool_out=False):
    def convert(ctx: LowerCtx, node: Node):
        out_dtype = (lambda _: "bool") if bool_out else None
        sym = sym_eval(ctx, np_fn, tir_fn, out_dtype)
        if sym is not None:
            return [sym]
        a, b = ctx.input(0), ctx.input(1)
        if ctx.opset < 7:
            b = _legacy_align(ctx, a, b)
        a, b = ctx.aligned(a, b)
        return [_broadcasting(ctx, relax_fn(a, b), a, b)]
    return convert


def _broadcasting(ctx: LowerCtx, expr: relax.Expr, *operands: relax.Expr) -> relax.Expr:
    """`expr` (a broadcasting op of `operands`) with its shape restored when Relax lost it."""
    return ctx.ensure_shape(expr, broadcast_dims(*[ctx.shape_of(x) for x in operands]))


def _np_div(a, b):
    if a.dtype.kind in "iu":
        return (np.trunc(a / b)).astype(np.result_type(a, b))
    return a / b


_BINARY = {
    "Add": (R.add, np.add, lambda a, b: a + b, False),
    "Sub": (R.subtract, np.subtract, lambda a, b: a - b, False),
    "Mul": (R.multiply, np.multiply, lambda a, b: a * b, False),
    "Div": (R.divide, _np_div, lambda a, b: tirx.truncdiv(a, b) if "int" in pdtype(a) else a / b, False),
    "Equal": (R.equal, np.equal, lambda a, b: tirx.EQ(a, b), True),
    "Less": (R.less, np.less, lambda a, b: tirx.LT(a, b), True),
    "Greater": (R.greater, np.greater, lambda a, b: tirx.GT(a, b), True),
    "And": (R.logical_and, np.logical_and, lambda a, b: tirx.And(a, b), True),
    "Or": (R.logical_or, np.logical_or, lambda a, b: tirx.Or(a, b), True),
    "Xor": (R.logical_xor, np.logical_xor, lambda a, b: tirx.NE(a, b), True),
}
for _name, (_rf, _nf, _tf, _bool) in _BINARY.items():
    converter(f"onnx.{_name}", since=1)(_binary(_rf, _nf, _tf, _bool))

converter("onnx.LessOrEqual", since=12)(_binary(R.less_equal, np.less_equal, lambda a, b: tirx.LE(a, b), True))
converter("onnx.GreaterOrEqual", since=12)(
    _binary(R.greater_equal, np.greater_equal, lambda a, b: tirx.GE(a, b), True))
converter("onnx.BitwiseAnd", since=18)(_binary(R.bitwise_and, np.bitwise_and))
converter("onnx.BitwiseOr", since=18)(_binary(R.bitwise_or, np.bitwise_or))
converter("onnx.BitwiseXor", since=18)(_binary(R.bitwise_xor, np.bitwise_xor))


@converter("onnx.BitwiseNot", since=18)
def bitwise_not(ctx: LowerCtx, node: Node):
    return [R.bitwise_not(ctx.input(0))]


@converter("onnx.BitShift", since=11)
def bit_shift(ctx: LowerCtx, node: Node):
    """Shifts by a negative amount or by the width or more give 0 (right shifts of negative
    numbers: -1), as onnx's reference computes them; the shift itself only sees amounts in range."""
    a, b = ctx.input(0), ctx.input(1)
    dt = str(a.ty.dtype)
    width = int("".join(ch for ch in dt if ch.isdigit()))
    left = attr_str(ctx, "direction", "") == "LEFT"
    outside = ctx.emit(R.logical_or(R.less(b, relax.const(0, dt)), R.greater_equal(b, relax.const(width, dt))))
    amount = ctx.emit(R.where(outside, relax.const(0, dt), b))
    shifted = ctx.emit(R.left_shift(a, amount) if left else R.right_shift(a, amount))
    zero = relax.const(0, dt)
    fill = zero if left or dt.startswith("uint") else R.where(R.less(a, zero), relax.const(-1, dt), zero)
    return [_broadcasting(ctx, R.where(outside, fill, shifted), a, b)]


@converter("onnx.Mod", since=10)
def mod(ctx: LowerCtx, node: Node):
    """fmod=1: C's fmod (the sign of the dividend); fmod=0: numpy's mod (the sign of the divisor).

    Floats go through `R.mod` (LLVM's frem, C's fmod, right for infinities and signed zeros),
    then numpy's correction: add the divisor when the signs differ, and a zero takes the
    divisor's sign. Half floats compute in float32.
    """
    fmod = int(ctx.attr("fmod", 0))
    a, b = ctx.input(0), ctx.input(1)
    dt = str(a.ty.dtype)
    if not is_float(dt):
        return [R.mod(a, b) if fmod else R.floor_mod(a, b)]
    wide = "float32" if dt in ("float16", "bfloat16") else dt
    a, b = cast_if_needed(a, wide), cast_if_needed(b, wide)
    m = ctx.emit(R.mod(a, b))
    if not fmod:
        zero = relax.const(0.0, wide)
        differ = R.logical_and(R.not_equal(m, zero), R.logical_xor(R.less(b, zero), R.less(m, zero)))
        m = ctx.emit(R.where(differ, R.add(m, b), m))
        signed_zero = R.where(R.less(b, zero), relax.const(-0.0, wide), zero)
        m = ctx.emit(R.where(R.equal(m, zero), signed_zero, m))
    return [cast_if_needed(m, dt)]


@converter("onnx.Pow", since=1)
def power(ctx: LowerCtx, node: Node):
    x = ctx.input(0)
    dtype = str(x.ty.dtype)
    exponent = ctx.const(1)
    if exponent is not None and exponent.size == 1 and len(ctx.shape(1)) <= len(ctx.shape_of(x)):
        e = float(exponent.reshape(-1)[0])
        if e == 1.0:
            return [x]
        if e == 2.0:
            return [R.multiply(x, x)]
        if e == 3.0:
            return [R.multiply(ctx.emit(R.multiply(x, x)), x)]
        if e == 0.5 and is_float(dtype):
            return [R.sqrt(x)]
        if e == -1.0 and is_float(dtype):
            return [R.divide(float_const(1.0, dtype), x)]
    if not is_float(dtype):  # integer bases: computed in float64, truncated back as numpy's pow is
        y = cast_if_needed(ctx.input(1), "float64")
        return [R.astype(R.power(ctx.emit(R.astype(x, "float64")), y), dtype)]
    y = cast_if_needed(ctx.input(1), dtype)
    return [R.power(x, y)]


def _variadic(relax_fn, np_fn, finish=None):
    def convert(ctx: LowerCtx, node: Node):
        sym = sym_eval(ctx, lambda *xs: _reduce_np(np_fn, xs), None)
        if sym is not None:
            return [sym]
        xs = [x for x in ctx.inputs() if x is not None]
        acc = xs[0]
        for x in xs[1:]:
            acc, x = ctx.aligned(acc, x)
            acc = _broadcasting(ctx, relax_fn(acc, x), acc, x)
        if finish is not None:
            acc = finish(acc, len(xs))
        return [acc]
    return convert


def _reduce_np(fn, xs):
    acc = xs[0]
    for x in xs[1:]:
        acc = fn(acc, x)
    return acc


converter("onnx.Sum", since=1)(_variadic(R.add, np.add))
converter("onnx.Max", since=1)(_variadic(R.maximum, np.maximum))
converter("onnx.Min", since=1)(_variadic(R.minimum, np.minimum))
converter("onnx.Mean", since=1)(
    _variadic(R.add, np.add, lambda acc, n: R.divide(acc, float_const(float(n), str(acc.ty.dtype)))))


@converter("onnx.PRelu", since=1)
def prelu(ctx: LowerCtx, node: Node):
    x, slope = ctx.input(0), ctx.input(1)
    rank, srank = len(ctx.shape_of(x)), len(ctx.shape_of(slope))
    if ctx.opset < 7 and srank == 1 and rank > 2:
        # legacy PRelu: a 1-D slope is per channel
        slope = ctx.emit(R.reshape(slope, list(ctx.shape_of(slope)) + [1] * (rank - 2)))
    zero = float_const(0.0, str(x.ty.dtype))
    return [R.where(R.less(x, zero), R.multiply(x, slope), x)]


# -- unary ------------------------------------------------------------------

_UNARY = {
    "Relu": R.nn.relu, "Sigmoid": R.sigmoid, "Tanh": R.tanh, "Exp": R.exp, "Log": R.log, "Sqrt": R.sqrt,
    "Abs": R.abs, "Neg": R.negative, "Floor": R.floor, "Ceil": R.ceil, "Erf": R.erf, "Sin": R.sin,
    "Cos": R.cos, "Tan": R.tan, "Asin": R.asin, "Acos": R.acos, "Atan": R.atan, "Sinh": R.sinh,
    "Cosh": R.cosh, "Asinh": R.asinh, "Acosh": R.acosh, "Atanh": R.atanh, "Sign": R.sign,
    "Not": R.logical_not, "IsNaN": R.isnan,
}
_NP_UNARY = {"Abs": np.abs, "Neg": np.negative, "Sign": np.sign, "Not": np.logical_not,
             "Floor": np.floor, "Ceil": np.ceil, "Sqrt": np.sqrt, "Relu": lambda a: np.maximum(a, 0)}
_TIR_UNARY = {"Abs": tirx.abs, "Neg": lambda a: -a, "Not": tirx.Not, "Floor": tirx.floor, "Ceil": tirx.ceil,
              "Relu": lambda a: tirx.Max(a, prim(0, pdtype(a)))}


def _unary(name):
    relax_fn = _UNARY[name]

    def convert(ctx: LowerCtx, node: Node):
        if name in _NP_UNARY:
            sym = sym_eval(ctx, _NP_UNARY[name], _TIR_UNARY.get(name))
            if sym is not None:
                return [sym]
        return [relax_fn(ctx.input(0))]
    return convert


for _name in _UNARY:
    converter(f"onnx.{_name}", since=1)(_unary(_name))


@converter("onnx.Round", since=11)
def round_(ctx: LowerCtx, node: Node):
    # ONNX rounds half to even, like LLVM's nearbyint (TVM's `round` lowers to it)
    return [R.round(ctx.input(0))]


@converter("onnx.Reciprocal", since=1)
def reciprocal(ctx: LowerCtx, node: Node):
    x = ctx.input(0)
    return [R.divide(float_const(1.0, str(x.ty.dtype)), x)]


@converter("onnx.IsInf", since=10)
def isinf(ctx: LowerCtx, node: Node):
    x = ctx.input(0)
    neg, pos = int(ctx.attr("detect_negative", 1)), int(ctx.attr("detect_positive", 1))
    inf = R.isinf(x)
    zero = float_const(0.0, str(x.ty.dtype))
    if neg and pos:
        return [inf]
    if pos:
        return [R.logical_and(inf, R.greater(x, zero))]
    if neg:
        return [R.logical_and(inf, R.less(x, zero))]
    return [R.zeros_like(x, "bool")]


def _c(ctx: LowerCtx, x: relax.Expr, v: float) -> relax.Expr:
    return float_const(v, str(x.ty.dtype))


@converter("onnx.LeakyRelu", since=1)
def leaky_relu(ctx: LowerCtx, node: Node):
    return [R.nn.leakyrelu(ctx.input(0), float(ctx.attr("alpha", 0.01)))]


@converter("onnx.Elu", since=1)
def elu(ctx: LowerCtx, node: Node):
    x = ctx.input(0)
    alpha = float(ctx.attr("alpha", 1.0))
    neg = R.multiply(_c(ctx, x, alpha), R.subtract(R.exp(x), _c(ctx, x, 1.0)))
    return [R.where(R.less(x, _c(ctx, x, 0.0)), neg, x)]


@converter("onnx.Selu", since=1)
def selu(ctx: LowerCtx, node: Node):
    x = ctx.input(0)
    alpha = float(ctx.attr("alpha", 1.67326319217681884765625))
    gamma = float(ctx.attr("gamma", 1.05070102519989013671875))
    neg = R.multiply(_c(ctx, x, alpha), R.subtract(R.exp(x), _c(ctx, x, 1.0)))
    return [R.multiply(_c(ctx, x, gamma), R.where(R.greater(x, _c(ctx, x, 0.0)), x, neg))]


@converter("onnx.Celu", since=12)
def celu(ctx: LowerCtx, node: Node):
    x = ctx.input(0)
    alpha = float(ctx.attr("alpha", 1.0))
    neg = R.multiply(_c(ctx, x, alpha), R.subtract(R.exp(R.divide(x, _c(ctx, x, alpha))), _c(ctx, x, 1.0)))
    return [R.add(R.maximum(x, _c(ctx, x, 0.0)), R.minimum(neg, _c(ctx, x, 0.0)))]


@converter("onnx.ThresholdedRelu", since=10)
def thresholded_relu(ctx: LowerCtx, node: Node):
    x = ctx.input(0)
    alpha = float(ctx.attr("alpha", 1.0))
    return [R.where(R.greater(x, _c(ctx, x, alpha)), x, _c(ctx, x, 0.0))]


@converter("onnx.HardSigmoid", since=1)
def hard_sigmoid(ctx: LowerCtx, node: Node):
    x = ctx.input(0)
    alpha, beta = float(ctx.attr("alpha", 0.2)), float(ctx.attr("beta", 0.5))
    return [R.clip(R.add(R.multiply(x, _c(ctx, x, alpha)), _c(ctx, x, beta)), 0.0, 1.0)]


@converter("onnx.HardSwish", since=14)
def hard_swish(ctx: LowerCtx, node: Node):
    x = ctx.input(0)
    gate = R.clip(R.add(R.multiply(x, _c(ctx, x, 1.0 / 6.0)), _c(ctx, x, 0.5)), 0.0, 1.0)
    return [R.multiply(x, gate)]


@converter("onnx.Softplus", since=1)
def softplus(ctx: LowerCtx, node: Node):
    x = ctx.input(0)
    # log(1 + exp(x)) computed stably: max(x, 0) + log(1 + exp(-|x|))
    return [R.add(R.maximum(x, _c(ctx, x, 0.0)), R.log(R.add(_c(ctx, x, 1.0), R.exp(R.negative(R.abs(x))))))]


@converter("onnx.Softsign", since=1)
def softsign(ctx: LowerCtx, node: Node):
    x = ctx.input(0)
    return [R.divide(x, R.add(_c(ctx, x, 1.0), R.abs(x)))]


@converter("onnx.Mish", since=18)
def mish(ctx: LowerCtx, node: Node):
    x = ctx.input(0)
    sp = R.add(R.maximum(x, _c(ctx, x, 0.0)), R.log(R.add(_c(ctx, x, 1.0), R.exp(R.negative(R.abs(x))))))
    return [R.multiply(x, R.tanh(sp))]


@converter("onnx.Gelu", since=20)
def gelu(ctx: LowerCtx, node: Node):
    x = ctx.input(0)
    if attr_str(ctx, "approximate", "none") == "tanh":
        return [R.nn.gelu_tanh(x)]
    return [R.nn.gelu(x)]


@converter("onnx.Shrink", since=9)
def shrink(ctx: LowerCtx, node: Node):
    x = ctx.input(0)
    bias, lambd = float(ctx.attr("bias", 0.0)), float(ctx.attr("lambd", 0.5))
    low = R.where(R.less(x, _c(ctx, x, -lambd)), R.add(x, _c(ctx, x, bias)), _c(ctx, x, 0.0))
    return [R.where(R.greater(x, _c(ctx, x, lambd)), R.subtract(x, _c(ctx, x, bias)), low)]


# -- Clip -------------------------------------------------------------------


@converter("onnx.Clip", since=1)
def clip_v1(ctx: LowerCtx, node: Node):
    x = ctx.input(0)
    lo = ctx.attr("min", -3.4028234663852886e38)
    hi = ctx.attr("max", 3.4028234663852886e38)
    return [R.clip(x, float(lo), float(hi))]


@converter("onnx.Clip", since=11)
def clip_v11(ctx: LowerCtx, node: Node):
    """min and max are optional inputs; constant ones become a clip, runtime ones max/min."""
    x = ctx.input(0)
    dtype = str(x.ty.dtype)
    out = x
    lo, hi = ctx.const(1), ctx.const(2)
    if (lo is not None or not ctx.has_input(1)) and (hi is not None or not ctx.has_input(2)):
        info = np.finfo(dtype) if is_float(dtype) else np.iinfo(dtype)
        lo_v = float(lo.reshape(-1)[0]) if lo is not None else float(info.min)
        hi_v = float(hi.reshape(-1)[0]) if hi is not None else float(info.max)
        if not is_float(dtype):
            lo_v, hi_v = int(lo_v), int(hi_v)
        return [R.clip(x, lo_v, hi_v)]
    if ctx.has_input(1):
        out = R.maximum(out, ctx.input(1))
    if ctx.has_input(2):
        out = R.minimum(ctx.emit(out) if out is not x else out, ctx.input(2))
    return [out]


# -- identity, dropout ------------------------------------------------------


@converter("onnx.Identity", since=1)
def identity(ctx: LowerCtx, node: Node):
    sym = ctx.sym(0)
    return [sym if sym is not None else ctx.input(0)]


@converter("onnx.Dropout", since=1)
def dropout(ctx: LowerCtx, node: Node):
    """Inference: the identity (and an all-true mask when the mask is asked for)."""
    if ctx.opset >= 12 and ctx.has_input(2):
        training = ctx.const(2)
        if training is None or bool(training.reshape(-1)[0]):
            raise ctx.error("training_mode must be a constant false: mdoc compiles for inference")
    x = ctx.input(0)
    outs = [x]
    if len(node.outputs) > 1 and (node.outputs[1].has_uses() or node.outputs[1] in node.graph.outputs):
        mask_dtype = "bool" if ctx.opset >= 10 else str(x.ty.dtype)
        outs.append(R.ones_like(x, mask_dtype))
    return outs


# -- Where --------------------------------------------------------------------


@converter("onnx.Where", since=9)
def where(ctx: LowerCtx, node: Node):
    sym = sym_eval(ctx, np.where, lambda c, a, b: tirx.Select(c, a, b),
                   out_dtype=lambda dts: dts[1])
    if sym is not None:
        return [sym]
    cond, a, b = ctx.input(0), ctx.input(1), ctx.input(2)
    if str(cond.ty.dtype) != "bool":
        cond = ctx.emit(R.astype(cond, "bool"))
    cond, a, b = ctx.aligned(cond, a, b)
    return [_broadcasting(ctx, R.where(cond, a, b), cond, a, b)]

