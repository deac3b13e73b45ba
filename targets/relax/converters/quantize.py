"""QuantizeLinear, DequantizeLinear and DynamicQuantizeLinear, composed from elementwise ops.

    QuantizeLinear:   y = saturate(round_half_to_even(x / scale) + zero_point)
    DequantizeLinear: y = (x - zero_point) * scale

Scales and zero points are per tensor (one element), per axis (1-D along
`axis`) or blocked (`block_size`: the same rank as x, one value per block of
`block_size` elements along `axis`). The quantized type is the zero point's,
else `output_dtype`, else uint8: the 8/16-bit integers, int4/uint4/int2/uint2
(saturated to their range), and float8 / float4e2m1 (converted by `cast.convert`,
with `saturate`). As in onnx's reference, float8 zero points are ignored (they
must be 0) and float4e2m1 ones are added before the conversion.

Composing them (instead of `relax.op.quantize`) keeps ONNX's exact rounding and
saturation and lets FuseOps merge them into their neighbours.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
from tvm import relax

from mdoc.ir import Node
from mdoc.types import DType

from ..context import LowerCtx, is_stored, tvm_dtype
from ..registry import converter
from ._common import norm_axis
from .cast import FORMATS, convert

R = relax.op


def integer_range(dtype: DType) -> tuple[int, int] | None:
    """(min, max) of an integer quantized type, None for the float ones."""
    if dtype.is_float:
        return None
    info = ml_dtypes.iinfo(dtype.numpy) if is_stored(dtype) else np.iinfo(dtype.numpy)
    return int(info.min), int(info.max)


def along_axis(ctx: LowerCtx, v: relax.Expr, x_dims: list, axis: int, block_size: int = 0) -> relax.Expr:
    """A scale or zero point shaped to broadcast against x: per tensor, per axis or blocked.

    `axis` is the attribute as given: it is checked only when the parameter has more than
    one element (ONNX's default axis 1 is meaningless, and fine, for a per-tensor scale of a 1-D x).
    """
    dims = ctx.shape_of(v)
    rank = len(x_dims)
    if all(d == 1 for d in dims):  # one element: per tensor, whatever its rank
        return ctx.emit(R.reshape(v, [])) if dims else v
    axis = norm_axis(ctx, axis, rank)
    if block_size:
        if len(dims) != rank:
            raise ctx.error(f"blocked quantization needs a scale of rank {rank}, not {len(dims)}")
        v = ctx.emit(R.repeat(v, block_size, axis=axis))
        if dims[axis] * block_size != x_dims[axis]:  # a last, partial block
            v = ctx.emit(R.strided_slice(v, axes=[axis], begin=[0], end=[x_dims[axis]], assume_inbound=True))
        return v
    if len(dims) != 1:
        raise ctx.error(f"a per-axis scale or zero point must be 1-D, not of shape {dims}")
    shape = [1] * rank
    shape[axis] = -1
    return ctx.emit(R.reshape(v, shape))


def _param(ctx: LowerCtx, i: int, x_dims: list, dtype: str) -> relax.Expr:
    """Operand `i` (a scale or zero point) as `dtype`, shaped to broadcast against x."""
    v = along_axis(ctx, ctx.input(i), x_dims, int(ctx.attr("axis", 1)), int(ctx.attr("block_size", 0) or 0))
    return v if str(v.ty.dtype) == dtype else ctx.emit(R.astype(v, dtype))


def saturate_to(ctx: LowerCtx, q: relax.Expr, dst: DType) -> relax.Expr:
    """Integer-valued floats `q` clamped to the range of integer type `dst` and held as it is held."""
    lo, hi = integer_range(dst)
    return R.astype(R.clip(q, float(lo), float(hi)), tvm_dtype(dst))


def _quantized_type(ctx: LowerCtx) -> DType:
    zp = ctx.input_type(2) if ctx.has_input(2) else None
    if zp is not None:
        return zp.dtype
    to = int(ctx.attr("output_dtype", 0) or 0)
    return DType.from_onnx(to) if to else DType.U8


@converter("onnx.QuantizeLinear", since=10)
def quantize_linear(ctx: LowerCtx, node: Node):
    x = ctx.input(0)
    dims = ctx.shape_of(x)
    dst = _quantized_type(ctx)
    precision = int(ctx.attr("precision", 0) or 0)
    if precision:
        dt = tvm_dtype(DType.from_onnx(precision), "precision")
    else:  # numpy's promotion of x / scale
        dt = str(x.ty.dtype) if str(x.ty.dtype) == ctx.dtype(1) else "float32"
    x = x if str(x.ty.dtype) == dt else ctx.emit(R.astype(x, dt))
    scaled = ctx.emit(R.divide(x, _param(ctx, 1, dims, dt)))
    if integer_range(dst) is not None:
        q = ctx.emit(R.astype(R.round(scaled), "float32"))  # round: half to even, as ONNX wants
        if ctx.has_input(2):
            q = ctx.emit(R.add(q, _param(ctx, 2, dims, "float32")))
        return [saturate_to(ctx, q, dst)]
    if dst not in FORMATS:
        raise ctx.error(f"{dst.text} is not a quantized type (integers up to 16 bits, float8, float4e2m1)")
    src = DType.from_numpy(np.dtype(dt))
    if dst is DType.F4E2M1 and ctx.has_input(2):
        zp = convert(ctx, _param(ctx, 2, dims, "uint8"), DType.F4E2M1, DType.F32)
        scaled, src = ctx.emit(R.add(R.astype(scaled, "float32"), zp)), DType.F32
    return [convert(ctx, scaled, src, dst, saturate=bool(ctx.attr("saturate", 1)))]


@converter("onnx.DequantizeLinear", since=10)
def dequantize_linear(ctx: LowerCtx, node: Node):
    x = ctx.input(0)
    dims = ctx.shape_of(x)
    src = ctx.input_type(0).dtype
    if src.is_float:  # float8 / float4e2m1: zero points are 0 (float8) or ignored, as in onnx's reference
        dx = convert(ctx, x, src, DType.F32)
    else:
        dx = ctx.emit(R.astype(x, "float32"))
        if ctx.has_input(2):
            dx = ctx.emit(R.subtract(dx, _param(ctx, 2, dims, "float32")))
    y = ctx.emit(R.multiply(dx, _param(ctx, 1, dims, "float32")))
    to = int(ctx.attr("output_dtype", 0) or 0)
    out = tvm_dtype(DType.from_onnx(to)) if to else ctx.dtype(1)
    return [y if out == "float32" else R.astype(y, out)]


@converter("onnx.DynamicQuantizeLinear", since=11)
def dynamic_quantize_linear(ctx: LowerCtx, node: Node):
    """uint8 quantization with the scale and zero point that map [min(x, 0), max(x, 0)] onto [0, 255]."""
    x = ctx.input(0)
    dt = str(x.ty.dtype)
    xf = x if dt == "float32" else ctx.emit(R.astype(x, "float32"))
    zero = relax.const(0.0, "float32")
    hi = ctx.emit(R.maximum(R.max(xf), zero))
    lo = ctx.emit(R.minimum(R.min(xf), zero))
    scale = ctx.emit(R.divide(R.where(R.equal(hi, lo), relax.const(1.0, "float32"), R.subtract(hi, lo)),
                              relax.const(255.0, "float32")))
    zp = ctx.emit(R.round(R.clip(R.negative(R.divide(lo, scale)), 0.0, 255.0)))
    q = ctx.emit(R.add(R.round(R.divide(xf, scale)), zp))
    return [saturate_to(ctx, q, DType.U8), scale if dt == "float32" else R.astype(scale, dt),
            R.astype(zp, "uint8")]
