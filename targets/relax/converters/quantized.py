"""mdoc.qconv and mdoc.qmatmul (made by `fuse-quantized`) on every target: the integer product, then its scales,
tail and requantization as Relax ops.

The product is the one `qlinear.py` computes for QLinearConv / QLinearMatMul: operands widened to int32,
zero points subtracted, accumulated in int32 through `ctx.kernels`. Then

    t = act(float(acc) * (x_scale * w_scale) + bias + residual)
    y = saturate(round_half_to_even(t / y_scale) + y_zero_point)     (when the op requantizes)

A CPU strategy with integer kernels takes these nodes first (`CpuKernels.lower_node`, `cpu_quantized.py`);
this is what every other target, and the shapes those kernels leave, run.
"""

from __future__ import annotations

from tvm import relax

from mdoc.activations import applied_from_attrs
from mdoc.ir import Node
from mdoc.quantized_ops import BIAS, RESIDUAL, W_SCALE, X_SCALE, Y_SCALE, Y_ZP

from ..context import LowerCtx
from ..kernels import Tail, apply_tail
from ..registry import converter
from .qlinear import _per_axis, integer_conv, integer_matmul
from .quantize import saturate_to

R = relax.op


def finish(ctx: LowerCtx, node: Node, acc: relax.Expr, channel_axis: int) -> relax.Expr:
    """The int32 accumulator scaled, biased, with residual and activation, requantized where the op says."""
    rank = len(ctx.shape_of(acc))
    mult = ctx.emit(R.multiply(R.astype(_per_axis(ctx, ctx.input(X_SCALE), rank, channel_axis), "float32"),
                               R.astype(_per_axis(ctx, ctx.input(W_SCALE), rank, channel_axis), "float32")))
    y = ctx.emit(R.multiply(R.astype(acc, "float32"), mult))
    if ctx.has_input(BIAS):
        y = ctx.emit(R.add(y, _per_axis(ctx, ctx.input(BIAS), rank, channel_axis)))
    residual = ctx.input(RESIDUAL) if ctx.has_input(RESIDUAL) else None
    y = ctx.emit(apply_tail(ctx, y, Tail(residual=residual, activation=applied_from_attrs(node.attrs))))
    if not ctx.has_input(Y_SCALE):
        return y
    q = ctx.emit(R.round(R.divide(y, R.astype(_per_axis(ctx, ctx.input(Y_SCALE), rank, 0), "float32"))))
    q = ctx.emit(R.add(q, R.astype(_per_axis(ctx, ctx.input(Y_ZP), rank, 0), "float32")))
    return saturate_to(ctx, q, ctx.input_type(Y_ZP).dtype)


@converter("mdoc.qconv", since=1)
def qconv(ctx: LowerCtx, node: Node):
    return [finish(ctx, node, integer_conv(ctx, 0, 2, 3, 5), 1)]


@converter("mdoc.qmatmul", since=1)
def qmatmul(ctx: LowerCtx, node: Node):
    return [finish(ctx, node, integer_matmul(ctx, 0, 2, 3, 5), -1)]
