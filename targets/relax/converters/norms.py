"""RMSNormalization and LpNormalization (LayerNormalization and the others live in `nn.py`)."""

from __future__ import annotations

from tvm import relax

from mdoc.ir import Node

from ..context import LowerCtx
from ..registry import converter
from ._common import float_const, norm_axis

R = relax.op


@converter("onnx.RMSNormalization", since=23)
def rms_norm(ctx: LowerCtx, node: Node):
    """Y = X / sqrt(mean(X^2 over axis..-1) + epsilon) * scale, in float32 for stash_type 1."""
    x = ctx.input(0)
    rank = ctx.rank(0)
    axes = list(range(norm_axis(ctx, int(ctx.attr("axis", -1)), rank), rank))
    dt = str(x.ty.dtype)
    stash = int(ctx.attr("stash_type", 1))
    xc = ctx.emit(R.astype(x, "float32")) if stash == 1 and dt != "float32" else x
    cdt = str(xc.ty.dtype)
    ms = ctx.emit(R.mean(ctx.emit(R.multiply(xc, xc)), axis=axes, keepdims=True))
    inv = ctx.emit(R.rsqrt(ctx.emit(R.add(ms, float_const(float(ctx.attr("epsilon", 1e-5)), cdt)))))
    y = ctx.emit(R.multiply(xc, inv))
    if xc is not x:
        y = ctx.emit(R.astype(y, dt))
    return [R.multiply(y, ctx.input(1))]


@converter("onnx.LpNormalization", since=1)
def lp_norm(ctx: LowerCtx, node: Node):
    """x / ||x||_p along `axis` (p = 1 or 2); 0 where the norm is 0."""
    x = ctx.input(0)
    dt = str(x.ty.dtype)
    axis = norm_axis(ctx, int(ctx.attr("axis", -1)), ctx.rank(0))
    p = int(ctx.attr("p", 2))
    if p == 1:
        norm = ctx.emit(R.sum(ctx.emit(R.abs(x)), axis=[axis], keepdims=True))
    elif p == 2:
        norm = ctx.emit(R.sqrt(ctx.emit(R.sum(ctx.emit(R.multiply(x, x)), axis=[axis], keepdims=True))))
    else:
        raise ctx.error(f"p = {p}; LpNormalization takes p = 1 or 2")
    zero = float_const(0.0, dt)
    is_zero = ctx.emit(R.equal(norm, zero))
    safe = ctx.emit(R.where(is_zero, float_const(1.0, dt), norm))
    return [R.where(is_zero, zero, ctx.emit(R.divide(x, safe)))]
