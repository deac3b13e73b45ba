"""mdoc's transformer ops (`mdoc.layer_norm`, `skip_layer_norm`, `gelu`, `silu`, `attention`) as Relax ops.

These are the translations for every target and for symbolic shapes; the CPU
strategy (`cpu_strategy.CpuKernels.lower_node`) sends the static float32 cases
to its hand kernels first and falls back here. Attention's matrix products go
through `ctx.kernels.matmul`, so a target's kernel hook still sees them.
"""

from __future__ import annotations

from tvm import relax

from mdoc.ir import Node

from ..context import LowerCtx
from ..registry import converter
from ._common import attr_str, float_const, norm_axis, relax_dims, static_int
from .attention import split_heads
from .nn import normalize

R = relax.op


def layer_norm_expr(ctx: LowerCtx, x: relax.Expr, gamma: relax.Expr, beta: relax.Expr | None, axes: list[int],
                    epsilon: float) -> relax.Expr:
    y, _, _ = normalize(ctx, x, axes, epsilon)
    y = ctx.emit(R.multiply(y, gamma))
    return R.add(y, beta) if beta is not None else y


@converter("mdoc.layer_norm", since=1)
def layer_norm(ctx: LowerCtx, node: Node):
    rank = ctx.rank(0)
    axis = norm_axis(ctx, int(ctx.attr("axis", -1)), rank)
    return [layer_norm_expr(ctx, ctx.input(0), ctx.input(1), ctx.input(2) if ctx.has_input(2) else None,
                            list(range(axis, rank)), float(ctx.attr("epsilon", 1e-5)))]


def skip_sum(ctx: LowerCtx) -> relax.Expr:
    """x + skip (+ bias) of a skip_layer_norm node."""
    s = ctx.emit(R.add(ctx.input(0), ctx.input(1)))
    return ctx.emit(R.add(s, ctx.input(4))) if ctx.has_input(4) else s


@converter("mdoc.skip_layer_norm", since=1)
def skip_layer_norm(ctx: LowerCtx, node: Node):
    s = skip_sum(ctx)
    y = layer_norm_expr(ctx, s, ctx.input(2), ctx.input(3) if ctx.has_input(3) else None, [ctx.rank(0) - 1],
                        float(ctx.attr("epsilon", 1e-5)))
    return [y, s]


@converter("mdoc.gelu", since=1)
def gelu(ctx: LowerCtx, node: Node):
    x = ctx.input(0)
    if ctx.has_input(1):
        x = ctx.emit(R.add(x, ctx.input(1)))
    return [R.nn.gelu_tanh(x) if attr_str(ctx, "approximate", "none") == "tanh" else R.nn.gelu(x)]


@converter("mdoc.silu", since=1)
def silu(ctx: LowerCtx, node: Node):
    x = ctx.input(0)
    return [R.multiply(x, R.sigmoid(x))]


@converter("mdoc.attention", since=1)
def attention(ctx: LowerCtx, node: Node):
    """Split heads, softmax(q k^T * scale + mask) v per head, merge heads."""
    heads = int(ctx.attr("num_heads"))
    q, k, v = (split_heads(ctx, ctx.input(i), heads, name) for i, name in enumerate("qkv"))
    scores = ctx.emit(ctx.kernels.matmul(ctx, q, k, transpose_b=True))
    scores = ctx.emit(R.multiply(scores, float_const(float(ctx.attr("scale")), str(scores.ty.dtype))))
    if ctx.has_input(3):
        scores = ctx.emit(R.add(scores, ctx.input(3)))
    y = ctx.emit(ctx.kernels.matmul(ctx, ctx.emit(R.nn.softmax(scores, axis=-1)), v))
    b, h, s, d = ctx.shape_of(y)
    y = ctx.emit(R.permute_dims(y, [0, 2, 1, 3]))
    return [R.reshape(y, relax_dims([b, s, static_int(ctx, h, "the heads") * static_int(ctx, d, "the head size")]))]


@converter("mdoc.rms_norm", since=1)
def rms_norm(ctx: LowerCtx, node: Node):
    """x / sqrt(mean(x^2) + epsilon) * gamma over the last axis, in the input's type (float32 sums
    for float16 inputs)."""
    x = ctx.input(0)
    dtype = str(x.ty.dtype)
    wide = ctx.emit(R.astype(x, "float32")) if dtype == "float16" else x
    ms = ctx.emit(R.mean(ctx.emit(R.multiply(wide, wide)), axis=[-1], keepdims=True))
    inv = ctx.emit(R.rsqrt(ctx.emit(R.add(ms, float_const(ctx.attr("epsilon", 1e-6), str(wide.ty.dtype))))))
    y = ctx.emit(R.multiply(wide, inv))
    if wide is not x:
        y = ctx.emit(R.astype(y, dtype))
    return [R.multiply(y, ctx.input(1))]
