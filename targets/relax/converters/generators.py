"""Tensors made from shapes: EyeLike, and the Hann, Hamming and Blackman windows.

EyeLike is a 2-D identity (shifted by k) shaped like its input, a constant when the shape
is static. A window's length is a runtime scalar in general: it becomes a symbolic dim
(`LowerCtx.runtime_dims`), so one build serves every length.
"""

from __future__ import annotations

import math

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


def _window(ctx: LowerCtx, terms: list[tuple[float, float]]) -> relax.Expr:
    """sum of a * cos(f * 2 pi i / N) over `terms` (a, f), i = 0 .. size-1, N = size or size - 1."""
    size = ctx.const(0)
    if size is not None:
        n = int(size.reshape(-1)[0])
    else:
        n = ctx.runtime_dims(ctx.emit(R.reshape(ctx.input(0), [1])), "window_length")[0]
    dtype = onnx_to_tvm_dtype(int(ctx.attr("output_datatype", 1)), "output_datatype")
    cdt = "float64" if dtype == "float64" else "float32"
    i = ctx.emit(R.astype(ctx.emit(R.arange(0, n, 1, "int64")), cdt))
    periodic = bool(ctx.attr("periodic", 1))
    if is_static(n):
        denom = relax.const(float(n if periodic else n - 1), cdt)
    else:
        length = ctx.emit(R.astype(ctx.emit(R.reshape(ctx.emit(R.shape_to_tensor(relax.ShapeExpr([n]))), [])), cdt))
        denom = length if periodic else ctx.emit(R.subtract(length, relax.const(1.0, cdt)))
    phase = ctx.emit(R.divide(ctx.emit(R.multiply(i, relax.const(2 * math.pi, cdt))), denom))
    y = None
    for a, f in terms:
        t = relax.const(a, cdt) if f == 0 else ctx.emit(
            R.multiply(ctx.emit(R.cos(ctx.emit(R.multiply(phase, relax.const(f, cdt))))), relax.const(a, cdt)))
        y = t if y is None else ctx.emit(R.add(y, t))
    return R.astype(y, dtype) if dtype != cdt else y


# sin^2(pi i / N) = 0.5 - 0.5 cos(2 pi i / N)
converter("onnx.HannWindow", since=17)(lambda ctx, node: [_window(ctx, [(0.5, 0), (-0.5, 1)])])
converter("onnx.HammingWindow", since=17)(lambda ctx, node: [_window(ctx, [(25 / 46, 0), (-21 / 46, 1)])])
converter("onnx.BlackmanWindow", since=17)(lambda ctx, node: [_window(ctx, [(0.42, 0), (-0.5, 1), (0.08, 2)])])
