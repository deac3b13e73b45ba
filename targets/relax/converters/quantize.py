"""QuantizeLinear and DequantizeLinear (per tensor and per axis), composed from elementwise ops.

    QuantizeLinear:   y = saturate(round_half_to_even(x / scale) + zero_point)
    DequantizeLinear: y = (x - zero_point) * scale

Composing them (instead of `relax.op.quantize`) keeps ONNX's exact rounding and
saturation and lets FuseOps merge them into their neighbours. Blocked
quantization (`block_size`, opset 21) is refused with a message.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from mdoc.ir import Node

from ..context import LowerCtx, onnx_to_tvm_dtype
from ..registry import converter
from ._common import norm_axis

R = relax.op


def _along_axis(ctx: LowerCtx, v: relax.Expr, rank: int, axis: int) -> relax.Expr:
    """A scale or zero point shaped to broadcast along `axis` (per-axis), or as it is (per-tensor)."""
    dims = ctx.shape_of(v)
    if len(dims) == 0 or rank == 0:
        return v
    if len(dims) == 1:
        shape = [1] * rank
        shape[axis] = -1
        return ctx.emit(R.reshape(v, shape))
    return v


def _check_block(ctx: LowerCtx):
    if int(ctx.attr("block_size", 0) or 0):
        raise ctx.error("blocked quantization (block_size) is not supported by the Relax target")


@converter("onnx.QuantizeLinear", since=10)
def quantize_linear(ctx: LowerCtx, node: Node):
    _check_block(ctx)
    x, scale = ctx.input(0), ctx.input(1)
    rank = len(ctx.shape_of(x))
    axis = norm_axis(ctx, int(ctx.attr("axis", 1)), rank) if rank else 0
    if ctx.has_input(2):
        zp = ctx.input(2)
        out_dtype = str(zp.ty.dtype)
    else:
        to = int(ctx.attr("output_dtype", 0) or 0)
        out_dtype = onnx_to_tvm_dtype(to) if to else "uint8"
        zp = relax.const(0, out_dtype)
    info = np.iinfo(out_dtype)
    dt = str(x.ty.dtype)
    scale = _along_axis(ctx, scale, rank, axis)
    q = ctx.emit(R.round(R.divide(x, scale)))  # nearbyint: half to even, as ONNX wants
    q = ctx.emit(R.add(q, R.astype(_along_axis(ctx, zp, rank, axis), dt)))
    q = ctx.emit(R.clip(q, float(info.min), float(info.max)))
    return [R.astype(q, out_dtype)]


@converter("onnx.DequantizeLinear", since=10)
def dequantize_linear(ctx: LowerCtx, node: Node):
    _check_block(ctx)
    x, scale = ctx.input(0), ctx.input(1)
    rank = len(ctx.shape_of(x))
    axis = norm_axis(ctx, int(ctx.attr("axis", 1)), rank) if rank else 0
    dt = str(scale.ty.dtype)
    xf = ctx.emit(R.astype(x, "int32" if str(x.ty.dtype) != "int32" else "int32"))
    if ctx.has_input(2):
        zp = _along_axis(ctx, ctx.input(2), rank, axis)
        xf = ctx.emit(R.subtract(xf, R.astype(zp, "int32")))
    return [R.multiply(R.astype(xf, dt), _along_axis(ctx, scale, rank, axis))]
