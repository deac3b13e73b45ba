"""mdoc.qconv and mdoc.qmatmul on the CPU kernels: the int8 dot-product kernels, else the float kernels on
dequantized weights.

`CpuKernels.lower_node` sends the two ops here. Each returns the node's result, or None for the
generic converter (`converters/quantized.py`: int32 Relax ops, every target):

    integer   on the CPU's int8 dot product (`cpu_kernels.int8.dot_product`: vpdpbusd on AVX-512 VNNI,
              vpmaddwd on AVX2, sdot on aarch64 with dotprod), static shapes but for a conv's batch and a
              matmul's rows, constant symmetric int8 weights, one group: `cpu_kernels.int8.qconv2d` / `qdense`, the scales, bias, residual, activation
              and requantization in the kernel's epilogue. A static model's activation scale and zero
              point are constants; a dynamically quantized one's (qmatmul) are computed per call, and
              so are the kernel's `offset` and `mult` vectors (two small Relax ops).
    depthwise a depthwise qconv (channel multiplier 1, any CPU): `cpu_kernels.int8_depthwise.qdepthwise_conv2d`,
              bytes widened to int32 vectors along the width (a dot product over 4 input channels has
              nothing to reduce there), the same epilogue; the activation read in its own type.
    float     a qconv neither takes (other grouped convs; CPUs without a dot product) with constant scales:
              x dequantized, the float conv kernel with the dequantized weights and the op's tail,
              then quantized.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from tvm import relax

from mdoc.activations import applied_from_attrs
from mdoc.ir import Node
from mdoc.quantized_ops import BIAS, RESIDUAL, W, W_SCALE, W_ZP, X, X_SCALE, X_ZP, Y_SCALE, Y_ZP

from ..cpu_kernels.int8 import QEpilogue, dot_product
from ..cpu_kernels.request import KernelRequest
from ..cpu_kernels.common import flat_spatial
from .context import is_static, reshaped
from .converters.nn import _spatial_attrs
from .kernels import Tail
from .request_dims import request_dims

if TYPE_CHECKING:  # pragma: no cover
    from .context import LowerCtx
    from .cpu_strategy import CpuKernels

R = relax.op


def _scalar(ctx: "LowerCtx", i: int, default=None):
    """Operand i as a Python number when it is a constant scalar (absent: `default`), else None."""
    if not ctx.has_input(i):
        return default
    value = ctx.const(i)
    return None if value is None or np.asarray(value).size != 1 else np.asarray(value).reshape(()).item()


def _weights(ctx: "LowerCtx", channels_axis: int):
    """(int8 weight, float32 per-channel scale) when the weight is a symmetric int8 constant, else None."""
    w = ctx.const(W)
    scale = ctx.const(W_SCALE)
    zero = ctx.const(W_ZP) if ctx.has_input(W_ZP) else np.zeros(1, np.int8)
    if w is None or w.dtype != np.int8 or scale is None or zero is None or np.any(zero != 0):
        return None
    n = w.shape[channels_axis]
    return w, np.broadcast_to(np.asarray(scale, np.float32).reshape(-1), (n,)).copy()


def _epilogue(ctx: "LowerCtx", node: Node, signed: bool) -> QEpilogue | None:
    act = applied_from_attrs(node.attrs)
    y_scale, y_zero = _scalar(ctx, Y_SCALE), _scalar(ctx, Y_ZP)
    if ctx.has_input(Y_SCALE) and (y_scale is None or y_zero is None):
        return None
    if ctx.has_input(BIAS) and ctx.const(BIAS) is None:
        return None
    return QEpilogue(signed=signed, bias=ctx.has_input(BIAS), residual=ctx.has_input(RESIDUAL),
                     activation=act.name if act is not None else None,
                     alpha=act.alpha if act is not None else None, beta=act.beta if act is not None else None,
                     y_scale=None if y_scale is None else float(y_scale), y_zero_point=int(y_zero or 0),
                     out_dtype=str(ctx.input_type(Y_ZP).dtype.numpy) if ctx.has_input(Y_SCALE) else "float32")


def _offset_and_mult(ctx: "LowerCtx", w_sums: np.ndarray, w_scale: np.ndarray, shift: int):
    """The kernel's int32 `offset` (-xz * sum of each channel's weights, xz read as the dot product reads
    bytes: + `shift`) and float `mult` (x_scale * w_scale): constants for a static activation scale, else
    computed from the run-time scalars."""
    xs, xz = _scalar(ctx, X_SCALE), _scalar(ctx, X_ZP, 0)
    if xs is not None and xz is not None:
        return (relax.const(((-(int(xz) + shift)) * w_sums).astype(np.int32)),
                relax.const((np.float64(xs) * w_scale).astype(np.float32)))
    xz_expr = (R.add(R.astype(R.reshape(ctx.input(X_ZP), []), "int32"), relax.const(np.int32(shift)))
               if ctx.has_input(X_ZP) else relax.const(np.int32(shift)))
    offset = ctx.emit(R.multiply(ctx.emit(xz_expr), relax.const((-w_sums).astype(np.int32))))
    mult = ctx.emit(R.multiply(R.astype(R.reshape(ctx.input(X_SCALE), []), "float32"), relax.const(w_scale)))
    return offset, mult


def _integer_args(ctx: "LowerCtx", built, x, offset, mult) -> list:
    args = [x, relax.const(built.packers["weight"](ctx.const(W))), offset, mult]
    if ctx.has_input(BIAS):
        args.append(relax.const(np.asarray(ctx.const(BIAS), np.float32).reshape(-1)))
    return args


def qconv(kernels: "CpuKernels", ctx: "LowerCtx", node: Node) -> list | None:
    x_type = ctx.input_type(X)
    x_shape = tuple(ctx.shape_of(ctx.input(X)))
    weights = _weights(ctx, 0)
    if weights is None or len(x_shape) != 4 or not all(is_static(d) for d in x_shape[1:]):
        return None  # (a run-time batch is fine: the kernels take it)
    w, w_scale = weights
    signed = x_type.dtype.numpy == np.int8
    epilogue = _epilogue(ctx, node, signed)
    if epilogue is None:
        return None
    strides, dilations, pads = _spatial_attrs(ctx, [int(d) for d in x_shape[2:]], list(w.shape[2:]))
    groups = int(node.attrs.get("group", 1))
    step = dot_product(kernels.spec)
    xz = _scalar(ctx, X_ZP, 0)
    depthwise = groups == x_shape[1] == w.shape[0] and w.shape[1] == 1
    if xz is not None and depthwise:
        builder, shift = "qdepthwise_conv2d", 0  # read in its own type: no dot product
    elif xz is not None and groups == 1 and step is not None:
        builder, shift = "qconv2d", step.shift(signed)
    else:
        return _float_conv(kernels, ctx, node, w, w_scale, strides, pads, dilations, groups)
    built = kernels._kernel(KernelRequest.of(builder, *request_dims(x_shape), tuple(int(d) for d in w.shape),
                                             strides=tuple(strides), padding=tuple(pads), dilation=tuple(dilations),
                                             x_zero_point=int(xz), epilogue=epilogue))
    offset, mult = _offset_and_mult(ctx, w.astype(np.int32).sum(axis=(1, 2, 3)), w_scale, shift)
    args = _integer_args(ctx, built, ctx.input(X), offset, mult)
    if ctx.has_input(RESIDUAL):
        args.append(ctx.input(RESIDUAL))
    return [kernels._call(ctx, built, args)]


def _float_conv(kernels, ctx, node, w, w_scale, strides, pads, dilations, groups) -> list | None:
    """A qconv as dequantize -> the float conv kernel (dequantized weights, the op's tail) -> quantize."""
    xs, xz = _scalar(ctx, X_SCALE), _scalar(ctx, X_ZP, 0)
    if xs is None or xz is None:
        return None
    xf = ctx.emit(R.multiply(R.subtract(R.astype(ctx.input(X), "float32"), relax.const(np.float32(xz))),
                             relax.const(np.float32(xs))))
    wf = relax.const((w.astype(np.float32) * w_scale.reshape(-1, 1, 1, 1)).astype(np.float32))
    bias = relax.const(np.asarray(ctx.const(BIAS), np.float32).reshape(-1)) if ctx.has_input(BIAS) else None
    tail = Tail(residual=ctx.input(RESIDUAL) if ctx.has_input(RESIDUAL) else None,
                activation=applied_from_attrs(node.attrs))
    y = ctx.emit(kernels.conv(ctx, xf, wf, strides=strides, pads=pads, dilations=dilations, groups=groups, bias=bias,
                              tail=tail))
    return [_quantized(ctx, y)]


def _quantized(ctx: "LowerCtx", y: relax.Expr) -> relax.Expr:
    """y requantized to the op's y_scale / y_zero_point (constants), or y when the op has none."""
    if not ctx.has_input(Y_SCALE):
        return y
    dtype = ctx.input_type(Y_ZP).dtype.numpy
    info = np.iinfo(dtype)
    q = R.add(R.round(R.multiply(y, relax.const(np.float32(1.0 / _scalar(ctx, Y_SCALE))))),
              relax.const(np.float32(_scalar(ctx, Y_ZP))))
    return ctx.emit(R.astype(R.clip(ctx.emit(q), float(info.min), float(info.max)), str(dtype)))


def qmatmul(kernels: "CpuKernels", ctx: "LowerCtx", node: Node) -> list | None:
    a_shape = tuple(ctx.shape_of(ctx.input(X)))
    weights = _weights(ctx, 1)
    step = dot_product(kernels.spec)
    if weights is None or step is None or len(a_shape) < 2 or not is_static(a_shape[-1]):
        return None
    w, w_scale = weights
    signed = ctx.input_type(X).dtype.numpy == np.int8
    epilogue = _epilogue(ctx, node, signed)
    if epilogue is None:
        return None
    m = flat_spatial(a_shape[:-1])  # rows known at run time (batch, sequence) run in clamped tiles
    k, n = (int(d) for d in w.shape)
    built = kernels._kernel(KernelRequest.of("qdense", *request_dims((m, k)), (k, n), epilogue=epilogue))
    offset, mult = _offset_and_mult(ctx, w.astype(np.int32).sum(axis=0), w_scale, step.shift(signed))
    args = _integer_args(ctx, built, reshaped(ctx, ctx.input(X), (m, k)), offset, mult)
    if ctx.has_input(RESIDUAL):
        args.append(reshaped(ctx, ctx.input(RESIDUAL), (m, n)))
    return [reshaped(ctx, kernels._call(ctx, built, args), (*a_shape[:-1], n))]


LOWER = {"mdoc.qconv": qconv, "mdoc.qmatmul": qmatmul}
