"""MatMul, Gemm and Einsum. MatMul and Gemm ask `ctx.kernels.matmul` for the product."""

from __future__ import annotations

import numpy as np
from tvm import relax

from mdoc.ir import Node

from ..context import LowerCtx
from ..registry import converter
from ._common import attr_str, float_const

R = relax.op


@converter("onnx.MatMul", since=1)
def matmul(ctx: LowerCtx, node: Node):
    return [ctx.kernels.matmul(ctx, ctx.input(0), ctx.input(1))]


@converter("onnx.Gemm", since=1)
def gemm(ctx: LowerCtx, node: Node):
    """Y = alpha * A' @ B' + beta * C, with A' = A^T when transA and B' = B^T when transB."""
    alpha, beta = float(ctx.attr("alpha", 1.0)), float(ctx.attr("beta", 1.0))
    trans_a, trans_b = int(ctx.attr("transA", 0)), int(ctx.attr("transB", 0))
    a, b = ctx.input(0), ctx.input(1)
    dt = str(a.ty.dtype)
    if trans_a:
        a = ctx.emit(R.permute_dims(a, [1, 0]))
    y = ctx.kernels.matmul(ctx, a, b, transpose_b=bool(trans_b))
    if alpha != 1.0:
        y = R.multiply(ctx.emit(y), float_const(alpha, dt))
    if ctx.has_input(2) and beta != 0.0:
        c_array = ctx.const(2)
        if c_array is not None:
            c = relax.const((c_array.astype(np.float64) * beta).astype(c_array.dtype))
        else:
            c = ctx.input(2)
            if beta != 1.0:
                c = ctx.emit(R.multiply(c, float_const(beta, dt)))
        y = R.add(*ctx.aligned(ctx.emit(y), c))  # C's rows may be a size Relax cannot prove equal to A's
    return [y]


@converter("onnx.Einsum", since=12)
def einsum(ctx: LowerCtx, node: Node):
    equation = attr_str(ctx, "equation", "").replace(" ", "")
    return [R.einsum([x for x in ctx.inputs() if x is not None], equation)]
