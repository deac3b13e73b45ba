"""NonMaxSuppression through TOPI's `all_class_non_max_suppression`.

TOPI returns a [batch * classes * boxes, 3] buffer and the number of rows selected; the
result is that many rows, a data-dependent length. The count becomes a symbolic dim
through `tensor_to_shape` + `match_cast` (fenced like `LowerCtx.shape_arg`'s runtime
shapes) and the rows are sliced. Boxes given as centers (`center_point_box` 1) are turned
into corners first; the thresholds may be runtime scalars.
"""

from __future__ import annotations

import numpy as np
from tvm import relax, tirx, topi

from mdoc.ir import Node

from ..context import LowerCtx
from ..registry import converter

R = relax.op


def _scalar(ctx: LowerCtx, i: int, dtype: str, default: float, shape: list[int]) -> relax.Expr:
    """Operand `i` (a scalar or [1] tensor, maybe omitted) as a tensor of `shape` and `dtype`."""
    if not ctx.has_input(i):
        return relax.const(np.full(shape, default), dtype)
    x = ctx.emit(R.reshape(ctx.input(i), shape))
    return ctx.emit(R.astype(x, dtype)) if str(x.ty.dtype) != dtype else x


@converter("onnx.NonMaxSuppression", since=10)
def non_max_suppression(ctx: LowerCtx, node: Node):
    boxes, scores = ctx.input(0), ctx.input(1)
    if int(ctx.attr("center_point_box", 0)):
        center = ctx.emit(R.strided_slice(boxes, axes=[2], begin=[0], end=[2], assume_inbound=True))
        half = ctx.emit(R.divide(ctx.emit(R.strided_slice(boxes, axes=[2], begin=[2], end=[4], assume_inbound=True)),
                                 relax.const(2.0, str(boxes.ty.dtype))))
        boxes = ctx.emit(R.concat([ctx.emit(R.subtract(center, half)), ctx.emit(R.add(center, half))], axis=2))
    # TOPI directly (Relax's legalization reads max_output_boxes_per_class only from a constant)
    out = ctx.bb.emit_te(topi.vision.all_class_non_max_suppression, boxes, scores, _scalar(ctx, 2, "int64", 0, [1]),
                         _scalar(ctx, 3, "float32", 0.0, []), _scalar(ctx, 4, "float32", float("-inf"), []),
                         "onnx")
    _mark_scheduled(ctx, out)
    rows, count = ctx.emit(relax.TupleGetItem(out, 0)), ctx.emit(relax.TupleGetItem(out, 1))
    count = ctx.emit(R.astype(ctx.emit(R.reshape(count, [1])), "int64"))
    n = tirx.Var("nms_selected", "int64")
    ctx.bb.match_cast(ctx.emit(R.tensor_to_shape(count)), relax.ShapeType([n]))
    rows = ctx.bb.match_cast(rows, rows.ty)  # after the count's match_cast (see LowerCtx.shape_arg)
    ctx.fenced = True
    return [R.strided_slice(rows, axes=[0], begin=[0], end=[n], assume_inbound=True)]


def _mark_scheduled(ctx: LowerCtx, call_var: relax.Var) -> None:
    """TOPI's NMS kernels are sequential IR-builder code: keep the generic CPU schedule off them."""
    gv = ctx.bb.lookup_binding(call_var).args[0]
    ctx.bb.update_func(gv, ctx.bb.get()[gv].with_attr("mdoc.scheduled", True))
