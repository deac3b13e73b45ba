"""NonZero, Compress and Unique: results as long as a count the data decides.

Each keeps the elements (or slices) a mask selects, in order. The count is a sum
over the mask, made a run-time dim by `LowerCtx.runtime_dims` (as NMS's kept rows
in detection.py); the kept positions are the first `count` entries of a stable
argsort of "not selected" (TVM's CPU argsort is a stable sort: selected
positions come first, in increasing order), so no scatter kernel is needed.
Unique sorts (stable, so the first occurrence of a value leads its run), marks
where a run starts, and reads indices, inverse indices and counts off the runs;
with an axis it sorts the slices lexicographically, one stable argsort per
element of a slice, last element first.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from mdoc.ir import Node

from ..context import LowerCtx
from ..registry import converter
from ._common import norm_axis, prod, relax_dims

R = relax.op


def _i64(v) -> relax.Expr:
    return relax.const(np.array(v, np.int64), "int64")


def selected(ctx: LowerCtx, mask: relax.Expr, name: str) -> tuple[relax.Expr, object]:
    """The positions where the 1-D bool `mask` is true, in order, and their count (a run-time dim)."""
    count = ctx.emit(R.reshape(R.sum(R.astype(mask, "int64")), [1]))
    (n,) = ctx.runtime_dims(count, name)
    order = ctx.emit(R.argsort(R.astype(R.logical_not(mask), "int32"), axis=0, dtype="int64"))
    order = ctx.bb.match_cast(order, order.ty)  # after the count's match_cast (see LowerCtx.runtime_dims)
    return ctx.emit(R.strided_slice(order, axes=[0], begin=[0], end=[n], assume_inbound=True)), n


@converter("onnx.NonZero", since=9)
def nonzero(ctx: LowerCtx, node: Node):
    x = ctx.input(0)
    dims = ctx.shape_of(x)
    if not dims:
        raise ctx.error("NonZero of a rank-0 tensor is not supported by the Relax target; give it shape [1]")
    flat = ctx.emit(R.reshape(x, relax_dims([prod(dims)])))
    dt = str(flat.ty.dtype)
    mask = flat if dt == "bool" else ctx.emit(R.not_equal(flat, relax.const(0, dt)))
    idx, _ = selected(ctx, mask, "nonzero")
    coords = []
    for k in range(len(dims)):
        stride = ctx.dims_tensor([prod(dims[k + 1:])])
        size = ctx.dims_tensor([dims[k]])
        coords.append(ctx.emit(R.expand_dims(R.floor_mod(R.floor_divide(idx, stride), size), 0)))
    return [R.concat(coords, axis=0) if len(coords) > 1 else coords[0]]


@converter("onnx.Compress", since=9)
def compress(ctx: LowerCtx, node: Node):
    x = ctx.input(0)
    dims = ctx.shape_of(x)
    axis = ctx.attr("axis")
    if axis is None:
        x, axis = ctx.emit(R.reshape(x, relax_dims([prod(dims)]))), 0
    else:
        axis = norm_axis(ctx, int(axis), len(dims))
    cond = ctx.input(1)
    if len(ctx.shape_of(cond)) != 1:
        raise ctx.error(f"condition must be 1-D, it has shape {ctx.shape(1)}")
    mask = cond if str(cond.ty.dtype) == "bool" else ctx.emit(R.astype(cond, "bool"))
    idx, _ = selected(ctx, mask, "compressed")
    return [R.take(x, idx, axis=axis)]


@converter("onnx.Unique", since=11)
def unique(ctx: LowerCtx, node: Node):
    x = ctx.input(0)
    dims = ctx.shape_of(x)
    axis = ctx.attr("axis")
    if axis is None:
        rows = ctx.emit(R.reshape(x, relax_dims([prod(dims), 1])))
        axis, slice_dims = None, []
    else:
        axis = norm_axis(ctx, int(axis), len(dims))
        perm = [axis] + [k for k in range(len(dims)) if k != axis]
        slice_dims = [dims[k] for k in perm[1:]]
        width = prod(slice_dims)
        if not isinstance(width, int):
            raise ctx.error(f"Unique along axis {axis} needs static dims besides the axis, the input has {dims}")
        moved = ctx.emit(R.permute_dims(x, perm)) if axis else x
        rows = ctx.emit(R.reshape(moved, relax_dims([dims[axis], width])))
    n, width = ctx.shape_of(rows)
    order = None  # a stable lexicographic sort of the rows: one stable argsort per column, last first
    for col in reversed(range(int(width))):
        keys = ctx.emit(R.reshape(R.strided_slice(rows, axes=[1], begin=[col], end=[col + 1]), relax_dims([n])))
        if order is not None:
            keys = ctx.emit(R.take(keys, order, axis=0))
        if str(keys.ty.dtype) in ("bfloat16", "float16"):  # TVM's argsort misorders them; float32 holds each exactly
            keys = ctx.emit(R.astype(keys, "float32"))
        step = ctx.emit(R.argsort(keys, axis=0, dtype="int64"))
        order = step if order is None else ctx.emit(R.take(order, step, axis=0))
    ordered = ctx.emit(R.take(rows, order, axis=0))
    later = ctx.emit(R.strided_slice(ordered, axes=[0], begin=[1], end=[n], assume_inbound=True))
    earlier = ctx.emit(R.strided_slice(ordered, axes=[0], begin=[0], end=[n - 1], assume_inbound=True))
    differs = ctx.emit(R.max(R.astype(R.not_equal(later, earlier), "uint8"), axis=1))  # [n - 1]
    starts = ctx.emit(R.concat([relax.const(np.array([True])), R.astype(differs, "bool")], axis=0))
    first, u = selected(ctx, starts, "unique")
    values = ctx.emit(R.take(ordered, first, axis=0))          # [u, width], sorted
    indices = ctx.emit(R.take(order, first, axis=0))           # where each value first occurs
    run_of = ctx.emit(R.subtract(R.cumsum(R.astype(starts, "int64"), axis=0), _i64(1)))  # per sorted position
    inverse = ctx.emit(R.take(run_of, ctx.emit(R.argsort(order, axis=0, dtype="int64")), axis=0))
    ends = ctx.emit(R.concat([R.strided_slice(first, axes=[0], begin=[1], end=[u], assume_inbound=True),
                              ctx.dims_tensor([n])], axis=0))
    counts = ctx.emit(R.subtract(ends, first))
    if not int(ctx.attr("sorted", 1)):  # the order of first occurrence instead
        by_first = ctx.emit(R.argsort(indices, axis=0, dtype="int64"))
        values, indices, counts = (ctx.emit(R.take(t, by_first, axis=0)) for t in (values, indices, counts))
        inverse = ctx.emit(R.take(ctx.emit(R.argsort(by_first, axis=0, dtype="int64")), inverse, axis=0))
    if axis is None:
        y = R.reshape(values, relax_dims([u]))
    else:
        y = ctx.emit(R.reshape(values, relax_dims([u, *slice_dims])))
        if axis:
            back = list(range(1, axis + 1)) + [0] + list(range(axis + 1, len(dims)))
            y = R.permute_dims(y, back)
    return [y, indices, inverse, counts][:len(node.outputs)]
