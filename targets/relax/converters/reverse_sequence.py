"""ReverseSequence: reverse the first seq_lens[b] steps of every batch entry, as a gather.

Step t of batch entry b reads step seq_lens[b] - 1 - t when t < seq_lens[b], else itself.
"""

from __future__ import annotations

from tvm import relax

from mdoc.ir import Node

from ..context import LowerCtx
from ..registry import converter
from ._common import norm_axis, relax_dims

R = relax.op


@converter("onnx.ReverseSequence", since=10)
def reverse_sequence(ctx: LowerCtx, node: Node):
    x = ctx.input(0)
    dims = ctx.shape(0)
    rank = len(dims)
    batch_axis = norm_axis(ctx, int(ctx.attr("batch_axis", 1)), rank)
    time_axis = norm_axis(ctx, int(ctx.attr("time_axis", 0)), rank)
    if batch_axis == time_axis:
        raise ctx.error(f"batch_axis and time_axis are both {batch_axis}")
    t_shape = [1] * rank
    t_shape[time_axis] = dims[time_axis]
    t = ctx.emit(R.reshape(ctx.emit(R.arange(0, dims[time_axis], 1, "int64")), relax_dims(t_shape)))
    b_shape = [1] * rank
    b_shape[batch_axis] = dims[batch_axis]
    lens = ctx.emit(R.reshape(ctx.emit(R.astype(ctx.input(1), "int64")), relax_dims(b_shape)))
    flipped = ctx.emit(R.subtract(ctx.emit(R.subtract(lens, relax.const(1, "int64"))), t))
    src = ctx.emit(R.where(ctx.emit(R.less(t, lens)), flipped, t))
    src = ctx.emit(R.broadcast_to(src, relax_dims(dims)))
    return [R.gather_elements(x, src, axis=time_axis)]
