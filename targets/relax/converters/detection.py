"""NonMaxSuppression and RoiAlign through TOPI's vision kernels.

TOPI returns a [batch * classes * boxes, 3] buffer and the number of rows selected; the
result is that many rows, a data-dependent length. The count becomes a symbolic dim
(`LowerCtx.runtime_dims`) and the rows are sliced. Boxes given as centers (`center_point_box` 1) are turned
into corners first; the thresholds may be runtime scalars.
"""

from __future__ import annotations

import numpy as np
from tvm import relax, topi

from mdoc.ir import Node

from ..context import LowerCtx, is_static
from ..registry import converter
from ._common import attr_str

R = relax.op
_MAX_PER_CLASS = 4096  # selected boxes per class when the box count is known only at run time


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
    # TOPI directly (Relax's legalization reads max_output_boxes_per_class only from a constant).
    # A constant limit goes in as an int: given a tensor, TOPI sizes its output from a guess of
    # the detections per class (a Python `if` on the dims, which a run-time batch or box count
    # cannot answer, and a guess that can drop boxes).
    limit = ctx.const(2) if ctx.has_input(2) else None
    if limit is not None and limit.size == 1:
        boxes_dim = ctx.shape(1)[2]
        limit = max(0, int(limit.reshape(-1)[0]))
        # the output has rows for `limit` boxes per class: no more than there are boxes, and, for a
        # box count known only at run time, at most _MAX_PER_CLASS (a sentinel such as INT64_MAX
        # would allocate without end)
        limit = min(limit, int(boxes_dim) if is_static(boxes_dim) else _MAX_PER_CLASS)
    else:
        limit = _scalar(ctx, 2, "int64", 0, [1])
    out = ctx.bb.emit_te(topi.vision.all_class_non_max_suppression, boxes, scores, limit,
                         _scalar(ctx, 3, "float32", 0.0, []), _scalar(ctx, 4, "float32", float("-inf"), []),
                         "onnx")
    _mark_scheduled(ctx, out)
    rows, count = ctx.emit(relax.TupleGetItem(out, 0)), ctx.emit(relax.TupleGetItem(out, 1))
    n = ctx.runtime_dims(ctx.emit(R.reshape(count, [1])), "nms_selected")[0]
    rows = ctx.bb.match_cast(rows, rows.ty)  # after the count's match_cast (see LowerCtx.shape_arg)
    return [R.strided_slice(rows, axes=[0], begin=[0], end=[n], assume_inbound=True)]


def _mark_scheduled(ctx: LowerCtx, call_var: relax.Var) -> None:
    """TOPI's NMS kernels are sequential IR-builder code: keep the generic CPU schedule off them."""
    gv = ctx.bb.lookup_binding(call_var).args[0]
    ctx.bb.update_func(gv, ctx.bb.get()[gv].with_attr("mdoc.scheduled", True))


@converter("onnx.RoiAlign", since=16)
def roi_align(ctx: LowerCtx, node: Node):
    """TOPI's roi_align; ONNX's separate batch_indices become the rois' first column.

    half_pixel shifts the scaled corners by -0.5 (TOPI's `aligned` only drops the 1-pixel
    minimum roi size). Mode max is refused: ONNX takes the max over the bilinear terms of
    the samples, TOPI over the interpolated samples, which differ.
    """
    data, rois, batch = ctx.input(0), ctx.input(1), ctx.input(2)
    mode = attr_str(ctx, "mode", "avg")
    if mode != "avg":
        raise ctx.error(f"mode '{mode}': the Relax target implements RoiAlign's avg mode only")
    transform = attr_str(ctx, "coordinate_transformation_mode", "half_pixel" if ctx.opset >= 16 else "output_half_pixel")
    if transform not in ("half_pixel", "output_half_pixel"):
        raise ctx.error(f"coordinate_transformation_mode '{transform}' is not one of half_pixel, output_half_pixel")
    dt = str(rois.ty.dtype)
    scale = float(ctx.attr("spatial_scale", 1.0))
    if transform == "half_pixel":
        rois = ctx.emit(R.subtract(rois, relax.const(0.5 / scale, dt)))
    index = ctx.emit(R.astype(ctx.emit(R.expand_dims(batch, 1)), dt))
    rois = ctx.emit(R.concat([index, rois], axis=1))
    return [R.vision.roi_align(data, rois, pooled_size=(int(ctx.attr("output_height", 1)), int(ctx.attr("output_width", 1))),
                               spatial_scale=scale,
                               sample_ratio=int(ctx.attr("sampling_ratio", 0)),
                               aligned=transform == "half_pixel", layout="NCHW", mode=mode)]
