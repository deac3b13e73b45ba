"""EyeLike: a 2-D identity (shifted by k) shaped like its input, a constant when the shape is static."""

from __future__ import annotations

import numpy as np
from tvm import relax

from mdoc.ir import Node

from ..context import LowerCtx, is_static, onnx_to_tvm_dtype
from ..registry import converter

R = relax.op


@converter("onnx.EyeLike", since=9)
def eye_like(ctx: LowerCtx, node: Node):
    dims = ctx.shape(0)
    if len(dims) != 2:
        raise ctx.error(f"input has rank {len(dims)}; EyeLike takes a 2-D input")
    to = ctx.attr("dtype")
    dtype = onnx_to_tvm_dtype(int(to), "EyeLike's dtype") if to is not None else ctx.dtype(0)
    k = int(ctx.attr("k", 0))
    if all(is_static(d) for d in dims):
        return [relax.const(np.eye(int(dims[0]), int(dims[1]), k=k).astype(dtype if dtype != "bool" else bool), dtype)]
    rows = ctx.emit(R.reshape(ctx.emit(R.arange(0, dims[0], 1, "int64")), [dims[0], 1]))
    cols = ctx.emit(R.reshape(ctx.emit(R.arange(0, dims[1], 1, "int64")), [1, dims[1]]))
    diag = ctx.emit(R.equal(ctx.emit(R.subtract(cols, rows)), relax.const(k, "int64")))
    return [R.astype(diag, dtype)]
