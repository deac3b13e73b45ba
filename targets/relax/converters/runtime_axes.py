"""Axes read at run time (a graph input or a computed tensor), and the dims they decide.

ONNX lets a Reduce's, Squeeze's, Unsqueeze's, Slice's or Pad's axes be any int
tensor. When it is not known while lowering but its length is, the rank of the
result is known and only which dims are reduced, dropped, inserted or cut waits
for the values. Everything here is computed in Relax tensor arithmetic (a mask
of the named dims, the dims a result keeps) and turned into fresh TIR vars by
`LowerCtx.runtime_dims` at the end: kernels and shapes then see plain vars. (The
same dims written as nested TIR `Select`s made TVM's TIR simplifier take minutes
to build a 3-D ReduceSum.) An axes tensor of unknown length decides the rank and
stays a compile-time operand (`ctx.need_const`).
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from ..context import LowerCtx, is_static

R = relax.op


def _i64(v) -> relax.Expr:
    return relax.const(np.array(v, np.int64), "int64")


def runtime_axes(ctx: LowerCtx, i: int, rank: int, what: str = "axes") -> relax.Expr | None:
    """Operand `i` as an int64 tensor wrapped into [0, rank); None when lowering knows its values.

    Values outside [-rank, rank) are not refused (they are data): they name no dim.
    """
    if ctx.const(i) is not None or ctx.sym(i, max_size=1 << 12) is not None:
        return None
    shape = ctx.shape(i)
    if len(shape) != 1 or not is_static(shape[0]):
        raise ctx.need_const(i, f"{what}, of a length known only at run time")
    a = ctx.emit(R.astype(ctx.input(i), "int64"))
    return ctx.emit(R.where(R.less(a, _i64(0)), R.add(a, _i64(rank)), a))


def length(axes: relax.Expr) -> int:
    return int(axes.ty.shape.values[0])


def _hits(ctx: LowerCtx, axes: relax.Expr, rank: int) -> relax.Expr:
    """[len(axes), rank] bools: entry j names dim d."""
    return ctx.emit(R.equal(R.reshape(axes, [length(axes), 1]), _i64(np.arange(rank)[None, :])))


def axis_mask(ctx: LowerCtx, axes: relax.Expr, rank: int) -> relax.Expr:
    """[rank] bools: whether each dim is one of `axes`."""
    return ctx.emit(R.greater(R.sum(R.astype(_hits(ctx, axes, rank), "int64"), axis=0), _i64(0)))


def spread(ctx: LowerCtx, axes: relax.Expr, values: relax.Expr, default: relax.Expr, rank: int) -> relax.Expr:
    """[rank] int64: per dim, the entry of `values` whose axis names it, else `default` (a [rank] tensor)."""
    hits = _hits(ctx, axes, rank)
    picked = ctx.emit(R.sum(R.where(hits, R.reshape(values, [length(axes), 1]), _i64(0)), axis=0))
    return ctx.emit(R.where(axis_mask(ctx, axes, rank), picked, default))


def kept_dims(ctx: LowerCtx, dims: list, mask: relax.Expr, count: int) -> list:
    """The `count` dims whose mask is false, in order, as run-time dims (a stable argsort puts them first)."""
    if count == 0:
        return []
    order = ctx.emit(R.argsort(R.astype(mask, "int32"), axis=0, dtype="int64"))
    kept = ctx.emit(R.strided_slice(order, axes=[0], begin=[0], end=[count], assume_inbound=True))
    return ctx.runtime_dims(ctx.emit(R.take(ctx.dims_tensor(dims), kept, axis=0)), "kept")


def inserted_dims(ctx: LowerCtx, dims: list, mask: relax.Expr) -> list:
    """Unsqueeze's result as run-time dims: 1 where `mask` (over the result's rank) is true, else the
    next of `dims` in order."""
    if not dims:
        return [1] * int(mask.ty.shape.values[0])
    before = ctx.emit(R.subtract(R.cumsum(R.astype(R.logical_not(mask), "int64"), axis=0), _i64(1)))
    source = ctx.emit(R.minimum(R.maximum(before, _i64(0)), _i64(len(dims) - 1)))
    out = ctx.emit(R.where(mask, _i64(1), R.take(ctx.dims_tensor(dims), source, axis=0)))
    return ctx.runtime_dims(out, "unsqueezed")
