"""Integer kernels: MatMulInteger, ConvInteger, QLinearMatMul and QLinearConv.

All four compute in integers: the 8-bit operands are widened to int32, their
zero points subtracted, and the product or convolution accumulates in int32
(`integer_matmul`, `integer_conv`, through `ctx.kernels` so a target can plug in
its own int8 kernels). The QLinear ops then requantize the int32 accumulator:

    y = saturate(round_half_to_even(acc * (a_scale * b_scale / y_scale)) + y_zero_point)

with the multiplier computed in the scales' type, as onnx's reference does.
Zero points and scales are per tensor, or per row of A / per column of B
(matmul), or per output channel of W (conv).
"""

from __future__ import annotations

from tvm import relax

from mdoc.ir import Node
from mdoc.types import DType

from ..context import LowerCtx
from ..registry import converter
from ._common import attr_ints, static_int
from .nn import _spatial_attrs
from .quantize import saturate_to

R = relax.op


def _per_axis(ctx: LowerCtx, v: relax.Expr, rank: int, axis: int) -> relax.Expr:
    """A parameter with one element (per tensor) or one per index of `axis` of a rank-`rank` operand."""
    dims = ctx.shape_of(v)
    if all(d == 1 for d in dims):
        return ctx.emit(R.reshape(v, [])) if dims else v
    if len(dims) != 1:
        raise ctx.error(f"a zero point or scale must be a scalar or 1-D, not of shape {dims}")
    shape = [1] * rank
    shape[axis] = -1
    return ctx.emit(R.reshape(v, shape))


def _shifted(ctx: LowerCtx, i: int, zp: int | None, axis_of_zp: int) -> relax.Expr:
    """Operand `i` as int32, minus its zero point (operand `zp`, per tensor or along `axis_of_zp`)."""
    v = ctx.emit(R.astype(ctx.input(i), "int32"))
    if zp is None or not ctx.has_input(zp):
        return v
    rank = len(ctx.shape_of(v))
    z = _per_axis(ctx, ctx.input(zp), rank, axis_of_zp % rank)
    return ctx.emit(R.subtract(v, R.astype(z, "int32")))


def integer_matmul(ctx: LowerCtx, a: int, a_zp: int | None, b: int, b_zp: int | None) -> relax.Expr:
    """(A - a_zp) @ (B - b_zp) in int32; a_zp per row of A (axis -2), b_zp per column of B (axis -1)."""
    a32 = _shifted(ctx, a, a_zp, -2 if len(ctx.shape(a)) >= 2 else -1)
    b32 = _shifted(ctx, b, b_zp, -1)
    return ctx.emit(ctx.kernels.matmul(ctx, a32, b32))


def integer_conv(ctx: LowerCtx, x: int, x_zp: int | None, w: int, w_zp: int | None) -> relax.Expr:
    """Conv(X - x_zp, W - w_zp) in int32 with the node's Conv attributes; w_zp per output channel."""
    xs, ws = ctx.shape(x), ctx.shape(w)
    if len(xs) - 2 not in (1, 2, 3):
        raise ctx.error(f"{len(xs) - 2}-d convolution is not supported (1-d, 2-d and 3-d are)")
    kernel = attr_ints(ctx, "kernel_shape") or [static_int(ctx, d, "kernel size") for d in ws[2:]]
    strides, dilations, pads = _spatial_attrs(ctx, xs[2:], kernel)
    x32 = _shifted(ctx, x, x_zp, 1)  # padding adds zeros after the shift: x_zp in the input's terms
    w32 = _shifted(ctx, w, w_zp, 0)
    return ctx.emit(ctx.kernels.conv(ctx, x32, w32, strides=strides, pads=pads, dilations=dilations,
                                     groups=int(ctx.attr("group", 1))))


def requantize(ctx: LowerCtx, acc: relax.Expr, scales: list[tuple[int, int]], y_scale: int, y_zp: int,
               out: DType) -> relax.Expr:
    """int32 `acc` times the product of the scales (operand, axis of `acc` it runs along) over y_scale,
    rounded, plus y_zero_point, saturated to `out`."""
    rank = len(ctx.shape_of(acc))
    mult = None
    for i, axis in scales:
        s = _per_axis(ctx, ctx.input(i), rank, axis % rank)
        mult = s if mult is None else ctx.emit(R.multiply(mult, s))
    mult = ctx.emit(R.divide(mult, _per_axis(ctx, ctx.input(y_scale), rank, 0)))
    y = ctx.emit(R.multiply(R.astype(acc, "float32"), R.astype(mult, "float32")))
    y = ctx.emit(R.round(y))
    if ctx.has_input(y_zp):
        y = ctx.emit(R.add(y, R.astype(_per_axis(ctx, ctx.input(y_zp), rank, 0), "float32")))
    return saturate_to(ctx, y, out)


def _out_type(ctx: LowerCtx, y_zp: int, fallback: int) -> DType:
    t = ctx.input_type(y_zp if ctx.has_input(y_zp) else fallback)
    if t is None:
        raise ctx.error("the output's element type is unknown")
    return t.dtype


@converter("onnx.MatMulInteger", since=10)
def matmul_integer(ctx: LowerCtx, node: Node):
    return [integer_matmul(ctx, 0, 2, 1, 3)]


@converter("onnx.ConvInteger", since=10)
def conv_integer(ctx: LowerCtx, node: Node):
    return [integer_conv(ctx, 0, 2, 1, 3)]


@converter("onnx.QLinearMatMul", since=10)
def qlinear_matmul(ctx: LowerCtx, node: Node):
    """a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point."""
    acc = integer_matmul(ctx, 0, 2, 3, 5)
    a_axis = -2 if len(ctx.shape(0)) >= 2 else -1
    return [requantize(ctx, acc, [(1, a_axis), (4, -1)], 6, 7, _out_type(ctx, 7, 0))]


@converter("onnx.QLinearConv", since=10)
def qlinear_conv(ctx: LowerCtx, node: Node):
    """x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, B (int32, per channel)."""
    acc = integer_conv(ctx, 0, 2, 3, 5)
    if ctx.has_input(8):
        acc = ctx.emit(R.add(acc, _per_axis(ctx, ctx.emit(R.astype(ctx.input(8), "int32")), len(ctx.shape_of(acc)), 1)))
    return [requantize(ctx, acc, [(1, 1), (4, 1)], 6, 7, _out_type(ctx, 7, 0))]
