"""DFT as matrix products with constant cosine and sine tables (lengths are static).

The signal axis is moved last and multiplied by [n_in, n_out] tables: for the forward
transform (e^{-i theta}) re' = re C + im S, im' = im C - re S; the inverse uses e^{+i theta}
and divides by the length. Zero rows stand for numpy's truncation to `dft_length`, missing
rows for its zero padding. `onesided` keeps the first n // 2 + 1 bins forward; inverse, it is
numpy's irfft: bins past the first and the Nyquist one count twice, the result is real.
O(n^2) per signal, which is what the small, static transforms of ONNX models need.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from mdoc.ir import Node

from ..context import LowerCtx
from ..registry import converter
from ._common import norm_axis, static_int

R = relax.op


def _tables(n_in: int, length: int, n_out: int, *, inverse: bool, onesided: bool):
    """(C, S, weights) of shape [n_in, n_out]: cos / sin of 2 pi t k / length, rows past `length` zero."""
    t = np.arange(n_in).reshape(-1, 1)
    k = np.arange(n_out).reshape(1, -1)
    theta = 2 * np.pi * ((t * k) % length) / length
    keep = (t < (length // 2 + 1 if inverse and onesided else length)).astype(np.float64)
    cos, sin = np.cos(theta) * keep, np.sin(theta) * keep
    if inverse and onesided:  # Hermitian: bins 1 .. ceil(length / 2) - 1 stand for two
        w = np.full((n_in, 1), 2.0)
        w[0] = 1.0
        if length % 2 == 0 and length // 2 < n_in:
            w[length // 2] = 1.0
        cos, sin = cos * w, sin * w
    return cos, sin


def dft(ctx: LowerCtx, axis: int, length: int | None, inverse: bool, onesided: bool) -> relax.Expr:
    x = ctx.input(0)
    dims = ctx.shape(0)
    rank = len(dims)
    dt = str(x.ty.dtype)
    axis = norm_axis(ctx, axis, rank)
    if axis == rank - 1:
        raise ctx.error("axis is the last (real / imaginary) axis; it must be a signal axis")
    complex_in = static_int(ctx, dims[-1], "the last dim") == 2
    n_in = static_int(ctx, dims[axis], "the signal length")
    if length is None:
        length = 2 * (n_in - 1) if inverse and onesided else n_in
    n_out = length // 2 + 1 if onesided and not inverse else length
    cos, sin = _tables(n_in, length, n_out, inverse=inverse, onesided=onesided)
    scale = 1.0 / length if inverse else 1.0
    c, s = (relax.const((m * scale).astype(dt), dt) for m in (cos, sin))

    perm = [d for d in range(rank - 1) if d != axis] + [axis]
    def part(i: int) -> relax.Expr:  # real (0) or imaginary (1) part, signal axis last
        p = ctx.emit(R.strided_slice(x, axes=[rank - 1], begin=[i], end=[i + 1], assume_inbound=True))
        return ctx.emit(R.permute_dims(ctx.emit(R.squeeze(p, [rank - 1])), perm))

    def mm(a, b):
        return ctx.emit(ctx.kernels.matmul(ctx, a, b))

    re = part(0)
    im = part(1) if complex_in else None
    sign = 1.0 if inverse else -1.0  # e^{sign i theta}
    out_re = mm(re, c)
    if im is not None:  # re' = re C - sign im S
        out_re = ctx.emit(R.subtract(out_re, mm(im, s)) if sign > 0 else R.add(out_re, mm(im, s)))
    parts = [out_re]
    if not (inverse and onesided):  # im' = im C + sign re S
        re_s = mm(re, s)
        out_im = re_s if sign > 0 else ctx.emit(R.negative(re_s))
        if im is not None:
            out_im = ctx.emit(R.add(mm(im, c), out_im))
        parts.append(out_im)
    back = [perm.index(d) for d in range(rank - 1)]
    parts = [ctx.emit(R.expand_dims(ctx.emit(R.permute_dims(p, back)), rank - 1)) for p in parts]
    return R.concat(parts, axis=rank - 1) if len(parts) > 1 else parts[0]


def _length(ctx: LowerCtx) -> int | None:
    if not ctx.has_input(1):
        return None
    return int(ctx.require_const(1, "dft_length").reshape(-1)[0])


@converter("onnx.DFT", since=17)
def dft_v17(ctx: LowerCtx, node: Node):
    return [dft(ctx, int(ctx.attr("axis", 1)), _length(ctx), bool(ctx.attr("inverse", 0)),
                bool(ctx.attr("onesided", 0)))]


@converter("onnx.DFT", since=20)
def dft_v20(ctx: LowerCtx, node: Node):
    axis = int(ctx.require_const(2, "axis").reshape(-1)[0]) if ctx.has_input(2) else -2
    return [dft(ctx, axis, _length(ctx), bool(ctx.attr("inverse", 0)), bool(ctx.attr("onesided", 0)))]
