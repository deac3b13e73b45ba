"""Gated activations newer than the elementwise family: Swish (opset 24) and SwiGLU."""

from __future__ import annotations

from tvm import relax

from mdoc.ir import Node

from ..context import LowerCtx
from ..registry import converter
from ._common import float_const

R = relax.op


def swish(ctx: LowerCtx, x: relax.Expr, alpha: float) -> relax.Expr:
    """x * sigmoid(alpha * x)."""
    ax = x if alpha == 1.0 else ctx.emit(R.multiply(x, float_const(alpha, str(x.ty.dtype))))
    return ctx.emit(R.multiply(x, ctx.emit(R.sigmoid(ax))))


@converter("onnx.Swish", since=24)
def swish_op(ctx: LowerCtx, node: Node):
    return [swish(ctx, ctx.input(0), float(ctx.attr("alpha", 1.0)))]


@converter("onnx.SwiGLU", since=28)
def swiglu(ctx: LowerCtx, node: Node):
    """swish(A, alpha) * B, A and B of one shape."""
    a, b = ctx.input(0), ctx.input(1)
    if [str(d) for d in ctx.shape(0)] != [str(d) for d in ctx.shape(1)]:
        raise ctx.error(f"A {ctx.shape(0)} and B {ctx.shape(1)} must have the same shape (no broadcasting)")
    return [R.multiply(swish(ctx, a, float(ctx.attr("alpha", 1.0))), b)]
