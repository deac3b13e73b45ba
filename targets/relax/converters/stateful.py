"""Ops of recurrent / state-space models that carry a state from one call to the next.

CausalConvWithState: a depthwise causal conv1d over [batch, channels, length] whose left
context is the previous call's tail (`past_state`, zeros when absent); the new tail is
returned as `present_state`. An optional SiLU ("silu" / "swish") follows the conv.
"""

from __future__ import annotations

from tvm import relax

from mdoc.ir import Node

from ..context import LowerCtx
from ..registry import converter
from ._common import attr_str, static_int
from .activations import swish
from .attention import compute_dtype

R = relax.op


@converter("onnx.CausalConvWithState", since=27)
def causal_conv_with_state(ctx: LowerCtx, node: Node):
    x, w = ctx.input(0), ctx.input(1)
    if ctx.rank(0) != 3 or ctx.rank(1) != 3:
        raise ctx.error(f"input {ctx.shape(0)} and weight {ctx.shape(1)} must be rank 3 "
                        f"([batch, channels, length] and [channels, 1, k])")
    activation = attr_str(ctx, "activation", "none")
    if activation not in ("none", "silu", "swish"):
        raise ctx.error(f"activation '{activation}' is not one of none, silu, swish")
    batch, channels, length = ctx.shape(0)
    channels = static_int(ctx, channels, "the channel count")
    k = static_int(ctx, ctx.shape(1)[2], "the kernel size")
    dtype = str(x.ty.dtype)
    if ctx.has_input(3):
        past = ctx.input(3)
    else:
        past = relax.op.zeros(relax.ShapeExpr([batch, channels, k - 1]), dtype)
    padded = ctx.emit(R.concat([past, x], axis=2)) if k > 1 else x
    cdt = compute_dtype(dtype)
    xc, wc = (ctx.emit(R.astype(t, cdt)) if cdt != dtype else t for t in (padded, w))
    y = ctx.emit(ctx.kernels.conv(ctx, xc, wc, strides=[1], pads=[0, 0], dilations=[1], groups=channels))
    if ctx.has_input(2):
        b = ctx.input(2)
        b = ctx.emit(R.astype(b, cdt)) if cdt != dtype else b
        y = ctx.emit(R.add(y, ctx.emit(R.reshape(b, [1, channels, 1]))))
    if activation != "none":
        y = swish(ctx, y, 1.0)
    if cdt != dtype:
        y = ctx.emit(R.astype(y, dtype))
    total = ctx.shape_of(padded)[2]
    present = R.strided_slice(padded, axes=[2], begin=[total - (k - 1)], end=[total], assume_inbound=True)
    return [y, present]
